"""The config of a PPFlow adapter's distillation on a diffusers transformer (`ppflow flux adapt`).

Apart from distill.py so that building the command line (`--help`) needs no diffusers import.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...train.run_config import RunConfig, _opt
from .stages import BOUNDARY_RULES


@dataclass
class AdapterSection:
    """The PPFlow adapter and where its teacher's calls come from."""

    base: str | None = _opt(None, "folder (or hub id) of the diffusers transformer to adapt (the teacher)")
    calls: str | None = _opt(None, "file of the teacher's recorded calls (record_calls + save_calls)")
    schedule: str = _opt("ppf2", "stage plan; its finest stage is the base itself")
    rank: int = _opt(16, "stage-gated LoRA rank (0: projections and stage embedding only)", min=0)
    alpha: float = _opt(0.0, "LoRA alpha (0: alpha = rank)")
    targets: list[str] = field(default_factory=list, metadata={"help": "LoRA target suffixes (default: the family's)"})
    coarse_output: str = _opt("v", "what coarse stages emit: v | noise_skip (FLUX)", choices=("v", "noise_skip"))
    boundaries: str = _opt("unshifted", "stage boundary rule: unshifted | sigma", choices=BOUNDARY_RULES)
    positions: str = _opt("", "coarse tokens' RoPE positions: centre (of the fine tokens they cover) | grid; "
                              "default: the family's (centre, Qwen-Image: grid)", choices=("", "centre", "grid"))
    shift: dict = field(default_factory=dict, metadata={"help": "the sampler's time shift (FluxShift fields; "
                                                                "default: the recording pipeline's scheduler's, "
                                                                "else FLUX.1-dev's)"})
    guided: float | None = _opt(None, "distil the pipeline's CFG at this scale into the conditional coarse stage: "
                                      "consecutive recorded calls on the same latents and timestep are a "
                                      "(conditional, unconditional) pair, the conditional call learns u + s (c - u) "
                                      "and the unconditional one is dropped; sampled with the pipeline's CFG as "
                                      "usual, coarse steps then run no unconditional forward")
    base_dtype: str = _opt("auto", "dtype the frozen base is loaded in (the adapter trains in fp32): auto = bf16 on "
                                   "CUDA unless precision is fp32, else fp32 (FLUX.1-dev in fp32 is 48 GB)",
                           choices=("auto", "fp32", "bf16", "fp16"))
    pipeline: str | None = _opt(None, "diffusers pipeline (folder or hub id) that records the teacher's calls from "
                                      "--adapter.prompts when adapter.calls does not exist yet; its transformer is "
                                      "the base unless adapter.base is set")
    prompts: str | None = _opt(None, "text file, one prompt per line: what the teacher samples (no images needed)")
    record_steps: list[int] = field(default_factory=lambda: [28], metadata={
        "help": "sampling steps of the recording runs, cycled over the prompt batches (several: more noise levels)"})
    record_batch: int = _opt(1, "prompts per recording pipeline call", min=1)
    guidance: float | None = _opt(None, "guidance_scale the recording pipeline gets (default: the pipeline's own)")
    height: int | None = _opt(None, "image height of the recording runs (default: the pipeline's)", min=16)
    width: int | None = _opt(None, "image width of the recording runs (default: the pipeline's)", min=16)
    record_kwargs: dict = field(default_factory=dict, metadata={
        "help": "other keyword arguments of the recording pipeline calls, e.g. {max_sequence_length: 256}"})


@dataclass
class DistillConfig(RunConfig):
    """Distil a PPFlow adapter on a diffusers transformer from its recorded calls."""

    adapter: AdapterSection = field(default_factory=AdapterSection)

    def checks(self) -> list[tuple[bool, str]]:
        a = self.adapter
        return [*super().checks(),
                (a.base is not None or a.pipeline is not None,
                 "adapter.base is not set: the transformer to adapt (or --adapter.pipeline, which records it)"),
                (a.calls is not None or (a.pipeline is not None and a.prompts is not None),
                 ("adapter.calls is not set: the recorded teacher calls, or --adapter.pipeline with "
                  "--adapter.prompts to record them")),
                (all(n >= 1 for n in a.record_steps), f"adapter.record_steps must be >= 1, got {a.record_steps}")]
