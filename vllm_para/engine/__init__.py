"""PARA inside vLLM's engine: model wrapping, side buffer, adapter slots, runner and scheduler hooks."""
