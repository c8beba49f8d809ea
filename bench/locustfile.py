"""Locust users: mixed-tenant OpenAI `/v1/completions` traffic against a vLLM server.

Every request names one adapter (or the base model) in the OpenAI `model` field,
drawn from a seeded uniform or Zipf distribution, with a seeded prompt of a fixed
number of words and a fixed output length (`max_tokens` + `ignore_eos: true`).
Requests are streamed, so each one reports three kinds of Locust events:

    request_type "completion"  whole request, first byte sent to last byte read
                               (response_length = output tokens received)
    request_type "TTFT"        time to the first streamed token
    request_type "ITL"         one event per inter-token gap after the first token

Users wait until all of them have spawned, then send back to back (no think time).
The run is bounded by count: users claim request numbers from a shared counter;
when `--total-requests` have been claimed the users stop, and the runner quits
once the last one has finished (keep `--run-time` as a safety limit).

Options (locust command-line flag / environment variable, default):

    --models            LOADTEST_MODELS          comma-separated `model` names;
                                                 empty: every id in GET /v1/models
    --distribution      LOADTEST_DISTRIBUTION    uniform | zipf        (uniform)
    --zipf-exponent     LOADTEST_ZIPF_EXPONENT   Zipf exponent s, P(k) ~ 1/(k+1)^s (1.0)
    --prompt-words      LOADTEST_PROMPT_WORDS    words per prompt, ~1 token each (16)
    --max-tokens        LOADTEST_MAX_TOKENS      fixed output length    (16)
    --total-requests    LOADTEST_TOTAL_REQUESTS  requests in the whole run (8)
    --traffic-seed      LOADTEST_SEED            seed of models and prompts (0)
    --beam-search       LOADTEST_BEAM_SEARCH     send `use_beam_search: true, n: 3`
                                                 (not streamed: no TTFT/ITL; PARA
                                                 may reject it over HTTP)  (off)
    --records-file      LOADTEST_RECORDS_FILE    write one JSON line per request
                                                 (timings, tokens, error)  (none)

Example:
    locust -f bench/locustfile.py --headless -u 4 -r 4 --host http://127.0.0.1:8000 \\
        --run-time 5m --total-requests 32 --models sql,qa --distribution zipf --csv out/run
"""

from __future__ import annotations

import json
import time

import gevent
import gevent.event
import locust.stats
import requests
from locust import User, constant, events, task
from locust.exception import StopUser

try:  # run by `locust -f bench/locustfile.py` from the repo root
    from bench.traffic import DISTRIBUTIONS, Traffic
except ImportError:  # locust also puts this file's folder on sys.path
    from traffic import DISTRIBUTIONS, Traffic

BEAM_WIDTH = 3
# Locust writes its --csv files from a timer, not at exit: write often, and wait one
# more write after the last request before quitting so the CSVs hold every request.
locust.stats.CSV_STATS_INTERVAL_SEC = 0.5
QUIT_DELAY_S = 1.5


@events.init_command_line_parser.add_listener
def _add_arguments(parser):
    group = parser.add_argument_group("mixed-tenant load test (bench/locustfile.py)")
    group.add_argument("--models", type=str, env_var="LOADTEST_MODELS", default="",
                       help="Comma-separated model/adapter names; empty: all of GET /v1/models")
    group.add_argument("--distribution", type=str, env_var="LOADTEST_DISTRIBUTION", default="uniform",
                       choices=DISTRIBUTIONS, help="How requests spread over the models")
    group.add_argument("--zipf-exponent", type=float, env_var="LOADTEST_ZIPF_EXPONENT", default=1.0)
    group.add_argument("--prompt-words", type=int, env_var="LOADTEST_PROMPT_WORDS", default=16)
    group.add_argument("--max-tokens", type=int, env_var="LOADTEST_MAX_TOKENS", default=16)
    group.add_argument("--total-requests", type=int, env_var="LOADTEST_TOTAL_REQUESTS", default=8)
    group.add_argument("--traffic-seed", type=int, env_var="LOADTEST_SEED", default=0)
    group.add_argument("--beam-search", action="store_true", env_var="LOADTEST_BEAM_SEARCH", default=False)
    group.add_argument("--records-file", type=str, env_var="LOADTEST_RECORDS_FILE", default="")


class _Run:
    """State shared by all users of one run (one process, gevent: no locks needed)."""

    traffic: Traffic | None = None
    all_spawned = gevent.event.Event()
    claimed = 0
    finished = 0
    records = None


@events.test_start.add_listener
def _on_test_start(environment, **_kwargs):
    opts = environment.parsed_options
    models = [m for m in opts.models.split(",") if m]
    if not models:
        data = requests.get(environment.host.rstrip("/") + "/v1/models", timeout=30).json()["data"]
        models = [m["id"] for m in data]
    _Run.traffic = Traffic(tuple(models), opts.distribution, opts.zipf_exponent, opts.prompt_words,
                           opts.traffic_seed)
    _Run.claimed = _Run.finished = 0
    _Run.all_spawned.clear()
    _Run.records = open(opts.records_file, "w") if opts.records_file else None


@events.spawning_complete.add_listener
def _on_spawning_complete(user_count, **_kwargs):
    _Run.all_spawned.set()


@events.quitting.add_listener
def _on_quitting(environment, **_kwargs):
    if _Run.records is not None:
        _Run.records.close()
        _Run.records = None


class CompletionUser(User):
    wait_time = constant(0)

    def on_start(self):
        self.session = requests.Session()
        self.url = self.host.rstrip("/") + "/v1/completions"
        self.opts = self.environment.parsed_options
        # Locust spawns users over about a second (-r per second): hold every user until all
        # are up, so the whole load phase runs at the requested concurrency.
        _Run.all_spawned.wait(timeout=60)

    def on_stop(self):
        self.session.close()

    @task
    def complete(self):
        if _Run.claimed >= self.opts.total_requests:
            raise StopUser()
        index = _Run.claimed
        _Run.claimed += 1
        model, prompt = _Run.traffic.request(index)
        body = {"model": model, "prompt": prompt, "max_tokens": self.opts.max_tokens, "temperature": 0.0,
                "ignore_eos": True}
        if self.opts.beam_search:
            record = self._beam(body | {"use_beam_search": True, "n": BEAM_WIDTH})
        else:
            record = self._stream(body | {"stream": True, "return_token_ids": True,
                                          "stream_options": {"include_usage": True}})
        record.update(index=index, model=model)
        self._report(record)
        _Run.finished += 1
        if _Run.finished >= self.opts.total_requests:
            gevent.spawn_later(QUIT_DELAY_S, self.environment.runner.quit)
            raise StopUser()

    def _stream(self, body: dict) -> dict:
        start = time.perf_counter()
        arrivals: list[tuple[float, int]] = []  # (time, tokens in the chunk)
        usage_tokens, done, error = None, False, None
        try:
            with self.session.post(self.url, json=body, stream=True, timeout=600) as r:
                if r.status_code != 200:
                    error = f"HTTP {r.status_code}: {r.text[:300]}"
                else:
                    for line in r.iter_lines(chunk_size=None):  # each chunk as it arrives
                        if not line.startswith(b"data: "):
                            continue
                        if line == b"data: [DONE]":
                            done = True
                            break
                        chunk = json.loads(line[6:])
                        if chunk.get("usage"):
                            usage_tokens = chunk["usage"].get("completion_tokens")
                        for choice in chunk.get("choices") or []:
                            n = len(choice.get("token_ids") or []) or (1 if choice.get("text") else 0)
                            if n:
                                arrivals.append((time.perf_counter(), n))
        except Exception as exc:  # a failed request, never a crashed user
            error = f"{type(exc).__name__}: {exc}"
        end = time.perf_counter()
        tokens = sum(n for _, n in arrivals)
        if error is None and not done:
            error = "stream ended without [DONE]"
        if error is None and (tokens != body["max_tokens"] or usage_tokens not in (None, tokens)):
            error = f"expected {body['max_tokens']} tokens, got {tokens} (usage says {usage_tokens})"
        itl = []
        for (t0, _), (t1, n) in zip(arrivals, arrivals[1:]):
            itl += [(t1 - t0) / n] * n
        return {"start": start, "end": end, "latency": end - start, "tokens": tokens,
                "ttft": arrivals[0][0] - start if arrivals else None, "itl": itl, "error": error}

    def _beam(self, body: dict) -> dict:
        start = time.perf_counter()
        error, tokens = None, 0
        try:
            r = self.session.post(self.url, json=body, timeout=600)
            if r.status_code != 200:
                error = f"HTTP {r.status_code}: {r.text[:300]}"
            else:
                choices = r.json()["choices"]
                tokens = body["max_tokens"] if choices else 0
                if not choices:
                    error = "no choices returned"
        except Exception as exc:  # a failed request, never a crashed user
            error = f"{type(exc).__name__}: {exc}"
        end = time.perf_counter()
        return {"start": start, "end": end, "latency": end - start, "tokens": tokens, "ttft": None, "itl": [],
                "error": error}

    def _report(self, rec: dict) -> None:
        fire = self.environment.events.request.fire
        failure = Exception(rec["error"]) if rec["error"] else None
        fire(request_type="completion", name=rec["model"], response_time=rec["latency"] * 1000,
             response_length=rec["tokens"], exception=failure, context={})
        if rec["error"] is None:
            if rec["ttft"] is not None:
                fire(request_type="TTFT", name=rec["model"], response_time=rec["ttft"] * 1000,
                     response_length=0, exception=None, context={})
            for gap in rec["itl"]:
                fire(request_type="ITL", name=rec["model"], response_time=gap * 1000, response_length=0,
                     exception=None, context={})
        if _Run.records is not None:
            _Run.records.write(json.dumps(rec) + "\n")
            _Run.records.flush()
