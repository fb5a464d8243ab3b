"""`ppflow video-demo`: spatio-temporal PPFlow on a tiny Wan video model (experiments/video.py)."""

from __future__ import annotations

import json
from pathlib import Path


def add_arguments(p) -> None:
    p.description = ("Train a tiny Wan video model on moving Fashion-MNIST clips, convert it to a spatio-temporal "
                     "PPFlow schedule with a data-free distilled adapter (the PPFlow diffusers hook), and compare "
                     "it with the base: per-frame accuracy and FID, direction accuracy, paired agreement, speed-up "
                     "and FLOPs bound. About 35 min on one CPU core; --quick: seconds (a pipeline check).")
    p.add_argument("--out", default=None, help="output folder (default runs/video-demo, runs/video-demo-quick)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, a few steps, no metrics")
    p.add_argument("--schedule", default=None, help="spatio-temporal schedule (default 0.35:2x4x4,0.65:1x4x4,1:1x2x2)")
    p.add_argument("--base-steps", type=int, default=None, help="training steps of the base (default 6000)")
    p.add_argument("--adapter-steps", type=int, default=None, help="distillation steps of the adapter (default 1000)")
    p.add_argument("--guided", dest="adapter_guided", type=float, default=None,
                   help="fold the sampler's CFG at this scale into the coarse stages (sampled with stage-level CFG: "
                        "no unconditional coarse forward; measured 2.61x against 2.15x, docs/video.md)")
    p.add_argument("--docs", default=None, help="also write this markdown file (e.g. docs/video.md), with the command "
                                                "that regenerates it on top, and results.json + clip grids into the "
                                                "folder of the same name (docs/video/)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--seed", type=int, default=0)


def main(args) -> int:
    from ..experiments.video import VideoDemoConfig, run_video_demo

    cfg = VideoDemoConfig.quick() if args.quick else VideoDemoConfig()
    cfg.seed = args.seed
    for name in ("schedule", "base_steps", "adapter_steps", "adapter_guided"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    out = args.out or ("runs/video-demo-quick" if args.quick else "runs/video-demo")
    report = run_video_demo(cfg, out, args.threads)
    if args.docs:
        publish(report, Path(out), Path(args.docs))
    return 0


def publish(report: dict, out: Path, docs: Path) -> None:
    """docs/NAME.md (the report with the regenerating command on top) and docs/NAME/ (results.json, grids)."""
    import shutil
    import sys

    from ..experiments.video import format_report
    from ..io import write_text_atomic

    folder = docs.with_suffix("")
    folder.mkdir(parents=True, exist_ok=True)
    for png in out.glob("clips-*.png"):
        shutil.copyfile(png, folder / png.name)
    write_text_atomic(folder / "results.json", json.dumps(report, indent=2), "results")
    command = "ppflow " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["video-demo"] else "ppflow video-demo"
    md = format_report(report).markdown()
    grids = "\n".join(f"![{p.stem}]({folder.name}/{p.name})" for p in sorted(folder.glob("clips-*.png")))
    findings = _findings(docs)  # written by hand, kept by regeneration
    write_text_atomic(docs, f"Regenerate with `{command}`.\n\n{findings}{md}\n\n{grids}\n", "video report")


def _findings(docs: Path) -> str:
    """The hand-written block between <!-- findings --> and <!-- /findings --> of an existing report."""
    try:
        text = docs.read_text("utf-8")
    except OSError:
        return ""
    start, end = text.find("<!-- findings"), text.find("<!-- /findings -->")
    return text[start: end + len("<!-- /findings -->")] + "\n\n" if 0 <= start < end else ""
