"""A small Llama-shaped base model pretrained locally, deterministically, on the
synthetic world's corpus (`study.corpus`), cached under the user's
cache directory and rebuilt when missing.

    from study.pretrain import ensure_base_model
    path = ensure_base_model()          # ~/.cache/vllm-para/base-<recipe hash>/ (built on first use)

Run: `make pretrain` or `python -m study.pretrain [--recipe default|quick] [--force]`.

The cache directory is `$VLLM_PARA_CACHE`, else `$XDG_CACHE_HOME/vllm-para`, else
`~/.cache/vllm-para`. The directory name carries a hash of the recipe (model
shape, corpus version, steps, seed, ...), so a changed recipe builds a new base
and never reads a stale one. Builds go to a temporary directory renamed into
place at the end, under a file lock: concurrent callers build once.

Determinism: the corpus, the tokenizer, the initialisation and the batch order
are seeded, and training runs with a fixed thread count (`threads`), so the
same recipe on the same torch build gives the same weights (the sha256 of the
weights is recorded in `pretrain_info.json`).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import torch

from .corpus import CORPUS_VERSION, sample_documents

RECIPES: dict[str, dict] = {
    # about 9 minutes on 2 idle cores (3000 updates, 6.1M tokens): the base the demo and the study use.
    "default": dict(
        hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        head_dim=32, vocab_size=2048, seq_len=128, batch_size=16, steps=3000, lr=4e-3, warmup=100, min_lr_ratio=0.1,
        weight_decay=0.01, documents=95000, tokenizer_documents=20000, seed=0, threads=2,
    ),
    # seconds: for tests of the machinery (not fluent).
    "quick": dict(
        hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        head_dim=64, vocab_size=512, seq_len=128, batch_size=16, steps=30, lr=3e-3, warmup=5, min_lr_ratio=0.1,
        weight_decay=0.01, documents=2000, tokenizer_documents=2000, seed=0, threads=2,
    ),
}
INFO_FILE = "pretrain_info.json"


def cache_dir() -> Path:
    if os.environ.get("VLLM_PARA_CACHE"):
        return Path(os.environ["VLLM_PARA_CACHE"]).expanduser()
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "vllm-para"


def recipe_key(recipe: dict) -> str:
    payload = json.dumps({**recipe, "corpus_version": CORPUS_VERSION, "format": 1}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def base_model_path(recipe: str | dict = "default") -> Path:
    spec = RECIPES[recipe] if isinstance(recipe, str) else recipe
    name = recipe if isinstance(recipe, str) else "custom"
    return cache_dir() / f"base-{name}-{recipe_key(spec)}"


def is_built(path: Path) -> bool:
    return (path / INFO_FILE).is_file() and (path / "config.json").is_file()


def ensure_base_model(recipe: str | dict = "default", force: bool = False, log=None) -> Path:
    """The cached pretrained base for `recipe`, built first if missing (or `force`)."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    path = base_model_path(recipe)
    if is_built(path) and not force:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with _lock(path.parent / (path.name + ".lock")):
        if is_built(path) and not force:  # another process built it while we waited
            return path
        spec = RECIPES[recipe] if isinstance(recipe, str) else recipe
        tmp = path.parent / (path.name + f".tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        log(f"pretraining the base model ({spec['steps']} steps) into {path} ...")
        pretrain(tmp, spec, log=log)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    return path


@contextlib.contextmanager
def _lock(lock_path: Path):
    with open(lock_path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ------------------------------------------------------------------ tokenizer
def build_tokenizer(directory: Path, documents: list[str], vocab_size: int, model_max_length: int = 2048):
    """Byte-level BPE trained on the corpus; BOS prepended to every encoded text."""
    from testkit.tiny_models import build_tokenizer as build

    return build(directory, vocab_size, model_max_length, documents=documents, add_bos=True)


# ------------------------------------------------------------------- pretrain
def _packed_batches(tokenizer, documents: list[str], seq_len: int) -> torch.Tensor:
    """All documents as one stream `<s> doc </s> <s> doc </s> ...`, cut into rows of `seq_len`."""
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for ids in tokenizer(documents)["input_ids"]:
        stream.extend(ids)
        stream.append(eos)
    n = len(stream) // seq_len
    return torch.tensor(stream[: n * seq_len], dtype=torch.long).view(n, seq_len)


def pretrain(directory: Path, spec: dict, log=print, on_step=None) -> Path:
    """Train `spec` into `directory`. `on_step(step, model, tokenizer)`, if given, runs after every update
    (for probes during training; it must not change the model)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    start, cpu_start = time.time(), time.process_time()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(spec["threads"])
    try:
        docs = sample_documents(spec["documents"], seed=spec["seed"])
        tokenizer = build_tokenizer(directory, docs[: spec["tokenizer_documents"]], spec["vocab_size"])
        rows = _packed_batches(tokenizer, docs, spec["seq_len"])
        config = LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=spec["hidden_size"], intermediate_size=spec["intermediate_size"],
            num_hidden_layers=spec["num_hidden_layers"], num_attention_heads=spec["num_attention_heads"],
            num_key_value_heads=spec["num_key_value_heads"], head_dim=spec["head_dim"],
            max_position_embeddings=2048, rms_norm_eps=1e-5, tie_word_embeddings=False,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id, torch_dtype="float32", initializer_range=0.02,
        )
        torch.manual_seed(spec["seed"])
        model = LlamaForCausalLM(config).float()
        model.train()
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
        no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": spec["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
            lr=spec["lr"], betas=(0.9, 0.95),
        )
        steps, warmup = spec["steps"], spec["warmup"]

        def lr_at(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(1, steps - warmup)
            return spec["min_lr_ratio"] + (1 - spec["min_lr_ratio"]) * 0.5 * (1 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
        gen = torch.Generator().manual_seed(spec["seed"])
        order = torch.randperm(rows.shape[0], generator=gen)
        bs = spec["batch_size"]
        losses = []
        for step in range(steps):
            idx = order[(torch.arange(bs) + step * bs) % rows.shape[0]]
            batch = rows[idx]
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
            if on_step is not None:
                on_step(step + 1, model, tokenizer)
            if (step + 1) % 50 == 0 or step == 0:
                log(f"  pretrain step {step + 1}/{steps}: loss {sum(losses[-50:]) / len(losses[-50:]):.3f} "
                    f"({time.time() - start:.0f} s)")
        model.eval()
        model.generation_config.do_sample = False
        model.save_pretrained(str(directory), safe_serialization=True)
    finally:
        torch.set_num_threads(threads)
    weights = (directory / "model.safetensors").read_bytes()
    info = {
        "recipe": spec, "recipe_key": recipe_key(spec), "corpus_version": CORPUS_VERSION,
        "tokens_seen": steps * bs * spec["seq_len"], "corpus_rows": int(rows.shape[0]),
        "parameters": sum(p.numel() for p in model.parameters()),
        "loss_first": losses[0], "loss_last50": sum(losses[-50:]) / len(losses[-50:]),
        "loss_curve": [round(sum(losses[i:i + 25]) / len(losses[i:i + 25]), 4) for i in range(0, len(losses), 25)],
        "seconds": round(time.time() - start, 1), "cpu_seconds": round(time.process_time() - cpu_start, 1),
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
        "torch": torch.__version__,
    }
    (directory / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    log(f"pretrained {info['parameters']} parameters on {info['tokens_seen']} tokens in {info['seconds']} s; "
        f"final loss {info['loss_last50']:.3f}")
    return directory


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Build (or find) the cached pretrained base model.")
    p.add_argument("--recipe", default="default", choices=sorted(RECIPES))
    p.add_argument("--force", action="store_true", help="rebuild even when cached")
    p.add_argument("--probe", action="store_true", help="also print what the base can do (probe_base)")
    args = p.parse_args(argv)
    path = ensure_base_model(args.recipe, force=args.force)
    info = json.loads((path / INFO_FILE).read_text())
    print(f"{path}  ({info['parameters']} parameters, final loss {info['loss_last50']:.3f}, "
          f"built in {info['seconds']} s)")
    if args.probe:
        print(json.dumps(probe_base(path), indent=2))
    return 0


# ---------------------------------------------------------------------- probe
PROBE_FILE = "probe-v2.json"  # v2 added the repeat probe


def repeat_lists(n: int, rng) -> list[str]:
    """`n` lists of 10 random entity words (every split's), for `repeat_probe`."""
    from .world import all_entities

    ents = all_entities()
    words = sorted({w for k in ("names", "towns", "jobs", "pets", "colors") for w in ents[k]})
    return [" ".join(rng.sample(words, 10)) for _ in range(n)]


def repeat_probe(model, tok, lists: list[str]) -> tuple[float, float]:
    """Teacher-forced greedy next-token accuracy on the first and the second half of
    "w1 ... w10. w1 ... w10", averaged over `lists`. Both halves count from their second token."""
    first = second = 0.0
    was_training = model.training
    model.eval()
    for seq in lists:
        ids = tok(f"{seq}. {seq}")["input_ids"]
        n1, n2 = len(tok(seq)["input_ids"]) - 1, len(tok(" " + seq)["input_ids"]) - 1  # without BOS
        with torch.no_grad():
            pred = model(torch.tensor([ids])).logits[0].argmax(-1)
        hit = (pred[:-1] == torch.tensor(ids[1:])).float()  # hit[i]: token i+1 predicted from 0..i
        first += hit[1:n1].mean().item()
        second += hit[len(ids) - n2:].mean().item()
    model.train(was_training)
    return first / len(lists), second / len(lists)


def probe_base(path: Path, n: int = 48, seed: int = 123) -> dict:
    """What the pretrained base can do in its own (pretraining) formats, greedy, cached in
    `probe-v2.json`: copy a fact from the text before ("... Where does Talo live? Talo lives in" -> " Vermi"),
    add/subtract ("7 + 5 =" -> " 12."), continue a cause with its effect ("Talo was hungry, so" -> " Talo ate ..."),
    and copy at all: `repeat_first` / `repeat_second` are the teacher-forced next-token accuracies on the
    two halves of "w1 ... w10. w1 ... w10" (random entity words). Only a model with an induction head
    (content-based look-up) scores higher on the second half than on the first."""
    import random as _random

    path = Path(path)
    cached = path / PROBE_FILE
    if cached.is_file():
        return json.loads(cached.read_text())
    from transformers import AutoTokenizer

    from vllm_para.training.reference import PARAReferenceModel
    from . import copa, qa
    from .passages import FACT_PHRASINGS_ALL, fact_value, render_fact
    from .world import all_entities

    rng = _random.Random(seed)
    ents = all_entities()
    items: dict[str, list[tuple[str, str]]] = {"copy": [], "arithmetic": [], "cause_effect": []}
    for _ in range(n):
        people = [(name, {k: fact_value(k, ents, rng) for k in rng.sample(("town", "job", "pet", "color"), 2)})
                  for name in rng.sample(ents["names"], 2)]
        phrasing = {(nm, k): rng.choice(FACT_PHRASINGS_ALL[k]) for nm, f in people for k in f}
        text = " ".join(render_fact(phrasing[(nm, k)], nm, v) for nm, f in people for k, v in f.items())
        name, facts = rng.choice(people)
        kind = rng.choice(sorted(facts))
        answer = render_fact(phrasing[(name, kind)], name, facts[kind])
        prefix = answer[: answer.index(facts[kind])].rstrip()
        items["copy"].append((f"{text} {qa.QUESTIONS_ALL[kind][0].format(n=name)} {prefix}", " " + facts[kind]))
        a = rng.randint(1, 12)
        b = rng.randint(1, 8)
        op = rng.choice("+-") if a > b else "+"
        items["arithmetic"].append((f"{a} {op} {b} =", f" {a + b if op == '+' else a - b}."))
        cause, effect = copa.RELATIONS[rng.randrange(len(copa.RELATIONS))]
        who = rng.choice(ents["names"])
        items["cause_effect"].append((cause.format(n=who)[0].upper() + cause.format(n=who)[1:] + ", so",
                                      " " + effect.format(n=who)))
    tok = AutoTokenizer.from_pretrained(str(path))
    ref = PARAReferenceModel.from_pretrained(path)
    repeats = repeat_lists(n, rng)
    out = {}
    for kind, pairs in items.items():
        gens = ref.greedy([tok(p)["input_ids"] for p, _ in pairs], max_new_tokens=8, stop_at_eos=False)
        texts = [tok.decode(g.token_ids, skip_special_tokens=True) for g in gens]
        out[kind] = sum(t.startswith(want) for t, (_, want) in zip(texts, pairs)) / len(pairs)
    out["repeat_first"], out["repeat_second"] = repeat_probe(ref.model, tok, repeats)
    cached.write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    sys.exit(main())
