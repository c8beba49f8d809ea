"""Everything that trains or evaluates adapters outside vLLM (what runs on a trainer's machine).

* `reference`: `PARAReferenceModel`, the transformers model with PARA applied
  through hooks (the ground truth the engine is tested against).
* `train`: the trainer's command line and `train()` (PARA and the LoRA /
  (IA)^3 / BitFit baselines of `baselines`), on `transformers.Trainer`.
* `model.PARAForCausalLM`: frozen HF causal LM + one trainable PARA adapter;
  `forward` returns the loss, `save_pretrained` writes the adapter format.
* `data`: examples -> padded batches with the loss mask and each row's prompt
  span (what PARA pools); `datasets`: JSONL reading and validation.
* `trainer.AdapterTrainer`: `Trainer` whose checkpoints are adapters.

Submodules import lazily: `import vllm_para.training.reference` does not import
`transformers.Trainer`.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "IGNORE_INDEX": "data",
    "EncodedDataset": "data",
    "EncodedExample": "data",
    "PARADataCollator": "data",
    "chat_prompt_ids": "data",
    "encode_chat": "data",
    "encode_examples": "data",
    "encode_prompt_completion": "data",
    "PARAForCausalLM": "model",
    "AdapterTrainer": "trainer",
    "PARAReferenceModel": "reference",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
