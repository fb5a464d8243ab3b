"""`PPFlowPipeline`: class-conditional sampling of a ppflow model in diffusers' pipeline shape (as DiTPipeline).

    pipe = PPFlowPipeline.from_model(ppflow.load_model("PPF-XL-2"))        # + the VAE its config names
    images = pipe(class_labels=[207, 360], num_inference_steps=50, guidance_scale=[1.0, 3.0]).images
    pipe.save_pretrained("ppf-xl-2-pipe"); PPFlowPipeline.from_pretrained("ppf-xl-2-pipe")

Components: `transformer` (PPFlowTransformer2DModel, a ppflow folder on disk), `vae` (diffusers AutoencoderKL, or
None for pixel-space models), `scheduler` (PPFlowSampler: solver settings). The images are exactly those of
`ppflow.sampling.sample_model` on the same noise, decoded by `vae.decode(latents / scaling_factor)`.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DiffusionPipeline, ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

from ..models.backbone import PPFlowTransformer
from ..sampling import check_count, check_scales, sample_model
from .sampler import PPFlowSampler
from .transformer import PPFlowTransformer2DModel

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


class PPFlowPipeline(DiffusionPipeline):
    """Transformer + optional AutoencoderKL + ppflow sampler; `__call__` draws class-conditional images."""

    model_cpu_offload_seq = "transformer->vae"
    _optional_components = ["vae"]  # noqa: RUF012 (diffusers declares it as a plain class list)

    def __init__(self, transformer: PPFlowTransformer2DModel, scheduler: PPFlowSampler,
                 vae: AutoencoderKL | None = None) -> None:
        super().__init__()
        if not isinstance(transformer, PPFlowTransformer2DModel):
            transformer = PPFlowTransformer2DModel.from_model(transformer)
        self.register_modules(transformer=transformer, scheduler=scheduler, vae=vae)

    @classmethod
    def from_model(cls, model: PPFlowTransformer, vae: AutoencoderKL | str | None = "config", *,
                   local_files_only: bool = False, **sampler_settings) -> PPFlowPipeline:
        """A pipeline around a loaded model; `vae`: an AutoencoderKL, a hub name / folder, None (pixel model), or
        'config' (default: the VAE named in model.config.vae, none when it names none)."""
        if vae == "config":
            vae = model.config.vae
        if isinstance(vae, str):
            from ..data.vae import load_vae

            vae = load_vae(vae, local_files_only=local_files_only).vae
        return cls(PPFlowTransformer2DModel.from_model(model), PPFlowSampler(**sampler_settings), vae)

    def _labels(self, class_labels, batch: int | None, device: torch.device) -> torch.Tensor | None:
        nc = self.transformer.config.num_classes
        if class_labels is None:
            if nc:
                raise ValueError(f"this model is class-conditional ({nc} classes): pass class_labels=[...]")
            return None
        if not nc:
            raise ValueError("this model is unconditional: pass class_labels=None and batch_size=N")
        y = torch.as_tensor(class_labels if not isinstance(class_labels, int) else [class_labels], dtype=torch.long)
        y = y.reshape(-1)
        if y.numel() == 0 or int(y.min()) < 0 or int(y.max()) >= nc:
            raise ValueError(f"class_labels must be class indices in 0..{nc - 1}, got {y.tolist()[:8]}")
        return y.to(device)

    @torch.no_grad()
    def __call__(self, class_labels=None, num_inference_steps: int = 50,
                 guidance_scale: float | list[float] = 1.0, generator: torch.Generator | None = None,
                 method: str | None = None, output_type: str = "pil", return_dict: bool = True,
                 latents: torch.Tensor | None = None, batch_size: int = 1, height: int | None = None,
                 width: int | None = None) -> ImagePipelineOutput | tuple:
        """Sample one image per label (unconditional models: `batch_size` images).

        `guidance_scale`: one CFG scale or one per stage, noisiest first (a stage at 1 skips its unconditional
        pass). `method`: 'euler', 'heun', 'dopri5', 'sde' (default: the scheduler's). `latents`: the starting
        noise (N, C, H, W) instead of drawing it from `generator`. `height`/`width`: latent size (default: the
        model's). `output_type`: 'pil', 'np' (N, H, W, C) in [0, 1], 'pt' (N, C, H, W) in [0, 1], or 'latent'.
        """
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type {output_type!r}: choose one of {OUTPUT_TYPES}")
        num_inference_steps = check_count(num_inference_steps, "num_inference_steps")
        check_scales(guidance_scale, f"guidance_scale={guidance_scale!r}")
        model = self.transformer
        device = self._execution_device
        y = self._labels(class_labels, batch_size, device)
        n = y.shape[0] if y is not None else check_count(batch_size, "batch_size")
        H, W = (check_count(v, name) if v is not None else d
                for v, d, name in zip((height, width), model.config.input_size, ("height", "width")))
        shape = (n, model.config.in_channels, H, W)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=model.dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents have shape {tuple(latents.shape)}, expected {shape}")
        opts = self.scheduler.options(method)
        if opts["method"] == "sde":
            opts["generator"] = generator
        progress = not getattr(self, "_progress_bar_config", {}).get("disable", False)
        x = sample_model(model, latents.to(device), y, cfg_scales=guidance_scale, steps=num_inference_steps,
                         progress=progress, **opts)
        if output_type == "latent":
            images = x
        elif self.vae is not None:
            images = self.vae.decode(x / self.vae.config.scaling_factor).sample.clamp(-1, 1)
        else:
            images = x.clamp(-1, 1)
        if output_type != "latent":
            images = (images / 2 + 0.5).clamp(0, 1)
            if output_type in ("np", "pil"):
                images = images.cpu().permute(0, 2, 3, 1).float().numpy()
            if output_type == "pil":
                images = self.numpy_to_pil(images)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)
