"""Train a PARA adapter (or a LoRA / (IA)^3 / BitFit baseline) on prompt/completion data.

    vllm-para train --base-model ./my-llama --data train.jsonl --output ./adapters/sql \
        --method para --r 12 --targets q v u --epochs 3 --lr 5e-3

    python -m vllm_para.train ...            # the same

Data: JSONL, one `{"prompt": ..., "completion": ...}` per line. Prompt and
completion are tokenized separately (prompt with the tokenizer's special tokens,
i.e. BOS, as at serving time; then completion ids + EOS); the loss is on
completion tokens only. Base-model weights are frozen; AdamW trains the adapter.

PARA adapters are saved as `para_config.json` + `adapter_model.safetensors`
(loadable with `vllm_para.load_adapter` and by the vLLM plugin). Baselines:
see `vllm_para.baselines`.

Python API: `train(TrainArgs(...)) -> TrainResult`.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .baselines import DEFAULT_LORA_TARGETS, PreparedModel, prepare_bitfit, prepare_ia3, prepare_lora
from .config import DEFAULT_TARGETS, ModelShape, PARAConfig, Target
from .datasets import Example, TrainDataError, load_examples

Method = Literal["para", "lora", "ia3", "bitfit"]
METHODS: tuple[str, ...] = ("para", "lora", "ia3", "bitfit")
# Default learning rates per method (used when --lr is not given).
DEFAULT_LR: dict[str, float] = {"para": 5e-3, "lora": 1e-3, "ia3": 1e-2, "bitfit": 1e-3}
ADAPTER_NAME = "trained"
IGNORE_INDEX = -100


class TrainArgs(BaseModel):
    """Validated trainer arguments (the CLI flags, one field each)."""

    model_config = ConfigDict(extra="forbid")

    base_model: str = Field(description="local HF checkpoint directory (or hub id) of the base model")
    data: Path = Field(description="JSONL file of {'prompt', 'completion'} objects")
    output: Path = Field(description="directory the adapter is written to")
    method: Method = "para"
    r: int = Field(default=12, ge=1, le=4096, description="PARA VG bottleneck size")
    targets: tuple[Target, ...] = DEFAULT_TARGETS
    pooling: Literal["last", "mean"] = "last"
    lr: float | None = Field(default=None, gt=0, description=f"learning rate (default per method: {DEFAULT_LR})")
    epochs: int = Field(default=3, ge=1)
    batch_size: int = Field(default=8, ge=1)
    seed: int = 0
    max_length: int = Field(default=512, ge=2, description="max tokens per example (prompt + completion + EOS)")
    max_steps: int | None = Field(default=None, ge=1, description="stop after this many optimizer steps")
    weight_decay: float = Field(default=0.0, ge=0)
    lora_r: int = Field(default=8, ge=1)
    lora_alpha: int = Field(default=16, ge=1)
    lora_target_modules: tuple[str, ...] = DEFAULT_LORA_TARGETS
    device: str = Field(default="auto", description="'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', ...")
    progress: bool = True

    @field_validator("base_model")
    @classmethod
    def _base_model_exists(cls, value: str) -> str:
        path = Path(value)
        if path.exists():
            if not (path / "config.json").is_file():
                raise ValueError(f"{value}: no config.json; expected a Hugging Face model directory.")
            return value
        looks_like_hub_id = value.count("/") == 1 and not value.startswith((".", "/", "~"))
        if not looks_like_hub_id:
            raise ValueError(f"{value}: base model directory not found.")
        return value

    @field_validator("data")
    @classmethod
    def _data_exists(cls, value: Path) -> Path:
        if not value.exists():
            raise ValueError(f"{value}: data file not found (expected JSONL with 'prompt' and 'completion').")
        if not value.is_file():
            raise ValueError(f"{value}: not a file (expected JSONL with 'prompt' and 'completion').")
        return value

    @field_validator("output")
    @classmethod
    def _output_is_dir(cls, value: Path) -> Path:
        if value.exists() and not value.is_dir():
            raise ValueError(f"{value}: exists and is not a directory.")
        return value

    @field_validator("targets")
    @classmethod
    def _targets(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("name at least one PARA target (q, k, v, g, u).")
        if len(set(value)) != len(value):
            raise ValueError(f"duplicate targets: {list(value)}")
        return value

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.method]


@dataclass
class TrainResult:
    method: str
    trainable_params: int
    losses: list[float]  # one per optimizer step
    epoch_losses: list[float]  # mean loss of each epoch
    output_dir: Path
    model: torch.nn.Module | None = field(default=None, repr=False)  # the trained in-memory model

    @property
    def final_loss(self) -> float:
        """Mean loss over the last epoch."""
        return self.epoch_losses[-1]

    def summary(self) -> str:
        return (
            f"trained {self.method}: {self.trainable_params} trainable parameters, "
            f"final loss {self.final_loss:.3f}"
        )


# -------------------------------------------------------------------- data
@dataclass
class Encoded:
    ids: list[int]
    prompt_length: int


def encode_examples(tokenizer, examples: list[Example], max_length: int) -> tuple[list[Encoded], int]:
    """Tokenize prompt (with special tokens) and completion (without) + EOS separately.

    Returns the encoded examples and how many were skipped because the prompt alone
    leaves no room for a completion token within `max_length`.
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos_token_id; cannot mark the end of completions.")
    encoded, skipped = [], 0
    for ex in examples:
        prompt_ids = list(tokenizer(ex.prompt)["input_ids"])
        completion_ids = list(tokenizer(ex.completion, add_special_tokens=False)["input_ids"]) + [eos]
        if len(prompt_ids) >= max_length:
            skipped += 1
            continue
        encoded.append(Encoded((prompt_ids + completion_ids)[:max_length], len(prompt_ids)))
    return encoded, skipped


def collate(items: list[Encoded], pad_id: int) -> dict:
    """Right-pad a batch; labels are -100 on prompt and pad positions."""
    width = max(len(it.ids) for it in items)
    input_ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(items), width), dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
    for i, it in enumerate(items):
        n = len(it.ids)
        ids = torch.tensor(it.ids, dtype=torch.long)
        input_ids[i, :n] = ids
        attention_mask[i, :n] = 1
        labels[i, it.prompt_length : n] = ids[it.prompt_length :]
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "prompt_lengths": [it.prompt_length for it in items],
    }


def completion_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled (completion) tokens, in float32."""
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:].to(logits.device)
    return F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1), ignore_index=IGNORE_INDEX
    )


# ----------------------------------------------------------------- methods
def para_config_for(model, args: TrainArgs) -> PARAConfig:
    shape = ModelShape.from_hf_config(model.config)
    return PARAConfig(
        base_model_name_or_path=str(args.base_model),
        r=args.r,
        targets=args.targets,
        pooling=args.pooling,
        **shape.model_dump(),
    )


def prepare_para(model, args: TrainArgs) -> PreparedModel:
    from .adapter import PARAAdapter
    from .reference import PARAReferenceModel

    config = para_config_for(model, args)
    ref = PARAReferenceModel(model, adapters={})
    ref.add_adapter(ADAPTER_NAME, config=config)

    def forward(input_ids, attention_mask, prompt_lengths):
        names = [ADAPTER_NAME] * input_ids.shape[0]
        return ref(input_ids, attention_mask=attention_mask, prompt_lengths=prompt_lengths, adapter_names=names).logits

    def save(directory: Path):
        PARAAdapter(config, ref.adapters[ADAPTER_NAME].weights()).save(directory)

    return PreparedModel(ref, forward, save)


def prepare(model, args: TrainArgs) -> PreparedModel:
    if args.method == "para":
        return prepare_para(model, args)
    if args.method == "lora":
        return prepare_lora(model, r=args.lora_r, alpha=args.lora_alpha, target_modules=args.lora_target_modules)
    if args.method == "ia3":
        return prepare_ia3(model)
    if args.method == "bitfit":
        return prepare_bitfit(model, base_model_name_or_path=str(args.base_model))
    raise ValueError(f"unknown method {args.method!r}; expected one of {METHODS}")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------- train
def train(args: TrainArgs, model=None, tokenizer=None) -> TrainResult:
    """Train and save one adapter. `model` / `tokenizer` may be passed pre-loaded
    (they must be `args.base_model`'s); the model's own weights are never changed."""
    from tqdm.auto import tqdm

    examples = load_examples(args.data)
    torch.manual_seed(args.seed)
    device = _device(args.device)

    if tokenizer is None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.base_model)
    encoded, skipped = encode_examples(tokenizer, examples, args.max_length)
    if skipped:
        _log(f"skipped {skipped} of {len(examples)} examples whose prompt is >= --max-length {args.max_length} tokens")
    if not encoded:
        raise TrainDataError(f"{args.data}: no example fits in --max-length {args.max_length}.")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    if model is None:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(args.base_model, dtype=torch.float32)
    model.to(device)
    model.eval()  # no dropout: the adapter is what trains
    model.requires_grad_(False)

    prepared = prepare(model, args)
    prepared.module.to(device)
    params = prepared.trainable_parameters()
    trainable = sum(p.numel() for p in params)
    if args.method == "para":
        from .core import param_count

        expected = param_count(para_config_for(model, args))
        if trainable != expected:
            raise RuntimeError(f"PARA has {trainable} trainable parameters, expected {expected} (is the base frozen?)")
    optimizer = torch.optim.AdamW(params, lr=args.learning_rate, weight_decay=args.weight_decay)

    steps_per_epoch = math.ceil(len(encoded) / args.batch_size)
    total_steps = args.epochs * steps_per_epoch
    if args.max_steps is not None:
        total_steps = min(total_steps, args.max_steps)
    generator = torch.Generator().manual_seed(args.seed)

    losses: list[float] = []
    epoch_losses: list[float] = []
    bar = tqdm(total=total_steps, desc=f"train {args.method}", disable=not args.progress, dynamic_ncols=True)
    step = 0
    for _epoch in range(args.epochs):
        if step >= total_steps:
            break
        order = torch.randperm(len(encoded), generator=generator).tolist()
        this_epoch: list[float] = []
        for start in range(0, len(order), args.batch_size):
            if step >= total_steps:
                break
            batch = collate([encoded[i] for i in order[start : start + args.batch_size]], pad_id)
            input_ids = batch["input_ids"].to(device)
            attention_mask = batch["attention_mask"].to(device)
            logits = prepared.forward(input_ids, attention_mask, batch["prompt_lengths"])
            loss = completion_loss(logits, batch["labels"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            value = loss.item()
            losses.append(value)
            this_epoch.append(value)
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{value:.3f}")
        epoch_losses.append(sum(this_epoch) / len(this_epoch))
    bar.close()

    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    prepared.save(output)
    return TrainResult(args.method, trainable, losses, epoch_losses, output, model=prepared.module)


# --------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vllm-para train",
        description="Train a PARA adapter (or a LoRA / IA3 / BitFit baseline) on prompt/completion JSONL.",
    )
    p.add_argument("--base-model", required=True, help="HF model directory of the base model")
    p.add_argument("--data", required=True, help='JSONL, one {"prompt": ..., "completion": ...} per line')
    p.add_argument("--output", required=True, help="adapter output directory")
    p.add_argument("--method", choices=METHODS, default="para")
    p.add_argument("--r", type=int, default=12, help="PARA VG bottleneck size (default 12)")
    p.add_argument("--targets", nargs="+", default=list(DEFAULT_TARGETS), help="PARA targets among q k v g u (default q v u)")
    p.add_argument("--pooling", choices=("last", "mean"), default="last", help="PARA prompt pooling")
    p.add_argument("--lr", type=float, default=None, help=f"learning rate (default per method: {DEFAULT_LR})")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-length", type=int, default=512, help="max tokens per example")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--lora-alpha", type=int, default=16)
    p.add_argument("--lora-target-modules", nargs="+", default=list(DEFAULT_LORA_TARGETS))
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    return p


def format_validation_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        flag = "--" + loc.split(".")[0].replace("_", "-") if loc else "<args>"
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{flag}: {msg}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        args = TrainArgs.model_validate(vars(ns))
        result = train(args)
    except ValidationError as exc:
        print(f"vllm-para train: error: {format_validation_error(exc)}", file=sys.stderr)
        return 2
    except TrainDataError as exc:
        print(f"vllm-para train: error: {exc}", file=sys.stderr)
        return 2
    print(f"saved {result.method} adapter to {result.output_dir}")
    print(result.summary(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
