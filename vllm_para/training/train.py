"""Train a PARA adapter (or a LoRA / (IA)^3 / BitFit baseline) with `transformers.Trainer`.

    vllm-para train --base-model ./my-llama --data train.jsonl --output ./adapters/sql \\
        --method para --r 12 --targets q v u --epochs 3 --lr 1e-3 \\
        [--bf16] [--gradient-accumulation-steps 4] [--lr-scheduler-type cosine] [--warmup-ratio 0.03] \\
        [--eval-data dev.jsonl --eval-steps 100] [--save-steps 500] [--resume-from-checkpoint [DIR]] \\
        [--gradient-checkpointing] [--report-to tensorboard] [--training-arg KEY=VALUE ...]

    python -m vllm_para.training.train ...                              # the same
    accelerate launch -m vllm_para.training.train ...                   # multi-GPU (DDP), no code change
    torchrun --nproc-per-node 4 -m vllm_para.training.train ...         # the same

Data: JSONL, one `{"prompt": ..., "completion": ...}` or chat
`{"messages": [{"role": ..., "content": ...}, ...]}` per line (see
`vllm_para.training.data`: loss on completions / assistant turns only; PARA
pools the prompt exactly as vLLM pools the matching request).

The loop is `transformers.Trainer`'s (`vllm_para.training.AdapterTrainer`:
Trainer with adapter-format checkpoints), the model `PARAForCausalLM` (base
frozen, VG trainable) or a baseline from `vllm_para.training.baselines`. The flags are
transformers' `TrainingArguments` under their usual names; any other field is
`--training-arg key=value` (JSON values, e.g. `optim=sgd`,
`lr_scheduler_kwargs={"num_cycles": 2}`); it overrides the flags.

`--output` receives the adapter (`para_config.json` + `adapter_model.safetensors`
for PARA; PEFT's files for LoRA / (IA)^3; `bitfit_config.json` +
`bitfit.safetensors`) and Trainer's `checkpoint-N/` directories, each of them
a loadable adapter too. The last stdout line is a summary:
`trained para: 13056 trainable parameters, train loss 0.412, eval loss 0.455, 30 steps in 12.3 s`.

Python API: `train(TrainArgs(...)) -> TrainResult`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .baselines import DEFAULT_LORA_TARGETS
from ..config import DEFAULT_TARGETS, Pooling, Target
from .datasets import EXPECTED, TrainDataError, load_examples

Method = Literal["para", "lora", "ia3", "bitfit"]
METHODS: tuple[str, ...] = ("para", "lora", "ia3", "bitfit")
# Default learning rates per method (used when --lr is not given).
# PARA: 5e-3 diverged on SmolLM2-135M (loss 2.09 -> 0.72 -> 3.50); 1e-3 trains it and the tiny bases.
DEFAULT_LR: dict[str, float] = {"para": 1e-3, "lora": 1e-3, "ia3": 1e-2, "bitfit": 1e-3}
# TrainingArguments fields that the trainer itself decides.
RESERVED_TRAINING_ARGS = ("output_dir",)


def _training_argument_fields() -> set[str]:
    from transformers import TrainingArguments

    return {f.name for f in dataclasses.fields(TrainingArguments) if f.init}


def parse_training_arg(item: str) -> tuple[str, Any]:
    """`key=value` -> (key, value); the value is JSON when it parses as JSON, else the string."""
    key, sep, raw = item.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or not key:
        raise ValueError(f"{item!r}: expected KEY=VALUE (a transformers TrainingArguments field)")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key, value


class TrainArgs(BaseModel):
    """Validated trainer arguments (the CLI flags, one field each)."""

    model_config = ConfigDict(extra="forbid")

    base_model: str = Field(description="local HF checkpoint directory (or hub id) of the base model")
    data: Path = Field(description="JSONL file of {'prompt', 'completion'} or {'messages'} objects")
    output: Path = Field(description="directory the adapter (and Trainer's checkpoint-N/) is written to")
    method: Method = "para"
    r: int = Field(default=12, ge=1, le=4096, description="PARA VG bottleneck size")
    targets: tuple[Target, ...] = DEFAULT_TARGETS
    pooling: Pooling = "last"
    lr: float | None = Field(default=None, gt=0, description=f"learning rate (default per method: {DEFAULT_LR})")
    epochs: float = Field(default=3, gt=0)
    batch_size: int = Field(default=8, ge=1, description="per-device micro-batch size")
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = Field(default=0.0, ge=0, lt=1)
    seed: int = 0
    max_length: int = Field(default=512, ge=2, description="max tokens per example (prompt + completion)")
    max_steps: int | None = Field(default=None, ge=1, description="stop after this many optimizer steps")
    weight_decay: float = Field(default=0.0, ge=0)
    bf16: bool = False
    gradient_checkpointing: bool = False
    eval_data: Path | None = None
    eval_steps: int | None = Field(default=None, ge=1)
    save_steps: int = Field(default=500, ge=0, description="checkpoint every N steps (0: no checkpoints)")
    logging_steps: int = Field(default=10, ge=1)
    resume_from_checkpoint: str | None = Field(default=None,
                                               description="checkpoint dir, or 'last' (newest in --output)")
    report_to: str = "none"
    training_args: dict[str, Any] = Field(default_factory=dict, description="other TrainingArguments fields")
    lora_r: int = Field(default=8, ge=1)
    lora_alpha: int = Field(default=16, ge=1)
    lora_target_modules: tuple[str, ...] = DEFAULT_LORA_TARGETS
    device: Literal["auto", "cpu", "cuda"] = "auto"
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

    @field_validator("data", "eval_data")
    @classmethod
    def _data_exists(cls, value: Path | None) -> Path | None:
        if value is None:
            return value
        if not value.exists():
            raise ValueError(f"{value}: data file not found (expected {EXPECTED}).")
        if not value.is_file():
            raise ValueError(f"{value}: not a file (expected {EXPECTED}).")
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

    @field_validator("training_args")
    @classmethod
    def _training_args(cls, value: dict[str, Any]) -> dict[str, Any]:
        if not value:
            return value
        known = _training_argument_fields()
        for key in value:
            if key in RESERVED_TRAINING_ARGS:
                raise ValueError(f"{key}: set by the trainer (use --output).")
            if key not in known:
                raise ValueError(f"{key}: not a transformers TrainingArguments field.")
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value == "cuda" and not torch.cuda.is_available():
            raise ValueError("cuda: no CUDA device is visible (use auto or cpu).")
        return value

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.method]


@dataclass
class TrainResult:
    method: str
    trainable_params: int
    output_dir: Path
    global_step: int
    runtime_s: float
    log_history: list[dict] = field(default_factory=list)  # Trainer's state.log_history
    eval_loss: float | None = None  # on --eval-data after training
    model: torch.nn.Module | None = field(default=None, repr=False)  # the trained in-memory model

    @property
    def losses(self) -> list[float]:
        """Training loss of each logging window (every --logging-steps steps)."""
        return [entry["loss"] for entry in self.log_history if "loss" in entry]

    @property
    def train_loss(self) -> float:
        """Training loss of the last logging window (the run's mean when nothing was logged)."""
        losses = self.losses
        if losses:
            return losses[-1]
        means = [entry["train_loss"] for entry in self.log_history if "train_loss" in entry]
        return means[-1] if means else float("nan")

    def summary(self) -> str:
        evaluated = "" if self.eval_loss is None else f", eval loss {self.eval_loss:.3f}"
        return (
            f"trained {self.method}: {self.trainable_params} trainable parameters, "
            f"train loss {self.train_loss:.3f}{evaluated}, {self.global_step} steps in {self.runtime_s:.1f} s"
        )


# ----------------------------------------------------------------- methods
def prepare(model, args: TrainArgs, generator: torch.Generator | None = None) -> torch.nn.Module:
    """The module Trainer trains: the base frozen, the method's parameters trainable."""
    from . import baselines
    from .model import PARAForCausalLM

    model.requires_grad_(False)
    if args.method == "para":
        return PARAForCausalLM.for_base(
            model, r=args.r, targets=args.targets, pooling=args.pooling,
            base_model_name_or_path=str(args.base_model), generator=generator,
        )
    if args.method == "lora":
        return baselines.prepare_lora(model, r=args.lora_r, alpha=args.lora_alpha,
                                      target_modules=args.lora_target_modules)
    if args.method == "ia3":
        return baselines.prepare_ia3(model)
    if args.method == "bitfit":
        return baselines.prepare_bitfit(model, base_model_name_or_path=str(args.base_model))
    raise ValueError(f"unknown method {args.method!r}; expected one of {METHODS}")


def training_arguments(args: TrainArgs, has_eval: bool):
    """transformers `TrainingArguments` from the flags (`--training-arg` applied last)."""
    from transformers import TrainingArguments

    known = _training_argument_fields()
    kw: dict[str, Any] = dict(
        output_dir=str(args.output),
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        num_train_epochs=args.epochs,
        max_steps=args.max_steps if args.max_steps is not None else -1,
        lr_scheduler_type=args.lr_scheduler_type,
        seed=args.seed,
        bf16=args.bf16,
        gradient_checkpointing=args.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        logging_steps=args.logging_steps,
        save_strategy="steps" if args.save_steps else "no",
        save_steps=args.save_steps or 500,
        eval_strategy="no" if not has_eval else ("steps" if args.eval_steps else "epoch"),
        eval_steps=args.eval_steps,
        report_to=args.report_to,
        disable_tqdm=not args.progress,
        use_cpu=args.device == "cpu" or (args.device == "auto" and args.bf16 and not _bf16_accelerator()),
        remove_unused_columns=False,  # the collator makes exactly the model's inputs
        label_names=["labels"],
        ddp_find_unused_parameters=False,  # every adapter parameter is used in every step
        dataloader_num_workers=0,
    )
    # warmup: `warmup_ratio` (transformers 4.x), or a float `warmup_steps` < 1 (5.x)
    if "warmup_ratio" in known:
        kw["warmup_ratio"] = args.warmup_ratio
    else:
        kw["warmup_steps"] = args.warmup_ratio
    kw.update(args.training_args)
    return TrainingArguments(**kw)


def _bf16_accelerator() -> bool:
    """Whether transformers would run bf16 on an accelerator (else --bf16 trains on the CPU)."""
    from transformers.utils import is_torch_bf16_gpu_available

    return bool(is_torch_bf16_gpu_available())


def read_cpuinfo() -> str:
    """/proc/cpuinfo's text ("" where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:
        return ""


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX-BF16 in /proc/cpuinfo).

    Without either (e.g. an AVX2-only CPU) PyTorch emulates bf16 matmuls: a SmolLM2-135M
    training step measured 78 s under bf16 autocast against 2.1 s in float32 on 2 AVX2 cores."""
    if cpuinfo is None:
        cpuinfo = read_cpuinfo()
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _encode(tokenizer, path: Path, max_length: int, what: str):
    from .data import EncodedDataset, encode_examples

    examples = load_examples(path)
    encoded, skipped = encode_examples(tokenizer, examples, max_length)
    if skipped:
        _log(f"{what}: skipped {skipped} examples whose prompt is >= --max-length {max_length} tokens")
    if not encoded:
        raise TrainDataError(f"{path}: no example fits in --max-length {max_length}.")
    return EncodedDataset(encoded)


# ------------------------------------------------------------------- train
def train(args: TrainArgs, model=None, tokenizer=None, callbacks: list | None = None) -> TrainResult:
    """Train and save one adapter with `transformers.Trainer`.

    `model` / `tokenizer` may be passed pre-loaded (they must be `args.base_model`'s);
    PARA and BitFit never change the model's own weights (PEFT injects its layers).
    `callbacks` are `transformers.TrainerCallback`s.
    """
    from transformers import AutoTokenizer

    from .data import PARADataCollator
    from .trainer import AdapterTrainer

    start = time.time()
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(args.base_model)
    train_ds = _encode(tokenizer, args.data, args.max_length, "train data")
    eval_ds = _encode(tokenizer, args.eval_data, args.max_length, "eval data") if args.eval_data else None
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    dtype = torch.bfloat16 if args.bf16 else torch.float32
    if args.bf16 and not _bf16_accelerator() and not cpu_has_native_bf16():
        _log("warning: --bf16 on a CPU without native bfloat16 (no avx512_bf16 / amx_bf16): PyTorch emulates it, "
             "often 10-40x slower than float32; drop --bf16 on this machine.")
    if model is None:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(args.base_model, dtype=dtype)
    module = prepare(model, args, generator=torch.Generator().manual_seed(args.seed))
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    if args.method == "para":
        from ..core import param_count

        expected = param_count(module.para_config)
        if trainable != expected:
            raise RuntimeError(f"PARA has {trainable} trainable parameters, expected {expected} (is the base frozen?)")

    training_args = training_arguments(args, has_eval=eval_ds is not None)
    if training_args.n_gpu > 1:
        # Trainer would use torch.nn.DataParallel (replicas share the PARA hooks' per-call state).
        raise RuntimeError(
            f"{training_args.n_gpu} GPUs visible to one process: launch one process per GPU "
            "(accelerate launch / torchrun -m vllm_para.training.train ...) or set CUDA_VISIBLE_DEVICES to one GPU."
        )
    trainer = AdapterTrainer(
        model=module,
        args=training_args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=PARADataCollator(pad_id, prompt_spans=args.method == "para"),
        callbacks=callbacks,
    )
    resume: str | bool | None = args.resume_from_checkpoint
    if resume == "last":
        resume = True
    trainer.train(resume_from_checkpoint=resume)
    eval_loss = None
    if eval_ds is not None:
        eval_loss = trainer.evaluate().get("eval_loss")
    output = Path(args.output)
    trainer.save_model(str(output))
    return TrainResult(
        method=args.method,
        trainable_params=trainable,
        output_dir=output,
        global_step=trainer.state.global_step,
        runtime_s=time.time() - start,
        log_history=list(trainer.state.log_history),
        eval_loss=eval_loss,
        model=module,
    )


# --------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vllm-para train",
        description="Train a PARA adapter (or a LoRA / IA3 / BitFit baseline) with transformers' Trainer "
        "on prompt/completion or chat JSONL.",
    )
    p.add_argument("--base-model", required=True, help="HF model directory of the base model")
    p.add_argument("--data", required=True,
                   help='JSONL, one {"prompt": ..., "completion": ...} or {"messages": [...]} per line')
    p.add_argument("--output", required=True, help="adapter output directory (checkpoints go to OUTPUT/checkpoint-N)")
    p.add_argument("--method", choices=METHODS, default="para")
    p.add_argument("--r", type=int, default=12, help="PARA VG bottleneck size (default 12)")
    p.add_argument("--targets", nargs="+", default=list(DEFAULT_TARGETS),
                   help="PARA targets among q k v g u (default q v u)")
    p.add_argument("--pooling", choices=get_args(Pooling), default="last", help="PARA prompt pooling")
    p.add_argument("--lr", "--learning-rate", dest="lr", type=float, default=None,
                   help=f"learning rate (default per method: {DEFAULT_LR})")
    p.add_argument("--epochs", "--num-train-epochs", dest="epochs", type=float, default=3)
    p.add_argument("--batch-size", "--per-device-train-batch-size", dest="batch_size", type=int, default=8,
                   help="per-device micro-batch size")
    p.add_argument("--gradient-accumulation-steps", type=int, default=1)
    p.add_argument("--lr-scheduler-type", default="cosine", help="transformers scheduler name (default cosine)")
    p.add_argument("--warmup-ratio", type=float, default=0.0, help="linear warmup over this fraction of the steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-length", type=int, default=512, help="max tokens per example")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--bf16", action="store_true", help="load the base in bfloat16 and train under bf16 autocast "
                   "(adapter parameters, the VG and the loss stay float32)")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--eval-data", default=None,
                   help="JSONL evaluated every --eval-steps (else every epoch) and at the end")
    p.add_argument("--eval-steps", type=int, default=None)
    p.add_argument("--save-steps", type=int, default=500, help="checkpoint every N steps (0: none; default 500)")
    p.add_argument("--logging-steps", type=int, default=10)
    p.add_argument("--resume-from-checkpoint", nargs="?", const="last", default=None, metavar="DIR",
                   help="continue from a checkpoint directory (no DIR: the newest OUTPUT/checkpoint-N)")
    p.add_argument("--report-to", choices=("none", "tensorboard"), default="none",
                   help="(others through --training-arg report_to=...)")
    p.add_argument("--training-arg", dest="training_args", action="append", default=[], metavar="KEY=VALUE",
                   help="any transformers TrainingArguments field (JSON value), e.g. optim=adafactor; repeatable")
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--lora-alpha", type=int, default=16)
    p.add_argument("--lora-target-modules", nargs="+", default=list(DEFAULT_LORA_TARGETS))
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (GPUs: CUDA_VISIBLE_DEVICES / accelerate)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    return p


def format_validation_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        flag = "--" + loc.split(".")[0].replace("_", "-") if loc else "<args>"
        if flag == "--training-args":
            flag = "--training-arg"
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{flag}: {msg}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    values = vars(ns)
    try:
        values["training_args"] = dict(parse_training_arg(item) for item in values["training_args"])
    except ValueError as exc:
        print(f"vllm-para train: error: --training-arg: {exc}", file=sys.stderr)
        return 2
    try:
        args = TrainArgs.model_validate(values)
        result = train(args)
    except ValidationError as exc:
        print(f"vllm-para train: error: {format_validation_error(exc)}", file=sys.stderr)
        return 2
    except TrainDataError as exc:
        print(f"vllm-para train: error: {exc}", file=sys.stderr)
        return 2
    if _is_main_process():
        print(f"saved {result.method} adapter to {result.output_dir}")
        print(result.summary(), flush=True)
    return 0


def _is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


if __name__ == "__main__":
    sys.exit(main())
