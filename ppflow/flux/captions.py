"""Image-caption data for FLUX fine-tuning and its cache of latents + text embeddings (`ppflow flux cache`).

A folder holds images with same-named `.txt` captions (`cat.png` + `cat.txt`), or a `metadata.jsonl` with one
`{"file_name": ..., "text": ...}` per line as diffusers' ImageFolder / `datasets` reads it ("caption" and
"prompt" are accepted for "text"). Images are resized (short side) and center-cropped to one square size.
The VAE and the two text encoders are frozen and expensive, so they run once: the cache file (safetensors)
holds FLUX-scaled latents (B, 16, H/8, W/8), T5 embeddings (B, T, 4096) and CLIP pooled embeddings (B, 768).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data.imagefolder import IMAGE_ERRORS, image_problem
from ..io import CheckpointError, DamagedFileError, check_writable, one_line, read_safetensors, save_weights

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CAPTION_KEYS = ("text", "caption", "prompt")
CACHE_VERSION = 1


def scan_folder(folder: str | os.PathLike) -> list[tuple[Path, str]]:
    """(image path, caption) pairs of an image-caption folder; any problem names the file and the fix."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist (pass --data.path FOLDER of images + captions)")
    meta = root / "metadata.jsonl"
    items = []
    if meta.exists():
        for n, line in enumerate(_read_text(meta).splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                name = row["file_name"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ValueError(f"{meta} line {n} is not a JSON object with a 'file_name' key") from None
            text = next((row[k] for k in CAPTION_KEYS if isinstance(row.get(k), str)), None)
            if text is None:
                raise ValueError(f"{meta} line {n} ({name}) has no caption: add a 'text' field")
            if not (root / name).is_file():
                raise FileNotFoundError(f"{meta} line {n} names {root / name}, which does not exist")
            items.append((root / name, text))
    else:
        for img in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file()):
            txt = img.with_suffix(".txt")
            if not txt.is_file():
                raise ValueError(f"image {img} has no caption: add {txt.name} next to it (or a metadata.jsonl)")
            items.append((img, _read_text(txt).strip()))
    if not items:
        raise ValueError(f"data folder {root} holds no images ({', '.join(IMAGE_EXTS)}) with captions")
    return items


def _read_text(path: Path) -> str:
    """A caption file's text; bytes that are not UTF-8 are one error naming the file and the byte."""
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text (byte {e.start}: {e.reason}); save it as UTF-8") from None


def check_images(items: list[tuple[Path, str]]) -> None:
    """Open every image header before any encoder is loaded: an unreadable file is one error naming it."""
    from PIL import Image

    for path, _ in items:
        try:
            with Image.open(path) as im:
                im.verify()
        except IMAGE_ERRORS as e:
            raise ValueError(f"cannot read image {path} ({image_problem(e)}); replace or remove it") from None


def load_image(path: Path, resolution: int) -> torch.Tensor:
    """(3, R, R) float in [-1, 1]: short side resized to R (bicubic), then center-cropped."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            s = resolution / min(w, h)
            im = im.resize((max(resolution, round(w * s)), max(resolution, round(h * s))), Image.BICUBIC)
            w, h = im.size
            left, top = (w - resolution) // 2, (h - resolution) // 2
            im = im.crop((left, top, left + resolution, top + resolution))
            arr = np.asarray(im, dtype=np.float32)
    except IMAGE_ERRORS as e:
        raise ValueError(f"cannot read image {path} ({image_problem(e)}); replace or remove it") from None
    return torch.from_numpy(arr).permute(2, 0, 1).div(127.5).sub(1.0)  # (3, R, R)


@dataclass
class CaptionCache:
    """Cached training inputs of a FLUX fine-tune, one row per image (see the module docstring)."""

    latents: torch.Tensor  # (N, C, h, w) float32, (z - shift_factor) * scaling_factor
    prompt_embeds: torch.Tensor  # (N, T, D) T5
    pooled: torch.Tensor  # (N, P) CLIP pooled
    captions: list[str]
    meta: dict = field(default_factory=dict)  # resolution, source, version

    def __len__(self) -> int:
        return len(self.latents)

    def get_batch(self, idx: torch.Tensor, flips=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(latents (B, C, h, w), row indices (B,)): the shape ppflow.train.batches.micro_batches reads."""
        return self.latents[idx], idx

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (temporary file + rename), the SHA-256 of the tensors in the metadata."""
        meta = {"ppflow": json.dumps({**self.meta, "version": CACHE_VERSION, "captions": self.captions})}
        tensors = {"latents": self.latents.float(), "prompt_embeds": self.prompt_embeds, "pooled": self.pooled}
        return save_weights(tensors, path, meta, "caption cache")

    @classmethod
    def load(cls, path: str | os.PathLike, verify: bool = True) -> CaptionCache:
        """Read a cache; a file that is not one (truncated, pickled, another format) is one error naming it."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"cache {path} does not exist: build it with ppflow flux cache --data.path "
                                    f"FOLDER --data.pipeline FLUX --data.cache {path}")
        rebuild = "delete it and build it again with ppflow flux cache (or pass another --data.cache)"
        try:
            t, meta = read_safetensors(path, verify)
            info = json.loads(meta["ppflow"])
            captions = info.pop("captions")
            t = {k: t[k] for k in ("latents", "prompt_embeds", "pooled")}
        except DamagedFileError:
            raise
        except (CheckpointError, KeyError, TypeError, AttributeError, ValueError) as e:
            why = one_line(e) if isinstance(e, CheckpointError) else f"{type(e).__name__}: {one_line(e)}"
            raise ValueError(f"{path} is not a ppflow flux cache ({why}); {rebuild}") from None
        return cls(t["latents"], t["prompt_embeds"], t["pooled"], captions, info)


def encode_latents(vae, images: torch.Tensor) -> torch.Tensor:
    """FLUX latents of (B, 3, H, W) images in [-1, 1]: the posterior mode, shifted and scaled as FluxPipeline expects."""
    z = vae.encode(images.to(vae.device, vae.dtype)).latent_dist.mode()  # (B, C, H/8, W/8)
    return ((z - vae.config.shift_factor) * vae.config.scaling_factor).float()


def build_cache(captions: Sequence[str], images: Callable[[int], torch.Tensor] | None, encode_prompt: Callable,
                encode_images: Callable[[torch.Tensor], torch.Tensor], batch_size: int = 8, meta: dict | None = None,
                progress: bool = False) -> CaptionCache:
    """Run the frozen encoders once: `images(i)` gives image i, `encode_prompt(list)` -> (embeds, pooled)."""
    from tqdm.auto import tqdm

    lat, emb, pool = [], [], []
    with torch.no_grad():
        for start in tqdm(range(0, len(captions), batch_size), desc="caching", disable=not progress):
            rows = range(start, min(len(captions), start + batch_size))
            x = torch.stack([images(i) for i in rows])  # (b, 3, R, R)
            e, p = encode_prompt([captions[i] for i in rows])
            lat.append(encode_images(x).cpu())
            emb.append(e.float().cpu())
            pool.append(p.float().cpu())
    return CaptionCache(torch.cat(lat), torch.cat(emb), torch.cat(pool), list(captions), dict(meta or {}))


def cache_folder(folder: str | os.PathLike, pipeline, resolution: int, max_sequence_length: int = 512,
                 batch_size: int = 8, progress: bool = True, out: str | os.PathLike | None = None) -> CaptionCache:
    """Cache an image-caption folder with a FluxPipeline's VAE and text encoders (its transformer is not needed).

    `out`: the cache file, checked for writability before any image is encoded and written at the end.
    """
    if out is not None:
        check_writable(out, "cache")
    items = scan_folder(folder)
    check_images(items)
    check_sequence_length(pipeline, max_sequence_length)
    device = pipeline._execution_device

    def prompts(texts):
        e, p, _ = pipeline.encode_prompt(prompt=list(texts), prompt_2=None, device=device,
                                         max_sequence_length=max_sequence_length)
        return e, p

    meta = {"resolution": resolution, "source": str(Path(folder).resolve()), "max_sequence_length": max_sequence_length}
    cache = build_cache([c for _, c in items], lambda i: load_image(items[i][0], resolution), prompts,
                        lambda x: encode_latents(pipeline.vae, x), batch_size, meta, progress)
    if out is not None:
        cache.save(out)
    return cache


def check_sequence_length(pipeline, max_sequence_length: int) -> None:
    """T5 pads every caption to `max_sequence_length` tokens: more than its tokenizer takes is refused here, before
    an allocation of that size."""
    limit = getattr(getattr(pipeline, "tokenizer_2", None), "model_max_length", None)
    if isinstance(limit, int) and max_sequence_length > limit:
        raise ValueError(f"max_sequence_length {max_sequence_length} (--data.max-sequence-length) is more than the "
                         f"{limit} tokens the pipeline's T5 tokenizer takes; give at most {limit} (FLUX.1-dev 512, "
                         "schnell 256)")


def load_encoders(name: str, device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
    """A FluxPipeline without its transformer: the VAE and text encoders `ppflow flux cache` needs."""
    from diffusers import FluxPipeline

    kw = {"torch_dtype": dtype} if dtype is not None else {}
    return FluxPipeline.from_pretrained(name, transformer=None, **kw).to(device)
