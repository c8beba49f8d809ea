"""PARA in vLLM's engine-core process: the page-aware scheduler and prefix-cache keys (no model code).

Runs in: the engine-core process.
"""
