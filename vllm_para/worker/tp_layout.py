"""Which slice of the full PARA vector [q | k | v | g | u] one tensor-parallel rank holds.

A rank's `qkv_proj` output is [its q heads | its k heads | its v heads] and its
`gate_up_proj` output is [its gate columns | its up columns]; the rank's vector
is the same slice of the full vector, so vectors shard exactly like the heads
and FFN columns they scale.

Runs in: every worker process.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vllm_para.config import ModelShape


@dataclass(frozen=True)
class RankLayout:
    qkv_width: int  # this rank's q + k + v size
    width: int  # qkv_width + 2 * this rank's intermediate size
    shard_index: torch.Tensor | None  # positions in the full vector; None = whole vector (tp=1)

    @classmethod
    def build(cls, shape: ModelShape, head_dim: int, tp_rank: int, tp_size: int) -> "RankLayout":
        if tp_size == 1:
            width = shape.q_size + 2 * shape.kv_size + 2 * shape.intermediate_size
            return cls(shape.q_size + 2 * shape.kv_size, width, None)
        total_kv_heads = shape.kv_size // head_dim
        q_part = shape.q_size // tp_size
        if total_kv_heads >= tp_size:
            kv_part, kv_shard = shape.kv_size // tp_size, tp_rank
        else:  # fewer kv heads than ranks: each kv head is replicated on several ranks
            kv_part, kv_shard = head_dim, tp_rank // (tp_size // total_kv_heads)
        i_part = shape.intermediate_size // tp_size
        q0, k0 = 0, shape.q_size
        v0 = k0 + shape.kv_size
        g0 = v0 + shape.kv_size
        u0 = g0 + shape.intermediate_size
        pieces = [
            torch.arange(q0 + tp_rank * q_part, q0 + (tp_rank + 1) * q_part),
            torch.arange(k0 + kv_shard * kv_part, k0 + (kv_shard + 1) * kv_part),
            torch.arange(v0 + kv_shard * kv_part, v0 + (kv_shard + 1) * kv_part),
            torch.arange(g0 + tp_rank * i_part, g0 + (tp_rank + 1) * i_part),
            torch.arange(u0 + tp_rank * i_part, u0 + (tp_rank + 1) * i_part),
        ]
        index = torch.cat(pieces)
        return cls(q_part + 2 * kv_part, int(index.numel()), index)
