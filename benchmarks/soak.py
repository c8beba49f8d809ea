"""Soak test of one real `vllm serve --enable-para` process.

    .venv/bin/python benchmarks/soak.py                      # 5000 requests, concurrency 16 (make soak)
    .venv/bin/python benchmarks/soak.py --requests 300       # quick run
    .venv/bin/python benchmarks/soak.py --requests 300 --no-hostile

Builds a tiny local Llama and 3-6 random PARA adapters, starts the server
(`VLLM_ALLOW_RUNTIME_PARA_UPDATING=1`, 2 VG slots), then sends `--requests`
mixed requests with `--concurrency` client threads:

- completions and chat completions, streamed and not, the base model and every
  adapter (by `model` or by `vllm_xargs.para_adapter`), some with `n` > 1 or
  `use_beam_search`, random `max_tokens` 1-32;
- ~10% aborted by the client at a random moment (stream closed after a few
  events, or a short read timeout);
- ~5% hostile (unknown / 10 kB adapter names, `vllm_xargs` with internal keys
  `para_prompt_len` / `para_version` / `para_cache_key`, wrong types, runtime
  loads of broken adapter directories): each must get a 4xx;
- meanwhile a background thread unloads and reloads one adapter every
  `--reload-every` s (rotating), and another polls /health every second.

Measured: engine deaths (any non-200 /health, or the server exiting), failed
well-formed requests (5xx, connection errors, timeouts, bad bodies, or 4xx
other than a 404 for an adapter that was mid-reload during the request:
those are counted apart), hostile requests not answered with a 4xx,
`vllm_para:side_buffer_pages_in_use` after all requests end and 3 s idle,
the RSS of the server's process tree after the warm-up and at the end, and
throughput. Writes benchmarks/results/soak-<YYYYmmdd-HHMMSS>/report.md and
exits 1 if any death, failed request, hostile 5xx/2xx, failed unload/load of a
valid adapter, leaked page, or RSS growth > `--max-rss-growth-mb` (50) was
seen; 2 if the server could not be started. The model, adapters and
server.log stay in a temporary folder when the run fails (its path is printed).

`--no-hostile` / `--skip-hostile REGEX` leave hostile cases out (e.g. while a
known crash is being fixed); `--reload-every 0` turns reloads off.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import psutil
import requests

ROOT = Path(__file__).resolve().parents[1]
try:
    import vllm_para  # noqa: F401  (installed in .venv; PYTHONPATH may point at another checkout)
except ImportError:
    sys.path.insert(0, str(ROOT))
from vllm_para.testing.tiny_models import VOCAB_WORDS as WORDS  # noqa: E402  (the tokenizer's words: ~1 token each)

RESULTS = Path(__file__).resolve().parent / "results"
PAGES_METRIC = "vllm_para:side_buffer_pages_in_use"

# name -> (targets, pooling, r): differing targets, poolings and ranks in one engine
ADAPTER_SPECS = [
    ("sql", ("q", "v", "u"), "last", 12),
    ("qa", ("q", "k", "v", "g", "u"), "mean", 12),
    ("tone", ("v", "g"), "last", 8),
    ("kq", ("q", "k"), "mean", 4),
    ("up", ("u",), "last", 16),
    ("qv", ("q", "v"), "last", 12),
]

WELL_FORMED_TIMEOUT = 300.0
BIG_MAPPING = 768 * 2**20  # anonymous mappings this large: the KV cache (1 GiB here), see large_anon_mappings
HOSTILE_TIMEOUT = 120.0


# --------------------------------------------------------------------------- set-up

def build_assets(work: Path, n_adapters: int) -> tuple[Path, dict[str, str], dict[str, str]]:
    """The tiny base model, the adapters, and broken adapter directories for hostile loads."""
    from safetensors.torch import load_file, save_file

    from vllm_para.testing.tiny_models import build_random_adapter, build_tiny_model

    model = build_tiny_model(work / "model", arch="llama")
    adapters = {}
    for i, (name, targets, pooling, r) in enumerate(ADAPTER_SPECS[:n_adapters]):
        adapters[name] = str(build_random_adapter(model, work / "adapters" / name, r=r, targets=targets,
                                                  pooling=pooling, seed=100 + i))
    good = Path(adapters[ADAPTER_SPECS[0][0]])
    config = json.loads((good / "para_config.json").read_text())
    weights = load_file(str(good / "adapter_model.safetensors"))
    broken_root = work / "broken"
    broken: dict[str, str] = {}

    def make(name: str, cfg=None, tensors=None, raw_files: dict[str, bytes] | None = None) -> None:
        d = broken_root / name
        d.mkdir(parents=True, exist_ok=True)
        if cfg is not None:
            (d / "para_config.json").write_text(cfg if isinstance(cfg, str) else json.dumps(cfg))
        if tensors is not None:
            save_file(tensors, str(d / "adapter_model.safetensors"))
        for fname, data in (raw_files or {}).items():
            (d / fname).write_bytes(data)
        broken[name] = str(d)

    make("empty_dir")
    make("config_empty_object", cfg="{}")
    make("config_not_json", cfg="{not json")
    make("config_only", cfg=config)
    make("garbage_weights", cfg=config, raw_files={"adapter_model.safetensors": os.urandom(4096)})
    nan = {k: v.clone() for k, v in weights.items()}
    first = sorted(nan)[0]
    nan[first].view(-1)[0] = float("nan")
    make("nan_weight", cfg=config, tensors=nan)
    missing = dict(weights)
    missing.pop(sorted(missing)[-1])
    make("missing_tensor", cfg=config, tensors=missing)
    wrong_shape = dict(weights)
    key = next(k for k in sorted(wrong_shape) if k.endswith("down.weight"))
    wrong_shape[key] = wrong_shape[key][:, :-1].contiguous()
    make("wrong_tensor_shape", cfg=config, tensors=wrong_shape)
    make("wrong_base_hidden_size", cfg={**config, "hidden_size": config["hidden_size"] * 2}, tensors=weights)
    make("unknown_config_field", cfg={**config, "surprise": 1}, tensors=weights)
    make("wrong_peft_type", cfg={**config, "peft_type": "LORA"}, tensors=weights)
    make("huge_rank", cfg={**config, "r": 100000}, tensors=weights)
    make("pickle_only", cfg=config, raw_files={"adapter_model.bin": b"\x80\x04K\x01."})
    broken["does_not_exist"] = str(broken_root / "does_not_exist")
    broken["a_file_not_a_dir"] = str(good / "adapter_model.safetensors")
    broken["relative_traversal"] = "../../../../../../etc"
    broken["etc"] = "/etc"
    return model, adapters, broken


# --------------------------------------------------------------------------- requests

@dataclass
class Result:
    idx: int
    kind: str  # normal | abort | hostile
    desc: str
    adapter: str | None = None
    status: int | None = None
    outcome: str = ""  # see classify()
    detail: str = ""
    t0: float = 0.0
    t1: float = 0.0
    tokens: int = 0


@dataclass
class Shared:
    url: str
    base: str
    adapters: list[str]
    broken: dict[str, str]
    skip_hostile: re.Pattern | None = None
    proc: object = None  # the server's Popen: a connection error with it gone means the engine died
    dead: threading.Event = field(default_factory=threading.Event)

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            self.dead.set()
    local: threading.local = field(default_factory=threading.local)

    def session(self) -> requests.Session:
        s = getattr(self.local, "session", None)
        if s is None:
            s = self.local.session = requests.Session()
        return s


def prompt_text(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 60)))


def well_formed_body(rng: random.Random, sh: Shared) -> tuple[str, dict, str | None, str]:
    """(path, body, adapter, description) of a valid request."""
    chat = rng.random() < 0.5
    adapter = None if rng.random() < 0.25 else rng.choice(sh.adapters)
    via_xargs = adapter is not None and rng.random() < 0.15
    body: dict = {"model": sh.base if adapter is None or via_xargs else adapter,
                  "max_tokens": rng.randint(1, 32)}
    if via_xargs:
        body["vllm_xargs"] = {"para_adapter": adapter}
    r = rng.random()
    if r < 0.06:
        mode = "beam"
        body.update(use_beam_search=True, n=rng.randint(2, 3), temperature=0.0)
    elif r < 0.18:
        mode = "n"
        body.update(n=rng.randint(2, 3), temperature=0.8, seed=rng.randint(0, 1 << 30))
    else:
        mode = "1"
        body["temperature"] = rng.choice([0.0, 0.8])
    if rng.random() < 0.5:
        body["ignore_eos"] = True
    stream = mode != "beam" and rng.random() < 0.5
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    if chat:
        messages = [{"role": "user", "content": prompt_text(rng)}]
        if rng.random() < 0.3:
            messages.insert(0, {"role": "system", "content": prompt_text(rng)})
        body["messages"] = messages
        path = "/v1/chat/completions"
    else:
        body["prompt"] = prompt_text(rng)
        path = "/v1/completions"
    desc = (f"{'chat' if chat else 'cmpl'}/{'stream' if stream else 'plain'}/"
            f"{'base' if adapter is None else ('xargs' if via_xargs else 'model')}/{mode}")
    return path, body, adapter, desc


def hostile_case(rng: random.Random, sh: Shared) -> tuple[str, str, dict | str]:
    """(name, path, body) of a request that must be refused with a 4xx."""
    adapter = rng.choice(sh.adapters)
    prompt = prompt_text(rng)
    big = "x" * 10240

    def cmpl(name: str, **extra) -> tuple[str, str, dict]:
        body = {"model": adapter, "prompt": prompt, "max_tokens": rng.randint(1, 8), **extra}
        return name, "/v1/completions", body

    def chat(name: str, **extra) -> tuple[str, str, dict]:
        body = {"model": adapter, "messages": [{"role": "user", "content": prompt}], "max_tokens": 4, **extra}
        return name, "/v1/chat/completions", body

    def load(name: str, **body) -> tuple[str, str, dict]:
        return name, "/v1/load_para_adapter", body

    hostile_name = f"hostile-{rng.randrange(1 << 30)}"
    choices = [
        lambda: cmpl("unknown_adapter_model", model=f"no-such-adapter-{rng.randrange(1000)}"),
        lambda: chat("unknown_adapter_model_chat", model="no-such-adapter"),
        lambda: cmpl("10kB_model_name", model=big),
        lambda: cmpl("10kB_xargs_adapter", model=sh.base, vllm_xargs={"para_adapter": big}),
        lambda: cmpl("xargs_adapter_unknown", model=sh.base, vllm_xargs={"para_adapter": "nope"}),
        lambda: cmpl("xargs_adapter_int", model=sh.base, vllm_xargs={"para_adapter": 123}),
        lambda: cmpl("xargs_adapter_list", model=sh.base, vllm_xargs={"para_adapter": [adapter]}),
        lambda: cmpl("xargs_adapter_object", model=sh.base, vllm_xargs={"para_adapter": {"a": 1}}),
        lambda: cmpl("xargs_conflicting_adapter", vllm_xargs={"para_adapter": next(
            a for a in sh.adapters[::-1] if a != adapter)}),
        lambda: cmpl("prompt_len_-1", vllm_xargs={"para_prompt_len": -1}),
        lambda: cmpl("prompt_len_100000", vllm_xargs={"para_prompt_len": 100000}),
        lambda: cmpl("prompt_len_abc", vllm_xargs={"para_prompt_len": "abc"}),
        lambda: cmpl("prompt_len_float", vllm_xargs={"para_prompt_len": 1.5}),
        lambda: cmpl("prompt_len_0", vllm_xargs={"para_prompt_len": 0}),
        lambda: cmpl("prompt_len_-1_stream", stream=True, vllm_xargs={"para_prompt_len": -1}),
        lambda: chat("prompt_len_-1_chat", vllm_xargs={"para_prompt_len": -1}),
        lambda: cmpl("prompt_len_-1_beam", use_beam_search=True, n=2, vllm_xargs={"para_prompt_len": -1}),
        lambda: cmpl("prompt_len_-1_xargs_adapter", model=sh.base,
                     vllm_xargs={"para_adapter": adapter, "para_prompt_len": -1}),
        lambda: cmpl("para_version_str", vllm_xargs={"para_version": "abc"}),
        lambda: cmpl("para_version_-1", vllm_xargs={"para_version": -1}),
        lambda: cmpl("para_version_huge", vllm_xargs={"para_version": 10 ** 18}),
        lambda: cmpl("para_cache_key_int", vllm_xargs={"para_cache_key": 5}),
        lambda: cmpl("para_cache_key_10kB", vllm_xargs={"para_cache_key": big}),
        lambda: cmpl("max_tokens_str", max_tokens="abc"),
        lambda: cmpl("max_tokens_negative", max_tokens=-5),
        lambda: cmpl("n_str", n="two"),
        lambda: cmpl("n_negative", n=-1),
        lambda: cmpl("temperature_str", temperature="hot"),
        lambda: cmpl("model_int", model=123),
        lambda: cmpl("prompt_object", prompt={"a": 1}),
        lambda: cmpl("xargs_not_object", vllm_xargs="para_adapter"),
        lambda: chat("messages_str", messages="hello"),
        lambda: ("invalid_json", "/v1/completions", "{\"model\": "),
        lambda: load(f"load_broken:{(k := rng.choice(sorted(sh.broken)))}", para_name=hostile_name,
                     para_path=sh.broken[k]),
        lambda: load(f"load_broken:{(k := rng.choice(sorted(sh.broken)))}", para_name=hostile_name,
                     para_path=sh.broken[k]),
        lambda: load(f"load_broken:{(k := rng.choice(sorted(sh.broken)))}", para_name=hostile_name,
                     para_path=sh.broken[k]),
        lambda: load("load_10kB_name_broken", para_name=big, para_path=sh.broken["config_only"]),
        lambda: load("load_empty_name", para_name="", para_path=sh.broken["nan_weight"]),
        lambda: load("load_base_name", para_name=sh.base, para_path=sh.broken["nan_weight"]),
        lambda: load("load_missing_path", para_name=hostile_name),
        lambda: load("load_path_int", para_name=hostile_name, para_path=5),
        lambda: load("load_extra_field", para_name=hostile_name, para_path=sh.broken["empty_dir"], x=1),
        lambda: ("unload_unknown", "/v1/unload_para_adapter", {"para_name": hostile_name}),
        lambda: ("unload_10kB_name", "/v1/unload_para_adapter", {"para_name": big}),
        lambda: ("unload_name_int", "/v1/unload_para_adapter", {"para_name": 7}),
    ]
    return rng.choice(choices)()


def read_stream(resp: requests.Response, max_events: int | None = None) -> tuple[bool, int, dict | None, int]:
    """(saw [DONE], completion tokens, error object or None, events read)."""
    done, tokens, error, events = False, 0, None, 0
    for line in resp.iter_lines(chunk_size=None):
        if not line:
            continue
        if not line.startswith(b"data: "):
            continue
        data = line[6:]
        events += 1
        if data == b"[DONE]":
            done = True
            break
        try:
            obj = json.loads(data)
        except ValueError:
            error = {"message": f"unparsable event {data[:200]!r}"}
            break
        if isinstance(obj, dict) and "error" in obj:
            error = obj["error"] if isinstance(obj["error"], dict) else {"message": str(obj["error"])}
        elif isinstance(obj, dict) and obj.get("usage"):
            tokens = obj["usage"].get("completion_tokens") or tokens
        if max_events is not None and events >= max_events:
            break
    return done, tokens, error, events


def error_text(resp: requests.Response) -> str:
    try:
        err = resp.json().get("error")
        if isinstance(err, dict):
            return f"{err.get('type')}: {err.get('message')}"[:300]
        return str(resp.json())[:300]
    except ValueError:
        return resp.text[:300]


def run_one(idx: int, seed: int, sh: Shared, hostile_frac: float, abort_frac: float) -> Result:
    rng = random.Random(seed * 1_000_003 + idx)
    roll = rng.random()
    if roll < hostile_frac:
        kind = "hostile"
    elif roll < hostile_frac + abort_frac:
        kind = "abort"
    else:
        kind = "normal"
    if sh.dead.is_set():
        return Result(idx, kind, "", outcome="not_sent")
    if kind == "hostile":
        return run_hostile(idx, rng, sh)
    path, body, adapter, desc = well_formed_body(rng, sh)
    res = Result(idx, kind, desc, adapter=adapter, t0=time.monotonic())
    try:
        if kind == "abort":
            run_abort(res, rng, sh, path, body)
        else:
            run_normal(res, sh, path, body)
    except requests.Timeout as exc:
        res.outcome, res.detail = "fail", f"timeout: {type(exc).__name__}"
    except requests.RequestException as exc:
        res.outcome, res.detail = "fail", f"connection error: {type(exc).__name__}: {str(exc)[:200]}"
        sh.check_alive()
    except Exception as exc:  # a bug in this script must not pass silently
        res.outcome, res.detail = "fail", f"client exception: {type(exc).__name__}: {exc}"
    res.t1 = time.monotonic()
    return res


def _http_outcome(res: Result, resp: requests.Response) -> bool:
    """Record a non-200 answer; True if the caller should stop."""
    res.status = resp.status_code
    if resp.status_code == 200:
        return False
    res.detail = f"HTTP {resp.status_code}: {error_text(resp)}"
    res.outcome = "404" if resp.status_code == 404 else "fail"
    return True


def _stream_outcome(res: Result, done: bool, tokens: int, error: dict | None) -> None:
    if error is not None:
        code = error.get("code")
        res.detail = f"in-stream error {code}: {error.get('type')}: {str(error.get('message'))[:300]}"
        res.outcome = "404" if code == 404 or error.get("type") == "NotFoundError" else "fail"
    elif not done:
        res.outcome, res.detail = "fail", "stream ended without [DONE]"
    else:
        res.outcome, res.tokens = "ok", tokens


def run_normal(res: Result, sh: Shared, path: str, body: dict) -> None:
    s = sh.session()
    if body.get("stream"):
        with s.post(sh.url + path, json=body, stream=True, timeout=WELL_FORMED_TIMEOUT) as resp:
            if _http_outcome(res, resp):
                return
            _stream_outcome(res, *read_stream(resp)[:3])
        return
    resp = s.post(sh.url + path, json=body, timeout=WELL_FORMED_TIMEOUT)
    if _http_outcome(res, resp):
        return
    try:
        out = resp.json()
        choices = out["choices"]
        want = body.get("n", 1)
        if len(choices) != want:
            res.outcome, res.detail = "fail", f"{len(choices)} choices, asked for n={want}"
            return
        res.tokens = (out.get("usage") or {}).get("completion_tokens") or 0
        res.outcome = "ok"
    except (ValueError, KeyError, TypeError) as exc:
        res.outcome, res.detail = "fail", f"bad body ({exc}): {resp.text[:200]}"


def run_abort(res: Result, rng: random.Random, sh: Shared, path: str, body: dict) -> None:
    """Give up on the request at a random moment; a 5xx seen before that is a failure."""
    s = sh.session()
    if body.get("stream"):
        k = rng.randint(0, 4)
        res.desc += f"/abort-after-{k}-events"
        resp = s.post(sh.url + path, json=body, stream=True, timeout=WELL_FORMED_TIMEOUT)
        try:
            if _http_outcome(res, resp):
                return
            done, _, error, _ = read_stream(resp, max_events=k) if k else (False, 0, None, 0)
            if error is not None:
                _stream_outcome(res, done, 0, error)
            else:
                res.outcome = "abort_completed" if done else "aborted"
        finally:
            resp.close()  # unread body: the connection is dropped, vLLM sees the disconnect
        return
    t = rng.uniform(0.02, 0.6)
    res.desc += f"/timeout-{t:.2f}s"
    try:
        resp = s.post(sh.url + path, json=body, timeout=(10, t))
    except requests.ReadTimeout:
        res.outcome = "aborted"
        sh.local.session = None  # the timed-out connection is gone; start clean
        s.close()
        return
    if not _http_outcome(res, resp):
        res.outcome = "abort_completed"


def run_hostile(idx: int, rng: random.Random, sh: Shared) -> Result:
    for _ in range(100):
        name, path, body = hostile_case(rng, sh)
        if sh.skip_hostile is None or not sh.skip_hostile.search(name):
            break
    else:
        return Result(idx, "hostile", "all cases skipped", outcome="skipped")
    res = Result(idx, "hostile", name, t0=time.monotonic())
    s = sh.session()
    try:
        if isinstance(body, str):
            resp = s.post(sh.url + path, data=body, headers={"Content-Type": "application/json"},
                          timeout=HOSTILE_TIMEOUT)
        else:
            resp = s.post(sh.url + path, json=body, timeout=HOSTILE_TIMEOUT, stream=bool(body.get("stream")))
        with resp:
            res.status = resp.status_code
            if 400 <= resp.status_code < 500:
                res.outcome, res.detail = "rejected", error_text(resp)[:200]
            elif resp.status_code >= 500:
                res.outcome, res.detail = "fail", f"HTTP {resp.status_code}: {error_text(resp)}"
            elif isinstance(body, dict) and body.get("stream"):
                done, _, error, _ = read_stream(resp)
                code = (error or {}).get("code")
                if isinstance(code, int) and 400 <= code < 500:
                    res.outcome, res.detail = "rejected", f"in-stream {code}: {str(error.get('message'))[:200]}"
                elif error is not None:
                    res.outcome, res.detail = "fail", f"in-stream error {code}: {str(error.get('message'))[:200]}"
                else:
                    res.outcome, res.detail = "accepted", f"HTTP {resp.status_code}, stream done={done}"
            else:
                res.outcome, res.detail = "accepted", f"HTTP {resp.status_code}: {resp.text[:120]}"
    except requests.Timeout as exc:
        res.outcome, res.detail = "fail", f"timeout: {type(exc).__name__}"
    except requests.RequestException as exc:
        res.outcome, res.detail = "fail", f"connection error: {type(exc).__name__}: {str(exc)[:200]}"
        sh.check_alive()
    res.t1 = time.monotonic()
    return res


# --------------------------------------------------------------------------- background threads

class Reloader(threading.Thread):
    """Every `period` s: unload one adapter (rotating), wait a moment, load it back."""

    def __init__(self, sh: Shared, paths: dict[str, str], period: float, seed: int) -> None:
        super().__init__(daemon=True, name="reloader")
        self.sh, self.paths, self.period = sh, paths, period
        self.rng = random.Random(seed)
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.windows: list[list] = []  # [name, start, end or None]
        self.cycles = 0
        self.errors: list[str] = []

    def run(self) -> None:
        names = sorted(self.paths)
        s = requests.Session()
        i = 0
        while not self.stop_event.wait(self.period):
            if self.sh.dead.is_set():
                break
            name = names[i % len(names)]
            i += 1
            window = [name, time.monotonic(), None]
            with self.lock:
                self.windows.append(window)
            try:
                r = s.post(self.sh.url + "/v1/unload_para_adapter", json={"para_name": name}, timeout=120)
                if r.status_code != 200:
                    self.errors.append(f"unload {name}: HTTP {r.status_code}: {error_text(r)}")
                time.sleep(self.rng.uniform(0.0, 0.3))
                for attempt in range(3):
                    r = s.post(self.sh.url + "/v1/load_para_adapter",
                               json={"para_name": name, "para_path": self.paths[name]}, timeout=120)
                    if r.status_code == 200:
                        break
                    self.errors.append(f"load {name} (attempt {attempt + 1}): HTTP {r.status_code}: {error_text(r)}")
                    time.sleep(1)
                self.cycles += 1
            except requests.RequestException as exc:
                self.errors.append(f"reload {name}: {type(exc).__name__}: {str(exc)[:200]}")
            finally:
                with self.lock:
                    window[2] = time.monotonic()

    def was_reloading(self, name: str | None, t0: float, t1: float) -> bool:
        if name is None:
            return False
        with self.lock:
            return any(w[0] == name and w[1] <= t1 and (w[2] is None or w[2] >= t0) for w in self.windows)


def rss_by_process(pid: int) -> dict[str, int]:
    """RSS of the server and every descendant, keyed '<pid> <name>'."""
    try:
        root = psutil.Process(pid)
        procs = [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return {}
    out = {}
    for p in procs:
        try:
            out[f"{p.pid} {p.name()}"] = p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return out


def tree_rss(pid: int) -> int:
    return sum(rss_by_process(pid).values())


def large_anon_mappings(pid: int, min_bytes: int) -> dict[str, tuple[int, int]]:
    """Anonymous mappings of at least `min_bytes` in the server tree: '<pid> <start>' -> (size, resident).

    The CPU KV cache (VLLM_CPU_KVCACHE_SPACE GiB) is one such mapping. Reported
    apart so RSS growth can be told from KV pages being touched for the first
    time (on vLLM-CPU 0.32 the KV cache is already fully resident after start-up)."""
    out: dict[str, tuple[int, int]] = {}
    try:
        root = psutil.Process(pid)
        pids = [root.pid] + [c.pid for c in root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return out
    for p in pids:
        try:
            text = Path(f"/proc/{p}/smaps").read_text()
        except OSError:
            continue
        key = size = None
        for line in text.splitlines():
            head = line.split()
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                path = head[5] if len(head) > 5 else ""
                key = f"{p} {head[0].split('-')[0]}" if head[4] == "0" and not path else None
            elif key and head[0] == "Size:":
                size = int(head[1]) * 1024
            elif key and head[0] == "Rss:" and size is not None and size >= min_bytes:
                out[key] = (size, int(head[1]) * 1024)
    return out


class HealthMonitor(threading.Thread):
    """GET /health every second; any non-200 (or the server process exiting) is a death.
    Also samples the server tree's RSS every 2 s."""

    def __init__(self, sh: Shared, proc, progress=lambda: 0) -> None:
        super().__init__(daemon=True, name="health")
        self.sh, self.proc, self.progress = sh, proc, progress
        self.stop_event = threading.Event()
        self.deaths: list[str] = []
        self.polls = 0
        self.slow = 0  # polls that timed out (10 s) without an answer: reported, not a death
        self.rss_samples: list[tuple[float, int, int]] = []  # (time, requests done, tree RSS)
        self.healthy = True
        self.first_death: float | None = None  # time.monotonic() of the first death seen

    def run(self) -> None:
        s = requests.Session()
        last_rss = 0.0
        while not self.stop_event.wait(1.0):
            self.polls += 1
            problem = None
            if self.proc.poll() is not None:
                problem = f"server process exited with {self.proc.returncode}"
            else:
                try:
                    r = s.get(self.sh.url + "/health", timeout=10)
                    if r.status_code != 200:
                        problem = f"/health HTTP {r.status_code}: {r.text[:200]}"
                except requests.Timeout:
                    self.slow += 1
                except requests.RequestException as exc:
                    problem = f"/health {type(exc).__name__}: {str(exc)[:200]}"
            if problem is not None:
                if self.healthy:
                    self.deaths.append(f"{datetime.now():%H:%M:%S} {problem}")
                    self.first_death = self.first_death or time.monotonic()
                    print(f"[soak] ENGINE DEATH: {problem}", flush=True)
                self.healthy = False
                self.sh.dead.set()
            else:
                self.healthy = True
            now = time.monotonic()
            if now - last_rss >= 2:
                last_rss = now
                self.rss_samples.append((now, self.progress(), tree_rss(self.proc.pid)))


def scrape(url: str) -> dict[str, float]:
    out = {}
    for line in requests.get(url + "/metrics", timeout=30).text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        key, _, value = line.rpartition(" ")
        try:
            out[key] = float(value)
        except ValueError:
            pass
    return out


# --------------------------------------------------------------------------- main

def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def server_log_problems(log: Path, upto: int | None = None, limit: int = 15) -> tuple[int, int, list[str]]:
    """(ERROR/CRITICAL lines, tracebacks, the first distinct error messages) in the log's
    first `upto` bytes: traceback frames are left out, numbers are ignored when telling
    messages apart."""
    if not log.exists():
        return 0, 0, []
    errors = tracebacks = 0
    seen, lines = set(), []
    with open(log, "rb") as f:
        text = f.read(upto if upto is not None else -1).decode(errors="replace")
    for line in text.splitlines():
        if "Traceback (most recent call last)" in line:
            tracebacks += 1
        m = re.search(r"\b(ERROR|CRITICAL)\b.*?\] (.*)$", line)
        if not m:
            continue
        errors += 1
        message = m.group(2)
        if not message.strip() or message[0].isspace() or message.startswith("Traceback") or set(message) <= set("^~ "):
            continue
        key = re.sub(r"\d+", "N", message)[:200]
        if key not in seen and len(lines) < limit:
            seen.add(key)
            lines.append(line[:400])
    return errors, tracebacks, lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=5000, help="requests in all, warm-up included")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=200,
                        help="requests before the baseline RSS sample (at most half of --requests)")
    parser.add_argument("--adapters", type=int, default=4, choices=range(3, 7), metavar="{3..6}")
    parser.add_argument("--reload-every", type=float, default=3.0, help="seconds between adapter reloads (0: off)")
    parser.add_argument("--abort-frac", type=float, default=0.10)
    parser.add_argument("--hostile-frac", type=float, default=0.05)
    parser.add_argument("--no-hostile", action="store_true", help="send no hostile requests")
    parser.add_argument("--skip-hostile", default=None, metavar="REGEX",
                        help="leave out hostile cases whose name matches (e.g. 'prompt_len')")
    parser.add_argument("--idle", type=float, default=3.0, help="idle seconds before reading the page gauge")
    parser.add_argument("--max-rss-growth-mb", type=float, default=50.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--label", default="", help="a note for the report's title (e.g. 'debug run')")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="model, adapters and server.log (default: a temporary folder, kept on failure)")
    parser.add_argument("--startup-timeout", type=float, default=900)
    args = parser.parse_args()
    hostile_frac = 0.0 if args.no_hostile else args.hostile_frac
    warmup = min(args.warmup, args.requests // 2)

    from vllm_para.testing.serve_process import VLLMServer

    started = datetime.now()
    run_id = f"soak-{started:%Y%m%d-%H%M%S}"
    out_dir = args.out_dir / run_id
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="para-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    log = work / "server.log"
    command = ".venv/bin/python " + " ".join(
        shlex.quote(a) for a in [os.path.relpath(os.path.abspath(sys.argv[0]), ROOT), *sys.argv[1:]])
    via = " (via `make soak`)" if os.environ.get("MAKELEVEL") else ""
    print(f"[soak] {run_id}: building the tiny model and adapters in {work}", flush=True)
    model, adapter_paths, broken = build_assets(work, args.adapters)
    modules = [f"{name}={path}" for name, path in adapter_paths.items()]
    server_args = ["--dtype", "float32", "--max-model-len", "512", "--max-num-seqs", "32", "--seed", "0",
                   "--enable-para", "--para-modules", *modules, "--max-para-adapters", "2"]
    env = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ALLOW_RUNTIME_PARA_UPDATING": "1"}
    server = VLLMServer(model, server_args, log, env=env, startup_timeout=args.startup_timeout)

    def on_sigterm(signum, frame):  # so `finally` stops the server
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    print(f"[soak] starting: {' '.join(server.command)}", flush=True)
    try:
        server.start()
    except Exception as exc:
        print(f"[soak] server did not start: {exc}", flush=True)
        print(f"[soak] work dir kept: {work}")
        return 2
    try:
        print(f"[soak] healthy after {server.startup_s:.0f} s at {server.url}", flush=True)
        data = requests.get(server.url + "/v1/models", timeout=30).json()["data"]
        base = next(m["id"] for m in data if m["id"] not in adapter_paths)
        sh = Shared(server.url, base, sorted(adapter_paths), broken,
                    skip_hostile=re.compile(args.skip_hostile) if args.skip_hostile else None, proc=server.proc)
        rss_start = tree_rss(server.proc.pid)
        results: list[Result] = []
        health = HealthMonitor(sh, server.proc, progress=lambda: len(results))
        health.start()
        reloader = Reloader(sh, adapter_paths, args.reload_every, args.seed)
        lock = threading.Lock()
        progress_every = max(1, args.requests // 10)

        def task(i: int) -> Result:
            try:
                r = run_one(i, args.seed, sh, hostile_frac, args.abort_frac)
            except Exception as exc:  # a bug in this script: visible as a failure, not a crash
                r = Result(i, "normal", "client", outcome="fail", detail=f"client exception: {exc!r}")
            with lock:
                results.append(r)
                if len(results) % progress_every == 0:
                    c = Counter(x.outcome for x in results)
                    print(f"[soak] {len(results)}/{args.requests} {dict(c)}", flush=True)
            return r

        with ThreadPoolExecutor(args.concurrency) as pool:
            if args.reload_every > 0:  # reloads are part of the warm-up too
                reloader.start()
            t_warm = time.monotonic()
            list(pool.map(task, range(warmup)))
            warm_s = time.monotonic() - t_warm
            rss_warm_by_proc = rss_by_process(server.proc.pid)
            rss_warm = sum(rss_warm_by_proc.values())
            big_warm = large_anon_mappings(server.proc.pid, BIG_MAPPING)
            print(f"[soak] warm-up: {warmup} requests in {warm_s:.1f} s; server RSS {rss_warm / 2**20:.0f} MiB",
                  flush=True)
            t_main = time.monotonic()
            list(pool.map(task, range(warmup, args.requests)))
            main_s = max(time.monotonic() - t_main, 1e-6)
        reloader.stop_event.set()
        if reloader.is_alive():
            reloader.join(timeout=300)
        time.sleep(args.idle)
        pages = pages_later = None
        end_metrics: dict[str, float] = {}
        try:
            end_metrics = scrape(server.url)
            pages = end_metrics.get(PAGES_METRIC)
            if pages:
                time.sleep(10)
                pages_later = scrape(server.url).get(PAGES_METRIC)
        except requests.RequestException as exc:
            print(f"[soak] /metrics failed: {exc}", flush=True)
        rss_end_by_proc = rss_by_process(server.proc.pid)
        rss_end = sum(rss_end_by_proc.values())
        big_end = large_anon_mappings(server.proc.pid, BIG_MAPPING)
        health.stop_event.set()
        health.join(timeout=30)
        alive_at_end = server.proc.poll() is None
    except KeyboardInterrupt:
        print("[soak] interrupted: stopping the server", flush=True)
        server.stop()
        print(f"[soak] work dir kept: {work}")
        return 130
    finally:
        log_cut = log.stat().st_size if log.exists() else None  # shutdown noise after this is not scanned
        stop_code = server.stop()  # SIGTERM, then SIGKILL to the whole process group
    # ---------------------------------------------------------------- classify and report
    for r in results:
        if r.outcome == "404":
            if r.kind in ("normal", "abort") and reloader.was_reloading(r.adapter, r.t0, r.t1):
                r.outcome = "mid_reload_404"
            else:
                r.outcome = "fail"
    by_kind = {k: [r for r in results if r.kind == k] for k in ("normal", "abort", "hostile")}
    count = Counter((r.kind, r.outcome) for r in results)
    failed = [r for r in results if r.kind in ("normal", "abort") and r.outcome == "fail"]
    hostile_fail = [r for r in by_kind["hostile"] if r.outcome == "fail"]
    hostile_accepted = [r for r in by_kind["hostile"] if r.outcome == "accepted"]
    not_sent = sum(1 for r in results if r.outcome == "not_sent")
    ok = [r for r in results if r.outcome == "ok"]
    main_results = [r for r in results if r.idx >= warmup and r.outcome != "not_sent"]
    main_tokens = sum(r.tokens for r in main_results if r.outcome == "ok")
    latencies = [r.t1 - r.t0 for r in ok]
    deaths = len(health.deaths)
    rss_growth_mb = (rss_end - rss_warm) / 2**20 if rss_end and rss_warm else float("nan")
    # RSS slope over the second half of the main phase: a leak keeps it up, a warm-up effect flattens it
    half = warmup + (args.requests - warmup) // 2
    tail = [(d, r) for _, d, r in health.rss_samples if half <= d < args.requests and r]
    tail_slope = ((tail[-1][1] - tail[0][1]) / 2**20 * 1000 / (tail[-1][0] - tail[0][0])
                  if len(tail) >= 2 and tail[-1][0] > tail[0][0] else float("nan"))
    # summed, not matched by address: neighbouring anonymous mappings merge and move starts
    big_growth = sum(r for _, r in big_end.values()) - sum(r for _, r in big_warm.values())
    rss_growth_other_mb = rss_growth_mb - big_growth / 2**20
    leaked = pages if pages is not None else float("nan")
    log_errors, log_tracebacks, log_lines = server_log_problems(log, log_cut)
    gates = {
        "engine deaths": (deaths, deaths == 0),
        "failed well-formed requests": (len(failed), not failed),
        "hostile requests answered 5xx / connection error / timeout": (len(hostile_fail), not hostile_fail),
        "hostile requests accepted (2xx, not refused)": (len(hostile_accepted), not hostile_accepted),
        "adapter unload/load calls that failed (valid adapter)": (len(reloader.errors), not reloader.errors),
        "side-buffer pages in use after idle": (leaked, pages == 0),
        f"server RSS growth after warm-up (MB, limit {args.max_rss_growth_mb:g})":
            (round(rss_growth_mb, 1), rss_growth_mb <= args.max_rss_growth_mb),
    }
    passed = all(good for _, good in gates.values())

    out_dir.mkdir(parents=True, exist_ok=True)
    report = out_dir / "report.md"
    mib = lambda b: f"{b / 2**20:.0f} MiB"  # noqa: E731
    title = f"# PARA server soak: {run_id}" + (f" ({args.label})" if args.label else "")
    lines = [
        title, "",
        f"**Verdict: {'PASS' if passed else 'FAIL'}**", "",
        f"Command: `{command}`{via}  ", f"Started {started:%Y-%m-%d %H:%M:%S}; host {os.uname().nodename}, "
        f"{os.cpu_count()} CPUs; Python {sys.version.split()[0]}.", "",
        "Server: `vllm serve <tiny llama> " + " ".join(
            a if "=" not in a else a.split("=")[0] + "=<dir>" for a in server_args) + "` with "
        "`VLLM_CPU_KVCACHE_SPACE=1 VLLM_ALLOW_RUNTIME_PARA_UPDATING=1`; "
        f"adapters {sorted(adapter_paths)}; start-up {server.startup_s:.0f} s.", "",
        f"Traffic: {args.requests} requests (first {warmup} = warm-up), concurrency {args.concurrency}, "
        f"~{args.abort_frac:.0%} client aborts, ~{hostile_frac:.0%} hostile"
        + (" (hostile cases OFF: --no-hostile)" if args.no_hostile else "")
        + (f" (hostile cases matching `{args.skip_hostile}` skipped)" if args.skip_hostile and hostile_frac else "")
        + f", adapter reload every {args.reload_every:g} s, seed {args.seed}.", "",
        "## Gates", "", "| check | value | ok |", "|---|---|---|",
        *[f"| {name} | {value} | {'yes' if good else '**NO**'} |" for name, (value, good) in gates.items()],
        "", "## Numbers", "", "| measure | value |", "|---|---|",
        f"| well-formed requests (normal / client-aborted) | {len(by_kind['normal'])} / {len(by_kind['abort'])} |",
        f"| ok | {count['normal', 'ok']} |",
        f"| aborted by the client / finished before the abort | {count['abort', 'aborted']} / "
        f"{count['abort', 'abort_completed']} |",
        f"| 404 for an adapter mid-reload (not failures) | "
        f"{count['normal', 'mid_reload_404'] + count['abort', 'mid_reload_404']} |",
        f"| failed well-formed | {len(failed)}" + (
            f" ({sum(r.t0 >= health.first_death for r in failed)} of them sent after the death was seen)"
            if health.first_death else "") + " |",
        f"| hostile: sent / 4xx / 2xx / 5xx-or-error | {len(by_kind['hostile'])} / {count['hostile', 'rejected']} / "
        f"{len(hostile_accepted)} / {len(hostile_fail)} |",
        f"| requests not sent (engine dead) | {not_sent} |",
        f"| adapter reload cycles / reload errors | {reloader.cycles} / {len(reloader.errors)} |",
        f"| /health polls / deaths / slow (>10 s) | {health.polls} / {deaths} / {health.slow} |",
        f"| warm-up wall time | {warm_s:.1f} s |",
        f"| main phase: requests, wall time | {len(main_results)}, {main_s:.1f} s |",
        f"| main phase throughput | {len(main_results) / main_s:.2f} req/s, {main_tokens / main_s:.1f} output tok/s |",
        f"| latency of ok requests p50 / p99 / max | {pct(latencies, .5):.2f} / {pct(latencies, .99):.2f} / "
        f"{max(latencies, default=float('nan')):.2f} s |",
        f"| `{PAGES_METRIC}` after {args.idle:g} s idle | {pages}"
        + (f" (after 10 s more: {pages_later})" if pages_later is not None else "") + " |",
        f"| `side_buffer_pages_capacity` / `adapters_loaded` at end | "
        f"{end_metrics.get('vllm_para:side_buffer_pages_capacity')} / {end_metrics.get('vllm_para:adapters_loaded')} |",
        f"| server tree RSS: start / after warm-up / end / peak sampled | {mib(rss_start)} / {mib(rss_warm)} / "
        f"{mib(rss_end)} / {mib(max([s for _, _, s in health.rss_samples] + [rss_end]))} |",
        f"| RSS growth after warm-up: all / in anonymous mappings >= {BIG_MAPPING >> 20} MiB (KV cache) / rest | "
        f"{rss_growth_mb:+.1f} / {big_growth / 2**20:+.1f} / {rss_growth_other_mb:+.1f} MB |",
        "| RSS slope over the second half of the main phase | " + (
            f"{tail_slope:+.1f} MB per 1000 requests |" if tail_slope == tail_slope else "n/a (run too short) |"),
        f"| server alive at end / exit code after SIGTERM | {alive_at_end} / {stop_code} |",
        f"| server log before shutdown: ERROR/CRITICAL lines / tracebacks | {log_errors} / {log_tracebacks} |",
    ]
    running = {k: v for k, v in end_metrics.items() if k.startswith(("vllm:num_requests_running",
                                                                    "vllm:num_requests_waiting"))}
    if running:
        lines.append(f"| vLLM running / waiting requests at end | {sum(v for k, v in running.items() if 'running' in k):g}"
                     f" / {sum(v for k, v in running.items() if 'waiting' in k):g} |")
    lines += ["", "## Server RSS per process", "", "| process | after warm-up | end | growth |", "|---|---|---|---|"]
    for key in sorted(set(rss_warm_by_proc) | set(rss_end_by_proc)):
        w, e = rss_warm_by_proc.get(key, 0), rss_end_by_proc.get(key, 0)
        lines.append(f"| {key} | {mib(w)} | {mib(e)} | {(e - w) / 2**20:+.1f} MB |")
    if big_warm or big_end:
        describe = lambda m: "; ".join(f"{k}: {mib(sz)} mapped, {mib(r)} resident" for k, (sz, r) in sorted(m.items()))  # noqa: E731
        lines += ["", f"Anonymous mappings >= {BIG_MAPPING >> 20} MiB (pid address): after warm-up {describe(big_warm)}; "
                  f"at end {describe(big_end)}."]
    if health.rss_samples:
        samples = health.rss_samples
        step = max(1, len(samples) // 20)
        picked = samples[::step] + ([samples[-1]] if (len(samples) - 1) % step else [])
        t_first = samples[0][0]
        lines += ["", "## Server tree RSS over time (sampled every 2 s)", "", "| s | requests done | RSS |",
                  "|---|---|---|", *[f"| {t - t_first:.0f} | {done} | {mib(rss)} |" for t, done, rss in picked]]
    mix = Counter(r.desc.split("/abort")[0].split("/timeout")[0] for r in results if r.kind != "hostile" and r.desc)
    lines += ["", "## Request mix (well-formed)", "", ", ".join(f"`{k}` {v}" for k, v in sorted(mix.items()))]
    if by_kind["hostile"]:
        lines += ["", "## Hostile cases", "", "| case | sent | 4xx | 2xx | 5xx/error | example answer |",
                  "|---|---|---|---|---|---|"]
        cases: dict[str, list[Result]] = {}
        for r in by_kind["hostile"]:
            cases.setdefault(r.desc, []).append(r)
        for name, rs in sorted(cases.items()):
            c = Counter(r.outcome for r in rs)
            worst = next((r for r in rs if r.outcome != "rejected"), rs[0])
            detail = worst.detail.replace("|", "\\|").replace("\n", " ")[:160]
            lines.append(f"| `{name}` | {len(rs)} | {c['rejected']} | {c['accepted']} | {c['fail']} | {detail} |")
    problems = failed + hostile_fail + hostile_accepted
    if problems:
        lines += ["", "## Failures (first 25; grouped by description)", ""]
        groups = Counter((r.kind, r.desc.split("/abort")[0].split("/timeout")[0], r.detail[:200]) for r in problems)
        for (kind, desc, detail), n in groups.most_common(25):
            lines.append(f"- {n} x {kind} `{desc}`: {detail}")
    if health.deaths:
        lines += ["", "## Engine deaths", "", *[f"- {d}" for d in health.deaths]]
    if reloader.errors:
        lines += ["", "## Reload errors (first 10)", "", *[f"- {e}" for e in reloader.errors[:10]]]
    if log_lines:
        lines += ["", f"## Server log: first distinct error messages ({log_errors} ERROR lines in all)", "", "```",
                  *log_lines, "```"]
    report.write_text("\n".join(lines) + "\n")

    print("\n".join(["", f"[soak] {'PASS' if passed else 'FAIL'} ({run_id})",
                     *[f"  {'ok ' if good else 'BAD'} {name}: {value}" for name, (value, good) in gates.items()],
                     f"  throughput (main phase): {len(main_results) / main_s:.2f} req/s, "
                     f"{main_tokens / main_s:.1f} tok/s; ok {len(ok)}, mid-reload 404 "
                     f"{count['normal', 'mid_reload_404'] + count['abort', 'mid_reload_404']}, "
                     f"aborted {count['abort', 'aborted']}, hostile {len(by_kind['hostile'])}",
                     f"  RSS start/warm/end: {mib(rss_start)} / {mib(rss_warm)} / {mib(rss_end)}",
                     f"  report: {report}"]), flush=True)
    if passed and args.work_dir is None:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"[soak] work dir (model, adapters, server.log) kept: {work}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
