"""Start a real `vllm serve` on 127.0.0.1 (free port), wait for /health, stop it.

Used by the load tests and the server tests. The server runs in its own
process group, so `stop()` can always take down vLLM's engine-core children.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vllm_command() -> list[str]:
    exe = Path(sys.executable).with_name("vllm")
    return [str(exe)] if exe.exists() else [shutil.which("vllm") or "vllm"]


class VLLMServer:
    """`with VLLMServer(model, args, log) as srv:` starts it, waits for health and always stops it."""

    def __init__(self, model: Path, args: list[str], log: Path, env: dict[str, str] | None = None,
                 startup_timeout: float = 900) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.command = vllm_command() + ["serve", str(model), "--host", "127.0.0.1", "--port", str(self.port),
                                         *args]
        self.env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", **(env or {})}
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen | None = None
        self.startup_s: float | None = None

    def __enter__(self) -> "VLLMServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log, "w")
        began = time.monotonic()
        self.proc = subprocess.Popen(self.command, stdout=self._log_file, stderr=subprocess.STDOUT, env=self.env,
                                     start_new_session=True)
        try:
            self._wait_healthy(began + self.startup_timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - began

    def _wait_healthy(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vllm serve exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(1)
        raise TimeoutError(f"vllm serve not healthy after {self.startup_timeout}s:\n{self.log_tail()}")

    def log_tail(self, n: int = 40) -> str:
        if not self._log_file.closed:
            self._log_file.flush()
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM the server (it shuts its engine down); SIGKILL the whole group
        if it has not exited after `timeout` s. Returns the server's exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        # engine-core children may outlive the API server: make sure the group is gone
        _signal_group(self.proc.pid, signal.SIGKILL)
        if not self._log_file.closed:
            self._log_file.close()
        return self.proc.returncode

    def models(self) -> list[str]:
        return [m["id"] for m in requests.get(self.url + "/v1/models", timeout=30).json()["data"]]

    def warm_up(self, models: list[str], max_tokens: int = 4) -> None:
        """One short request per model (loads LoRA adapters, fills caches) before measuring."""
        for model in models:
            r = requests.post(self.url + "/v1/completions", timeout=600,
                              json={"model": model, "prompt": "warm up the server", "max_tokens": max_tokens,
                                    "temperature": 0.0, "ignore_eos": True})
            if r.status_code != 200:
                raise RuntimeError(f"warm-up request for {model!r} failed: HTTP {r.status_code}: {r.text[:500]}")


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
