"""Schedule search: the pyramid schedule with the least excess loss for a sampling-FLOPs budget.

Input: per-patch held-out loss curves over t bins (`ppflow profile --all-stages` of a model trained with
`flow.time_sampling all_t`). A schedule is a sequence of stages, coarse to fine (token count strictly increasing),
whose boundaries lie on the bin edges and whose last stage is the finest patch. Its predicted excess is the
sum over bins of weight x (loss of the stage's patch - loss of the finest patch); its cost is the analytic test-FLOPs
fraction (paper convention, `models.flops.schedule_flops`). The search is an exact dynamic program over
(bin edge, last patch, stages used) that keeps every Pareto-optimal (cost, excess) partial schedule.

Choosing among the results (`simplest_within`): curves from several probes (training seeds) give each schedule's
excess a spread; the schedule with the fewest stages whose excess is within one standard error of the least is
chosen (the one-standard-error rule of model selection), since every extra switch costs trained models a loss bump
the all_t probe cannot see (docs/schedules.md).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..models.backbone import ModelConfig
from ..models.flops import forward_flops, schedule_flops
from ..models.schedule import Patch, PyramidSchedule

GUIDANCE = ("none", "all", "stage")  # no CFG | CFG in every stage | stage CFG: none in the coarsest stage


@dataclass(frozen=True)
class Candidate:
    """One schedule: its string, test-FLOPs fraction and predicted excess loss."""

    schedule: str
    flops_fraction: float
    excess: float

    @property
    def num_stages(self) -> int:
        return self.schedule.count(",") + 1


def _mult(stage: int, guidance: str) -> int:
    return 1 if guidance == "none" or (guidance == "stage" and stage == 0) else 2


def _tokens(patch: Patch) -> float:
    return 1.0 / (patch[0] * patch[1])


def schedule_string(edges: Sequence[float], stages: Sequence[tuple[int, Patch]]) -> str:
    """'t_end:RxC,...' from (end bin index, patch) per stage."""
    return ",".join(f"{edges[j]:g}:{p[0]}x{p[1]}" for j, p in stages)


def search_schedules(
    edges: Sequence[float],
    curves: Mapping[Patch, Sequence[float]],
    config: ModelConfig,
    budget: float,
    max_stages: int = 3,
    guidance: str = "none",
    weights: Sequence[float] | None = None,
    top: int = 5,
    num_stages: int | None = None,
) -> list[Candidate]:
    """Pareto-optimal schedules within `budget` (test-FLOPs fraction), least excess first, at most `top`.

    `num_stages`: only schedules with exactly that many stages (default: any count up to `max_stages`).
    `curves[patch][k]`: held-out loss of that patch in bin k; the finest patch (most tokens) is the base.
    `weights[k]`: how much the sampler visits bin k (default: the bin width, a uniform grid). `config`: the model
    whose FLOPs count (its schedule is replaced by each candidate's). `guidance`: see GUIDANCE.
    """
    if guidance not in GUIDANCE:
        raise ValueError(f"guidance {guidance!r} is not one of {GUIDANCE}")
    B = len(edges) - 1
    if B < 1 or any(len(v) != B for v in curves.values()):
        raise ValueError(f"every curve needs one value per bin ({B} bins from {len(edges)} edges)")
    if max_stages < 1:
        raise ValueError(f"max_stages must be >= 1, got {max_stages}")
    if num_stages is not None and not 1 <= num_stages <= max_stages:
        raise ValueError(f"num_stages must be in [1, max_stages={max_stages}], got {num_stages}")
    weights = [b - a for a, b in itertools.pairwise(edges)] if weights is None else list(weights)
    patches = sorted(curves, key=_tokens)  # coarsest first
    base = patches[-1]
    if sum(1 for p in patches if _tokens(p) == _tokens(base)) > 1:
        raise ValueError(f"two finest patches with the same token count in {patches}; keep one")
    one = dataclasses.replace(config, schedule=f"1:{base[0]}x{base[1]}", level_embedding=None)
    H, W = config.input_size
    base_flops = forward_flops(one, 0, H, W).paper
    cost_per_t = {}
    for p in patches:
        probe = dataclasses.replace(config, schedule=f"1:{p[0]}x{p[1]}", level_embedding=None)
        probe_sched = PyramidSchedule.from_string(f"1:{p[0]}x{p[1]}", base_patch=base)
        probe_sched.check_latent(H, W)
        cost_per_t[p] = forward_flops(probe, 0, H, W).paper / base_flops
    excess = {p: [w * (a - b) for w, a, b in zip(weights, curves[p], curves[base])] for p in patches}
    prefix = {p: [0.0] for p in patches}
    for p in patches:
        for v in excess[p]:
            prefix[p].append(prefix[p][-1] + v)
    base_mult = 1 if guidance == "none" else 2

    # front[(j, p, n)]: Pareto set of (cost, excess, stages) covering bins [0, j), last stage patch p, n stages
    front: dict[tuple[int, Patch, int], list[tuple[float, float, tuple]]] = {}
    for j in range(1, B + 1):
        for p in patches:
            seg_cost = (edges[j] - edges[0]) * cost_per_t[p] * _mult(0, guidance) / base_mult
            _add(front, (j, p, 1), (seg_cost, prefix[p][j], ((j, p),)))
    for n in range(1, max_stages):
        for i in range(1, B):
            for p in patches:
                for cost, ex, stages in front.get((i, p, n), []):
                    for q in patches:
                        if _tokens(q) <= _tokens(p):
                            continue
                        for j in range(i + 1, B + 1):
                            c = cost + (edges[j] - edges[i]) * cost_per_t[q] * _mult(n, guidance) / base_mult
                            _add(front, (j, q, n + 1), (c, ex + prefix[q][j] - prefix[q][i], stages + ((j, q),)))
    final: dict = {}
    for n in range(1, max_stages + 1) if num_stages is None else (num_stages,):
        for pt in front.get((B, base, n), []):
            if pt[0] <= budget + 1e-12:
                _add(final, "all", pt)  # Pareto-optimal over every stage count
    done = final.get("all", [])
    done.sort(key=lambda pt: (pt[1], pt[0]))
    out = []
    for _, ex, stages in done:
        s = schedule_string(edges, stages)
        exact = schedule_flops(dataclasses.replace(config, schedule=s, level_embedding=None),
                               cfg_scales=_scales(len(stages), guidance),
                               baseline_cfg_scale=None if guidance == "none" else 2.0)["paper_fraction"]
        if exact <= budget + 1e-12:  # the printed boundaries (6 digits) decide, not the bin edges
            out.append(Candidate(s, exact, ex))
        if len(out) == top:
            break
    return out


def schedule_excess(edges: Sequence[float], curves: Mapping[Patch, Sequence[float]], schedule: str,
                    weights: Sequence[float] | None = None) -> float:
    """Predicted excess of `schedule` (boundaries on `edges`) under `curves`, scored as `search_schedules` does."""
    weights = [b - a for a, b in itertools.pairwise(edges)] if weights is None else list(weights)
    base = max(curves, key=_tokens)
    sched = PyramidSchedule.from_string(schedule)
    total = 0.0
    for k, (a, b) in enumerate(itertools.pairwise(edges)):
        patch = sched.patches[int(sched.stage_of(0.5 * (a + b)))]
        if patch not in curves:
            raise ValueError(f"no curve for patch {patch[0]}x{patch[1]} of {schedule}")
        total += weights[k] * (curves[patch][k] - curves[base][k])
    return total


def score_schedule(edges: Sequence[float], curves: Mapping[Patch, Sequence[float]], config: ModelConfig,
                   schedule: str, guidance: str = "none") -> Candidate:
    """Any schedule (e.g. a hand-set one) as a `Candidate`: its exact test-FLOPs fraction and predicted excess."""
    if guidance not in GUIDANCE:
        raise ValueError(f"guidance {guidance!r} is not one of {GUIDANCE}")
    sched = PyramidSchedule.from_string(schedule)
    base = max(curves, key=_tokens)
    if sched.patches[-1] != base:
        raise ValueError(f"schedule {schedule} must end with the finest patch {base[0]}x{base[1]}")
    flops = schedule_flops(dataclasses.replace(config, schedule=schedule, level_embedding=None),
                           cfg_scales=_scales(sched.num_stages, guidance),
                           baseline_cfg_scale=None if guidance == "none" else 2.0)["paper_fraction"]
    return Candidate(sched.to_string(), flops, schedule_excess(edges, curves, schedule))


def mirror(schedule: str) -> str:
    """`schedule` with every non-square patch transposed (4x8 <-> 8x4): the same tokens, so the same FLOPs."""
    sched = PyramidSchedule.from_string(schedule)
    return ",".join(f"{s.t_end:g}:{s.patch[1]}x{s.patch[0]}" for s in sched.stages)


@dataclass(frozen=True)
class Choice:
    """The chosen schedule, the least-excess one, the tolerance used and each candidate's standard error."""

    chosen: Candidate
    best: Candidate
    tolerance: float | None  # fixed tolerance; None: one standard error of each paired difference
    stderr: dict[str, float]  # schedule -> standard error over probes of (its excess - the best's)


def simplest_within(candidates: Sequence[Candidate], per_probe: Mapping[str, Sequence[float]],
                    tolerance: float | None = None) -> Choice:
    """The fewest-stage candidate whose mean excess is within tolerance of the least (ties: less excess).

    `per_probe[schedule]`: its excess under each probe's curves (the same probes, in the same order, for every
    candidate; the candidates' `excess` is their mean). `tolerance` None: one standard error of the candidate's
    paired difference to the best over the probes (with one probe: 0, the plain minimum).
    """
    if not candidates:
        raise ValueError("no candidates to choose from")
    best = min(candidates, key=lambda c: (c.excess, c.flops_fraction))
    stderr = {}
    for c in candidates:
        d = [a - b for a, b in zip(per_probe[c.schedule], per_probe[best.schedule], strict=True)]
        n = len(d)
        mean = sum(d) / n
        stderr[c.schedule] = (sum((v - mean) ** 2 for v in d) / (n - 1) / n) ** 0.5 if n > 1 else 0.0
    ok = [c for c in candidates
          if c.excess - best.excess <= (stderr[c.schedule] if tolerance is None else tolerance) + 1e-12]
    chosen = min(ok, key=lambda c: (c.num_stages, c.excess, c.flops_fraction))
    return Choice(chosen, best, tolerance, stderr)


def _scales(n: int, guidance: str) -> list[float] | None:
    if guidance == "none":
        return None
    return [float(_mult(s, guidance)) for s in range(n)]


def _add(front: dict, key, point: tuple[float, float, tuple]) -> None:
    """Insert `point` into the Pareto set at `key` unless another point is at least as cheap and as good."""
    pts = front.setdefault(key, [])
    cost, ex = point[0], point[1]
    if any(c <= cost + 1e-12 and e <= ex + 1e-12 for c, e, _ in pts):
        return
    pts[:] = [pt for pt in pts if not (cost <= pt[0] + 1e-12 and ex <= pt[1] + 1e-12)]
    pts.append(point)


OUT_OF_RANGE = 1e9  # the excess of a coarse patch where the probe's teacher states do not reach


def distill_curves(probe, held, batch: int = 64) -> tuple[list[float], dict[Patch, list[float]]]:
    """(bin edges, per patch: the probe adapter's velocity error against its teacher per bin) on held-out teacher
    trajectories (train.teacher.TeacherStates): bin [t_k, t_k+1) takes the error at step time t_k, conditional
    velocity against conditional velocity; the finest patch is the teacher itself (0); beyond the trajectories'
    range a coarse patch cannot run (OUT_OF_RANGE)."""
    import torch

    sched = probe.schedule
    fine = sched.num_stages - 1
    grid = [round(float(t), 9) for t in held.grid]  # float32 step times: 0.4, not 0.4000000059604645
    edges = [*grid, 1.0] if grid[-1] < 1.0 else grid
    bins = len(edges) - 1
    curves: dict[Patch, list[float]] = {sched.patches[fine]: [0.0] * bins}
    y = held.labels if probe.config.num_classes else None
    with torch.no_grad():
        for s in range(fine):
            errors = []
            for k in range(bins):
                if k >= len(grid) - 1 and grid[-1] < 1.0:
                    errors.append(OUT_OF_RANGE)
                    continue
                total = 0.0
                for i in range(0, len(held), batch):
                    x, target = held.states[i:i + batch, k], held.cond[i:i + batch, k]  # (n, C, H, W)
                    t = torch.full((len(x),), grid[k])
                    pred = probe(x, t, None if y is None else y[i:i + batch], stage=s)  # (n, C, H, W)
                    total += float((pred.float() - target.float()).square().mean(dim=(1, 2, 3)).sum())
                errors.append(total / len(held))
            curves[sched.patches[s]] = errors
    return edges, curves


def rollout_errors(probe, held, schedules: Sequence[str], cfg_scale: float = 1.0, batch: int = 64) -> dict[str, float]:
    """Per schedule: the mean squared distance between the image the probe samples with that schedule's patches and
    the one the source (the probe's finest stage) samples, from the held-out trajectories' noise and labels (Euler
    over their step times, continued at the same spacing to t = 1, CFG `cfg_scale` in every step): the end-state
    error a fine stage inherits, which the t-weighted velocity error does not see."""
    import torch

    from ..models.schedule import PyramidSchedule
    from ..sampling.solvers import euler
    from ..train.teacher import teacher_step

    g = [float(t) for t in held.grid]
    step = g[1] - g[0]
    tail = max(1, round((1.0 - g[-1]) / step))
    grid = torch.tensor([*g, *(g[-1] + (1.0 - g[-1]) * (i + 1) / tail for i in range(tail))], dtype=torch.float64)
    fine = probe.schedule.num_stages - 1
    y = held.labels if probe.config.num_classes else None

    def stages_of(spec: str | None) -> list[int]:
        if spec is None:
            return [fine] * (len(grid) - 1)
        sched = PyramidSchedule.from_string(spec)
        mids = (grid[:-1] + grid[1:]) / 2  # a step runs in the stage holding it (boundaries are on the grid)
        return [probe.schedule.patches.index(sched.patches[int(s)]) for s in sched.stage_of(mids).tolist()]

    def sample(stages: list[int]) -> torch.Tensor:
        outs = []
        for i in range(0, len(held), batch):
            yy = None if y is None else y[i:i + batch]
            fn = lambda x, t, s, yy=yy: teacher_step(probe, x, t.float(), yy, cfg_scale, s)[0]
            outs.append(euler(fn, held.states[i:i + batch, 0], grid, stages))
        return torch.cat(outs)

    with torch.no_grad():
        ref = sample(stages_of(None))
        return {spec: float((sample(stages_of(spec)) - ref).square().mean()) for spec in schedules}
