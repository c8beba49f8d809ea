"""Test-only helpers, not a public API: tiny local checkpoints and tokenizers
(`tiny_models`) and a `vllm serve` launcher (`serve_process`).

They ship in the wheel because the demo, the benchmarks and the load tests use
them too; nothing else under `vllm_para` imports them.
"""
