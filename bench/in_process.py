"""What the in-process benchmarks share (`interleaved_step.py`, `prefill_overhead.py`).

Importing this module sets VLLM_ENABLE_V1_MULTIPROCESSING=0 (engine core in this process, so an
idle engine does not busy-poll a core) and VLLM_CPU_KVCACHE_SPACE=1; import it before vLLM.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def add_common_args(p: argparse.ArgumentParser, batch: int, rounds: int) -> None:
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="bfloat16")
    p.add_argument("--batch", type=int, default=batch)
    p.add_argument("--model", default="random", choices=("random", "smollm2-135m"),
                   help="random: the load test's full-mode random-weight shape; smollm2-135m: the real base")
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--rounds", type=int, default=rounds)
    p.add_argument("--adapters", type=int, default=8)
    p.add_argument("--adapter-kind", default="para", choices=("para", "ia3"),
                   help="para: random PARA adapters; ia3: random PEFT (IA)^3 adapters (static vectors)")
    p.add_argument("--out", type=Path, default=None)


def build_full_model(prefix: str, num_adapters: int, model: str = "random", kind: str = "para"):
    """The load test's full-mode base model and `num_adapters` adapters of `kind` (PARA, or PEFT
    (IA)^3), built in a fresh temporary folder: (model spec, base path, {name: adapter path})."""
    from bench import adapters as ad
    from bench.systems import MODES

    work = Path(tempfile.mkdtemp(prefix=prefix))
    spec = ad.real_spec(model) if model != "random" else MODES["full"].model
    base = ad.build_base(spec, work / "base")
    if kind == "ia3":
        from testkit.tiny_models import build_random_ia3_adapter

        paths = {f"ia3-{i:02d}": work / "ia3" / f"ia3-{i:02d}" for i in range(num_adapters)}
        for i, path in enumerate(paths.values()):
            build_random_ia3_adapter(base, path, seed=i)
        return spec, base, {name: str(path) for name, path in paths.items()}
    return spec, base, ad.build_para_adapters(base, work / "para", num_adapters)
