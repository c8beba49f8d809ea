"""Training PARA adapters with `transformers.Trainer`.

* `PARAForCausalLM`: frozen HF causal LM + one trainable PARA adapter; `forward`
  returns the loss, `save_pretrained` writes the adapter format.
* `PARADataCollator`, `encode_examples`, `chat_prompt_ids`: examples -> padded
  batches with the loss mask and each row's prompt span (what PARA pools).
* `AdapterTrainer`: `Trainer` whose checkpoints are adapters.

The command line and `train()` are `vllm_para.train`.
"""

from .data import (
    IGNORE_INDEX,
    EncodedDataset,
    EncodedExample,
    PARADataCollator,
    chat_prompt_ids,
    encode_chat,
    encode_examples,
    encode_prompt_completion,
)
from .model import PARAForCausalLM
from .trainer import AdapterTrainer

__all__ = [
    "IGNORE_INDEX",
    "AdapterTrainer",
    "EncodedDataset",
    "EncodedExample",
    "PARADataCollator",
    "PARAForCausalLM",
    "chat_prompt_ids",
    "encode_chat",
    "encode_examples",
    "encode_prompt_completion",
]
