"""ppflow: Pyramidal Patchification Flow for diffusion/flow transformers."""

from .convert import load_model
from .convert.adaptation import adapt
from .models import ModelConfig, PPFlowTransformer, PyramidSchedule, create_model

__version__ = "0.1.0"

__all__ = ["ModelConfig", "PPFlowTransformer", "PyramidSchedule", "__version__", "adapt", "create_model", "load_model"]
