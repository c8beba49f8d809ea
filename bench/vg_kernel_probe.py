"""What the VG could cost per layer at prefill as one fused kernel, against the engine's eager call chain (CPU).

    .venv/bin/python -m bench.vg_kernel_probe [--rows 1] [--rounds 15]

The engine runs each layer's VG for a step's prompts as about ten small ATen calls from Python
(`vllm_para.worker.ops.compute_vectors`: gather the last token, mm, the erfc GeLU, addmm, write the
page). On 2 cores that call chain, not its arithmetic (~55K multiply-adds per prompt at r = 12 on
SmolLM2's shapes), is what a PARA prompt adds at prefill (docs/performance.md). This probe builds two
C++ variants with `torch.utils.cpp_extension.load_inline` (g++ and torch's headers; nothing is
downloaded) and times, per layer, float32, one thread, ABBA-alternated:

    python   core.pool_last + core.vg_forward + index_copy_ (the engine's body, minus the op dispatch)
    aten     the same ATen calls issued from C++ (no Python between them)
    fused    plain loops: the pooled row's r dot products, the GeLU, the up-projection written
             straight into the page (no ATen call, no temporary tensor)

It is a measurement for the follow-up (a fused VG kernel), not product code: the engine does not
build or load C++.

Runs in: the benchmark driver (no vLLM engine).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

_SOURCE = r"""
#include <torch/extension.h>
#include <cmath>

void vg_aten(const at::Tensor& residual, const at::Tensor& last, const at::Tensor& down,
             const at::Tensor& up_rank_major, const at::Tensor& bias, at::Tensor vectors, const at::Tensor& pages) {
  at::Tensor z = at::mm(residual.index_select(0, last), down.t());
  at::Tensor g = at::erfc(z * -0.7071067811865476).mul_(z).mul_(0.5);
  vectors.index_copy_(0, pages, at::addmm(bias, g, up_rank_major));
}

// float32, contiguous rows: down [R, H], up_rank_major [R, V], vectors [pages, V].
void vg_fused(const at::Tensor& residual, const at::Tensor& last, const at::Tensor& down,
              const at::Tensor& up_rank_major, const at::Tensor& bias, at::Tensor vectors, const at::Tensor& pages) {
  const int64_t B = last.size(0), H = residual.size(1), R = down.size(0), V = bias.size(0);
  const float* res = residual.data_ptr<float>();
  const int64_t* li = last.data_ptr<int64_t>();
  const int64_t* pg = pages.data_ptr<int64_t>();
  const float* d = down.data_ptr<float>();
  const float* u = up_rank_major.data_ptr<float>();
  const float* b = bias.data_ptr<float>();
  float* vec = vectors.data_ptr<float>();
  const int64_t ds = down.stride(0), us = up_rank_major.stride(0), rs = residual.stride(0), vs = vectors.stride(0);
  float g[256];
  for (int64_t i = 0; i < B; ++i) {
    const float* p = res + li[i] * rs;
    for (int64_t k = 0; k < R; ++k) {
      const float* w = d + k * ds;
      float acc = 0.f;
      for (int64_t h = 0; h < H; ++h) acc += p[h] * w[h];
      g[k] = acc * std::erfc(acc * -0.7071067811865476f) * 0.5f;
    }
    float* out = vec + pg[i] * vs;
    for (int64_t j = 0; j < V; ++j) out[j] = b[j];
    for (int64_t k = 0; k < R; ++k) {
      const float* w = u + k * us;
      const float gk = g[k];
      for (int64_t j = 0; j < V; ++j) out[j] += gk * w[j];
    }
  }
}
"""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=1, help="prompts whose VG runs in the step (one adapter)")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--layers", type=int, default=30)
    args = p.parse_args(argv)
    from torch.utils.cpp_extension import load_inline

    from bench import protocol as P
    from vllm_para.core import pool_last, vg_forward

    torch.set_num_threads(1)
    start = time.perf_counter()
    ext = load_inline("vllm_para_vg_probe", cpp_sources=_SOURCE, functions=["vg_aten", "vg_fused"],
                      build_directory=tempfile.mkdtemp(prefix="vg_probe_"), extra_cflags=["-O3", "-march=native"])
    build_s = time.perf_counter() - start
    L, H, r, V, T = args.layers, 576, 12, 4032, 64 * args.rows  # SmolLM2-135M: hidden 576, q,k,v,g,u 4032
    g = torch.Generator().manual_seed(0)
    residual = torch.randn(T, H, generator=g) * 30
    vectors = torch.ones(L, 2 * args.rows + 1, V)
    down = torch.randn(L, 64, H, generator=g)[:, :r] * 0.05  # a slot's views: rank 12 of max 64
    up_rank_major = torch.randn(L, 64, V, generator=g)[:, :r] * 0.1
    bias = torch.ones(L, V)
    last = torch.arange(args.rows) * 64 + 63
    pages = torch.arange(1, args.rows + 1)

    def python(layer):
        out = vg_forward(pool_last(residual, last), down[layer], up_rank_major[layer].t(), bias[layer])
        vectors[layer].index_copy_(0, pages, out)

    def aten(layer):
        ext.vg_aten(residual, last, down[layer], up_rank_major[layer], bias[layer], vectors[layer], pages)

    def fused(layer):
        ext.vg_fused(residual, last, down[layer], up_rank_major[layer], bias[layer], vectors[layer], pages)

    variants = {"python": python, "aten": aten, "fused": fused}
    results = {}
    for name, fn in variants.items():
        vectors.fill_(1.0)
        fn(3)
        results[name] = vectors[3, 1:].clone()
    diff = max((results[n] - results["python"]).abs().max().item() for n in variants)
    scale = results["python"].abs().max().item()

    def per_layer_us(fn) -> float:
        t0 = time.perf_counter()
        for _ in range(20):
            for layer in range(L):
                fn(layer)
        return (time.perf_counter() - t0) / 20 / L * 1e6

    times: dict[str, list[float]] = {n: [] for n in variants}
    for fn in variants.values():  # warm-up
        per_layer_us(fn)
    order = list(variants)
    for k in range(args.rounds):
        for name in order if k % 2 == 0 else order[::-1]:
            times[name].append(per_layer_us(variants[name]))
    print(f"# VG per layer at prefill, {args.rows} prompt(s), float32, 1 thread "
          "(SmolLM2 shapes: H 576, r 12, V 4032)\n")
    print(f"- machine: {P.machine()}; C++ build {build_s:.0f} s")
    print(f"- {args.rounds} ABBA rounds of 20 x {L} layers; largest difference from `python` {diff:.1e} "
          f"on vectors up to {scale:.0f} (float32 summation order)\n")
    print("| variant | us per layer, median [min-max] | x python |\n|---|---|---|")
    base = statistics.median(times["python"])
    for name, xs in times.items():
        med = statistics.median(xs)
        print(f"| {name} | {med:.1f} [{min(xs):.1f}-{max(xs):.1f}] | {med / base:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
