"""Latent space through a diffusers AutoencoderKL (hub name such as `stabilityai/sd-vae-ft-ema`, or a folder)."""

from __future__ import annotations

import torch
from torch import nn


class LatentVAE(nn.Module):
    """Images in [-1, 1] <-> scaled latents; the scaling factor comes from the VAE's config."""

    def __init__(self, vae: nn.Module, scaling_factor: float | None = None) -> None:
        super().__init__()
        self.vae = vae
        self.scaling_factor = float(scaling_factor if scaling_factor is not None else vae.config.scaling_factor)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, sample: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
        """(N, 3, H, W) in [-1, 1] -> (N, c, H/f, W/f) scaled latents (a posterior sample, or its mean)."""
        dist = self.vae.encode(images).latent_dist
        z = dist.sample(generator=generator) if sample else dist.mean
        return z * self.scaling_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images in [-1, 1] (clamped)."""
        return self.vae.decode(latents / self.scaling_factor).sample.clamp(-1, 1)


def load_vae(name_or_path: str, device: torch.device | str = "cpu", local_files_only: bool = False) -> LatentVAE:
    """Load a diffusers AutoencoderKL by hub name or local folder."""
    try:
        from diffusers import AutoencoderKL
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the VAE needs diffusers: pip install 'ppflow[vae]'") from e
    from diffusers.utils import logging as diffusers_logging

    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity(50)  # CRITICAL: its fallback messages would precede our one-line error
    try:
        vae = AutoencoderKL.from_pretrained(name_or_path, local_files_only=local_files_only)
    except Exception as e:  # OSError (missing files, no network), ValueError / JSON errors (a damaged config), ...
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        reason = f" ({type(e).__name__}: {lines[0][:200]})" if lines else f" ({type(e).__name__})"
        raise OSError(
            f"could not load the VAE {name_or_path!r}{reason}: give a diffusers AutoencoderKL folder (config.json "
            "+ diffusion_pytorch_model.safetensors) or a hub name (e.g. stabilityai/sd-vae-ft-ema) reachable from "
            "this machine"
        ) from e
    finally:
        diffusers_logging.set_verbosity(verbosity)
    return LatentVAE(vae).to(device).eval()
