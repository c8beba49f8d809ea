"""`vllm serve --enable-para`: CLI flags, OpenAI model resolution, runtime
adapter management routes and Prometheus metrics.

Runs in: the API server (`vllm serve`), or the process that builds an offline `LLM`.
"""
