"""Where the soak's worker RSS growth comes from: the same random batches through an offline
vLLM engine on the tiny Llama, with PARA off (plain vLLM-CPU) or on (3 adapters), sampling the
RSS of every engine process every 10 rounds.

    .venv/bin/python -m bench.worker_rss_probe --mode plain --rounds 700 --out plain.json
    .venv/bin/python -m bench.worker_rss_probe --mode para --rounds 150
    .venv/bin/python -m bench.worker_rss_probe --mode plain --fixed      # one batch shape, repeated
    .venv/bin/python -m bench.worker_rss_probe --mode plain --eager      # no torch.compile

A round is one `llm.generate` of 1-24 prompts (3-60 words), max_tokens 1-32, greedy or
sampled; `--fixed` sends the same round every time. Allocator settings are taken from the
environment (e.g. MALLOC_ARENA_MAX=2 MALLOC_MMAP_THRESHOLD_=131072). Results of one set of
runs: bench/results/worker-rss-probe-20261202/.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("plain", "para"), default="plain")
    parser.add_argument("--rounds", type=int, default=150)
    parser.add_argument("--fixed", action="store_true", help="the same batch every round")
    parser.add_argument("--eager", action="store_true", help="enforce_eager (no torch.compile)")
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None, help="samples as JSON")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

    import psutil

    from testkit.tiny_models import VOCAB_WORDS as WORDS
    from testkit.tiny_models import build_random_adapter, build_tiny_model

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="rss-probe-"))
    model = work / "model"
    if not (model / "config.json").exists():
        build_tiny_model(model, arch="llama")
    adapters = {}
    for i, name in enumerate(("sql", "qa", "tone")):
        if not (work / name).exists():
            build_random_adapter(model, work / name, r=12, seed=i, pooling="last" if i else "mean")
        adapters[name] = str(work / name)

    from vllm import LLM, SamplingParams

    kw = dict(model=str(model), dtype="float32", max_model_len=512, max_num_seqs=32, seed=0)
    if args.eager:
        kw["enforce_eager"] = True
    if args.mode == "para":
        kw["additional_config"] = {"para": {"modules": adapters, "max_adapters": 2}}
    llm = LLM(**kw)
    me = psutil.Process()

    def rss_mib() -> dict[str, int]:
        out: dict[str, int] = {}
        for p in [me] + me.children(recursive=True):
            try:
                out[p.name()] = out.get(p.name(), 0) + p.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return {k: v >> 20 for k, v in out.items()}

    rng = random.Random(0)
    samples = []
    began = time.time()
    for r in range(args.rounds):
        if args.fixed:
            rng = random.Random(0)
        n = rng.randint(1, 24)
        prompts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 60))) for _ in range(n)]
        params = []
        for _ in range(n):
            extra = ({"para_adapter": rng.choice(sorted(adapters))}
                     if args.mode == "para" and rng.random() < 0.8 else None)
            params.append(SamplingParams(max_tokens=rng.randint(1, 32), temperature=rng.choice([0.0, 0.8]),
                                         ignore_eos=True, extra_args=extra))
        llm.generate(prompts, params, use_tqdm=False)
        if r % 10 == 0 or r == args.rounds - 1:
            samples.append({"round": r, "s": round(time.time() - began), "rss_mib": rss_mib()})
            print(json.dumps(samples[-1]), flush=True)
    if args.out:
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "samples": samples}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
