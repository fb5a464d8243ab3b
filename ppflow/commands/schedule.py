"""`ppflow schedule search`: the pyramid schedule with the least predicted quality loss for a FLOPs budget."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import sys
from pathlib import Path

from ..errors import CommandError
from ..models.output import OUTPUTS


def _raw_weights(path: str, model):
    """A probe run's raw weights (a short run's EMA is mostly its start); `model` itself for a weights folder."""
    from ..convert import load_model

    try:
        return load_model(path, weights="model")
    except ValueError:  # a save_pretrained folder: one set of weights
        return model


def _fingerprint(model) -> str:
    """SHA-256 of a model's weights: the key under which its profile is reused."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _profile(models: dict, out: Path, key: dict, title: str, compute):
    """`compute()` (a LossProfile) written to `out`, or the one already there when `key` and the weights match."""
    from ..eval.profile import LossProfile

    key = {**key, "models": {name: _fingerprint(m) for name, m in models.items()}}
    stamp = out / "profile-key.json"
    if stamp.exists() and (out / "profile.json").exists() and json.loads(stamp.read_text()) == key:
        return LossProfile.from_dict(json.loads((out / "profile.json").read_text()))
    prof = compute()
    prof.write(out, title=title)
    stamp.write_text(json.dumps(key, indent=2))
    return prof


def add_arguments(p) -> None:
    p.description = (
        "Find the pyramid schedule for a sampling-FLOPs budget from data instead of by hand. (1) A short probe "
        "fine-tune of a one-stage SiT/DiT model adapted to every candidate patch size, trained with "
        "flow.time_sampling all_t so each patch size has a loss at every t; (2) the held-out loss curve of every "
        "patch size over t (as `ppflow profile --all-stages`); (3) an exact search over switch points (the bin "
        "edges) and patch sizes, coarse to fine, minimizing the excess loss over the finest patch subject to the "
        "analytic test-FLOPs fraction <= --budget; (4) with several probes (--probe-seeds), the schedule with the "
        "fewest stages whose excess is within one standard error of the least (--tolerance). Prints the schedule string for `ppflow train --model.schedule` "
        "or `ppflow adapt --schedule`, its FLOPs fraction, the runner-ups, and writes curves and a plot to --out.")
    sub = p.add_subparsers(dest="subcommand", metavar="ACTION", required=True)
    s = sub.add_parser("search", help="probe, profile and search (see ppflow schedule --help)",
                       description=p.description)
    s.add_argument("--from", dest="source", required=True,
                   help="one-stage model (SiT/DiT file, ppflow folder or run), or a probe run whose stages are "
                        "exactly the candidate patches (then use --probe-steps 0; its raw weights are profiled, not the EMA)")
    s.add_argument("--data", required=True, help="training/held-out data: fashion-mnist | digits | imagefolder | latents")
    s.add_argument("--data-path", default=None, help="folder of the data")
    s.add_argument("--budget", type=float, required=True, help="test-FLOPs fraction of the one-stage baseline, e.g. 0.55")
    s.add_argument("--patches", default=None,
                   help="candidate patch sizes, e.g. '8x8,4x8,8x4,4x4' (default: the base patch p x q and "
                        "2p x 2q, p x 2q, 2p x q)")
    s.add_argument("--max-stages", type=int, default=3, help="at most this many stages")
    s.add_argument("--guidance", choices=("none", "all", "stage"), default="none",
                   help="how you sample: no CFG, CFG in every stage, or stage CFG (none in the coarsest stage)")
    s.add_argument("--coarse-output", choices=OUTPUTS, default="noise_skip",
                   help="coarse-stage output of the probe (and of the model you will train)")
    s.add_argument("--probe-steps", type=int, default=200, help="probe fine-tune steps (0: profile the source as is)")
    s.add_argument("--probe-lr", type=float, default=None,
                   help="probe learning rate (default 1e-4; --score distill: 3e-3, the adapters' rate)")
    s.add_argument("--score", choices=("loss", "distill"), default="loss",
                   help="loss: each patch's held-out flow-matching loss on --data (a fine-tuned probe, for models "
                        "you will train); distill: each patch's velocity error against the source itself on "
                        "held-out teacher trajectories, from a speed-adapter probe (frozen source, stage-gated "
                        "LoRA, data-free; for `ppflow adapt`), candidates re-ranked by rollouts; --num is then the "
                        "held-out trajectories. Not yet validated: on the toy SiT its ranking did not predict the "
                        "adapters' FID (docs/schedules.md); train the top few as adapters to choose")
    s.add_argument("--trajectory-steps", type=int, default=None,
                   help="--score distill: Euler steps of a teacher trajectory over the coarse range (default 8); "
                        "the switch points the search can place are these step times")
    s.add_argument("--trajectory-cfg", type=float, default=None,
                   help="--score distill: CFG scale of the teacher trajectories (default 1; use your sampling "
                        "scale)")
    s.add_argument("--probe-seeds", type=int, default=None,
                   help="probes trained with seeds --seed, --seed+1, ...; their spread is the search's resolution "
                        "(default 2; 1 with --probe-steps 0). Probes already in --out are reused, so a second "
                        "--budget costs only the profile")
    s.add_argument("--tolerance", default="auto",
                   help="choose the fewest-stage schedule whose excess is within this of the least: 'auto' = one "
                        "standard error over the probes (0 with one probe), or a number (0: the least excess)")
    s.add_argument("--verify", type=int, default=None, metavar="K",
                   help="train the K least-excess schedules and the best one of each stage count, each adapted from "
                        "--from and fine-tuned --verify-steps with its own stage-stratified schedule, and choose the "
                        "one with the least held-out loss: sees what the all_t probe cannot (the loss bump at each "
                        "switch, and a probe bias measured in docs/schedules.md). Default 3 (0 when --from is a probe "
                        "run, which cannot be adapted); 0: choose from the probes alone")
    s.add_argument("--compare", action="append", default=[], metavar="SCHEDULE",
                   help="also score (and with --verify, train) this schedule, e.g. the one you use now "
                        "'0.5:8x8,0.75:4x8,1:4x4'; it can be chosen like a searched one (repeatable)")
    s.add_argument("--no-mirrors", dest="mirrors", action="store_false",
                   help="with --verify, do not also train the K schedules with their non-square patches transposed "
                        "(4x8 <-> 8x4, the same FLOPs): the all_t probe ranks such twins consistently but wrongly "
                        "(docs/schedules.md)")
    s.add_argument("--verify-steps", type=int, default=400, help="fine-tune steps of each verified schedule")
    s.add_argument("--batch-size", type=int, default=32, help="probe batch size")
    s.add_argument("--num", type=int, default=512, help="held-out images of the profile")
    s.add_argument("--bins", type=int, default=20, help="t bins: the candidate switch points are their edges")
    s.add_argument("--top", type=int, default=5, help="schedules to list")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="cpu", help="device of the probe fine-tune (cpu, cuda, auto)")
    s.add_argument("--out", default="runs/schedule-search", help="folder for the probe run, curves and plot")
    s.add_argument("--json", action="store_true", help="print one JSON object")


def parse_tolerance(text: str) -> float | None:
    if text == "auto":
        return None
    try:
        value = float(text)
    except ValueError:
        raise CommandError(f"--tolerance {text!r} is neither 'auto' nor a number") from None
    if value < 0:
        raise CommandError(f"--tolerance {text} must be >= 0")
    return value


def parse_patches(text: str) -> list[tuple[int, int]]:
    out = []
    for item in text.split(","):
        try:
            a, b = (int(v) for v in item.strip().lower().split("x"))
        except ValueError:
            raise CommandError(f"--patches item {item!r} is not ROWSxCOLS, e.g. '8x8,4x8,4x4'") from None
        out.append((a, b))
    return out


def probe_schedule(patches: list[tuple[int, int]]) -> str:
    """All candidate patches as stages, coarse to fine, equal spans (all_t training ignores the ranges)."""
    order = sorted(set(patches), key=lambda p: 1.0 / (p[0] * p[1]))
    n = len(order)
    return ",".join(f"{(i + 1) / n:g}:{p[0]}x{p[1]}" for i, p in enumerate(order))


def _distill_probes(args, source, spec: str, out: Path):
    """(bin edges, per probe: curves, the last probe, the held-out trajectories): speed-adapter probes of every
    candidate patch at every t, distilled data-free from `source` (reused when finished), each scored on the same
    held-out trajectories."""
    from ..convert import load_model
    from ..experiments.schedule_search import distill_curves
    from ..io import content_sha256
    from ..train.distill import AdapterSection, adapt_train
    from ..train.teacher import teacher_states

    source_sha = content_sha256(source.state_dict())
    per, probe, edges = [], None, []
    steps, scale = args.trajectory_steps or AdapterSection().trajectory_steps, args.trajectory_cfg or 1.0
    for i in range(args.probe_seeds):
        run = out / ("probe" if i == 0 else f"probe-{i + 1}")
        if not (run / "checkpoints" / "last.pt").exists():
            adapt_train(None, overrides={
                "model.init": str(args.source), "adapter.schedule": spec, "adapter.stage_sampling": "all",
                "adapter.coarse_output": args.coarse_output, "adapter.trajectory_cfg": scale,
                "adapter.trajectory_steps": steps,
                "max_steps": max(1, args.probe_steps), "batch_size": args.batch_size, "seed": args.seed + i,
                "optim.lr": args.probe_lr or 3e-3, "optim.warmup_steps": 0, "out": str(run), "device": args.device,
                "save_every": max(1, args.probe_steps), "log_every": max(1, args.probe_steps // 20),
                "tensorboard": False, "progress": not args.json})
        probe = load_model(run / "ema").eval()
        fine = probe.schedule.num_stages - 1
        held = teacher_states(probe, source_sha, out / "held-out-states.safetensors",
                              args.num, steps, probe.schedule.stages[fine - 1].t_end, scale, args.seed + 10_000,
                              (probe.config.in_channels, *probe.config.input_size), probe.config.num_classes, fine,
                              log=(lambda m: None) if args.json else print)
        edges, curves = distill_curves(probe, held)
        per.append(curves)
    return edges, per, probe, held


def _finetune(init: Path, run: Path, args, steps: int, seed: int, time_sampling: str, learn_sigma: bool):
    """`init` fine-tuned `steps` steps into `run` (reused when finished); its raw weights, not the EMA."""
    from ..convert import load_model
    from ..train import train

    overrides = {"model.init": str(init), "data.name": args.data, "batch_size": args.batch_size,
                 "max_steps": steps, "optim.lr": args.probe_lr or 1e-4, "optim.warmup_steps": 0,
                 "flow.time_sampling": time_sampling, "model.learn_sigma": learn_sigma, "save_every": steps, "log_every": max(1, steps // 20),
                 "sample.every": 0, "seed": seed, "out": str(run), "device": args.device, "tensorboard": False}
    if args.data_path:
        overrides["data.path"] = args.data_path
    if not (run / "checkpoints" / "last.pt").exists():
        train(None, overrides=overrides)
    return load_model(run, weights="model").eval()  # a short run's EMA is mostly its start


def main(args) -> int:
    if not args.json:
        return _search(args, sys.stdout)
    real = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):  # --json: stdout holds the JSON line alone (probe logs to stderr)
        return _search(args, real)


def _no_fit(args) -> str:
    return f"no schedule on this grid fits test FLOPs <= {args.budget:g}; raise --budget or add coarser --patches"


def _search(args, out_stream) -> int:
    import torch

    from ..convert import load_model
    from ..convert.adaptation import adapt
    from ..data.registry import DataConfig, build_dataset
    from ..eval.profile import loss_profile
    from ..experiments.schedule_search import mirror, schedule_excess, score_schedule, search_schedules, simplest_within
    from ..models.schedule import PyramidSchedule
    from ..utils.plots import line_plot

    if not 0 < args.budget <= 1:
        raise CommandError(f"--budget {args.budget} must be a fraction in (0, 1]")
    if args.probe_seeds is None:
        args.probe_seeds = 2 if args.probe_steps else 1
    if (args.probe_steps < 0 or args.num < 1 or args.bins < 2 or args.max_stages < 1 or args.probe_seeds < 1
            or (args.verify or 0) < 0 or args.verify_steps < 1):
        raise CommandError("--probe-steps must be >= 0, --num >= 1, --bins >= 2, --max-stages >= 1, "
                           "--probe-seeds >= 1, --verify >= 0, --verify-steps >= 1")
    if args.probe_steps == 0 and args.probe_seeds > 1:
        raise CommandError("--probe-steps 0 profiles one model: give --probe-seeds 1, or --probe-steps N to train "
                           f"{args.probe_seeds} probes (probes already in --out are reused)")
    tolerance = parse_tolerance(args.tolerance)
    out = Path(args.out)
    source = load_model(args.source)
    base = min(source.schedule.patches, key=lambda p: p[0] * p[1])
    p, q = base
    patches = parse_patches(args.patches) if args.patches else [(2 * p, 2 * q), (p, 2 * q), (2 * p, q), (p, q)]
    if base not in patches:
        raise CommandError(f"--patches must include the model's base patch {p}x{q}")
    spec = probe_schedule(patches)
    PyramidSchedule.from_string(spec).check_latent(*source.config.input_size)
    for other in args.compare:
        extra = set(PyramidSchedule.from_string(other).patches) - set(patches)
        if extra:
            raise CommandError(f"--compare {other} uses patches {sorted(extra)} that are not candidates; add them "
                               f"to --patches")
        flat = {patch: [0.0] for patch in patches}  # FLOPs only: the curves come from the probes
        cost = score_schedule([0.0, 1.0], flat, source.config, other, args.guidance).flops_fraction
        if cost > args.budget + 1e-12:
            raise CommandError(f"--compare {other} needs {100 * cost:.1f}% test FLOPs, over --budget {args.budget:g}")
    flat = {patch: [0.0] * args.bins for patch in patches}  # the loss score's bins: FLOPs alone say if any fits
    if args.score == "loss" and not search_schedules([k / args.bins for k in range(args.bins + 1)], flat, source.config, top=1,
                            budget=args.budget, max_stages=args.max_stages, guidance=args.guidance):
        raise CommandError(_no_fit(args))
    if args.score == "distill":
        if source.schedule.num_stages != 1:
            raise CommandError(f"--score distill probes a speed adapter on a one-stage SiT/DiT; {args.source} has "
                               f"stages {source.schedule.to_string()}")
        if args.verify:
            raise CommandError("--verify fine-tunes each schedule with the flow-matching loss; with --score distill "
                               "compare the top schedules as adapters (ppflow adapt --schedule S)")
        args.verify = 0
    if args.verify is None:
        args.verify = 3 if source.schedule.num_stages == 1 else 0
    if args.score == "distill":
        edges, per, probe, held = _distill_probes(args, source, spec, out)
        centers = [(a + b) / 2 for a, b in itertools.pairwise(edges)]
    elif source.schedule.num_stages == 1:
        probe = adapt(source, spec, coarse_output=args.coarse_output)
    elif args.verify:
        raise CommandError(f"--verify adapts --from to each schedule: give the one-stage model, not {args.source}")
    elif set(source.schedule.patches) == set(patches):
        probe = _raw_weights(args.source, source)  # as a fresh probe is profiled
    else:
        raise CommandError(f"{args.source} has stages {source.schedule.to_string()}; give a one-stage model or a "
                           f"probe whose stages are exactly the candidates ({spec})")
    if args.score == "loss":
        probes = {"probe": probe}
        if args.probe_steps:
            init = out / "probe-init"
            probe.save_pretrained(init)
            probes = {}
            for i in range(args.probe_seeds):
                name = "probe" if i == 0 else f"probe-{i + 1}"
                probes[name] = _finetune(init, out / name, args, args.probe_steps, args.seed + i, "all_t",
                                         probe.config.learn_sigma)
        probes = {name: m.eval() for name, m in probes.items()}
        try:
            held = build_dataset(DataConfig(name=args.data, path=args.data_path, limit=args.num,
                                            split="test" if args.data == "fashion-mnist" else "train",
                                            image_size=probe.config.input_size[0] if args.data == "fashion-mnist"
                                            else None))
        except (ValueError, OSError) as e:
            raise CommandError(f"cannot read --data {args.data}: {e}") from e
        x1, y = held.get_batch(torch.arange(len(held)))
        x1 = held.encode(x1, torch.Generator().manual_seed(args.seed))
        key = {"data": args.data, "data_path": args.data_path, "num": args.num, "bins": args.bins, "seed": args.seed}
        prof = _profile(probes, out, {**key, "all_stages": True}, "held-out loss per patch size (probes, stage pinned)",
                        lambda: loss_profile(probes, x1, y if probe.config.num_classes else None, bins=args.bins,
                                             seed=args.seed, all_stages=True, progress=not args.json))  # same draws: paired
        per = [{patch: prof.curves[f"{name} [{patch[0]}x{patch[1]}]"] for patch in probe.schedule.patches}
               for name in probes]
        edges, centers = prof.edges, prof.centers
    curves = {patch: [sum(c[patch][k] for c in per) / len(per) for k in range(len(edges) - 1)] for patch in per[0]}
    search = {"budget": args.budget, "max_stages": args.max_stages, "guidance": args.guidance}
    found = search_schedules(edges, curves, source.config, top=args.top, **search)
    by_count = [c for n in range(1, args.max_stages + 1)
                for c in search_schedules(edges, curves, source.config, top=1, num_stages=n, **search)]
    candidates = found + [c for c in by_count if c.schedule not in {f.schedule for f in found}]
    compared = [score_schedule(edges, curves, source.config, other, args.guidance) for other in args.compare]
    candidates += [c for c in compared if c.schedule not in {o.schedule for o in candidates}]
    twins = []  # the K least-excess schedules transposed, trained beside them with --verify
    if args.verify and args.mirrors:
        for c in sorted(candidates, key=lambda c: c.excess)[:args.verify]:
            twin = mirror(c.schedule)
            if twin not in {o.schedule for o in candidates + twins} and set(
                    PyramidSchedule.from_string(twin).patches) <= set(patches):
                twins.append(score_schedule(edges, curves, source.config, twin, args.guidance))
    candidates += twins
    per_probe = {c.schedule: [schedule_excess(edges, cv, c.schedule) for cv in per] for c in candidates}
    choice = simplest_within(candidates, per_probe, tolerance) if candidates else None
    verified = {}
    if choice and args.score == "distill":  # the least end-state error of the candidates' rollouts decides
        from ..experiments.schedule_search import rollout_errors

        verified = rollout_errors(probe, held, [c.schedule for c in candidates], args.trajectory_cfg or 1.0)
        winner = min(verified, key=verified.get)
        choice = dataclasses.replace(choice, chosen=next(c for c in candidates if c.schedule == winner))
    if choice and args.verify:
        by_excess = sorted(candidates, key=lambda c: c.excess)
        todo = by_excess[:args.verify] + [c for c in by_count + compared + twins if c not in by_excess[:args.verify]]
        todo = list({c.schedule: c for c in todo}.values())
        models = {}
        for c in todo:
            slug = out / "verify" / c.schedule.replace(":", "_").replace(",", "-")
            adapt(source, c.schedule, coarse_output=args.coarse_output).save_pretrained(slug.with_name(slug.name + "-init"))
            models[c.schedule] = _finetune(slug.with_name(slug.name + "-init"), slug, args, args.verify_steps,
                                           args.seed, "stratified", source.config.learn_sigma)
        vprof = _profile(models, out / "verify", key, f"held-out loss of each schedule after {args.verify_steps} steps",
                         lambda: loss_profile(models, x1, y if probe.config.num_classes else None, bins=args.bins,
                                              seed=args.seed, progress=not args.json))  # each in its own stage per t
        widths = [b - a for a, b in itertools.pairwise(edges)]
        verified = {k: sum(w * v for w, v in zip(widths, curve)) for k, curve in vprof.curves.items()}
        winner = min(verified, key=verified.get)
        choice = dataclasses.replace(choice, chosen=next(c for c in todo if c.schedule == winner))

    def row(c):
        return {"schedule": c.schedule, "num_stages": c.num_stages, "flops_fraction": c.flops_fraction,
                "excess": c.excess, "excess_per_probe": per_probe[c.schedule],
                "stderr_vs_least": choice.stderr[c.schedule], "verified_loss": verified.get(c.schedule),
                "compared": c.schedule in {o.schedule for o in compared},
                "mirror": c.schedule in {o.schedule for o in twins}}

    result = {"budget": args.budget, "guidance": args.guidance, "probe_steps": args.probe_steps,
              "probes": len(per), "tolerance": args.tolerance, "verify_steps": args.verify_steps if verified and args.score == "loss" else 0,
              "score": args.score, "bin_edges": edges,
              "curves": {f"{a}x{b}": v for (a, b), v in curves.items()},
              "chosen": row(choice.chosen) if choice else None,
              "schedules": [row(c) for c in sorted(candidates, key=lambda c: c.excess)]}
    (out / "search.json").write_text(json.dumps(result, indent=2))
    if choice:
        chosen = PyramidSchedule.from_string(choice.chosen.schedule)
        line_plot({f"{a}x{b}": (centers, [min(x, 10.0) for x in v]) for (a, b), v in curves.items()},
                  out / "search.png",
                  title=f"loss per patch size (mean of {len(per)} probes); dashed: switch points of "
                        f"{choice.chosen.schedule}",
                  xlabel="t (0 = noise, 1 = data)", ylabel="velocity MSE" + (" vs the teacher" if args.score ==
                                                                             "distill" else ""),
                  log_y=args.score == "loss", vlines=chosen.boundaries)
    if args.json:
        print(json.dumps(result), file=out_stream)
    if not choice:
        raise CommandError(_no_fit(args))
    if args.json:
        return 0
    c, best = choice.chosen, choice.best
    print(f"schedule for test FLOPs <= {args.budget:g} ({args.guidance} guidance): {c.schedule}")
    print(f"  test FLOPs {100 * c.flops_fraction:.1f}% of the baseline, predicted excess loss {c.excess:.5f} "
          f"(weighted by how a uniform sampler visits t; mean of {len(per)} probes)")
    if verified and args.score == "distill":
        print(f"  rollouts: the least end-image error against the source ({verified[c.schedule]:.5f}) of "
              f"{len(verified)} schedules, each sampled by the probe from the held-out noise")
    elif verified:
        print(f"  verified: the least held-out loss ({verified[c.schedule]:.5f}) of {len(verified)} schedules, "
              f"each adapted and fine-tuned {args.verify_steps} steps")
    elif c is not best:
        print(f"  least excess: {best.schedule} ({best.excess:.5f}, {best.num_stages} stages): "
              f"{c.excess - best.excess:.5f} more excess is within "
              + ("one standard error " f"({choice.stderr[c.schedule]:.5f})" if tolerance is None
                 else f"--tolerance {tolerance:g}") + f", so the {c.num_stages}-stage schedule is chosen")
    for other in sorted(candidates, key=lambda o: o.excess):
        if other is not c:
            v = f"  verified loss {verified[other.schedule]:.5f}" if other.schedule in verified else ""
            v += "  (--compare)" if other.schedule in {o.schedule for o in compared} else ""
            v += "  (mirror)" if other.schedule in {o.schedule for o in twins} else ""
            print(f"  other: {other.schedule:40s} {other.num_stages} stages  FLOPs {100 * other.flops_fraction:5.1f}%"
                  f"  excess {other.excess:.5f} (+-{choice.stderr[other.schedule]:.5f} vs the least){v}")
    print(f"use it: ppflow train --model.schedule {c.schedule} ...  or  ppflow adapt --schedule "
          f"{c.schedule} ...; curves and plot in {out}")
    return 0
