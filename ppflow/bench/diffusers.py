"""`ppflow bench diffusers`: the PPFlow hook, alone and stacked with diffusers' cache hooks, on random FLUX and
Wan transformers inside their own diffusers pipelines (FluxPipeline, WanPipeline; latents out, text embeddings
given, so the transformer is what runs). Per subject: wall time (alternating, median), the FLOPs a whole call
executed (torch's FlopCounterMode, cache skips included) and the speed-up and FLOPs bound against the plain
pipeline. Random weights: speed only, no quality (a cache's skip decisions on random weights say nothing).
"""

from __future__ import annotations

import copy
import re
import time
from dataclasses import asdict, dataclass

import torch

from .timing import alternate, executed_flops, say

CACHES = ("taylorseer", "first_block")


@dataclass
class DiffusersBenchConfig:
    families: tuple[str, ...] = ("flux", "wan")
    flux_schedule: str = "ppf2"
    wan_schedule: str = "ppf3-video"
    caches: tuple[str, ...] = ("taylorseer",)
    steps: int = 20
    repeats: int = 3
    warmup: int = 1
    seed: int = 0
    threads: int | None = None
    tiny: bool = False  # tests: small models and sizes, seconds in all


def flux_pipe(seed: int, tiny: bool = False):
    """FluxPipeline around a random 2+4-block FLUX (width 256) at 512 px (1024 image tokens); no text/VAE parts."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(seed)
    tr = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1 if tiny else 2,
                                num_single_layers=1 if tiny else 4, attention_head_dim=64,
                                num_attention_heads=1 if tiny else 4, joint_attention_dim=256,
                                pooled_projection_dim=128, guidance_embeds=True, axes_dims_rope=(16, 24, 24)).eval()
    sched = FlowMatchEulerDiscreteScheduler(base_image_seq_len=256, max_image_seq_len=4096, base_shift=0.5,
                                            max_shift=1.15, shift=3.0, use_dynamic_shifting=True)
    pipe = FluxPipeline(scheduler=sched, vae=None, text_encoder=None, tokenizer=None, text_encoder_2=None,
                        tokenizer_2=None, transformer=tr)
    g = torch.Generator().manual_seed(seed)
    call = {"prompt_embeds": torch.randn(1, 64, 256, generator=g), "pooled_prompt_embeds": torch.randn(1, 128, generator=g),
            "height": 128 if tiny else 512, "width": 128 if tiny else 512, "output_type": "latent"}
    return pipe, call


def wan_pipe(seed: int, tiny: bool = False):
    """WanPipeline around a random 2-block Wan (width 256): 8 latent frames of 32x32 (2048 tokens), CFG 5."""
    from diffusers import UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel

    torch.manual_seed(seed)
    tr = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=1 if tiny else 4, attention_head_dim=64,
                               in_channels=16, out_channels=16, text_dim=256, freq_dim=64, ffn_dim=1024,
                               num_layers=1 if tiny else 2).eval()
    sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=None, scheduler=sched, transformer=tr)
    g = torch.Generator().manual_seed(seed)
    call = {"prompt_embeds": torch.randn(1, 32, 256, generator=g),
            "negative_prompt_embeds": torch.randn(1, 32, 256, generator=g), "guidance_scale": 5.0,
            "height": 64 if tiny else 256, "width": 64 if tiny else 256, "num_frames": 13 if tiny else 29,
            "output_type": "latent"}
    return pipe, call


BUILDERS = {"flux": flux_pipe, "wan": wan_pipe}


# name -> {key: (config field, type, default)}: the cache hooks ppflow measures with PPFlow (bench diffusers,
# flux stack) and the settings a spec "name:key=value,key=value" may change
CACHE_KEYS = {
    # every other step predicted after 3 computed ones: weight-independent skips
    "taylorseer": {"interval": ("cache_interval", int, 2), "warmup": ("disable_cache_before_step", int, 3),
                   "order": ("max_order", int, 1), "stop": ("disable_cache_after_step", int, None),
                   "scope": (None, str, "attn")},
    "first_block": {"threshold": ("threshold", float, 0.05)},
}
# TaylorSeer's scope: which modules it predicts (attn: diffusers' default, the attention modules; blocks: whole
# transformer blocks, so nothing of a block runs on a predicted step; lite: diffusers' lite mode)
TAYLORSEER_SCOPES = {"attn": None, "blocks": [r"^(transformer_blocks|single_transformer_blocks|blocks)\.\d+$"],
                     "lite": None}


def parse_cache(spec: str) -> tuple[str, dict]:
    """"taylorseer:interval=3,warmup=1" (pairs split by "," or ":") -> ("taylorseer", {"interval": 3, "warmup": 1})."""
    name, _, rest = spec.strip().partition(":")
    name = name.strip()
    if name not in CACHE_KEYS:
        raise ValueError(f"unknown cache {name!r}; choose from {', '.join(CACHE_KEYS)}")
    keys, values = CACHE_KEYS[name], {}
    for pair in filter(None, (p.strip() for p in re.split(r"[,:]", rest))):
        key, eq, value = (x.strip() for x in pair.partition("="))
        if key not in keys:
            raise ValueError(f"cache {name!r}: unknown key {key!r}; choose from {', '.join(keys)}")
        if not eq or not value:
            raise ValueError(f"cache {name!r}: {pair!r} is not key=value")
        try:
            values[key] = keys[key][1](value)
        except ValueError:
            raise ValueError(f"cache {name!r}: {key}={value!r} cannot be read as {keys[key][1].__name__}") from None
    if name == "taylorseer":
        if values.get("scope", "attn") not in TAYLORSEER_SCOPES:
            raise ValueError(f"cache 'taylorseer': scope {values['scope']!r}; choose from "
                             f"{', '.join(TAYLORSEER_SCOPES)}")
        if values.get("interval", 2) < 1 or values.get("warmup", 3) < 1 or values.get("order", 1) < 1:
            raise ValueError("cache 'taylorseer': interval, warmup and order must be >= 1 (step 0 is computed)")
    return name, values


def split_caches(text: str) -> tuple[str, ...]:
    """A comma-separated list of cache specs; a piece "key=value" without a name continues the spec before it:
    "taylorseer:interval=3,warmup=1,first_block" -> ("taylorseer:interval=3,warmup=1", "first_block")."""
    out: list[str] = []
    for piece in filter(None, (p.strip() for p in text.split(","))):
        if "=" in piece and ":" not in piece and out:
            out[-1] += "," + piece
        else:
            out.append(piece)
    for spec in out:
        parse_cache(spec)
    return tuple(out)


def cache_config(spec: str):
    """The diffusers cache config of a spec: a name of CACHE_KEYS with its defaults, or "name:key=value,..."."""
    import diffusers

    name, values = parse_cache(spec)
    kw = {field: values.get(key, default) for key, (field, _, default) in CACHE_KEYS[name].items() if field}
    if name == "taylorseer":
        scope = values.get("scope", "attn")
        return diffusers.TaylorSeerCacheConfig(**kw, taylor_factors_dtype=torch.float32,
                                               cache_identifiers=TAYLORSEER_SCOPES[scope],
                                               use_lite_mode=scope == "lite")
    return diffusers.FirstBlockCacheConfig(**kw)


def subjects(family: str, cfg: DiffusersBenchConfig) -> dict[str, tuple]:
    """label -> (schedule or None, cache or None)."""
    sched = cfg.flux_schedule if family == "flux" else cfg.wan_schedule
    out = {"base": (None, None), sched: (sched, None)}
    for c in cfg.caches:
        out[f"base+{c}"] = (None, c)
        out[f"{sched}+{c}"] = (sched, c)
    return out


def bench_diffusers(cfg: DiffusersBenchConfig, log=None) -> dict:
    from ..integrations.diffusers import apply

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rows = []
    for family in cfg.families:
        if family not in BUILDERS:
            raise ValueError(f"unknown family {family!r}; choose from {sorted(BUILDERS)}")
        pipe0, call = BUILDERS[family](cfg.seed, cfg.tiny)
        pipes = {}
        for label, (sched, cache) in subjects(family, cfg).items():
            pipe = type(pipe0)(**{**pipe0.components, "transformer": copy.deepcopy(pipe0.transformer),
                                  "scheduler": copy.deepcopy(pipe0.scheduler)})
            pipe.set_progress_bar_config(disable=True)
            if sched:
                apply(pipe, sched)
            if cache:
                pipe.transformer.enable_cache(cache_config(cache))
            pipes[label] = pipe

        def run(label: str, r: int, pipes=pipes, call=call) -> float:
            g = torch.Generator().manual_seed(cfg.seed)
            start = time.perf_counter()
            with torch.no_grad():
                pipes[label](**call, num_inference_steps=cfg.steps, generator=g)
            return time.perf_counter() - start

        flops = {label: executed_flops(pipe, **call, num_inference_steps=cfg.steps,
                                       generator=torch.Generator().manual_seed(cfg.seed))
                 for label, pipe in pipes.items()}
        say(log, f"bench diffusers: {family}: timing {len(pipes)} subjects, {cfg.steps} steps")
        timings = alternate(list(pipes), run, cfg.repeats, cfg.warmup, name=f"bench diffusers {family}", log=log)
        base_s = timings.summary("base")["seconds"]
        for label, (sched, cache) in subjects(family, cfg).items():
            s = timings.summary(label)["seconds"]
            rows.append({"family": family, "schedule": sched or "base", "cache": cache, "seconds": s,
                         "speedup": base_s / s, "flops": flops[label], "flops_bound": flops["base"] / flops[label],
                         "frame_accuracy" if family == "wan" else "prompt_accuracy": None, "fid": None,
                         **({"direction_accuracy": None} if family == "wan" else {}),
                         "base": label == "base", "times": timings.times[label]})
    return {"config": asdict(cfg), "torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows}


def format_table(result: dict) -> str:
    lines = ["| family | schedule | cache | seconds | speed-up | FLOPs bound | GFLOPs per call |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['family']} | {r['schedule']} | {r['cache'] or '-'} | {r['seconds']:.2f} | "
                     f"{r['speedup']:.2f} | {r['flops_bound']:.2f} | {r['flops'] / 1e9:.1f} |")
    return "\n".join(lines)
