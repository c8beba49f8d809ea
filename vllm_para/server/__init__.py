"""`vllm serve --enable-para`: CLI flags, OpenAI model resolution, runtime
adapter management routes and Prometheus metrics."""
