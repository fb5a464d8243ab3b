"""`PPFluxPipeline`: a drop-in `FluxPipeline` whose transformer is a `PPFluxTransformer`.

Same `__call__` arguments and outputs as diffusers' FluxPipeline. What changes: the unshifted sigma grid keeps
every stage boundary as a grid point (a custom `sigmas` list has the straddled step split), so each step runs
at one patch size; `guidance_scale` and `true_cfg_scale` may be given per stage (a stage whose true-CFG scale is
<= 1 runs no unconditional pass); after a call `stage_stats` holds the steps, forwards and FLOPs per stage.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from diffusers import FluxPipeline
from diffusers.pipelines.flux.pipeline_output import FluxPipelineOutput
from diffusers.utils.torch_utils import get_module_execution_device

from ..sampling.guidance import check_count, check_scales
from ..sampling.sigmas import FluxShift, insert_boundaries, inverse_time_shift, stage_grid, step_stages
from .flops import FluxArch, counts_flops
from .transformer import CONFIG_NAME, PPFluxTransformer, read_ppflux_config, resolve_base


@dataclass
class StageStats:
    """What the last call ran, per stage."""

    stages: list[int]  # stage of each step
    sigmas: list[float]  # shifted sigma the network received at each step
    steps: list[int]  # denoising steps per stage
    forwards: list[int]  # transformer forwards per stage, counted in samples (true-CFG passes included)
    flops: dict = field(default_factory=dict)  # ppflow.flux.flops.counts_flops of those forwards

    @property
    def bound(self) -> float:
        """Speed-up bound over FLUX making the same forwards (all matrix products, text included)."""
        return self.flops["baseline_total"] / self.flops["total"]


def per_stage(value, num_stages: int, name: str) -> list[float]:
    """A scale or one per stage -> one finite float per stage (the CLI's check, ppflow.sampling.check_scales)."""
    values = check_scales(value, f"{name}={value!r}")
    values = [values] * num_stages if isinstance(values, float) else values
    if len(values) != num_stages:
        raise ValueError(f"{name}: {len(values)} values given for {num_stages} stages; give one or one per stage")
    return values


class PPFluxPipeline(FluxPipeline):
    """FluxPipeline with pyramidal patchification; build with `from_pretrained` or from components."""

    def __init__(self, scheduler, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2, transformer,
                 image_encoder=None, feature_extractor=None):
        if not isinstance(transformer, PPFluxTransformer):
            raise TypeError(f"PPFluxPipeline needs a PPFluxTransformer, got {type(transformer).__name__}; "
                            "wrap it with PPFluxTransformer.from_flux(transformer, schedule)")
        super().__init__(scheduler, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2, transformer,
                         image_encoder, feature_extractor)
        self.stage_stats: StageStats | None = None

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, ppflow: str | os.PathLike | None = None, *,
                        schedule: str = "ppf2", init: str = "pooled", verify: bool = True, **kwargs):
        """Load FLUX (hub id or folder) and the PPFlow extras of `ppflow` on top, or wrap it with `from_flux`.

        A PPFlux folder (from `PPFluxTransformer.save_pretrained`) as the first argument loads the base
        pipeline it names. `verify=False` skips the SHA-256 check of the PPFlux weights. Other keywords
        (torch_dtype, revision, ...) go to `FluxPipeline.from_pretrained`.
        """
        path = str(pretrained_model_name_or_path)
        if ppflow is None and os.path.isfile(os.path.join(path, CONFIG_NAME)):
            cfg = read_ppflux_config(path)
            if not cfg.base_model:
                raise ValueError(f"{path} names no base model: pass the FLUX pipeline first and ppflow={path!r}")
            ppflow, path = path, resolve_base(cfg.base_model, path)
        base = FluxPipeline.from_pretrained(path, **kwargs)
        if ppflow is not None:
            transformer = PPFluxTransformer.from_pretrained(ppflow, base=base.transformer, verify=verify)
        else:
            transformer = PPFluxTransformer.from_flux(base.transformer, schedule=schedule, init=init,
                                                      shift=FluxShift.from_scheduler(base.scheduler))
        pipe = cls(**{**base.components, "transformer": transformer})
        pipe.register_to_config(_name_or_path=path)  # the base pipeline, for save_pretrained's reference
        return pipe

    def save_pretrained(self, save_directory: str | os.PathLike, base_model: str | None = None, **_) -> None:
        """Save only the PPFlow extras and a reference to the base FLUX pipeline (never a copy of FLUX).

        `base_model`: hub id or folder of the FLUX pipeline (default: where `from_pretrained` loaded it from).
        `PPFluxPipeline.from_pretrained(save_directory)` loads both back.
        """
        base_model = base_model or self.config.get("_name_or_path") or None
        if not base_model:
            raise ValueError("this pipeline was not loaded with from_pretrained: pass base_model=<FLUX hub id or folder>")
        self.transformer.save_pretrained(save_directory, base_model=str(base_model), base_subfolder="transformer")

    # ------------------------------------------------------------------ helpers
    def _grid_and_stages(self, latent_tokens: int, num_inference_steps: int, sigmas):
        """Unshifted sigma grid with the boundaries on it, the scheduler's mu and the stage of each step."""
        tr = self.transformer
        shift = FluxShift.from_scheduler(self.scheduler)
        mu = shift.mu(latent_tokens)  # what FluxPipeline passes (a dynamic scheduler uses it; a fixed one: log shift)
        # boundaries the network sees, mapped back to the unshifted sigmas of the scheduler's grid
        bounds = [inverse_time_shift(mu, b) for b in tr.sigma_boundaries(latent_tokens)]
        if sigmas is None:
            grid = stage_grid(num_inference_steps, bounds)
        else:
            grid = np.asarray(insert_boundaries(sigmas, bounds))
        return grid, mu, step_stages(grid, bounds)

    @torch.no_grad()
    def __call__(self, prompt=None, prompt_2=None, negative_prompt=None, negative_prompt_2=None,
                 true_cfg_scale: float | Sequence[float] = 1.0, height: int | None = None, width: int | None = None,
                 num_inference_steps: int = 28, sigmas: list[float] | None = None,
                 guidance_scale: float | Sequence[float] = 3.5, num_images_per_prompt: int | None = 1,
                 generator=None, latents=None, prompt_embeds=None, pooled_prompt_embeds=None,
                 ip_adapter_image=None, ip_adapter_image_embeds=None, negative_ip_adapter_image=None,
                 negative_ip_adapter_image_embeds=None, negative_prompt_embeds=None,
                 negative_pooled_prompt_embeds=None, output_type: str | None = "pil", return_dict: bool = True,
                 joint_attention_kwargs=None, callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006 (FluxPipeline's)
                 max_sequence_length: int = 512):
        """FluxPipeline.__call__; `guidance_scale` / `true_cfg_scale` may be lists with one value per stage."""
        tr = self.transformer
        S = tr.schedule.num_stages
        g_scales = per_stage(guidance_scale, S, "guidance_scale")
        cfg_scales = per_stage(true_cfg_scale, S, "true_cfg_scale")
        if sigmas is None:
            num_inference_steps = check_count(num_inference_steps, "num_inference_steps")
        height, width = (v if v is None else check_count(v, name) for v, name in ((height, "height"), (width, "width")))
        if num_images_per_prompt is not None:
            check_count(num_images_per_prompt, "num_images_per_prompt")
        height = height or self.default_sample_size * self.vae_scale_factor
        width = width or self.default_sample_size * self.vae_scale_factor
        self.check_inputs(prompt, prompt_2, height, width, negative_prompt=negative_prompt,
                          negative_prompt_2=negative_prompt_2, prompt_embeds=prompt_embeds,
                          negative_prompt_embeds=negative_prompt_embeds, pooled_prompt_embeds=pooled_prompt_embeds,
                          negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
                          callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
                          max_sequence_length=max_sequence_length)
        self._guidance_scale = g_scales[0] if len(set(g_scales)) == 1 else g_scales
        self._joint_attention_kwargs = joint_attention_kwargs
        self._current_timestep = None
        self._interrupt = False
        batch_size = 1 if isinstance(prompt, str) else len(prompt) if prompt is not None else prompt_embeds.shape[0]
        device = self._execution_device
        lora_scale = self.joint_attention_kwargs.get("scale", None) if self.joint_attention_kwargs else None
        has_neg = negative_prompt is not None or (negative_prompt_embeds is not None
                                                  and negative_pooled_prompt_embeds is not None)
        stage_cfg = [has_neg and s > 1 for s in cfg_scales]  # FluxPipeline's rule, per stage
        prompt_embeds, pooled_prompt_embeds, text_ids = self.encode_prompt(
            prompt=prompt, prompt_2=prompt_2, prompt_embeds=prompt_embeds, pooled_prompt_embeds=pooled_prompt_embeds,
            device=device, num_images_per_prompt=num_images_per_prompt, max_sequence_length=max_sequence_length,
            lora_scale=lora_scale)
        if any(stage_cfg):
            negative_prompt_embeds, negative_pooled_prompt_embeds, negative_text_ids = self.encode_prompt(
                prompt=negative_prompt, prompt_2=negative_prompt_2, prompt_embeds=negative_prompt_embeds,
                pooled_prompt_embeds=negative_pooled_prompt_embeds, device=device,
                num_images_per_prompt=num_images_per_prompt, max_sequence_length=max_sequence_length,
                lora_scale=lora_scale)
        latents, latent_image_ids = self.prepare_latents(
            batch_size * num_images_per_prompt, tr.config.in_channels // 4, height, width, prompt_embeds.dtype,
            device, generator, latents)
        B, L = latents.shape[:2]
        grid = (height // (self.vae_scale_factor * 2), width // (self.vae_scale_factor * 2))  # packed token grid
        if grid[0] * grid[1] != L:
            raise ValueError(f"latents hold {L} packed tokens, not the {grid[0]}x{grid[1]} of a {height}x{width} image")
        for s, (fh, fw) in enumerate(tr.factors(k) for k in range(S)):
            if grid[0] % fh or grid[1] % fw:
                step = 2 * self.vae_scale_factor
                raise ValueError(f"{height}x{width} px is not a multiple of stage {s}'s {fh * step}x{fw * step} px "
                                 f"patches ({tr.schedule.stages[s].patch[0]}x{tr.schedule.stages[s].patch[1]} "
                                 "latent pixels); choose a height and width that are")

        unshifted, mu, stages = self._grid_and_stages(L, num_inference_steps, sigmas)
        if getattr(self.scheduler.config, "use_flow_sigmas", False):
            raise ValueError("schedulers with use_flow_sigmas pick their own sigmas; PPFluxPipeline needs the grid")
        self.scheduler.set_timesteps(sigmas=list(unshifted), device=device, mu=mu)
        timesteps = self.scheduler.timesteps
        self._num_timesteps = len(timesteps)
        guidance = {s: torch.full([B], g, device=device, dtype=torch.float32) for s, g in enumerate(g_scales)}
        if not tr.config.guidance_embeds:
            guidance = dict.fromkeys(range(S))

        image_embeds = negative_image_embeds = None
        if ip_adapter_image is not None or ip_adapter_image_embeds is not None or \
                negative_ip_adapter_image is not None or negative_ip_adapter_image_embeds is not None:
            image_embeds, negative_image_embeds = self._ip_adapter_embeds(
                ip_adapter_image, ip_adapter_image_embeds, negative_ip_adapter_image,
                negative_ip_adapter_image_embeds, width, height, device, B)
        if self.joint_attention_kwargs is None:
            self._joint_attention_kwargs = {}

        forwards = [0] * S
        self.scheduler.set_begin_index(0)
        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                s = stages[i]
                self._current_timestep = t
                if image_embeds is not None:
                    self._joint_attention_kwargs["ip_adapter_image_embeds"] = image_embeds
                timestep = t.expand(B).to(latents.dtype)
                with tr.cache_context("cond"):
                    noise_pred = tr(hidden_states=latents, timestep=timestep / 1000, guidance=guidance[s],
                                    pooled_projections=pooled_prompt_embeds, encoder_hidden_states=prompt_embeds,
                                    txt_ids=text_ids, img_ids=latent_image_ids,
                                    joint_attention_kwargs=self.joint_attention_kwargs, return_dict=False,
                                    stage=s, grid=grid)[0]
                forwards[s] += B
                if stage_cfg[s]:
                    if negative_image_embeds is not None:
                        self._joint_attention_kwargs["ip_adapter_image_embeds"] = negative_image_embeds
                    with tr.cache_context("uncond"):
                        neg = tr(hidden_states=latents, timestep=timestep / 1000, guidance=guidance[s],
                                 pooled_projections=negative_pooled_prompt_embeds,
                                 encoder_hidden_states=negative_prompt_embeds, txt_ids=negative_text_ids,
                                 img_ids=latent_image_ids, joint_attention_kwargs=self.joint_attention_kwargs,
                                 return_dict=False, stage=s, grid=grid)[0]
                    forwards[s] += B
                    noise_pred = neg + cfg_scales[s] * (noise_pred - neg)
                latents = self.scheduler.step(noise_pred, t, latents, return_dict=False)[0]
                if callback_on_step_end is not None:
                    local = {"latents": latents, "prompt_embeds": prompt_embeds}
                    outputs = callback_on_step_end(self, i, t, {k: local[k] for k in callback_on_step_end_tensor_inputs})
                    latents = outputs.pop("latents", latents)
                    prompt_embeds = outputs.pop("prompt_embeds", prompt_embeds)
                progress_bar.update()
        self._current_timestep = None

        arch = FluxArch.from_config(tr.config)
        self.stage_stats = StageStats(
            stages=list(stages), sigmas=[float(v) for v in self.scheduler.sigmas[:-1]],
            steps=[stages.count(k) for k in range(S)], forwards=forwards,
            flops=counts_flops(arch, tr.schedule, grid, prompt_embeds.shape[1], forwards))
        if output_type == "latent":
            image = latents
        else:
            latents = self._unpack_latents(latents, height, width, self.vae_scale_factor)
            latents = (latents / self.vae.config.scaling_factor) + self.vae.config.shift_factor
            image = self.vae.decode(latents.to(get_module_execution_device(self.vae)), return_dict=False)[0]
            image = self.image_processor.postprocess(image, output_type=output_type)
        self.maybe_free_model_hooks()
        return FluxPipelineOutput(images=image) if return_dict else (image,)

    def _ip_adapter_embeds(self, image, embeds, neg_image, neg_embeds, width, height, device, batch):
        """FluxPipeline's IP-Adapter preparation (a missing side gets a black image)."""
        n = getattr(getattr(self.transformer.base, "encoder_hid_proj", None), "num_ip_adapters", 1)
        if (image is not None or embeds is not None) and neg_image is None and neg_embeds is None:
            neg_image = [np.zeros((width, height, 3), dtype=np.uint8)] * n
        elif image is None and embeds is None and (neg_image is not None or neg_embeds is not None):
            image = [np.zeros((width, height, 3), dtype=np.uint8)] * n
        pos = self.prepare_ip_adapter_image_embeds(image, embeds, device, batch)
        neg = self.prepare_ip_adapter_image_embeds(neg_image, neg_embeds, device, batch)
        return pos, neg
