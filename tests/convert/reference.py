"""Foreign checkpoints and forwards, re-implemented in the tests from the format spec alone.

Nothing here imports ppflow: random state dicts in the DiT/SiT and official PPFlow layouts,
the official forward (space-to-depth, conv patch embed, stored per-stage positional tables,
level embedding, unpatchify in the space-to-depth domain), the official CFG, and the official
`--initialize_from` adaptation. The conversion tests compare ppflow against these.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

# stages -> [(space-to-depth factors, patch-embed name, final-linear name)], coarsest first
OFFICIAL = {
    1: [((1, 1), "x_embedder.proj", "final_layer.linear")],
    2: [((2, 2), "x_embedder.proj1", "final_layer.linear1"), ((1, 1), "x_embedder.proj", "final_layer.linear")],
    3: [((2, 2), "x_embedder.proj1", "final_layer.linear1"), ((1, 2), "x_embedder.proj2", "final_layer.linear2"),
        ((1, 1), "x_embedder.proj", "final_layer.linear")],
}


def sincos_table(dim: int, rows: np.ndarray, cols: np.ndarray) -> torch.Tensor:
    """(1, h*w, dim): first half encodes the column, second the row; each half [sin] then [cos]."""

    def one(d, pos):
        w = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        a = np.einsum("m,k->mk", pos.reshape(-1).astype(np.float64), w)
        return np.concatenate([np.sin(a), np.cos(a)], axis=1)

    r, c = np.meshgrid(rows, cols, indexing="ij")
    table = np.concatenate([one(dim // 2, c), one(dim // 2, r)], axis=1)
    return torch.from_numpy(table).float()[None]


def random_state(stages: int = 1, width: int = 64, depth: int = 2, channels: int = 4, patch: int = 2,
                 classes: int = 10, grid: int = 8, out_channels: int | None = None, seed: int = 0) -> dict:
    """A random checkpoint in the DiT/SiT layout (stages=1) or the official PPFlow layout (2 or 3).

    `grid`: finest token grid side (latent side = grid * patch).
    """
    g = torch.Generator().manual_seed(seed)
    D, C, p = width, channels, patch
    O = 2 * C if out_channels is None else out_channels

    def rnd(*shape):
        return torch.randn(*shape, generator=g) * 0.05

    sd = {}
    for (fh, fw), embed, _ in OFFICIAL[stages]:
        sd[embed + ".weight"] = rnd(D, C * fh * fw, p, p)
        sd[embed + ".bias"] = rnd(D)
    sd["t_embedder.mlp.0.weight"], sd["t_embedder.mlp.0.bias"] = rnd(D, 256), rnd(D)
    sd["t_embedder.mlp.2.weight"], sd["t_embedder.mlp.2.bias"] = rnd(D, D), rnd(D)
    if classes:
        sd["y_embedder.embedding_table.weight"] = rnd(classes + 1, D)
    for i in range(depth):
        for name, rows, cols in (("attn.qkv", 3 * D, D), ("attn.proj", D, D), ("mlp.fc1", 4 * D, D),
                                 ("mlp.fc2", D, 4 * D), ("adaLN_modulation.1", 6 * D, D)):
            sd[f"blocks.{i}.{name}.weight"], sd[f"blocks.{i}.{name}.bias"] = rnd(rows, cols), rnd(rows)
    sd["final_layer.adaLN_modulation.1.weight"], sd["final_layer.adaLN_modulation.1.bias"] = rnd(2 * D, D), rnd(2 * D)
    for (fh, fw), _, linear in OFFICIAL[stages]:
        sd[linear + ".weight"], sd[linear + ".bias"] = rnd(fh * fw * p * p * O, D), rnd(fh * fw * p * p * O)
    if stages == 1:
        sd["pos_embed"] = sincos_table(D, np.arange(grid), np.arange(grid))
    else:
        sd["level_embedder.embedding_table.weight"] = rnd(stages, D)
        for s, ((fh, fw), _, _) in enumerate(OFFICIAL[stages]):
            sd[f"pos_embed.{s}"] = sincos_table(D, np.arange(0, grid, fh), np.arange(0, grid, fw))
    return sd


# ------------------------------------------------------------------ forward
def space_to_depth(x, fh, fw):
    """(B, C, H, W) -> (B, C*fh*fw, H/fh, W/fw); channel c*fh*fw + i*fw + j holds pixel (fh*h+i, fw*w+j)."""
    B, C, H, W = x.shape
    return x.reshape(B, C, H // fh, fh, W // fw, fw).permute(0, 1, 3, 5, 2, 4).reshape(B, C * fh * fw, H // fh, W // fw)


def depth_to_space(x, fh, fw):
    B, K, h, w = x.shape
    C = K // (fh * fw)
    return x.reshape(B, C, fh, fw, h, w).permute(0, 1, 4, 2, 5, 3).reshape(B, C, h * fh, w * fw)


def official_stage(t0: float, stages: int) -> int:
    """The official stage choice from the batch's first time value."""
    if stages == 1:
        return 0
    if t0 <= 0.5:
        return 0
    if stages == 3 and t0 <= 0.75:
        return 1
    return stages - 1


def forward(sd, x, t_in, y, heads, stage=None, t_for_stage=None):
    """Reference forward of a DiT/SiT (1 stage) or official PPFlow state dict; all output channels (B, O, H, W).

    `t_in` is what the time embedder receives (SiT/PPFlow: t; DiT: its integer-scale timestep).
    """
    stages = 3 if "x_embedder.proj2.weight" in sd else 2 if "x_embedder.proj1.weight" in sd else 1
    if stage is None:
        stage = official_stage(float((t_in if t_for_stage is None else t_for_stage)[0]), stages)
    (fh, fw), embed, linear = OFFICIAL[stages][stage]
    B = x.shape[0]
    w = sd[embed + ".weight"]
    p = w.shape[-1]
    h = F.conv2d(space_to_depth(x, fh, fw), w, sd[embed + ".bias"], stride=p)  # (B, D, h, w)
    gh, gw = h.shape[-2:]
    h = h.flatten(2).transpose(1, 2)  # (B, T, D)
    h = h + (sd["pos_embed"] if stages == 1 else sd[f"pos_embed.{stage}"])
    D = h.shape[-1]

    half = 128
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t_in.float()[:, None] * freqs[None]
    tf = torch.cat([torch.cos(args), torch.sin(args)], -1)
    c = F.linear(F.silu(F.linear(tf, sd["t_embedder.mlp.0.weight"], sd["t_embedder.mlp.0.bias"])),
                 sd["t_embedder.mlp.2.weight"], sd["t_embedder.mlp.2.bias"])
    if "y_embedder.embedding_table.weight" in sd:
        c = c + sd["y_embedder.embedding_table.weight"][y]
    if stages > 1:
        c = c + sd["level_embedder.embedding_table.weight"][stage]

    def ln(v):
        return F.layer_norm(v, (D,), eps=1e-6)

    i = 0
    while f"blocks.{i}.attn.qkv.weight" in sd:
        b = f"blocks.{i}."
        mod = F.linear(F.silu(c), sd[b + "adaLN_modulation.1.weight"], sd[b + "adaLN_modulation.1.bias"])
        sh1, sc1, g1, sh2, sc2, g2 = mod[:, None].chunk(6, dim=-1)
        a = ln(h) * (1 + sc1) + sh1
        qkv = F.linear(a, sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"]).reshape(B, -1, 3, heads, D // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D // heads), dim=-1)
        o = (att @ v).transpose(1, 2).reshape(B, -1, D)
        h = h + g1 * F.linear(o, sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"])
        m = ln(h) * (1 + sc2) + sh2
        m = F.gelu(F.linear(m, sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"]), approximate="tanh")
        h = h + g2 * F.linear(m, sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"])
        i += 1
    sh, sc = F.linear(F.silu(c), sd["final_layer.adaLN_modulation.1.weight"],
                      sd["final_layer.adaLN_modulation.1.bias"])[:, None].chunk(2, dim=-1)
    out = F.linear(ln(h) * (1 + sc) + sh, sd[linear + ".weight"], sd[linear + ".bias"])  # (B, T, p*p*O')
    Oc = out.shape[-1] // (p * p)
    img = out.reshape(B, gh, gw, p, p, Oc).permute(0, 5, 1, 3, 2, 4).reshape(B, Oc, gh * p, gw * p)
    return depth_to_space(img, fh, fw)  # (B, O, H, W)


def official_cfg(sd, z, t, y, null, scales, heads):
    """Official CFG sampling forward: batch (z, z) with labels (y, null); channels 0..2 guided."""
    N, C = z.shape[:2]
    stages = 3 if "x_embedder.proj2.weight" in sd else 2 if "x_embedder.proj1.weight" in sd else 1
    s = scales[official_stage(float(t[0]), stages)]
    out = forward(sd, torch.cat([z, z]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, null)]), heads)
    out = out[:, :C]  # the prediction half
    eps, rest = out[:, :3], out[:, 3:]
    cond, uncond = eps.chunk(2)
    half = uncond + s * (cond - uncond)
    return torch.cat([torch.cat([half, half]), rest], 1)[:N]  # the conditional half


# ------------------------------------------------------------- adaptation
def initialize_from(sit: dict, stages: int) -> dict:
    """The official `--initialize_from`: a SiT state dict -> an official PPFlow state dict (level at zero)."""
    D = sit["x_embedder.proj.weight"].shape[0]
    grid = math.isqrt(sit["pos_embed"].shape[1])
    out = {k: v.clone() for k, v in sit.items() if k != "pos_embed"}
    w, b = sit["x_embedder.proj.weight"], sit["x_embedder.proj.bias"]
    lw, lb = sit["final_layer.linear.weight"], sit["final_layer.linear.bias"]
    for (fh, fw), embed, linear in OFFICIAL[stages][:-1]:
        k = fh * fw
        out[embed + ".weight"] = torch.repeat_interleave(w / k, k, dim=1)
        out[embed + ".bias"] = b.clone()
        out[linear + ".weight"] = torch.repeat_interleave(lw, k, dim=0)
        out[linear + ".bias"] = torch.repeat_interleave(lb, k, dim=0)
    out["level_embedder.embedding_table.weight"] = torch.zeros(stages, D)
    for s, ((fh, fw), _, _) in enumerate(OFFICIAL[stages]):
        out[f"pos_embed.{s}"] = sincos_table(D, np.arange(0, grid, fh), np.arange(0, grid, fw))
    return out
