"""Load tests: PARA vs vLLM multi-LoRA vs the base model under mixed-tenant traffic.

`python -m bench.compare --mode small` runs everything; see bench/README.md.
"""
