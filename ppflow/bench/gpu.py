"""`ppflow bench gpu`: the prepared GPU suite, about ten minutes on one H100/H200-class GPU, bf16.

(a) PPF-XL-2 / PPF-XL-3 vs SiT-XL/2 sampling, batch 64, plain and stage CFG vs CFG everywhere, timed
    over a few steps and extrapolated to 250- and 50-step runs (the stage grid splits every step
    count in the stages' proportions, so time per step is what carries over);
(b) a PPF-XL-2 training step with per-stage-group SDPA (flash) vs one packed row with a dense
    block-diagonal mask (what the official code does): time and memory;
(c) FLUX.1-dev architecture with random weights, base vs PPFlux per step at 512 / 1024 px (`ppflow.flux`);
(d) torch.compile (per block) on/off for the PPF-XL-2 training step;
(e) the PPFlow diffusers hook on full-size random Wan2.1-T2V-14B (480p, 81 frames, ppf3-video) and Qwen-Image
    (1024 px, ppf2): one forward per stage through the hook, the measured per-step bound against the model's own
    forward, beside the FLOPs bound (`ppflow.integrations.diffusers.flops`).

Each part has a time budget (repeats stop when it is spent) and its own error handling, and the JSON
and markdown files are rewritten after every part, so a partial run still leaves its results.
`dry_run` runs every part at tiny sizes on the CPU (compile through dynamo only) in about a minute.
"""

from __future__ import annotations

import dataclasses
import gc
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..utils.report import Report
from .memory import format_bytes
from .sample import SamplingBenchConfig, bench_sampling
from .timing import ratios
from .train import TrainBenchConfig, TrainVariant, run_train_variants
from .workers import error_line

PARTS = {"a": "sampling", "b": "attention", "c": "flux", "d": "compile", "e": "diffusers"}
BUDGETS = {"a": 150.0, "b": 120.0, "c": 180.0, "d": 120.0, "e": 150.0}  # seconds per part: 12 min in all
# (e): model, size (frames, height, width | height, width), schedule; tiny configs for the dry run
DIFFUSERS_CASES = (("wan2.1-14b", (81, 480, 832), "ppf3-video"), ("qwen-image", (1024, 1024), "ppf2"))
DIFFUSERS_DRY = {"wan2.1-14b": ((9, 64, 64), {"num_attention_heads": 2, "attention_head_dim": 16, "ffn_dim": 64,
                                              "num_layers": 1, "text_dim": 32, "freq_dim": 32}),
                 "qwen-image": ((128, 128), {"num_layers": 1, "attention_head_dim": 16, "num_attention_heads": 2,
                                             "joint_attention_dim": 32, "axes_dims_rope": (4, 6, 6)})}
FLUX_MISSING = "skipped: ppflow.flux not available"


@dataclass
class Sizes:
    """Model sizes and run lengths of a suite (full GPU sizes, or `DRY` for a CPU check)."""

    size: str | None = None  # None: the XL names as written; 'tiny' for a dry run
    latent_size: int = 32
    sample_batch: int = 64
    sample_steps: int = 16  # timed steps per run (extrapolated to EXTRAPOLATE)
    sample_repeats: int = 5
    train_batch: int = 32
    train_repeats: int = 5
    warmup: int = 1
    flux_size: str = "dev"
    flux_resolutions: tuple[int, ...] = (512, 1024)
    flux_steps: int = 4
    flux_repeats: int = 3
    compile_backend: str = "inductor"


DRY = Sizes(size="tiny", latent_size=8, sample_batch=2, sample_steps=4, sample_repeats=1, train_batch=4,
            train_repeats=1, warmup=1, flux_size="tiny", flux_resolutions=(128,), flux_steps=2, flux_repeats=1,
            compile_backend="eager")
EXTRAPOLATE = (250, 50)


@dataclass
class GpuBenchConfig:
    out: str = "runs/bench-gpu"  # bench-gpu.json and bench-gpu.md go here
    dry_run: bool = False  # tiny sizes on the CPU
    device: str = "cuda"
    dtype: str = "bfloat16"
    parts: tuple[str, ...] = tuple(PARTS)
    budgets: dict[str, float] = field(default_factory=lambda: dict(BUDGETS))
    isolate: bool = True  # every model in its own process, as in bench sample/train
    seed: int = 0

    @property
    def sizes(self) -> Sizes:
        return DRY if self.dry_run else Sizes()


def part_sampling(cfg: GpuBenchConfig, log=None) -> dict:
    s = cfg.sizes
    b = SamplingBenchConfig(models=("PPF-XL-2", "PPF-XL-3"), baseline="SiT-XL/2", size=s.size,
                            latent_size=s.latent_size, batch=s.sample_batch, steps=s.sample_steps,
                            repeats=s.sample_repeats, warmup=s.warmup, dtype=cfg.dtype, device=cfg.device,
                            isolate=cfg.isolate, budget_s=cfg.budgets["a"], seed=cfg.seed)
    r = bench_sampling(b, log=log)
    for run in r["runs"].values():
        per_step = run["seconds"] / s.sample_steps
        run["extrapolated_seconds"] = {str(n): per_step * n for n in EXTRAPOLATE}
    return r


def _train_cfg(cfg: GpuBenchConfig, part: str) -> TrainBenchConfig:
    s = cfg.sizes
    return TrainBenchConfig(size=s.size, latent_size=s.latent_size, batch=s.train_batch, repeats=s.train_repeats,
                            warmup=s.warmup + (part == "d"), dtype=cfg.dtype, device=cfg.device, isolate=cfg.isolate,
                            budget_s=cfg.budgets[part], seed=cfg.seed)


def _train_pair(cfg: GpuBenchConfig, part: str, variants: list[TrainVariant], log) -> dict:
    """Training steps of two variants of one model in turns; ratios of the second against the first."""
    r = run_train_variants(_train_cfg(cfg, part), variants, log, estimate=False)
    r["ratios"] = {variants[1].label: ratios(*(r["runs"][v.label] for v in variants))}
    return r


def part_attention(cfg: GpuBenchConfig, log=None) -> dict:
    name = TrainBenchConfig(size=cfg.sizes.size).name("PPF-XL-2")
    return _train_pair(cfg, "b", [TrainVariant(f"{name} dense-mask", name, "dense-mask"),
                                  TrainVariant(f"{name} sdpa", name, "sdpa")], log)


def part_compile(cfg: GpuBenchConfig, log=None) -> dict:
    name, backend = TrainBenchConfig(size=cfg.sizes.size).name("PPF-XL-2"), cfg.sizes.compile_backend
    r = _train_pair(cfg, "d", [TrainVariant(f"{name} eager", name),
                               TrainVariant(f"{name} compiled", name, compile=backend)], log)
    r["compile_backend"] = backend
    return r


def load_flux():
    """(FluxBenchConfig, bench_flux) from ppflow.flux, or None when it (or diffusers) is missing or lacks them."""
    try:
        from ..flux.bench import FluxBenchConfig, bench_flux
        from ..flux.transformer import PPFluxTransformer
    except ImportError:
        return None
    if not hasattr(PPFluxTransformer, "from_flux"):
        return None
    return FluxBenchConfig, bench_flux


def part_flux(cfg: GpuBenchConfig, log=None) -> dict:
    found = load_flux()
    if found is None:
        return {"skipped": FLUX_MISSING}
    FluxBenchConfig, bench_flux = found
    s, began, out = cfg.sizes, time.monotonic(), {"resolutions": {}}
    for res in s.flux_resolutions:
        if time.monotonic() - began > cfg.budgets["c"]:
            out["resolutions"][str(res)] = {"skipped": f"time budget {cfg.budgets['c']:g} s spent"}
            continue
        f = FluxBenchConfig(size=s.flux_size, resolution=res, steps=s.flux_steps, repeats=s.flux_repeats,
                            warmup=s.warmup, device=cfg.device, dtype=cfg.dtype, seed=cfg.seed,
                            text_tokens=8 if cfg.dry_run else None, threads=1 if cfg.dry_run else None)
        r = bench_flux(f, log=log)
        r["per_step"] = {name: run["seconds"] / s.flux_steps for name, run in r["runs"].items()}
        out["resolutions"][str(res)] = r
    return out


def part_diffusers(cfg: GpuBenchConfig, log=None) -> dict:
    """Per case: seconds of one forward per stage through the PPFlow hook (random weights, batch 1), the measured
    bound (the finest stage is the model itself) and the FLOPs bound; steps shared by the stages' spans."""
    import diffusers

    from ..integrations.diffusers import apply, family_of
    from ..integrations.diffusers.flops import CLASSES, FULL_SIZES, forward_flops, meta_model, stage_inputs
    from ..integrations.diffusers.stages import StagePlan
    from .timing import stopwatch

    s, began, out = cfg.sizes, time.monotonic(), {}
    dev, dt = torch.device(cfg.device), getattr(torch, cfg.dtype)
    for key, size, sched in DIFFUSERS_CASES:
        if time.monotonic() - began > cfg.budgets["e"]:
            out[key] = {"skipped": f"time budget {cfg.budgets['e']:g} s spent"}
            continue
        spec = FULL_SIZES[key]
        if cfg.dry_run:
            size, tiny = DIFFUSERS_DRY[key]
            spec = dataclasses.replace(spec, config={**spec.config, **tiny})
        text = 8 if cfg.dry_run else spec.text_tokens
        model = None
        try:
            default = torch.get_default_dtype()
            torch.set_default_dtype(dt)  # built in bf16 on the GPU: a float32 Wan2.1-14B alone would take 56 GB
            try:
                with torch.device(dev):
                    model = getattr(diffusers, CLASSES[spec.family])(**spec.config).eval()
            finally:
                torch.set_default_dtype(default)
            family = family_of(model)
            plan = StagePlan.parse(sched, family.base_patch(model))
            kw = stage_inputs(spec, size, plan.factors[-1], text, lambda *shape: torch.randn(*shape, device=dev,
                                                                                             dtype=dt))
            apply(model, sched, boundaries="sigma")
            starts, seconds = (0.0, *plan.ends[:-1]), []
            for a, b in zip(starts, plan.ends, strict=True):
                kw["timestep"] = torch.full((1,), (1.0 - (a + b) / 2) * family.timestep_scale, device=dev, dtype=dt)
                runs = []
                with torch.no_grad():
                    for i in range(s.warmup + s.flux_repeats):
                        t, _ = stopwatch(dev, model, **kw, return_dict=False)
                        if i >= s.warmup:
                            runs.append(t)
                seconds.append(sorted(runs)[len(runs) // 2])
            shares = [b - a for a, b in zip(starts, plan.ends, strict=True)]
            meta = meta_model(spec)
            flops = [forward_flops(meta, spec, size, f, text) for f in plan.factors]
            out[key] = {"model": spec.name, "size": "x".join(map(str, size)), "schedule": sched,
                        "stage_seconds": seconds, "stage_flops": flops, "shares": shares,
                        "measured_bound": seconds[-1] / sum(w * t for w, t in zip(shares, seconds, strict=True)),
                        "flops_bound": flops[-1] / sum(w * f for w, f in zip(shares, flops, strict=True))}
            if log:
                log(f"bench gpu (e): {spec.name} {sched}: measured {out[key]['measured_bound']:.2f}x, FLOPs bound "
                    f"{out[key]['flops_bound']:.2f}x")
        except (RuntimeError, ValueError) as e:  # out of memory (a RuntimeError), a size the schedule cannot split
            out[key] = {"error": error_line(e)}
        finally:
            del model
            gc.collect()
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    return out


RUNNERS = {"a": part_sampling, "b": part_attention, "c": part_flux, "d": part_compile, "e": part_diffusers}


def environment(cfg: GpuBenchConfig) -> dict:
    dev = torch.device(cfg.device)
    env = {"torch": torch.__version__, "python": platform.python_version(), "device": cfg.device,
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "dry_run": cfg.dry_run, "dtype": cfg.dtype}
    if dev.type == "cuda":
        env.update(device_name=torch.cuda.get_device_name(dev), cuda=torch.version.cuda)
    else:
        env["device_name"] = platform.processor() or "cpu"
    return env


def run_gpu_suite(cfg: GpuBenchConfig, log=None) -> dict:
    """Run the parts in order; after each, rewrite bench-gpu.json and bench-gpu.md under cfg.out."""
    unknown = [p for p in cfg.parts if p not in PARTS]
    if unknown:
        raise ValueError(f"--parts {','.join(unknown)}: choose from {','.join(PARTS)}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"settings": {**asdict(cfg), "sizes": asdict(cfg.sizes)}, "environment": environment(cfg), "parts": {}}
    for p in cfg.parts:
        began = time.monotonic()
        if log is not None:
            log(f"bench gpu: part ({p}) {PARTS[p]}, budget {cfg.budgets[p]:g} s")
        try:
            part = RUNNERS[p](cfg, log)
        except Exception as e:  # noqa: BLE001 - one part failing must not lose the others
            part = {"error": error_line(e)}
        part["seconds_total"] = time.monotonic() - began
        gc.collect()  # part (c) runs in this process: free its FLUX before the next part's children start
        if torch.device(cfg.device).type == "cuda":
            torch.cuda.empty_cache()
        result["parts"][PARTS[p]] = part
        markdown(result).write(out, "bench-gpu", html=False, data=result)
    return result


def _status(part: dict) -> str | None:
    return part.get("skipped") or (f"error: {part['error']}" if "error" in part else None)


def markdown(result: dict) -> Report:
    """The suite's results as markdown tables, parts in the order they ran."""
    env = result["environment"]
    rep = Report(f"ppflow bench gpu{' (dry run: tiny sizes, not a measurement)' if env['dry_run'] else ''}")
    rep.text(f"{env['device_name']}, {env['dtype']}, torch {env['torch']}"
             f"{', CUDA ' + env['cuda'] if env.get('cuda') else ''}, {env['date']}")
    titles = {"sampling": "(a) sampling", "attention": "(b) training step: per-stage SDPA vs dense block-diagonal mask",
              "flux": "(c) FLUX base vs PPFlux (random weights)", "compile": "(d) training step: torch.compile per "
              "block on/off", "diffusers": "(e) the PPFlow diffusers hook on full-size Wan2.1-14B and Qwen-Image "
              "(random weights)"}
    for key, part in result["parts"].items():
        rep.heading(titles[key])
        if _status(part):
            rep.text(_status(part))
        else:
            {"sampling": _md_sampling, "flux": _md_flux, "diffusers": _md_diffusers}.get(key, _md_train)(
                rep, part, result)
    return rep


def _md_sampling(rep: Report, a: dict, result: dict) -> None:
    steps = result["settings"]["sizes"]["sample_steps"]
    rep.text(f"Timed over {steps} steps (median), extrapolated per step.")
    rep.table(["run", "s per step", "250 steps s", "50 steps s", "peak memory"],
              [[label, f"{r['seconds'] / steps:.4f}", f"{r['extrapolated_seconds']['250']:.2f}",
                f"{r['extrapolated_seconds']['50']:.2f}", format_bytes(r["peak_memory_bytes"])]
               for label, r in a["runs"].items()])
    rows = []
    for name, m in a["models"].items():
        rows.append([name, f"{m['speedup']:.3f}", f"{m['bound']:.3f}", f"{m['efficiency']:.2f}"])
        if "cfg" in m:
            c = m["cfg"]
            rows.append([f"{name}, stage CFG vs CFG everywhere", f"{c['speedup']:.3f}", f"{c['bound']:.3f}",
                         f"{c['efficiency']:.2f}"])
    rep.table([f"vs {a['baseline']}", "speed-up", "FLOPs bound", "efficiency"], rows)


def _md_train(rep: Report, part: dict, result: dict) -> None:
    s = part["settings"]
    rep.text(f"Batch {s['batch']} ({s['time_sampling']}), {s['timed_rounds']} timed steps ({s['estimator']}).")
    rep.table(["run", "s per step", "peak memory"], [[label, f"{r['seconds']:.4f}", format_bytes(r["peak_memory_bytes"])]
                                                     for label, r in part["runs"].items()])
    for label, m in part["ratios"].items():
        rep.text(f"{label}: {m['speedup']:.3f}x the speed, {m['memory_ratio']:.2f}x the memory.")


def _md_flux(rep: Report, c: dict, result: dict) -> None:
    rows = []
    for res, r in c["resolutions"].items():
        if _status(r):
            rows.append([res, _status(r), "", "", "", ""])
            continue
        base, ppf = list(r["per_step"].values())[:2]
        rows.append([res, f"{base:.4f}", f"{ppf:.4f}", f"{r['speedup']:.3f}", f"{r['bound']:.3f}",
                     f"{r['efficiency']:.2f}"])
    rep.table(["px", "FLUX s per step", "PPFlux s per step", "speed-up", "FLOPs bound", "efficiency"], rows)


def _md_diffusers(rep: Report, e: dict, result: dict) -> None:
    rows = []
    for key, r in e.items():
        if not isinstance(r, dict):
            continue
        if _status(r):
            rows.append([key, _status(r), "", "", ""])
            continue
        rows.append([f"{r['model']} {r['size']}", r["schedule"], " / ".join(f"{t:.4f}" for t in r["stage_seconds"]),
                     f"{r['measured_bound']:.3f}", f"{r['flops_bound']:.3f}"])
    rep.text("One forward per stage through the hook, batch 1 (median); the finest stage is the model's own "
             "forward; per-step bound = its time over the span-weighted mean of the stages' times.")
    rep.table(["model", "schedule", "s per forward, per stage", "measured bound", "FLOPs bound"], rows)
