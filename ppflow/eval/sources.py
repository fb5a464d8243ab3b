"""Where evaluation images come from: ADM npz batches, image folders, named reference datasets; plus the cache."""

from __future__ import annotations

import hashlib
import os
import struct
import sys
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..data.imagefolder import IMAGE_ERRORS, image_problem
from ..io import one_line, remove_quietly, write_atomic
from .stats import FeatureStats

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
CACHE_ENV_VAR = "PPFLOW_CACHE_DIR"


def default_cache_dir() -> Path:
    """$PPFLOW_CACHE_DIR, else $XDG_CACHE_HOME/ppflow, else ~/.cache/ppflow."""
    if os.environ.get(CACHE_ENV_VAR):
        return Path(os.environ[CACHE_ENV_VAR])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ppflow"


def save_npz_atomic(path: str | os.PathLike, **arrays) -> Path:
    """np.savez to `path` atomically (readers never see a partial file)."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    return write_atomic(path, write, sum(np.asarray(a).nbytes for a in arrays.values()), "npz file")


def read_npz_cache(path: str | os.PathLike, keys: tuple[str, ...]) -> dict[str, np.ndarray] | None:
    """The arrays `keys` of a cache file ppflow wrote (save_npz_atomic), or None when it is missing or damaged
    (truncated, not an npz, pickled, lacking a key): a damaged one is named on stderr, deleted and recomputed."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as d:
            return {k: np.asarray(d[k]) for k in keys}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as e:  # ValueError: pickled
        why = ("it holds pickled Python objects, which ppflow never loads" if "pickle" in str(e)
               else f"{type(e).__name__}: {one_line(e)}")
        print(f"ppflow: the cached statistics {path} are damaged ({why}); deleting the file and computing them "
              "again", file=sys.stderr)
        remove_quietly(path)
        return None


def short_hash(*parts) -> str:
    return hashlib.sha256("\x00".join(map(str, parts)).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------------- images


@dataclass
class ImageSet:
    """Images to evaluate: `images` is array-like uint8 (N, H, W, C) (sliceable, possibly lazy) or None when a
    reference only holds statistics; `labels` (N,) class labels if known; `stats` precomputed Inception statistics
    by kind ('pool', 'spatial'), as in ADM reference batches; `key` identifies the content for caching."""

    name: str
    images: object | None
    labels: np.ndarray | None = None
    stats: dict[str, FeatureStats] = field(default_factory=dict)
    key: str = ""

    def __len__(self) -> int:
        return 0 if self.images is None else len(self.images)

    @property
    def image_size(self) -> tuple[int, int] | None:
        return None if self.images is None else tuple(self.images.shape[1:3])

    def head(self, n: int | None) -> ImageSet:
        """The first n images (all when n is None or larger), still lazy; precomputed statistics are dropped."""
        if n is None or self.images is None or n >= len(self):
            return self
        labels = None if self.labels is None else self.labels[:n]
        return ImageSet(f"{self.name}[:{n}]", Head(self.images, n), labels, key=short_hash(self.key, "head", n))


class Head:
    """The first n images of a sliceable image array, without reading them."""

    def __init__(self, images, n: int) -> None:
        self.images, self.n = images, min(n, len(images))
        self.shape = (self.n, *images.shape[1:])
        self.dtype, self.ndim = images.dtype, images.ndim

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: slice):
        start, stop, _ = index.indices(self.n)
        return self.images[start:stop]


def npz_array(path: str | os.PathLike, name: str) -> np.ndarray:
    """Array `name` of an npz file; a memory map when the member is stored uncompressed (np.savez, as ADM writes
    sample batches), so a torchrun rank reads only its shard of a 50k-image file."""
    path = Path(path)
    with zipfile.ZipFile(path) as z:
        member = f"{name}.npy"
        if member not in z.namelist():
            raise KeyError(f"{path} has no array {name!r} (it has {[n.removesuffix('.npy') for n in z.namelist()]})")
        info = z.getinfo(member)
    if info.compress_type == zipfile.ZIP_STORED:
        with open(path, "rb") as f:
            f.seek(info.header_offset)
            local = f.read(30)
            if local[:4] == b"PK\x03\x04":
                name_len, extra_len = struct.unpack("<HH", local[26:30])
                f.seek(info.header_offset + 30 + name_len + extra_len)
                version = np.lib.format.read_magic(f)
                reader = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
                if version in reader:
                    shape, fortran, dtype = reader[version](f)
                    if not fortran and not dtype.hasobject:
                        return np.memmap(path, dtype=dtype, mode="r", offset=f.tell(), shape=shape)
    with np.load(path) as data:
        return data[name]


def _check_images(images, source: str):
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3)):
        raise ValueError(f"{source}: images must be uint8 (N, H, W, 3), (N, H, W, 1) or (N, H, W) as in ADM's npz "
                         f"layout, got {images.dtype} {tuple(images.shape)}")
    return images if images.ndim == 4 else images[..., None]


def load_npz(path: str | os.PathLike) -> ImageSet:
    """ADM-layout npz: `arr_0` uint8 (N, H, W, C) images, optional `arr_1` labels, optional precomputed `mu`,
    `sigma` (pool features) and `mu_s`, `sigma_s` (spatial features) as in ADM's reference batches."""
    path = Path(path)
    with zipfile.ZipFile(path) as z:
        keys = {n.removesuffix(".npy") for n in z.namelist()}
    images = _check_images(npz_array(path, "arr_0"), str(path)) if "arr_0" in keys else None
    labels = None
    if "arr_1" in keys and images is not None:
        lab = np.asarray(npz_array(path, "arr_1"))
        if lab.ndim == 1 and len(lab) == len(images) and np.issubdtype(lab.dtype, np.integer):
            labels = lab.astype(np.int64)
    stats = {}
    with np.load(path) as data:
        if "mu" in keys and "sigma" in keys:
            stats["pool"] = FeatureStats(data["mu"], data["sigma"])
        if "mu_s" in keys and "sigma_s" in keys:
            stats["spatial"] = FeatureStats(data["mu_s"], data["sigma_s"])
    if images is None and not stats:
        raise ValueError(f"{path} has neither images (arr_0) nor statistics (mu, sigma); it is not an ADM batch")
    st = path.stat()
    return ImageSet(path.name, images, labels, stats, key=short_hash("npz", path.resolve(), st.st_size, st.st_mtime_ns))


class ImageFolder:
    """Lazily read images of a folder (recursively, sorted by path) as a sliceable uint8 (N, H, W, C) array."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.files = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not self.files:
            raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in folder {self.root}")
        first = self._read(self.files[0])
        self.shape = (len(self.files), *first.shape)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 4

    @staticmethod
    def _read(path: Path) -> np.ndarray:
        try:
            with Image.open(path) as im:
                gray = im.mode in ("1", "L", "I", "I;16", "F")
                arr = np.asarray(im.convert("L" if gray else "RGB"), dtype=np.uint8)
        except IMAGE_ERRORS as e:  # truncated or damaged file, or a decompression bomb
            raise ValueError(f"cannot read image {path} ({image_problem(e)}); it is not skipped, since the metrics would then "
                             "describe another set of images: replace or delete the file and run again") from None
        return arr[..., None] if arr.ndim == 2 else arr  # (H, W, C)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: slice) -> np.ndarray:
        if not isinstance(index, slice):
            raise TypeError("ImageFolder supports slices only")
        out = []
        for p in self.files[index]:
            a = self._read(p)
            if a.shape != self.shape[1:]:
                raise ValueError(f"{p} is {a.shape} but the first image of {self.root} is {self.shape[1:]}: all "
                                 "images of a folder must have one size and colour mode")
            out.append(a)
        return np.stack(out) if out else np.zeros((0, *self.shape[1:]), np.uint8)

    def key(self) -> str:
        h = hashlib.sha256()
        for p in self.files:
            st = p.stat()
            h.update(f"{p.relative_to(self.root)}\x00{st.st_size}\x00{st.st_mtime_ns}\n".encode())
        return h.hexdigest()[:16]


def load_folder(path: str | os.PathLike) -> ImageSet:
    folder = ImageFolder(path)
    return ImageSet(Path(path).name, folder, key=short_hash("folder", Path(path).resolve(), folder.key()))


# -------------------------------------------------------------------------------------------------------- datasets


def pad_to(images: np.ndarray, size: int, value: int = 0) -> np.ndarray:
    """Centre uint8 (N, h, w[, C]) images on a (size, size) canvas of `value`, as ppflow pads 28x28 Fashion-MNIST
    to the models' 32x32 (`to_model_space`: pad // 2 before, the rest after)."""
    h, w = images.shape[1:3]
    if size < max(h, w):
        raise ValueError(f"cannot pad {h}x{w} images to {size}x{size}")
    ph, pw = size - h, size - w
    widths = [(0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)] + [(0, 0)] * (images.ndim - 3)
    return np.pad(images, widths, constant_values=value)


def _fashion_mnist(split: str) -> Callable[[int | None], tuple[np.ndarray, np.ndarray]]:
    def load(size: int | None) -> tuple[np.ndarray, np.ndarray]:
        from ..data.fashion_mnist import load_fashion_mnist

        images, labels = load_fashion_mnist(split)  # uint8 (N, 28, 28), background 0
        return pad_to(images, size or DEFAULT_DATASET_SIZE)[..., None], labels  # (N, size, size, 1)

    return load


# The models train on Fashion-MNIST padded to 32x32 (ppflow.data.fashion_mnist.to_model_space), so a named
# reference is padded the same way, to the samples' size when they are given (28 = unpadded).
DEFAULT_DATASET_SIZE = 32
REFERENCE_DATASETS: dict[str, Callable[[int | None], tuple[np.ndarray, np.ndarray]]] = {
    "fashion-mnist-test": _fashion_mnist("test"),
    "fashion-mnist-train": _fashion_mnist("train"),
}


def load_dataset(name: str, size: int | None = None) -> ImageSet:
    """A named dataset as uint8 (N, size, size, C) images with labels (size None = the dataset's default)."""
    if name not in REFERENCE_DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {sorted(REFERENCE_DATASETS)}")
    images, labels = REFERENCE_DATASETS[name](size)
    return ImageSet(name, images, labels, key=short_hash("dataset", name, images.shape))


def load_images(spec: str | os.PathLike, size: int | None = None) -> ImageSet:
    """An ADM npz file, a folder of images, or a dataset name (padded to `size`, e.g. the samples' size)."""
    if str(spec) in REFERENCE_DATASETS:
        return load_dataset(str(spec), size)
    path = Path(spec)
    if path.is_dir():
        return load_folder(path)
    if path.is_file() and zipfile.is_zipfile(path):
        return load_npz(path)
    if path.exists():
        raise ValueError(f"{path} is neither an npz file (ADM layout: arr_0 uint8 NHWC) nor a folder of images")
    raise FileNotFoundError(f"{spec} is not a file, a folder, or a dataset name ({', '.join(REFERENCE_DATASETS)})")


def array_source(images: np.ndarray, labels: np.ndarray | None = None, name: str = "array") -> ImageSet:
    """Wrap in-memory uint8 images (content-hashed for the cache)."""
    images = _check_images(np.asarray(images), name)
    h = hashlib.sha256(np.ascontiguousarray(images).data).hexdigest()[:16]
    return ImageSet(name, images, labels, key=short_hash("array", images.shape, h))

