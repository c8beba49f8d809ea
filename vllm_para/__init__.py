"""vllm-para: serve PARA adapters (arXiv 2502.01033) with vLLM.

Importing this package does not import vLLM; the PARA core and the reference
run with torch + transformers alone.

Runs in: every process that imports vllm-para (it imports nothing heavy).
"""

from .adapter import PARAAdapter, PARAAdapterError, load_adapter
from .config import DEFAULT_TARGETS, TARGET_ORDER, ModelShape, PARAConfig, PARAConfigError

__version__ = "0.1.0"


def __getattr__(name: str):
    # `vllm_para.beam_search` needs vLLM; import it only when asked for.
    if name == "beam_search":
        from vllm_para.api.offline_beam_search import beam_search

        return beam_search
    raise AttributeError(f"module 'vllm_para' has no attribute {name!r}")

__all__ = [
    "beam_search",
    "DEFAULT_TARGETS",
    "TARGET_ORDER",
    "ModelShape",
    "PARAAdapter",
    "PARAAdapterError",
    "PARAConfig",
    "PARAConfigError",
    "load_adapter",
]
