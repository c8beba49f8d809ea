"""Build the base model and the adapters the load test serves (all local, seeded).

* the base: a random-weight Llama-shaped checkpoint (testkit.tiny_models);
* PARA adapters: the trainer's init plus a random perturbation;
* LoRA adapters (peft format) with seeded random non-zero A and B, at the rank whose
  trainable parameter count is closest to PARA's ("matched") or at rank 16 on
  every linear layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PARA_R = 12
PARA_TARGETS = ("q", "v", "u")
# LoRA at matched size adapts the same projections PARA scales.
MATCHED_LORA_TARGETS = ("q_proj", "v_proj", "up_proj")
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # values --max-lora-rank accepts


@dataclass(frozen=True)
class ModelSpec:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int = 64
    real: str | None = None  # a real base of vllm_para.base_model.BASES instead of random weights

    def describe(self) -> str:
        shapes = (f"hidden {self.hidden_size}, intermediate {self.intermediate_size}, {self.num_hidden_layers} "
                  f"layers, {self.num_attention_heads} heads, {self.num_key_value_heads} KV heads, "
                  f"head_dim {self.head_dim}")
        return (f"{self.real} (real pretrained weights): {shapes}" if self.real
                else f"Llama-shaped, random weights: {shapes}")

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each Llama linear layer."""
        h, i = self.hidden_size, self.intermediate_size
        q, kv = self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}


def lora_param_count(spec: ModelSpec, r: int, targets: tuple[str, ...]) -> int:
    """Trainable parameters of a LoRA adapter: r * (in + out) per adapted layer."""
    shapes = spec.linear_shapes()
    return spec.num_hidden_layers * r * sum(sum(shapes[t]) for t in targets)


def matched_lora_rank(spec: ModelSpec, para_params: int, targets: tuple[str, ...] = MATCHED_LORA_TARGETS) -> int:
    """The rank r >= 1 whose LoRA parameter count is closest to `para_params`."""
    per_rank = lora_param_count(spec, 1, targets)
    low = max(1, para_params // per_rank)
    return min((low, low + 1), key=lambda r: (abs(lora_param_count(spec, r, targets) - para_params), r))


def max_lora_rank_flag(r: int) -> int:
    """Smallest `--max-lora-rank` value vLLM accepts that holds rank r."""
    return next(v for v in VLLM_LORA_RANKS if v >= r)


def real_spec(name: str) -> ModelSpec:
    """The ModelSpec of a real base (`--model smollm2-135m`), converted once by vllm_para.base_model."""
    from transformers import AutoConfig

    from vllm_para.base_model import ensure_base

    c = AutoConfig.from_pretrained(str(ensure_base(name)))
    return ModelSpec(c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.num_attention_heads,
                     c.num_key_value_heads, c.head_dim, real=name)


def build_base(spec: ModelSpec, directory: Path) -> Path:
    """The base model of a run: the cached real one, or random weights of `spec`'s shape in `directory`."""
    from testkit.tiny_models import build_tiny_model

    if spec.real:
        from vllm_para.base_model import ensure_base

        return ensure_base(spec.real)

    return build_tiny_model(directory, arch="llama", hidden_size=spec.hidden_size,
                            intermediate_size=spec.intermediate_size, num_hidden_layers=spec.num_hidden_layers,
                            num_attention_heads=spec.num_attention_heads,
                            num_key_value_heads=spec.num_key_value_heads, head_dim=spec.head_dim)


def para_param_count(base: Path, r: int = PARA_R, targets: tuple[str, ...] = PARA_TARGETS) -> int:
    from transformers import AutoConfig

    from vllm_para.config import ModelShape, PARAConfig
    from vllm_para.core import param_count

    shape = ModelShape.from_hf_config(AutoConfig.from_pretrained(str(base)))
    return param_count(PARAConfig(base_model_name_or_path=str(base), r=r, targets=targets, **shape.model_dump()))


def build_para_adapters(base: Path, directory: Path, n: int, seed: int = 0) -> dict[str, str]:
    from testkit.tiny_models import build_random_adapter

    return {f"para-{i}": str(build_random_adapter(base, directory / f"para-{i}", r=PARA_R, targets=PARA_TARGETS,
                                                  pooling="last", seed=seed * 1000 + i))
            for i in range(n)}


def build_lora_adapters(base: Path, directory: Path, prefix: str, n: int, r: int, targets: tuple[str, ...],
                        seed: int = 0, std: float = 0.02, names: list[str] | None = None) -> dict[str, str]:
    """`n` peft LoRA adapters of rank r on `targets`, each with its own seeded random A and B
    (named `<prefix>-<i>`, or `names[i]` when given)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0,
                                             target_modules=list(targets), task_type="CAUSAL_LM"))
    paths = {}
    for i in range(n):
        gen = torch.Generator().manual_seed(seed * 1000 + 500 + i)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_A" in name or "lora_B" in name:
                    param.copy_(torch.randn(param.shape, generator=gen) * std)
        name = names[i] if names is not None else f"{prefix}-{i}"
        out = directory / name
        model.save_pretrained(str(out))
        paths[name] = str(out)
    return paths


def build_para_fleet(base: Path, directory: Path, names: list[str], seed: int = 0) -> dict[str, str]:
    """PARA adapters `directory/<name>/` (r=12 on q,v,up), one seeded random adapter per name."""
    from testkit.tiny_models import build_random_adapter

    return {name: str(build_random_adapter(base, directory / name, r=PARA_R, targets=PARA_TARGETS, pooling="last",
                                           seed=seed * 100_003 + i))
            for i, name in enumerate(names)}


def build_ia3_fleet(base: Path, directory: Path, names: list[str], seed: int = 0) -> int:
    """PEFT (IA)^3 adapters `directory/<name>/` (PEFT's default Llama targets: k, v, down as
    feed-forward), written by PEFT's own save_pretrained from one PEFT model whose vectors are
    re-drawn per name (1 + 0.3 randn). Returns the trainable parameters per adapter."""
    import peft
    import torch
    from transformers import AutoModelForCausalLM

    model = peft.get_peft_model(AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32),
                                peft.IA3Config(task_type="CAUSAL_LM"))
    vectors = [p for n, p in model.named_parameters() if "ia3_l" in n]
    for i, name in enumerate(names):
        gen = torch.Generator().manual_seed(seed * 100_003 + i)
        with torch.no_grad():
            for p in vectors:
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=gen))
        model.save_pretrained(str(directory / name))
    return sum(p.numel() for p in vectors)


def lora_slot_bytes(spec: ModelSpec, vocab_size: int, max_lora_rank: int, dtype_bytes: int) -> int:
    """Bytes of ONE of vLLM's device LoRA slots (`--max-loras` of them are allocated at start-up).

    vLLM 0.32 wraps every linear layer of a Llama (qkv, o, gate_up, down) plus the embedding
    and the logits processor, whatever the adapters target, and sizes every A/B buffer at
    `--max-lora-rank`. Checked against the sizes of the `lora_*_stacked` tensors of a real
    CPU engine (tests/test_loadtests.py)."""
    h, i = spec.hidden_size, spec.intermediate_size
    q, kv = spec.num_attention_heads * spec.head_dim, spec.num_key_value_heads * spec.head_dim
    per_layer = (3 * h + q + 2 * kv) + (q + h) + (2 * h + 2 * i) + (i + h)  # A (in) + B (out) per slice
    return max_lora_rank * dtype_bytes * (spec.num_hidden_layers * per_layer + 2 * (vocab_size + h))
