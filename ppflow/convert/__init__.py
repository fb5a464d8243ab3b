"""Reading checkpoints of every kind: `load_model` (local or remote) plus one adapter per foreign format."""

from ..models.pretrained import is_pretrained_dir, load_pretrained
from .adaptation import adapt
from .load import load_model

__all__ = ["adapt", "is_pretrained_dir", "load_model", "load_pretrained"]
