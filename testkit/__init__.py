"""Test-only helpers, not a public API: tiny local checkpoints and tokenizers
(`tiny_models`) and a `vllm serve` launcher (`serve_process`).

They live beside the package, outside the wheel: the tests and the measurement
package (`bench/`) import them; nothing under `vllm_para` does.
"""
