import pytest
import torch

from ppflow.train import TrainConfig, train


def tiny_cfg(out, **kw) -> TrainConfig:
    """PPF-tiny-2 on digits, batch 8, one step, no grids or TensorBoard."""
    kw = {"batch_size": 8, "max_steps": 1, "save_every": 100, "progress": False, "tensorboard": False, **kw}
    cfg = TrainConfig(out=str(out), **kw)
    cfg.model.name, cfg.sample.every = "PPF-tiny-2", 0
    return cfg


def flip_middle(path, n: int = 4) -> None:
    """Invert `n` bytes in the middle of the file, in place (a disk or copy error)."""
    data = bytearray(path.read_bytes())
    i = len(data) // 2
    data[i:i + n] = bytes(b ^ 0xFF for b in data[i:i + n])
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished 2-step training run (checkpoints/last.pt + ema/); copy it before changing it."""
    torch.set_num_threads(1)
    return train(tiny_cfg(tmp_path_factory.mktemp("rel") / "run", max_steps=2, log_every=1)).run_dir
