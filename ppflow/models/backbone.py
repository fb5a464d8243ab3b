"""The PPFlow transformer: one shared DiT backbone, per-stage patchify/unpatchify.

A SiT/DiT baseline is this same class with the one-stage `sit` schedule.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..io import HASH_KEY, content_sha256, save_safetensors_atomic, write_text_atomic
from .layers import DiTBlock, LabelEmbedder, Packing, TimestepEmbedder, sincos_2d
from .output import OUTPUTS, pooling_ratio, snr_scale, snr_time, to_velocity
from .patchify import PatchEmbed, Unpatchify, average_init, copy_init
from .schedule import PyramidSchedule

WEIGHTS = "model.safetensors"  # a ppflow folder: these two files
CONFIG = "config.json"
FORMAT_TAG = "ppflow"
TIME_MAPS = ("identity", "dit")
STAGE_INITS = ("independent", "pooled")


@dataclass
class ModelConfig:
    """Architecture of a PPFlow (or one-stage SiT/DiT) model."""

    depth: int = 12  # number of DiT blocks
    hidden_size: int = 768  # token width D
    num_heads: int = 12  # attention heads (head dim = D / heads)
    mlp_ratio: float = 4.0  # MLP hidden = mlp_ratio * D, as DiT
    in_channels: int = 4  # latent channels C (SD-VAE: 4)
    input_size: tuple[int, int] = (32, 32)  # default latent (H, W); other sizes work if divisible
    num_classes: int = 1000  # 0 = unconditional; a null row is always added for CFG
    learn_sigma: bool = True  # emit 2C channels like DiT/SiT/PPFlow releases; velocity = first C
    schedule: str = "ppf2"  # pyramid schedule: preset name or 't_end:ROWSxCOLS,...'
    level_embedding: bool | None = None  # learned stage embedding; None = only with >1 stage
    level_init_std: float = 0.02  # official PPFlow init of the level embedding (adaptation uses 0)
    time_map: str = "identity"  # what the t-embedder sees: 'identity' (flow t) or 'dit' (999*(1-t))
    coarse_output: str = "v"  # what coarse stages emit: 'v' (paper) | 'x' (clean sample) | 'noise_skip' | 'snr' (models/output.py)
    stage_init: str = "independent"  # from-scratch init of coarse projections: 'independent' (official) | 'pooled' (finest's, average/copy)
    vae: str | None = None  # diffusers AutoencoderKL (hub name or folder) for latent models; None = pixel space
    name: str = ""  # display name, e.g. 'PPF-B-2'

    def __post_init__(self) -> None:
        size = self.input_size
        self.input_size = (int(size), int(size)) if isinstance(size, int) else tuple(int(v) for v in size)
        if isinstance(self.schedule, PyramidSchedule):
            self.schedule = self.schedule.to_string() if self.schedule.base_patch == self.schedule.stages[-1].patch else json.dumps(self.schedule.to_dict())
        if self.time_map not in TIME_MAPS:
            raise ValueError(f"time_map {self.time_map!r} is not one of {TIME_MAPS}")
        if self.stage_init not in STAGE_INITS:
            raise ValueError(f"stage_init {self.stage_init!r} is not one of {STAGE_INITS}")
        if self.coarse_output not in OUTPUTS:
            raise ValueError(f"coarse_output {self.coarse_output!r} is not one of {OUTPUTS}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}; pass num_heads=..."
            )
        self.get_schedule().check_latent(*self.input_size)

    def get_schedule(self) -> PyramidSchedule:
        s = self.schedule
        return PyramidSchedule.from_config(json.loads(s) if s.lstrip().startswith("{") else s)

    @property
    def out_channels(self) -> int:
        return self.in_channels * (2 if self.learn_sigma else 1)

    @property
    def use_level_embedding(self) -> bool:
        return self.get_schedule().num_stages > 1 if self.level_embedding is None else self.level_embedding

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["input_size"] = list(self.input_size)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys {sorted(unknown)}; known keys: {sorted(known)}")
        return cls(**d)


class FinalLayer(nn.Module):
    """adaLN (shared across stages) followed by a per-stage unpatchify projection."""

    def __init__(self, dim: int, patches: tuple[tuple[int, int], ...], out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.unpatchify = nn.ModuleList(Unpatchify(dim, p, out_channels) for p in patches)

    def forward(self, x: torch.Tensor, c: torch.Tensor, packing: Packing) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)  # (N, D) each
        return packing.modulate(self.norm_final(x), shift, scale)  # (T, D)


class PPFlowTransformer(nn.Module):
    """`model(x, t, y) -> velocity` at full latent resolution for any mix of stages in a batch."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.schedule = config.get_schedule()
        D, C = config.hidden_size, config.in_channels
        self.x_embedder = nn.ModuleList(PatchEmbed(C, p, D) for p in self.schedule.patches)
        self.t_embedder = TimestepEmbedder(D)
        self.y_embedder = LabelEmbedder(config.num_classes, D) if config.num_classes > 0 else None
        self.level_embedder = nn.Embedding(self.schedule.num_stages, D) if config.use_level_embedding else None
        self.blocks = nn.ModuleList(
            DiTBlock(D, config.num_heads, config.mlp_ratio) for _ in range(config.depth)
        )
        self.final_layer = FinalLayer(D, self.schedule.patches, config.out_channels)
        self._pos_cache: dict = {}
        self.initialize_weights()

    # ------------------------------------------------------------------ init
    def initialize_weights(self) -> None:
        """DiT initialization: xavier linears, N(0, .02) embeddings, zero adaLN and output."""

        def _basic(m: nn.Module) -> None:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

        self.apply(_basic)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        if self.level_embedder is not None:
            nn.init.normal_(self.level_embedder.weight, std=self.config.level_init_std)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        for unp in self.final_layer.unpatchify:
            nn.init.zeros_(unp.linear.weight)
            nn.init.zeros_(unp.linear.bias)
        if self.config.stage_init == "pooled":
            self._pool_coarse_projections()

    @torch.no_grad()
    def _pool_coarse_projections(self) -> None:
        """Coarse projections from the finest stage's (adaptation's average/copy init): one token dialect at step 0."""
        fine, C, O = self.schedule.stages[-1].patch, self.config.in_channels, self.config.out_channels
        fine_in, fine_out = self.x_embedder[-1].proj, self.final_layer.unpatchify[-1].linear
        for s in range(self.schedule.num_stages - 1):
            ph, pw = self.schedule.stages[s].patch
            if ph % fine[0] or pw % fine[1]:
                raise ValueError(f"stage_init 'pooled' needs each stage patch to be a multiple of the finest "
                                 f"{fine}; stage {s} has {(ph, pw)} (use stage_init 'independent')")
            f = (ph // fine[0], pw // fine[1])
            self.x_embedder[s].proj.weight.copy_(average_init(fine_in.weight, fine, f, C))
            self.x_embedder[s].proj.bias.copy_(fine_in.bias)
            self.final_layer.unpatchify[s].linear.weight.copy_(copy_init(fine_out.weight, fine, f, O))
            self.final_layer.unpatchify[s].linear.bias.copy_(copy_init(fine_out.bias, fine, f, O))

    # --------------------------------------------------------------- helpers
    @property
    def null_label(self) -> int | None:
        return None if self.y_embedder is None else self.y_embedder.null_label

    def pos_embed(self, stage: int, height: int, width: int, device: torch.device) -> torch.Tensor:
        """Fixed sin-cos table of a stage's token grid, coordinates in base-patch units, (L, D)."""
        key = (stage, height, width, str(device))
        if key not in self._pos_cache:
            ph, pw = self.schedule.stages[stage].patch
            fh, fw = self.schedule.factors(stage)
            rows = torch.arange(height // ph) * fh
            cols = torch.arange(width // pw) * fw
            self._pos_cache[key] = sincos_2d(self.config.hidden_size, rows, cols).to(device)
        return self._pos_cache[key]

    def time_input(self, t: torch.Tensor) -> torch.Tensor:
        """The value the timestep embedder sees for flow time t (see ModelConfig.time_map)."""
        if self.config.time_map == "dit":
            return 999.0 * (1.0 - t)
        return t

    def stage_time(self, t: torch.Tensor, stage: torch.Tensor) -> torch.Tensor:
        """The time a stage's backbone is conditioned on: t, or with coarse_output 'snr' its pooled tokens' time."""
        if self.config.coarse_output != "snr":
            return t
        ratios = torch.tensor([pooling_ratio(self.schedule.factors(s)) for s in range(self.schedule.num_stages)],
                              device=t.device, dtype=t.dtype)
        return snr_time(t, ratios[stage])  # (N,)

    def conditioning(self, t: torch.Tensor, y: torch.Tensor | None, stage: torch.Tensor) -> torch.Tensor:
        """c = t_emb + y_emb + level_emb[stage], (N, D)."""
        c = self.t_embedder(self.time_input(self.stage_time(t, stage)))  # (N, D)
        if self.y_embedder is not None:
            if y is None:
                y = torch.full_like(stage, self.y_embedder.null_label)
            c = c + self.y_embedder(y)  # (N, D)
        if self.level_embedder is not None:
            c = c + self.level_embedder(stage)  # (N, D)
        return c

    # --------------------------------------------------------------- forward
    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor | float,
        y: torch.Tensor | None = None,
        stage: torch.Tensor | int | None = None,
        full_output: bool = False,
    ) -> torch.Tensor:
        """Velocity (N, C, H, W) for latents x (N, C, H, W) at times t (N,) with labels y (N,).

        `stage` overrides the stage chosen from t (samplers use it to keep a whole
        step at one patch size); `full_output` returns all 2C learn_sigma channels.
        """
        N, C, H, W = x.shape
        if C != self.config.in_channels:
            raise ValueError(f"input has {C} channels but the model expects {self.config.in_channels}")
        if (H, W) != self.config.input_size:
            self.schedule.check_latent(H, W)
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32)
        if t.dim() == 0:
            t = t.expand(N)  # (N,)
        if stage is None:
            stage = self.schedule.stage_of(t)
        else:
            stage = torch.as_tensor(stage, device=x.device, dtype=torch.long).expand(N)
        c = self.conditioning(t, y, stage)  # (N, D)

        counts = torch.bincount(stage, minlength=self.schedule.num_stages).tolist()
        present = [s for s, n in enumerate(counts) if n]
        if len(present) == 1:
            order = None
            parts = [(present[0], x)]
            ts = [t]
        else:
            order = torch.argsort(stage, stable=True)  # samples grouped by stage
            sizes = [counts[s] for s in present]
            xs = x.index_select(0, order).split(sizes)
            parts = list(zip(present, xs))
            ts = t.index_select(0, order).split(sizes)
            c = c.index_select(0, order)  # (N, D) in packed order

        tokens, groups = [], []
        for (s, xg), tg in zip(parts, ts):
            if self.config.coarse_output == "snr" and self.schedule.factors(s) != (1, 1):
                k = snr_scale(tg, pooling_ratio(self.schedule.factors(s)))  # (n,)
                xg = xg * k.to(xg.dtype).view(-1, 1, 1, 1)  # (n, C, H, W) pooled noise at its own level
            emb = self.x_embedder[s](xg) + self.pos_embed(s, H, W, x.device).to(xg.dtype)  # (n, L, D)
            groups.append((emb.shape[0], emb.shape[1]))
            tokens.append(emb.reshape(-1, emb.shape[-1]))  # (n*L, D)
        packing = Packing(tuple(groups))
        h = tokens[0] if len(tokens) == 1 else torch.cat(tokens, 0)  # (T, D)

        for block in self.blocks:
            h = block(h, c, packing)  # (T, D)
        h = self.final_layer(h, c, packing)  # (T, D)

        outs = []
        for (s, xg), tg, (start, n, length) in zip(parts, ts, packing.segments()):
            tok = h[start : start + n * length].view(n, length, -1)  # (n, L, D)
            out = self.final_layer.unpatchify[s](tok, H, W)  # (n, O, H, W)
            if self.config.coarse_output != "v":
                v = to_velocity(out[:, :C], xg, tg, self.schedule.factors(s), self.config.coarse_output)  # (n, C, H, W)
                out = torch.cat([v, out[:, C:]], 1) if self.config.learn_sigma else v  # (n, O, H, W)
            outs.append(out)
        if order is None:
            out = outs[0]
        else:
            out = torch.empty((N, *outs[0].shape[1:]), dtype=outs[0].dtype, device=x.device)
            out.index_copy_(0, order, torch.cat(outs, 0))  # (N, O, H, W) original order
        if self.config.learn_sigma and not full_output:
            out = out[:, :C]
        return out

    # ----------------------------------------------------------------- save
    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write `model.safetensors` (the SHA-256 of its tensors in the metadata) and `config.json` atomically into
        `directory`: a folder `ppflow.load_model` reads."""
        directory = Path(directory)
        state = self.state_dict()
        save_safetensors_atomic(state, directory / WEIGHTS, {"format": FORMAT_TAG, HASH_KEY: content_sha256(state)})
        write_text_atomic(directory / CONFIG, json.dumps({"format": FORMAT_TAG, **self.config.to_dict()}, indent=2),
                          "model config")
        return directory

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
