"""CPU time of a `vllm serve` process tree per load phase, by role, from /proc (via psutil).

On a small machine the API server, vLLM's engine-core process (which busy-polls), its worker
and the load generator share the cores, so a system whose API server or engine core needs more
CPU per token slows the worker even when the worker's own steps cost the same. Read before and
after each measured phase, like `prometheus.phase_metrics` (never during one):

- `cpu_api_ms_per_tok`: the API server (the process `vllm serve` started);
- `cpu_engine_core_ms_per_tok`: vLLM's engine-core process(es) (`VLLM::EngineCore...`);
- `cpu_worker_ms_per_tok`: the model worker process(es) (`VLLM::Worker...`), and any other child.

User + system CPU milliseconds per generated token of the phase. A process that starts or ends
inside a phase counts from its first reading to its last.
"""

from __future__ import annotations

import psutil

ROLES = {"api": "cpu_api_ms_per_tok", "engine_core": "cpu_engine_core_ms_per_tok", "worker": "cpu_worker_ms_per_tok"}
METRICS = tuple(ROLES.values())


def role_of(name: str, is_root: bool) -> str:
    """A process's role from its title (vLLM names its processes with setproctitle)."""
    if is_root:
        return "api"
    return "engine_core" if name.startswith("VLLM::EngineCore") else "worker"


def snapshot(pid: int | None) -> dict[int, tuple[str, float]]:
    """{pid: (role, CPU seconds)} for `pid` and its descendants; empty if it is gone."""
    if pid is None:
        return {}
    try:
        root = psutil.Process(pid)
        procs = [(root, True)] + [(p, False) for p in root.children(recursive=True)]
    except psutil.Error:
        return {}
    out = {}
    for proc, is_root in procs:
        try:
            t = proc.cpu_times()
            out[proc.pid] = (role_of(proc.name(), is_root), t.user + t.system)
        except psutil.Error:  # ended between the listing and the reading
            continue
    return out


def phase_cpu(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]],
              tokens: float) -> dict[str, float | None]:
    """CPU ms per generated token, by role, between two snapshots (None: nothing to divide by)."""
    if not before or not after or tokens <= 0:
        return dict.fromkeys(METRICS)
    used = dict.fromkeys(ROLES, 0.0)
    for pid, (role, seconds) in after.items():
        used[role] += seconds - (before[pid][1] if pid in before else 0.0)
    return {ROLES[role]: 1000.0 * seconds / tokens for role, seconds in used.items()}
