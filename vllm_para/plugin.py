"""vLLM general-plugin entry point (`vllm.general_plugins: para`)."""

from __future__ import annotations

import logging

logger = logging.getLogger("vllm_para")


def register() -> None:
    """Called by vLLM in every process. Does nothing unless PARA is enabled."""
    logger.debug("vllm-para plugin loaded")
