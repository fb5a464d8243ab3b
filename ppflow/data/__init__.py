"""Training data: pixel datasets (digits, Fashion-MNIST), image folders through a VAE, latent caches."""

from .base import ArrayData, TrainData, apply_flips
from .registry import DATASETS, DEFAULT_VAE, DataConfig, build_dataset

__all__ = ["DATASETS", "DEFAULT_VAE", "ArrayData", "DataConfig", "TrainData", "apply_flips", "build_dataset"]
