"""Adapt a one-stage SiT/DiT model to a PPFlow schedule (the paper's average/copy initialization).

With base patch (p, q) and a stage patch (p*fh, q*fw):
- patchify, average init: in-patch pixel (a*fh+i, b*fw+j) gets the base weight of pixel
  (a, b) divided by fh*fw, bias copied. The stage token is the base projection of the
  fh x fw average-pooled patch. In the official layout this is `proj1 = W/4` with each input
  channel repeated 4 times after space-to-depth (the official `--initialize_from`).
- unpatchify, copy init: output pixel (a*fh+i, b*fw+j) gets the base row of pixel (a, b),
  weights and bias, unscaled (official `linear1` = rows repeated 4 times).
- blocks, time/label embedders and the final adaLN are copied; the finest stage's
  projections are the source's. The level embedding starts at zero (the official code
  keeps its N(0, 0.02^2) init; `level_init_std` reproduces that), so the finest stage
  reproduces the source model exactly.
"""

from __future__ import annotations

import dataclasses
import os

import torch

from ..models.backbone import PPFlowTransformer
from ..models.patchify import average_init, copy_init
from ..models.pretrained import load_state_strict
from ..models.schedule import PyramidSchedule
from .keymap import CheckpointError, size_name
from .load import load_model

Tensor = torch.Tensor
INITS = ("pooled", "lstsq")


def adapt(
    source: PPFlowTransformer | str | os.PathLike,
    schedule: str | PyramidSchedule = "ppf2",
    *,
    level_init_std: float = 0.0,
    coarse_output: str = "v",
    init: str = "pooled",
    calibration: tuple[Tensor, Tensor | None] | None = None,
    generator: torch.Generator | None = None,
    format: str | None = None,
    weights: str | None = None,
    **overrides,
) -> PPFlowTransformer:
    """A PPFlow model initialized from a one-stage model (a model or anything `load_model` reads).

    `schedule`: the target pyramid (preset or 't_end:ROWSxCOLS,...'); its finest patch must be
    the source's patch. `level_init_std`: 0 (default) starts the level embedding at zero so the
    finest stage equals the source; 0.02 is the official N(0, 0.02^2) start. `coarse_output`: what the coarse
    stages emit (`v` as the paper, or `noise_skip`, which makes the adapted coarse stage start as the source's
    denoiser at the stage's resolution, exact in the noise; or `snr`, which also matches the noise level, so the
    adapted coarse stage starts as the source denoising the pooled image at the level that image has; see
    models/output.py). `init`: `pooled` (the
    official average/copy init) or `lstsq` (pooled, then each coarse unpatchify refitted by least squares on
    `calibration` = (images (N, C, H, W), labels (N,) or None), see `fit_readout`). `format`,
    `weights`, `overrides` are passed to `load_model` when `source` is a path.
    """
    if isinstance(source, PPFlowTransformer):
        if overrides or format or weights:
            raise ValueError("format/weights/overrides apply when loading a path; `source` is already a model")
        src = source
    else:
        src = load_model(source, format=format, weights=weights, **overrides)
    label = src.config.name or "the source model"
    if init not in INITS:
        raise ValueError(f"adaptation init {init!r} is not one of {INITS}")
    if init == "lstsq" and calibration is None:
        raise ValueError("init='lstsq' fits the coarse readouts on data: pass calibration=(images, labels)")
    if src.schedule.num_stages != 1:
        raise CheckpointError(
            f"{label} already has {src.schedule.num_stages} stages ({src.schedule.to_string()}); adaptation starts "
            "from a one-stage SiT/DiT model"
        )
    base = src.schedule.stages[0].patch
    target = PyramidSchedule.for_base(schedule, base)  # a preset name is relative to the source's patch
    if target.base_patch != base:
        raise CheckpointError(
            f"schedule {target.to_string()} has base patch {target.base_patch} but {label} uses {base} patches; "
            f"its finest stage must use the source patch, e.g. '0.5:{2 * base[0]}x{2 * base[1]},1:{base[0]}x{base[1]}'"
        )
    cfg = src.config
    size = size_name(cfg.depth, cfg.hidden_size, cfg.num_heads)
    name = f"PPF-{size}-{target.num_stages}" if size and base == (2, 2) else ""
    config = dataclasses.replace(cfg, schedule=schedule if target == PyramidSchedule.from_config(schedule) else target,
                                 level_embedding=None, level_init_std=level_init_std, name=name,
                                 coarse_output=coarse_output)

    old = {k: v.detach() for k, v in src.state_dict().items()}
    state = {k: v.clone() for k, v in old.items()
             if not k.startswith(("x_embedder.", "final_layer.unpatchify.", "level_embedder."))}
    pw, pb = old["x_embedder.0.proj.weight"], old["x_embedder.0.proj.bias"]
    uw, ub = old["final_layer.unpatchify.0.linear.weight"], old["final_layer.unpatchify.0.linear.bias"]
    for s in range(target.num_stages):
        f = target.factors(s)
        state[f"x_embedder.{s}.proj.weight"] = average_init(pw, base, f, cfg.in_channels)
        state[f"x_embedder.{s}.proj.bias"] = pb.clone()
        state[f"final_layer.unpatchify.{s}.linear.weight"] = copy_init(uw, base, f, cfg.out_channels)
        state[f"final_layer.unpatchify.{s}.linear.bias"] = copy_init(ub, base, f, cfg.out_channels)
    if config.use_level_embedding:
        level = torch.zeros(target.num_stages, cfg.hidden_size, dtype=pw.dtype)
        if level_init_std > 0:
            level.normal_(0.0, level_init_std, generator=generator)
        state["level_embedder.weight"] = level.to(pw.device)

    with torch.device("meta"):
        model = PPFlowTransformer(config)
    load_state_strict(model, state, source=f"adaptation of {label}", assign=True)
    if init == "lstsq":
        x, y = calibration
        fit_readout(model, x.to(pw.device), None if y is None else y.to(pw.device), generator=generator)
    return model.train(src.training)


def _to_tokens(x: Tensor, patch: tuple[int, int]) -> Tensor:
    """(N, O, H, W) -> (N, L, ph*pw*O) in the unpatchify layout (r * pw + s) * O + o."""
    N, O, H, W = x.shape
    ph, pw = patch
    x = x.reshape(N, O, H // ph, ph, W // pw, pw)  # (N, O, h, ph, w, pw)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(N, (H // ph) * (W // pw), ph * pw * O)


@torch.no_grad()
def fit_readout(
    model: PPFlowTransformer,
    x1: Tensor,
    y: Tensor | None = None,
    ridge: float = 1e-3,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
) -> dict[int, float]:
    """Least-squares init of every coarse stage's unpatchify on a calibration batch of data `x1` (N, C, H, W).

    Each image gets a t uniform in its stage's range and fresh noise; the stage's final tokens are regressed
    (ridge `ridge` x mean feature energy) onto the velocity target as that stage's `coarse_output` expresses it.
    The finest stage (the source's own projections) is left alone. Returns the calibration loss per refitted
    stage after the fit (MSE of the raw output; the velocity MSE for `v` and `noise_skip`). Works in place.
    """
    from ..flow.path import linear_path
    from ..models.output import to_velocity

    model.eval()
    C = model.config.in_channels
    O = model.config.out_channels
    losses = {}
    captured: list[Tensor] = []
    hook = model.final_layer.register_forward_hook(lambda mod, inp, out: captured.append(out))
    try:
        for s, stage in enumerate(model.schedule.stages):
            factors = model.schedule.factors(s)
            if factors == (1, 1):
                continue
            feats, targets = [], []
            for i in range(0, len(x1), batch_size):
                xb = x1[i:i + batch_size]
                n = len(xb)
                t = stage.t_start + (stage.t_end - stage.t_start) * torch.rand(n, generator=generator)  # (n,)
                path = linear_path(xb, torch.randn(xb.shape, generator=generator), t)
                captured.clear()
                model(path.x_t, t, None if y is None else y[i:i + batch_size], stage=s)
                h = captured[0].reshape(n, -1, captured[0].shape[-1])  # (n, L, D)
                # the raw output that maps to the target velocity: invert the (affine) reparametrization
                zero = torch.zeros_like(path.target)
                offset = to_velocity(zero, path.x_t, t, factors, model.config.coarse_output)  # v = a * raw + offset
                scale = to_velocity(torch.ones_like(zero), path.x_t, t, factors, model.config.coarse_output) - offset
                raw = (path.target - offset) / scale  # (n, C, H, W)
                feats.append(h.reshape(-1, h.shape[-1]).double())
                targets.append(_to_tokens(raw, stage.patch).reshape(-1, stage.patch[0] * stage.patch[1] * C).double())
            A = torch.cat(feats)  # (n*L, D)
            A = torch.cat([A, torch.ones(len(A), 1, dtype=A.dtype)], 1)  # (n*L, D+1) with the bias column
            T = torch.cat(targets)  # (n*L, ph*pw*C)
            gram = A.T @ A
            lam = ridge * gram.diagonal().mean()
            sol = torch.linalg.solve(gram + lam * torch.eye(len(gram), dtype=gram.dtype), A.T @ T)  # (D+1, K)
            lin = model.final_layer.unpatchify[s].linear
            rows = torch.arange(lin.weight.shape[0]).reshape(-1, O)[:, :C].reshape(-1)  # velocity rows
            lin.weight.data[rows] = sol[:-1].T.to(lin.weight.dtype)
            lin.bias.data[rows] = sol[-1].to(lin.bias.dtype)
            losses[s] = float(((A @ sol - T) ** 2).mean())
    finally:
        hook.remove()
    return losses

