"""PARA in vLLM's front end and engine core: settings, request admission, prefix-cache keys,
beam search, and the page-aware scheduler (no model code)."""
