"""Code every vllm-para process runs (API server, engine core, workers): the PARA request codec.

Runs in: every process.
"""
