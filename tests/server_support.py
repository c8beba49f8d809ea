"""A real `vllm serve` subprocess on 127.0.0.1 for the server tests."""

from __future__ import annotations

from pathlib import Path

import requests

from testkit.serve_process import VLLMServer, vllm_command  # noqa: F401  (re-exported for the tests)


class Server(VLLMServer):
    """The server tests' settings, plus small HTTP helpers."""

    def __init__(self, model: Path, args: list[str], log: Path, env: dict[str, str] | None = None,
                 compiled: bool = False) -> None:
        """`compiled=False` adds --enforce-eager (half the start-up on CPU): the compiled forward is
        covered by tests/test_engine_offline.py and by the hostile-request server (compiled=True)."""
        engine = ["--dtype", "float32", "--max-model-len", "512", "--max-num-seqs", "32", "--seed", "0"]
        super().__init__(model, engine + args + ([] if compiled else ["--enforce-eager"]), log, env=env,
                         startup_timeout=400)

    def wait_ready(self) -> "Server":
        self.start()
        return self

    def post(self, path: str, body: dict, **kwargs) -> requests.Response:
        return requests.post(self.url + path, json=body, timeout=120, **kwargs)

    def get(self, path: str) -> requests.Response:
        return requests.get(self.url + path, timeout=30)

    def metric(self, name: str, labels: str = "") -> float | None:
        for line in self.get("/metrics").text.splitlines():
            if line.startswith(f"{name}{labels} "):
                return float(line.rsplit(" ", 1)[1])
        return None
