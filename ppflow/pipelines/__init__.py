"""diffusers integration: `PPFlowPipeline` (class-conditional sampling in the DiTPipeline shape) and its
components. Importing this package imports diffusers; `import ppflow` does not."""

from .pipeline import PPFlowPipeline
from .sampler import PPFlowSampler
from .transformer import PPFlowTransformer2DModel

__all__ = ["PPFlowPipeline", "PPFlowSampler", "PPFlowTransformer2DModel"]
