"""Examples -> token ids, loss mask and PARA pooling position, and the collator.

Each training example is the token ids of one prompt followed by one
completion; the loss is on the completion tokens only and PARA pools the
prompt, i.e. the vectors come from exactly the tokens vLLM will see as the
prompt of the matching request:

* `{"prompt", "completion"}`: the prompt is tokenized as `/v1/completions`
  tokenizes it (with the tokenizer's special tokens, i.e. BOS), the completion
  without special tokens, plus EOS.
* `{"messages": [...]}`: every assistant turn is one example. Its prompt is the
  conversation before it rendered exactly as `/v1/chat/completions` renders a
  request (`tokenizer.apply_chat_template(messages, add_generation_prompt=True,
  tokenize=True)`, no extra special tokens), so the pooled token is the one
  vLLM pools; its completion is what the chat template renders for the turn
  (content and end-of-turn tokens, e.g. `<|eot_id|>`), i.e. the token ids of
  the conversation including the turn minus that prompt. Earlier assistant
  turns are part of the prompt (no loss), as they are when served.

`PARADataCollator` pads a batch (right or left) and gives each row's prompt
as absolute positions (`prompt_spans[b] = (start, end)`) of the padded row,
so the padding side cannot move the pooled token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .datasets import ChatExample, Example, TrainDataError

IGNORE_INDEX = -100


@dataclass(frozen=True)
class EncodedExample:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX where there is no loss
    prompt_length: int  # the prompt (what PARA pools) is input_ids[:prompt_length]

    @property
    def pooled_index(self) -> int:
        """Position of the token PARA's last-token pooling reads."""
        return self.prompt_length - 1


def chat_prompt_ids(tokenizer, messages: Sequence[dict]) -> list[int]:
    """Token ids vLLM's `/v1/chat/completions` prefills for `messages` (default
    request settings: `add_generation_prompt=True`, `add_special_tokens=False`)."""
    return _render(tokenizer, messages, add_generation_prompt=True)


def _render(tokenizer, messages: Sequence[dict], add_generation_prompt: bool) -> list[int]:
    if getattr(tokenizer, "chat_template", None) is None:
        raise TrainDataError("chat data needs a tokenizer with a chat template (tokenizer.chat_template is unset).")
    ids = tokenizer.apply_chat_template(
        list(messages), add_generation_prompt=add_generation_prompt, tokenize=True, return_dict=False
    )
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # older transformers: BatchEncoding
        ids = ids["input_ids"]
    return [int(t) for t in ids]


def _example(prompt_ids: list[int], completion_ids: list[int], max_length: int) -> EncodedExample | None:
    if len(prompt_ids) >= max_length:
        return None
    ids = (prompt_ids + completion_ids)[:max_length]
    labels = [IGNORE_INDEX] * len(prompt_ids) + ids[len(prompt_ids) :]
    return EncodedExample(ids, labels, len(prompt_ids))


def encode_prompt_completion(tokenizer, example: Example, max_length: int) -> EncodedExample | None:
    """None when the prompt alone leaves no room for a completion token."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise TrainDataError("the tokenizer has no eos_token_id; cannot mark the end of completions.")
    prompt_ids = list(tokenizer(example.prompt)["input_ids"])
    completion_ids = list(tokenizer(example.completion, add_special_tokens=False)["input_ids"]) + [eos]
    return _example(prompt_ids, completion_ids, max_length)


def encode_chat(tokenizer, example: ChatExample, max_length: int) -> list[EncodedExample | None]:
    """One entry per assistant turn (None for a turn whose prompt is >= max_length)."""
    messages = list(example.messages)
    out: list[EncodedExample | None] = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant" or i == 0:
            continue
        prompt_ids = chat_prompt_ids(tokenizer, messages[:i])
        full_ids = _render(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if full_ids[: len(prompt_ids)] != prompt_ids or len(full_ids) == len(prompt_ids):
            raise TrainDataError(
                f"the chat template does not render assistant turn {i} as a continuation of the prompt "
                "(tokens of the conversation up to the turn do not start with the tokens of the prompt "
                "rendered with add_generation_prompt=True), so the prompt vLLM pools cannot be found in it."
            )
        out.append(_example(prompt_ids, full_ids[len(prompt_ids) :], max_length))
    return out


def encode_examples(
    tokenizer, examples: Sequence[Example | ChatExample], max_length: int
) -> tuple[list[EncodedExample], int]:
    """Encode every example (chat: every assistant turn). Returns the encoded
    examples and how many were skipped because their prompt is >= `max_length`."""
    encoded: list[EncodedExample] = []
    skipped = 0
    for example in examples:
        items = encode_chat(tokenizer, example, max_length) if isinstance(example, ChatExample) else [
            encode_prompt_completion(tokenizer, example, max_length)
        ]
        for item in items:
            if item is None:
                skipped += 1
            else:
                encoded.append(item)
    return encoded, skipped


class EncodedDataset(torch.utils.data.Dataset):
    """A list of `EncodedExample`s as a map-style dataset for `Trainer`."""

    def __init__(self, examples: Sequence[EncodedExample]):
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> EncodedExample:
        return self.examples[i]


@dataclass
class PARADataCollator:
    """Pad a batch of `EncodedExample`s for `Trainer`.

    Returns `input_ids`, `attention_mask`, `labels` (IGNORE_INDEX on prompt and
    padding) and, with `prompt_spans=True` (PARA), `prompt_spans` [B, 2]: each
    row's prompt as positions [start, end) of the padded row. Packing several
    examples into one row is not supported (one prompt per row).
    """

    pad_token_id: int
    padding_side: str = "right"
    prompt_spans: bool = True
    pad_to_multiple_of: int | None = None

    def __post_init__(self):
        if self.padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {self.padding_side!r}")

    def __call__(self, items: Sequence[EncodedExample]) -> dict[str, torch.Tensor]:
        width = max(len(it.input_ids) for it in items)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        B = len(items)
        input_ids = torch.full((B, width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((B, width), dtype=torch.long)
        labels = torch.full((B, width), IGNORE_INDEX, dtype=torch.long)
        spans = torch.zeros((B, 2), dtype=torch.long)
        for b, it in enumerate(items):
            n = len(it.input_ids)
            start = 0 if self.padding_side == "right" else width - n
            input_ids[b, start : start + n] = torch.tensor(it.input_ids, dtype=torch.long)
            attention_mask[b, start : start + n] = 1
            labels[b, start : start + n] = torch.tensor(it.labels, dtype=torch.long)
            spans[b] = torch.tensor([start, start + it.prompt_length])
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        if self.prompt_spans:
            batch["prompt_spans"] = spans
        return batch


class TrainerModule(torch.nn.Module):
    """What `transformers.Trainer` reads from the adapter modules it trains (PARA and the baselines):
    pass `num_items_in_batch` to forward (the loss is summed, then divided by it); labels are
    shifted inside the model."""

    accepts_loss_kwargs = True
    loss_type = "ForCausalLM"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
