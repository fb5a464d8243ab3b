"""Uploading to the Hugging Face Hub: `push_to_hub` sends a model, a ppflow folder, a training run's EMA folder, a
checkpoint file or a release (converted first) with a generated model card. It sits above ppflow.convert, which
reads the files it converts; huggingface_hub is imported when a function here is called, never at import.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

from ..convert.load import load_model
from ..io import CheckpointError, check_inside, one_line, read_weights, write_text_atomic
from ..models.adapter import ADAPTER_CONFIG, ADAPTER_WEIGHTS, is_adapter_dir, read_adapter_config, write_adapter_config
from ..models.backbone import CONFIG, WEIGHTS, PPFlowTransformer
from ..models.flops import schedule_flops
from ..models.pretrained import is_pretrained_dir, load_pretrained
from .hub import is_hub_id
from .registry import is_release_name

CARD = "README.md"


class PushError(OSError):
    """An upload to the Hub failed (one line: why, and what to check)."""


# ---------------------------------------------------------------- model card
def training_summary(run_dir: Path) -> tuple[dict | None, dict | None]:
    """(training config, last metrics row) of a run folder; None for what it lacks or cannot be read."""
    config = metrics = None
    try:
        import yaml

        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        config = config if isinstance(config, dict) else None
    except (OSError, ValueError, ImportError):
        config = None
    try:
        with open(run_dir / "metrics.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        metrics = {k: v for k, v in rows[-1].items() if v not in (None, "")} if rows else None
    except (OSError, csv.Error, IndexError):
        metrics = None
    return config, metrics


def model_card(model: PPFlowTransformer, repo_id: str, *, training_config: dict | None = None,
               metrics: dict | None = None, base_model: str | None = None) -> str:
    """README.md for a hub repo: what the model is, its schedule and FLOPs, how to load it, how it was trained."""
    c = model.config
    H, W = c.input_size
    fl = schedule_flops(c)
    tags = ["ppflow", "pyramidal-patchification-flow", "diffusion-transformer", "flow-matching",
            "class-conditional" if c.num_classes else "unconditional", "image-generation"]
    front = ["---", "library_name: ppflow", *([] if c.num_classes else ["pipeline_tag: unconditional-image-generation"]),
             "tags:", *[f"- {t}" for t in tags]]
    if base_model:
        front.append(f"base_model: {base_model}")
    front.append("---")
    stages = "\n".join(
        f"| {s['stage']} | ({s['t_range'][0]:g}, {s['t_range'][1]:g}] | {s['patch'][0]}x{s['patch'][1]} | "
        f"{s['tokens']} | {s['paper_gflops']:.4g} |" for s in fl["stages"])
    lines = [
        *front, "",
        f"# {repo_id.split('/')[-1]}", "",
        (f"A Pyramidal Patchification Flow model ({c.name or 'custom size'}): depth {c.depth}, width "
         f"{c.hidden_size}, {c.num_heads} heads, {model.num_parameters() / 1e6:.2f}M parameters, latent "
         f"{H}x{W}x{c.in_channels}, {c.num_classes} classes, VAE {c.vae or 'none (pixel space)'}."), "",
        "## Schedule", "",
        f"`{fl['schedule']}` (t = 0 noise, t = 1 data; coarse stages emit `{c.coarse_output}`).", "",
        "| stage | t range | patch | tokens | GFLOPs / forward (paper) |", "|---|---|---|---|---|", stages, "",
        (f"Sampling FLOPs: **{100 * fl['paper_fraction']:.1f}%** of the one-stage baseline of the same size "
         f"(paper convention; {100 * fl['total_fraction']:.1f}% counting all matrix products), uniform steps, no "
         "CFG."), "",
        "## Use", "",
        "```python",
        "import ppflow",
        f"model = ppflow.load_model({repo_id!r})  # add revision=... to pin a commit",
        "from ppflow.pipelines import PPFlowPipeline",
        "pipe = PPFlowPipeline.from_model(model)  # + the VAE named in the config, if any",
        "images = pipe(class_labels=[0, 1], num_inference_steps=50, guidance_scale=[1.0, 3.0]).images",
        "```", "",
    ]
    if training_config:
        lines += ["## Training", "", "`ppflow train` config (config.yaml of the run):", "", "```yaml",
                  _yaml(training_config).rstrip(), "```", ""]
    if metrics:
        lines += ["## Metrics", "", "| metric | value |", "|---|---|",
                  *[f"| {k} | {v} |" for k, v in metrics.items()], ""]
    lines += ["Made with [ppflow](https://arxiv.org/abs/2506.23543) (PPFlow, ICLR 2026).", ""]
    return "\n".join(lines)


def _yaml(d: dict) -> str:
    try:
        import yaml

        return yaml.safe_dump(d, sort_keys=False)
    except ImportError:  # pragma: no cover
        return json.dumps(d, indent=2)


def build_upload_folder(source: PPFlowTransformer | str | os.PathLike, repo_id: str, folder: str | os.PathLike, *,
                        metrics: dict | None = None, training_config: dict | None = None,
                        base_model: str | None = None, verify: bool = True) -> Path:
    """Write what `push_to_hub` uploads into `folder`: config.json, model.safetensors (with SHA-256), README.md.

    `source`: a model, a ppflow folder, a `ppflow train` run folder (its ema/) or one of its ema-N/ folders; a
    run's config.yaml and last metrics.csv row go into the card unless given (`metrics` adds to them).
    """
    run_dir = None
    if not isinstance(source, PPFlowTransformer) and Path(source).is_dir():
        src = Path(source)
        src = src / "ema" if not is_adapter_dir(src) and is_adapter_dir(src / "ema") else src
        if is_adapter_dir(src):
            return _adapter_upload(src, repo_id, Path(folder), base_model, verify)
    if isinstance(source, PPFlowTransformer):
        model = source
    elif isinstance(source, str) and not Path(source).exists() and is_release_name(source):
        model = load_model(source)  # a known release, fetched and verified, with its registry overrides
    else:
        src = root = Path(source)
        if not is_pretrained_dir(src) and is_pretrained_dir(src / "ema"):
            src = src / "ema"
        _refuse_links_out(root, src, src / CONFIG, src / WEIGHTS)
        if src.is_file():  # a DiT / SiT / official PPFlow / training checkpoint file: converted
            model = load_model(src, verify=verify)
        elif not is_pretrained_dir(src):
            raise CheckpointError(f"{src} is not a ppflow folder ({CONFIG} + {WEIGHTS}) nor a run folder with ema/; "
                                  "give the model, a folder written by save_pretrained, RUN_DIR, or a checkpoint file")
        else:
            model = load_pretrained(src, verify=verify)  # a damaged file is never uploaded
        is_run = src.name.startswith("ema") and (src.parent / "config.yaml").is_file()  # RUN/ema, RUN/ema-N
        run_dir = src.parent if is_run else None
        if run_dir is not None:
            _refuse_links_out(run_dir, run_dir / "config.yaml", run_dir / "metrics.csv")
    cfg, last = training_summary(run_dir) if run_dir is not None else (None, None)
    cfg = training_config if training_config is not None else cfg
    merged = {**(last or {}), **(metrics or {})} or None
    folder = Path(folder)
    model.save_pretrained(folder)
    write_text_atomic(folder / CARD, model_card(model, repo_id, training_config=cfg, metrics=merged,
                                                base_model=base_model), "model card")
    return folder


def _adapter_upload(src: Path, repo_id: str, folder: Path, base_model: str | None, verify: bool) -> Path:
    """A speed adapter folder for the Hub: its weights (checked), its config naming a base users can load (a hub
    id or release name: `base_model`, else the one it names) and a card."""
    _refuse_links_out(src, src / ADAPTER_CONFIG, src / ADAPTER_WEIGHTS)
    config = read_adapter_config(src)
    base = base_model or config.base
    if not (is_hub_id(base) and not Path(base).exists()) and not is_release_name(base):
        raise CheckpointError(f"the adapter {src} names the base {base or '(none)'!r}, which others cannot load: pass "
                              "--base-model ORG/NAME (the base model's hub repo; push it first with ppflow push) or "
                              "a release name")
    state = read_weights(src / ADAPTER_WEIGHTS, verify=verify)  # a damaged file is never uploaded
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src / ADAPTER_WEIGHTS, folder / ADAPTER_WEIGHTS)
    write_adapter_config(dataclasses.replace(config, base=base), folder)
    n = sum(t.numel() for t in state.values())
    guided = f", CFG {config.guided:g} distilled into the coarse stage" if config.guided else ""
    card = "\n".join([
        "---", "library_name: ppflow", "tags:", "- ppflow", "- ppflow-adapter", "- pyramidal-patchification-flow",
        f"base_model: {base}", "---", "", f"# {repo_id.split('/')[-1]}", "",
        (f"A PPFlow speed adapter for [{base}](https://huggingface.co/{base}): schedule `{config.schedule}`, a "
         f"rank-{config.rank} LoRA on {', '.join(config.targets)} that acts only on coarse-stage "
         f"tokens, plus the coarse projections and stage embedding ({n / 1e6:.3f}M parameters), made by "
         f"`{config.method}`{guided}. The finest stage is the base itself, bit for bit."), "",
        "```python", "import ppflow", f"model = ppflow.load_model({repo_id!r})  # fetches the base it names too",
        "```", "", "Made with [ppflow](https://arxiv.org/abs/2506.23543) (PPFlow, ICLR 2026).", ""])
    write_text_atomic(folder / CARD, card, "model card")
    return folder


def _refuse_links_out(root: Path, *paths: Path) -> None:
    """CheckpointError naming the first of `paths` that a symbolic link leads out of `root` (never uploaded)."""
    for p in paths:
        if p != root and (p.is_symlink() or p.exists()):
            check_inside(p, root, "folder being uploaded")


def push_to_hub(source: PPFlowTransformer | str | os.PathLike, repo_id: str, *, revision: str | None = None,
                private: bool | None = None, token: str | bool | None = None, commit_message: str | None = None,
                metrics: dict | None = None, training_config: dict | None = None, base_model: str | None = None,
                api=None) -> str:
    """Upload a model / ppflow folder / run's EMA folder to `repo_id` with a generated card; returns the commit URL.

    `api`: an `huggingface_hub.HfApi` (default: a new one with `token`).
    """
    if not is_hub_id(repo_id):
        raise ValueError(f"{repo_id!r} is not a hub id of the form 'org/repo'")
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="ppflow-push-") as tmp:
        folder = build_upload_folder(source, repo_id, Path(tmp) / "upload", metrics=metrics,
                                     training_config=training_config, base_model=base_model)
        return upload_folder(api, folder, repo_id, revision=revision, private=private,
                             commit_message=commit_message or "ppflow push: weights, config, model card")


def upload_folder(api, folder: Path, repo_id: str, *, revision: str | None, private: bool | None,
                  commit_message: str) -> str:
    """Create the repo (and branch `revision`) and upload `folder`; returns the commit URL. Errors: one PushError."""
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision not in (None, "main"):
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, revision=revision, repo_type="model",
                                 commit_message=commit_message)
    except Exception as e:  # network, auth and server errors of huggingface_hub / httpx: one line
        raise PushError(f"could not push to {repo_id} ({type(e).__name__}: {one_line(e)}); check the "
                        "connection and the login (`hf auth login`, or token=)") from e
    return str(getattr(info, "commit_url", info))
