"""In-domain metrics for CPU experiments: a small Fashion-MNIST CNN trained by ppflow once, cached, and reused.

Classifier FID = Frechet distance in its 128-d penultimate feature space; accuracy = how often it assigns a
class-conditional sample to the class it was asked for; classifier IS = the Inception Score formula on its softmax.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..io import save_safetensors_atomic
from . import dist
from .metrics import inception_score
from .sources import (
    ImageSet,
    array_source,
    default_cache_dir,
    load_images,
    pad_to,
    read_npz_cache,
    save_npz_atomic,
    short_hash,
)
from .stats import FeatureStats, feature_stats, frechet_distance

VERSION = 1  # bump when the architecture or the training recipe changes: a new file name, a retrained network
INPUT_SIZE = 32
NUM_CLASSES = 10


class FashionCNN(nn.Module):
    """Three conv blocks (32 -> 16 -> 8 -> 4) and a 128-d feature layer; ~0.2M parameters, ~3 MFLOPs per image."""

    feature_dim = 128

    def __init__(self, width: int = 32, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2))

        self.convs = nn.Sequential(block(1, width), block(width, 2 * width), block(2 * width, 2 * width))
        self.fc = nn.Linear(2 * width * 4 * 4, self.feature_dim)
        self.head = nn.Linear(self.feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 1, 32, 32) in [-1, 1] -> (features (N, 128) before the ReLU, logits (N, 10))."""
        h = self.convs(x).flatten(1)  # (N, 2w * 16)
        f = self.fc(h)  # (N, 128)
        return f, self.head(F.relu(f))  # (N, 10)


def prepare(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W[, C]) Fashion-MNIST-like images -> float (N, 1, 32, 32) in [-1, 1]; 28x28 is padded with
    background like the models' training data, RGB is averaged to gray."""
    x = np.asarray(images) if not isinstance(images, torch.Tensor) else images.cpu().numpy()
    if x.dtype != np.uint8:
        raise TypeError(f"images must be uint8 in [0, 255], got {x.dtype}")
    if x.ndim == 4:
        x = x[..., 0] if x.shape[-1] == 1 else x.mean(axis=-1).round().astype(np.uint8)
    if x.ndim != 3 or x.shape[1:] not in ((28, 28), (INPUT_SIZE, INPUT_SIZE)):
        raise ValueError(f"the Fashion-MNIST classifier takes 28x28 or 32x32 images (N, H, W[, C]), got {x.shape}")
    if x.shape[1] != INPUT_SIZE:
        x = pad_to(x, INPUT_SIZE)
    return torch.from_numpy(np.array(x)).float().div(127.5).sub(1.0)[:, None]  # (N, 1, 32, 32); a copy: memmaps are read-only


@dataclass
class ClassifierTrainConfig:
    epochs: float = 1.0  # ~1 min on 2 free CPU cores for ~90% test accuracy (2 epochs: ~91%)
    batch_size: int = 128
    lr: float = 2e-3  # Adam, cosine-decayed to 0
    width: int = 32
    seed: int = 0
    max_steps: int | None = None  # caps the step count (tests use a tiny budget)


def classifier_path(cache_dir: str | os.PathLike | None = None) -> Path:
    return Path(cache_dir or default_cache_dir()) / f"fashion-mnist-cnn-v{VERSION}.safetensors"


@torch.no_grad()
def _accuracy(model: FashionCNN, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    model.eval()
    correct = sum(int((model(x[i: i + batch_size])[1].argmax(1) == y[i: i + batch_size]).sum())
                  for i in range(0, len(x), batch_size))
    return correct / len(x)


def train_classifier(config: ClassifierTrainConfig | None = None, device: torch.device | str = "cpu",
                     progress: bool = True) -> tuple[FashionCNN, dict]:
    """Train on the Fashion-MNIST train split; returns the network and its info (test accuracy, steps, seconds)."""
    from ..data.fashion_mnist import load_fashion_mnist

    cfg = config or ClassifierTrainConfig()
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    train_x, train_y = load_fashion_mnist("train")
    test_x, test_y = load_fashion_mnist("test")
    x, y = prepare(train_x), torch.from_numpy(train_y)
    steps_per_epoch = len(x) // cfg.batch_size
    steps = max(1, round(cfg.epochs * steps_per_epoch))
    if cfg.max_steps is not None:
        steps = min(steps, cfg.max_steps)
    model = FashionCNN(cfg.width).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    start = time.perf_counter()
    model.train()
    perm = torch.randperm(len(x), generator=g)
    for step in tqdm(range(steps), desc="training the Fashion-MNIST classifier", disable=not progress):
        k = step % steps_per_epoch
        if k == 0 and step > 0:
            perm = torch.randperm(len(x), generator=g)
        idx = perm[k * cfg.batch_size: (k + 1) * cfg.batch_size]
        loss = F.cross_entropy(model(x[idx].to(device))[1], y[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    seconds = time.perf_counter() - start
    model.eval()
    acc = _accuracy(model, prepare(test_x).to(device), torch.from_numpy(test_y).to(device))
    info = {"version": VERSION, "test_accuracy": acc, "steps": steps, "train_seconds": round(seconds, 1),
            "config": asdict(cfg)}
    return model, info


def save_classifier(model: FashionCNN, info: dict, path: str | os.PathLike) -> Path:
    """Write weights and info (safetensors metadata) atomically."""
    return save_safetensors_atomic(model.state_dict(), path, {"info": json.dumps(info)}, "classifier")


def read_classifier(path: str | os.PathLike, device: torch.device | str = "cpu") -> FashionCNN:
    """Load a saved classifier; its info dict is `model.info`."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        info = json.loads((f.metadata() or {}).get("info", "{}"))
    model = FashionCNN(info.get("config", {}).get("width", 32))
    model.load_state_dict(load_file(str(path)))
    model.info = info
    model.path = Path(path)
    return model.to(device).eval()


def load_classifier(cache_dir: str | os.PathLike | None = None, device: torch.device | str = "cpu",
                    train_config: ClassifierTrainConfig | None = None, retrain: bool = False,
                    progress: bool = True) -> FashionCNN:
    """The cached classifier, trained first if absent (under torchrun: by rank 0 while the others wait)."""
    path = classifier_path(cache_dir)
    if (retrain or not path.exists()) and dist.rank() == 0:
        model, info = train_classifier(train_config, device, progress)
        save_classifier(model, info, path)
        if progress:
            print(f"Fashion-MNIST classifier: test accuracy {info['test_accuracy']:.4f} after {info['steps']} steps "
                  f"({info['train_seconds']} s), saved to {path}")
    dist.barrier()
    return read_classifier(path, device)


@torch.no_grad()
def classifier_outputs(model: FashionCNN, images, batch_size: int = 500, progress: bool = False,
                       local: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, 128), probabilities (N, 10)) of uint8 images; sharded over torchrun ranks and gathered
    (`local`: the images are this rank's shard, see `map_batches`)."""
    from .features import map_batches

    device = next(model.parameters()).device
    model.eval()

    def run(batch: np.ndarray) -> dict[str, torch.Tensor]:
        f, logits = model(prepare(batch).to(device))
        return {"features": f, "probs": logits.softmax(dim=1)}

    out = map_batches(run, images, batch_size, desc="classifier features", progress=progress, local=local)
    return out["features"], out["probs"]


def reference_stats(model: FashionCNN, ref: ImageSet, cache_dir: str | os.PathLike | None = None,
                    batch_size: int = 500, use_cache: bool = True) -> FeatureStats:
    """Classifier-feature statistics of a reference set, cached per classifier file and reference content."""
    tag = getattr(model, "path", None)
    key = short_hash("classifier", VERSION, ref.key, tag.stat().st_mtime_ns if tag else id(model))
    path = Path(cache_dir or default_cache_dir()) / "eval" / f"classifier-{ref.name}-{key}.npz"
    d = read_npz_cache(path, ("mu", "sigma", "n")) if use_cache and tag is not None else None
    if d is not None:
        return FeatureStats(d["mu"], d["sigma"], int(d["n"]))
    if ref.images is None:
        raise ValueError(f"reference {ref.name} holds no images, so it has no classifier statistics")
    stats = feature_stats(classifier_outputs(model, ref.images, batch_size)[0])
    if use_cache and tag is not None and dist.rank() == 0:
        save_npz_atomic(path, mu=stats.mu, sigma=stats.sigma, n=stats.n)
    return stats


def classifier_metrics(images, labels: np.ndarray | None = None, ref: str | os.PathLike | np.ndarray | ImageSet =
                       "fashion-mnist-test", cache_dir: str | os.PathLike | None = None,
                       device: torch.device | str = "cpu", batch_size: int = 500, model: FashionCNN | None = None,
                       use_cache: bool = True, local: bool = False) -> dict:
    """In-domain metrics of uint8 Fashion-MNIST-like samples (N, H, W[, C]), H = W = 28 or 32:
    {'fid': classifier FID against `ref`, 'is': classifier Inception Score, 'accuracy': share of samples classified
    as their `labels` (None without labels), 'n': N, 'classifier_test_accuracy': the classifier's own accuracy}."""
    model = model if model is not None else load_classifier(cache_dir, device)
    if isinstance(ref, ImageSet):
        ref_set = ref
    elif isinstance(ref, np.ndarray):
        ref_set = array_source(ref, name="reference")
    else:
        ref_set = load_images(ref, size=INPUT_SIZE)
    feats, probs = classifier_outputs(model, images, batch_size, local=local)
    ref_stats = reference_stats(model, ref_set, cache_dir, batch_size, use_cache)
    result = {
        "fid": frechet_distance(feature_stats(feats), ref_stats),
        "is": inception_score(probs),
        "accuracy": None,
        "n": len(feats),
        "classifier_test_accuracy": getattr(model, "info", {}).get("test_accuracy"),
    }
    if labels is not None:
        labels = np.asarray(labels)
        if local:
            labels = dist.gather_rows(torch.as_tensor(labels, dtype=torch.int64)).numpy()
        if labels.shape != (len(feats),):
            raise ValueError(f"labels must be ({len(feats)},), one per image, got {labels.shape}")
        result["accuracy"] = float((probs.argmax(1) == labels).mean())
    return result
