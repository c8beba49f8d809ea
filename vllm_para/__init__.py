"""vllm-para: serve PARA adapters (arXiv 2502.01033) with vLLM.

Importing this package does not import vLLM; the PARA core and the reference
run with torch + transformers alone.
"""

from .adapter import PARAAdapter, PARAAdapterError, load_adapter
from .config import DEFAULT_TARGETS, TARGET_ORDER, ModelShape, PARAConfig, PARAConfigError

__version__ = "0.1.0"
__all__ = [
    "DEFAULT_TARGETS",
    "TARGET_ORDER",
    "ModelShape",
    "PARAAdapter",
    "PARAAdapterError",
    "PARAConfig",
    "PARAConfigError",
    "load_adapter",
]
