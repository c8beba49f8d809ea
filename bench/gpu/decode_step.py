"""One decode step of a Llama-2-7B-shaped model: base vs PARA vs multi-LoRA r=16, pure torch.

    python bench/gpu/decode_step.py                       # CUDA, bf16, Llama-2-7B shapes, CUDA graphs
    python bench/gpu/decode_step.py --small --device cpu  # correctness-sized, no CUDA graphs

No vLLM: this isolates what PARA adds to a decode step on a GPU. Every variant runs the
same step (embedding, 32 x [RMSNorm, fused qkv, RoPE, KV-cache write, SDPA over a
static `--ctx`-token cache, o_proj, RMSNorm, fused gate_up, SiLU*up, down], norm,
lm_head) on the same weights and inputs; only the adapter work differs:

    base          nothing
    para          per layer: gather each token's [l_q|l_k|l_v] and [l_g|l_u] from the side
                  buffer by its page index (`index_select`) and scale the fused qkv and
                  gate_up outputs in place (what vllm_para/worker/layers.py does per layer)
    para-1gather  one gather of all layers' vectors per step, then per-layer strided views
    para-compiled (--compile) the per-layer gather+scale as one torch.compile'd (Triton on
                  CUDA) kernel: the vectors are read once, never materialized
    lora          multi-LoRA r=16 on every linear layer (qkv, o, gate_up, down), SGMV-style
                  without data-dependent shapes: shrink x against every resident adapter's A
                  at once, zero the columns of other adapters (one-hot mask per token),
                  expand against the stacked B: every resident adapter's weights are read
                  once per step, as a segmented (SGMV) kernel reads them
    lora-bgmv     the same LoRA, BGMV-style: per-token gather of A and B (index_select) +
                  bmm shrink + bmm expand (reads one adapter per token, but materializes the
                  gathered copies); the better of the two is the fair LoRA figure

The side buffer holds vectors for max-batch + 1 pages (65: 64 sequences + the all-ones
page 0); LoRA holds `--lora-adapters` (default 8, like the load tests and a typical
--max-loras) resident adapters; token b uses page 1 + b % 64 and adapter b % n. On CUDA
each (variant, batch) step is captured once in a CUDA graph and replayed; timing uses
CUDA events over `--iters` replays. Variants are timed in ABBA
rounds (bench/protocol.py: forward order on even rounds, reversed on odd), and the
ratios (variant / base step time) are medians [min-max] of per-round ratios.
Target: PARA/base <= 1.02 at every batch size.

Writes a markdown table to stdout and, with --json, the numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import protocol as P  # noqa: E402  (pure Python)

TARGET = 1.02
VARIANTS = ("base", "para", "para-1gather", "lora", "lora-bgmv")


@dataclass(frozen=True)
class Shape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int

    @classmethod
    def llama2_7b(cls) -> "Shape":
        return cls(4096, 11008, 32, 32, 32, 128, 32000)

    @classmethod
    def small(cls) -> "Shape":
        return cls(64, 96, 2, 4, 2, 16, 128)

    @property
    def q_size(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def qkv_size(self) -> int:
        return self.q_size + 2 * self.kv_size


@dataclass
class State:
    """Static inputs of one batch size (what a CUDA graph reads)."""

    batch: int
    tokens: torch.Tensor  # [B]
    page: torch.Tensor  # [B] side-buffer page of each token (0 = all ones)
    adapter: torch.Tensor  # [B] LoRA adapter of each token
    onehot: torch.Tensor  # [B, n_adapters] 1 at each token's adapter (the SGMV-style mask)


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    var = x.float().pow(2).mean(-1, keepdim=True)
    return (x.float() * torch.rsqrt(var + eps)).to(x.dtype) * w


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def _scale_gathered(out: torch.Tensor, vec: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return out * vec.index_select(0, idx)


class DecodeModel:
    def __init__(self, shape: Shape, device: torch.device, dtype: torch.dtype, max_batch: int = 64, ctx: int = 512,
                 seed: int = 0, pages: int | None = None, lora_adapters: int = 8, rank: int = 16,
                 compile_epilogue: bool = False) -> None:
        self.s, self.device, self.dtype, self.ctx, self.rank = shape, device, dtype, ctx, rank
        self.max_batch = max_batch
        self.pages = pages or max_batch + 1
        self.n_lora = lora_adapters
        g = torch.Generator(device=device).manual_seed(seed)
        s, L = shape, shape.layers

        def rand(*size, std=1.0):
            return (torch.randn(*size, generator=g, device=device, dtype=torch.float32) * std).to(dtype)

        h, i = s.hidden, s.intermediate
        self.embed = rand(s.vocab, h, std=1.0)
        self.lm_head = rand(s.vocab, h, std=h ** -0.5)
        self.norm = 1 + rand(h, std=0.1)
        self.ln1 = [1 + rand(h, std=0.1) for _ in range(L)]
        self.ln2 = [1 + rand(h, std=0.1) for _ in range(L)]
        self.wqkv = [rand(s.qkv_size, h, std=h ** -0.5) for _ in range(L)]
        self.wo = [rand(h, s.q_size, std=s.q_size ** -0.5) for _ in range(L)]
        self.wgu = [rand(2 * i, h, std=h ** -0.5) for _ in range(L)]
        self.wd = [rand(h, i, std=i ** -0.5) for _ in range(L)]
        # the KV cache: every sequence has `ctx` positions; the decoded token writes the last one
        self.k_cache = [rand(max_batch, s.kv_heads, ctx, s.head_dim) for _ in range(L)]
        self.v_cache = [rand(max_batch, s.kv_heads, ctx, s.head_dim) for _ in range(L)]
        pos = ctx - 1
        inv = 1.0 / (10000 ** (torch.arange(0, s.head_dim, 2, device=device, dtype=torch.float32) / s.head_dim))
        ang = pos * inv
        self.cos = torch.cat((ang.cos(), ang.cos())).to(dtype)
        self.sin = torch.cat((ang.sin(), ang.sin())).to(dtype)
        # PARA side buffer: [pages, layers, qkv + 2*intermediate]; page 0 = all ones (no adapter)
        self.vec_width = s.qkv_size + 2 * i
        self.vec = torch.empty(self.pages, L, self.vec_width, device=device, dtype=dtype)
        self._gen = g
        self.set_para_vectors(ones=False)
        # LoRA weights, per layer: A [in, n, r*slices] (so A.view(in, n*r*slices) is every adapter's
        # shrink at once), B per output slice [n, r, out] (B.view(n*r, out): every adapter's expand)
        r, n = rank, lora_adapters
        self.lora = []
        for _ in range(L):
            self.lora.append({
                "A_qkv": rand(h, n, 3 * r, std=h ** -0.5), "B_qkv": [rand(n, r, o, std=0.1 / r)
                                                                   for o in (s.q_size, s.kv_size, s.kv_size)],
                "A_o": rand(s.q_size, n, r, std=s.q_size ** -0.5), "B_o": [rand(n, r, h, std=0.1 / r)],
                "A_gu": rand(h, n, 2 * r, std=h ** -0.5), "B_gu": [rand(n, r, i, std=0.1 / r) for _ in range(2)],
                "A_d": rand(i, n, r, std=i ** -0.5), "B_d": [rand(n, r, h, std=0.1 / r)],
            })
        self._lora_b_saved = None
        self._scale = torch.compile(_scale_gathered, dynamic=True) if compile_epilogue else _scale_gathered

    # ------------------------------------------------------------ adapter state

    def set_para_vectors(self, ones: bool) -> None:
        """Random vectors around 1 on pages 1.. (page 0 stays all ones), or all ones everywhere."""
        self.vec.fill_(1)
        if not ones:
            noise = torch.randn(self.pages - 1, self.s.layers, self.vec_width, generator=self._gen,
                                device=self.device, dtype=torch.float32)
            self.vec[1:] = (1 + 0.1 * noise).to(self.dtype)

    def set_lora_b(self, zero: bool) -> None:
        """zero=True: every B is zero (LoRA must equal the base); False: restore the random B."""
        if zero and self._lora_b_saved is None:
            self._lora_b_saved = [{k: [b.clone() for b in v] for k, v in lay.items() if k.startswith("B")}
                                  for lay in self.lora]
            for lay in self.lora:
                for k in [k for k in lay if k.startswith("B")]:
                    for b in lay[k]:
                        b.zero_()
        elif not zero and self._lora_b_saved is not None:
            for lay, saved in zip(self.lora, self._lora_b_saved):
                for k, bs in saved.items():
                    for b, src in zip(lay[k], bs):
                        b.copy_(src)
            self._lora_b_saved = None

    def make_inputs(self, batch: int, seed: int = 0) -> State:
        if batch > self.max_batch:
            raise ValueError(f"batch {batch} > max_batch {self.max_batch}")
        g = torch.Generator(device="cpu").manual_seed(seed)
        tokens = torch.randint(0, self.s.vocab, (batch,), generator=g).to(self.device)
        b = torch.arange(batch)
        page = (1 + b % (self.pages - 1)).to(self.device)
        adapter = (b % self.n_lora).to(self.device)
        onehot = F.one_hot(adapter, self.n_lora).to(self.dtype)
        return State(batch, tokens, page, adapter, onehot)

    # ------------------------------------------------------------ the step

    def step(self, st: State, variant: str) -> torch.Tensor:
        """Logits [B, vocab] of one decode step."""
        if variant == "base":
            return self._forward(st, slice(0, st.batch), *self._base_fns())
        if variant in ("para", "para-compiled"):
            return self._forward(st, slice(0, st.batch), *self._para_fns(st.page))
        if variant == "para-1gather":
            gathered = self.vec.index_select(0, st.page)  # [B, layers, width]: one gather per step
            q = self.s.qkv_size
            qkv_fn = lambda l, x: F.linear(x, self.wqkv[l]).mul_(gathered[:, l, :q])  # noqa: E731
            gu_fn = lambda l, x: F.linear(x, self.wgu[l]).mul_(gathered[:, l, q:])  # noqa: E731
            o_fn, d_fn = self._base_fns()[1], self._base_fns()[3]
            return self._forward(st, slice(0, st.batch), qkv_fn, o_fn, gu_fn, d_fn)
        if variant == "lora":
            return self._forward(st, slice(0, st.batch), *self._lora_fns(self._sgmv(st.onehot)))
        if variant == "lora-bgmv":
            return self._forward(st, slice(0, st.batch), *self._lora_fns(self._bgmv(st.adapter)))
        raise ValueError(f"unknown variant {variant!r}")

    def _base_fns(self):
        return (lambda l, x: F.linear(x, self.wqkv[l]), lambda l, x: F.linear(x, self.wo[l]),
                lambda l, x: F.linear(x, self.wgu[l]), lambda l, x: F.linear(x, self.wd[l]))

    def _para_fns(self, page: torch.Tensor):
        q = self.s.qkv_size
        scale = self._scale
        qkv_fn = lambda l, x: scale(F.linear(x, self.wqkv[l]), self.vec[:, l, :q], page)  # noqa: E731
        gu_fn = lambda l, x: scale(F.linear(x, self.wgu[l]), self.vec[:, l, q:], page)  # noqa: E731
        base = self._base_fns()
        return qkv_fn, base[1], gu_fn, base[3]

    def _bgmv(self, idx: torch.Tensor):
        """out += x A_i B_i per token i, gathering each token's A and B."""
        r = self.rank

        def lora(out, x, A, Bs):
            a = A.permute(1, 0, 2).index_select(0, idx)  # [B, in, r*k]
            t = torch.bmm(x.unsqueeze(1), a)  # [B, 1, r*k]  shrink
            col = 0
            for j, Bw in enumerate(Bs):  # expand, one output slice at a time
                b = Bw.index_select(0, idx)  # [B, r, out_j]
                width = Bw.shape[-1]
                out[:, col:col + width] += torch.bmm(t[:, :, j * r:(j + 1) * r], b).squeeze(1)
                col += width
            return out

        return lora

    def _sgmv(self, onehot: torch.Tensor):
        """out += x A_i B_i per token i, reading every resident adapter once: shrink against all
        adapters, mask to the token's own, expand against all (static shapes, graph-safe)."""
        r, n = self.rank, self.n_lora

        def lora(out, x, A, Bs):
            k = len(Bs)
            t = (x @ A.view(A.shape[0], -1)).view(-1, n, k, r) * onehot[:, :, None, None]  # shrink + mask
            col = 0
            for j, Bw in enumerate(Bs):
                width = Bw.shape[-1]
                out[:, col:col + width] += t[:, :, j].reshape(-1, n * r) @ Bw.view(n * r, width)  # expand
                col += width
            return out

        return lora

    def _lora_fns(self, lora):
        lay = self.lora
        return (lambda l, x: lora(F.linear(x, self.wqkv[l]), x, lay[l]["A_qkv"], lay[l]["B_qkv"]),
                lambda l, x: lora(F.linear(x, self.wo[l]), x, lay[l]["A_o"], lay[l]["B_o"]),
                lambda l, x: lora(F.linear(x, self.wgu[l]), x, lay[l]["A_gu"], lay[l]["B_gu"]),
                lambda l, x: lora(F.linear(x, self.wd[l]), x, lay[l]["A_d"], lay[l]["B_d"]))

    def _forward(self, st: State, rows: slice, qkv_fn, o_fn, gu_fn, d_fn) -> torch.Tensor:
        s = self.s
        h = self.embed.index_select(0, st.tokens)  # rows: which KV-cache rows these tokens own
        n = h.shape[0]
        for layer in range(s.layers):
            x = rms_norm(h, self.ln1[layer])
            qkv = qkv_fn(layer, x)
            q, k, v = qkv.split([s.q_size, s.kv_size, s.kv_size], dim=-1)
            q = rotate(q.view(n, s.heads, 1, s.head_dim), self.cos, self.sin)
            k = rotate(k.view(n, s.kv_heads, 1, s.head_dim), self.cos, self.sin)
            kc, vc = self.k_cache[layer][rows], self.v_cache[layer][rows]
            kc[:, :, -1:] = k
            vc[:, :, -1:] = v.view(n, s.kv_heads, 1, s.head_dim)
            if s.kv_heads != s.heads:
                rep = s.heads // s.kv_heads
                kc, vc = kc.repeat_interleave(rep, dim=1), vc.repeat_interleave(rep, dim=1)
            attn = F.scaled_dot_product_attention(q, kc, vc)  # [n, heads, 1, hd], over the whole cache
            h = h + o_fn(layer, attn.reshape(n, s.q_size))
            x = rms_norm(h, self.ln2[layer])
            gate, up = gu_fn(layer, x).chunk(2, dim=-1)
            h = h + d_fn(layer, F.silu(gate) * up)
        return F.linear(rms_norm(h, self.norm), self.lm_head)

    # ------------------------------------------------------------ a slow, obviously-correct reference

    def naive_step(self, st: State, b: int, variant: str) -> torch.Tensor:
        """Logits of sequence b alone, with its adapter folded into per-sequence weights."""
        s, q = self.s, self.s.qkv_size
        page, ad = int(st.page[b]), int(st.adapter[b])
        rows = slice(b, b + 1)

        def weights(l):
            wqkv, wo, wgu, wd = self.wqkv[l], self.wo[l], self.wgu[l], self.wd[l]
            if variant == "para":
                wqkv = wqkv * self.vec[page, l, :q][:, None]
                wgu = wgu * self.vec[page, l, q:][:, None]
            elif variant.startswith("lora"):
                lay = self.lora[l]

                def fold(w, A, Bs):
                    r = self.rank
                    delta = torch.cat([A[:, ad, j * r:(j + 1) * r] @ Bw[ad] for j, Bw in enumerate(Bs)], dim=1)
                    return w + delta.T

                wqkv = fold(wqkv, lay["A_qkv"], lay["B_qkv"])
                wo = fold(wo, lay["A_o"], lay["B_o"])
                wgu = fold(wgu, lay["A_gu"], lay["B_gu"])
                wd = fold(wd, lay["A_d"], lay["B_d"])
            return wqkv, wo, wgu, wd

        ws = [weights(l) for l in range(s.layers)]
        one = State(1, st.tokens[rows], st.page[rows], st.adapter[rows], st.onehot[rows])
        return self._forward(one, rows, lambda l, x: F.linear(x, ws[l][0]), lambda l, x: F.linear(x, ws[l][1]),
                             lambda l, x: F.linear(x, ws[l][2]), lambda l, x: F.linear(x, ws[l][3]))[0]


# ---------------------------------------------------------------- timing


class Runner:
    """A callable per (variant, batch): a replayed CUDA graph on CUDA, eager elsewhere."""

    def __init__(self, model: DecodeModel, variant: str, batch: int, graphs: bool, pool=None) -> None:
        self.model, self.variant = model, variant
        self.state = model.make_inputs(batch, seed=batch)
        self.graph = None
        if graphs:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(3):  # warm-up (and compile) outside the capture
                    model.step(self.state, variant)
            torch.cuda.current_stream().wait_stream(stream)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, pool=pool):
                self.out = model.step(self.state, variant)
            torch.cuda.synchronize()
        else:
            model.step(self.state, variant)  # warm-up

    def __call__(self) -> None:
        if self.graph is not None:
            self.graph.replay()
        else:
            self.model.step(self.state, self.variant)

    def time_ms(self, iters: int) -> float:
        """Mean ms per step over `iters` back-to-back steps."""
        if self.graph is not None:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                self.graph.replay()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / iters
        began = time.perf_counter()
        for _ in range(iters):
            self()
        return (time.perf_counter() - began) * 1000 / iters


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="tiny shapes (hidden 64, 2 layers): correctness runs")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default=None,
                   help="default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--batches", default="1,2,4,8,16,32,64")
    p.add_argument("--ctx", type=int, default=None, help="KV-cache positions per sequence (default 512; small 16)")
    p.add_argument("--lora-adapters", type=int, default=8, help="resident LoRA adapters (tokens spread over them)")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--iters", type=int, default=50, help="steps per timing")
    p.add_argument("--rounds", type=int, default=6,
                   help="ABBA rounds over the variants (even: each variant equally often early and late)")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--compile", action="store_true",
                   help="add the para-compiled variant (torch.compile'd gather+scale; Triton on CUDA)")
    p.add_argument("--no-graphs", action="store_true", help="eager steps even on CUDA")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    dtype = getattr(torch, args.dtype or ("bfloat16" if cuda else "float32"))
    shape = Shape.small() if args.small else Shape.llama2_7b()
    batches = [int(b) for b in args.batches.split(",")]
    variants = [v for v in args.variants.split(",") if v]
    if args.compile and "para-compiled" not in variants:
        variants.append("para-compiled")
    graphs = cuda and not args.no_graphs
    ctx = args.ctx or (16 if args.small else 512)
    torch.manual_seed(args.seed)
    began = time.perf_counter()
    model = DecodeModel(shape, device, dtype, max_batch=max(batches), ctx=ctx, seed=args.seed,
                        lora_adapters=args.lora_adapters, rank=args.rank, compile_epilogue=args.compile)
    build_s = time.perf_counter() - began
    pool = torch.cuda.graph_pool_handle() if graphs else None
    rows = []
    for batch in batches:
        runners = {v: Runner(model, v, batch, graphs, pool) for v in variants}
        ms = []
        for slot in P.schedule(variants, args.rounds):
            ms.append(P.Measurement(slot.round, slot.system, batch, {"ms": runners[slot.system].time_ms(args.iters)},
                                    slot=slot.index))
        row = {"batch": batch}
        for v in variants:
            row[v + "_ms"] = P.per_system(ms, "ms")[(v, batch)].median
        for v in variants[1:]:
            s = P.ratio_spreads(ms, v, "base", "ms")[batch]
            row[f"{v}/base"] = {"median": s.median, "min": s.lo, "max": s.hi, "per_round": list(s.values)}
        rows.append(row)
        print(f"batch {batch}: " + ", ".join(f"{v} {row[v + '_ms']:.3f} ms" for v in variants), flush=True)
        del runners
    result = {"device": torch.cuda.get_device_name(device) if cuda else "cpu", "dtype": str(dtype),
              "shape": dataclasses.asdict(shape),
              "ctx": ctx, "cuda_graphs": graphs, "iters": args.iters, "rounds": args.rounds,
              "lora_adapters": args.lora_adapters, "rank": args.rank, "pages": model.pages,
              "torch": torch.__version__, "build_s": build_s, "variants": variants, "rows": rows}
    print(markdown(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


def markdown(result: dict) -> str:
    variants = result["variants"]
    others = variants[1:]
    lines = [f"Decode step, {result['device']}, {result['dtype']}, shape {result['shape']}, ctx {result['ctx']}, "
             f"CUDA graphs {'on' if result['cuda_graphs'] else 'off'}, {result['iters']} steps x "
             f"{result['rounds']} ABBA rounds; ratios = median [min-max] of per-round step-time ratios", "",
             "| batch | " + " | ".join(f"{v} ms" for v in variants) + " | "
             + " | ".join(f"{v}/base" for v in others) + " |",
             "|---|" + "---|" * (len(variants) + len(others))]
    for r in result["rows"]:
        cells = [f"{r[v + '_ms']:.3f}" for v in variants]
        cells += [f"{r[f'{v}/base']['median']:.3f} [{r[f'{v}/base']['min']:.3f}-{r[f'{v}/base']['max']:.3f}]"
                  for v in others]
        lines.append(f"| {r['batch']} | " + " | ".join(cells) + " |")
    for v in [v for v in others if v.startswith("para")]:
        worst = max(r[f"{v}/base"]["median"] for r in result["rows"])
        verdict = "PASS" if worst <= TARGET else "FAIL"
        lines.append(f"\n{v}/base <= {TARGET} at every batch: **{verdict}** (worst median {worst:.3f})")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
