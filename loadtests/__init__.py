"""Load tests: PARA vs vLLM multi-LoRA vs the base model under mixed-tenant traffic.

`python -m loadtests.compare --mode small` runs everything; see loadtests/README.md.
"""
