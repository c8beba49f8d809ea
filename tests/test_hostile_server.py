"""Tenant isolation against ONE real `vllm serve --enable-para` that is never
restarted: every hostile request, adapter directory and admin call gets a 4xx
naming the problem (or a correct 200), and after each one the server is
healthy and a fixed tenant's greedy output is unchanged."""

from __future__ import annotations

import base64
import io
import itertools
import json
import os
import random
import shutil
import time

import pytest
import requests

from adapter_corruptions import swapping_with_fifo
from engine_support import PROMPTS, peft_greedy_and_logprobs, token_prompts
from hostile_cases import (
    BAD_UNLOADS,
    FIRST_USE_BAD_NAMES,
    HOSTILE_MODEL_NAMES,
    HOSTILE_XARGS,
    LONG_NAME_IDS,
    LONG_NAMES,
    bad_admin_load_bodies,
    field_type_bodies,
)
from server_support import Server

pytestmark = pytest.mark.server

MAX_TOKENS = 8
FIXED = ("sql", PROMPTS[0])  # the tenant whose output must never change


DIR_ADAPTERS = 20  # in --para-adapter-dir, loaded on first use
HOST_CACHE = 4  # --max-cpu-para-adapters


@pytest.fixture(scope="module")
def adapter_dir(tiny_llama, tmp_path_factory):
    from testkit.tiny_models import build_random_adapter

    root = tmp_path_factory.mktemp("adapter_dir")
    for i in range(DIR_ADAPTERS):
        build_random_adapter(tiny_llama, root / f"t{i}", r=4 + i % 3, seed=100 + i,
                             targets=("q", "v", "u") if i % 2 else ("k", "g"), pooling="mean" if i % 5 == 0 else "last")
    outside = tmp_path_factory.mktemp("outside")
    build_random_adapter(tiny_llama, outside / "evil", seed=7)
    (root / "escape").symlink_to(outside / "evil")  # a symlink out of the directory: never loaded
    return root


@pytest.fixture(scope="module")
def server(tiny_llama, adapters, adapter_dir, tmp_path_factory):
    modules = [f"{name}={adapters[name]}" for name in ("sql", "qa")]
    srv = Server(
        tiny_llama,
        ["--enable-para", "--para-modules", *modules, "--max-para-adapters", "2", "--max-para-rank", "16",
         "--enable-prompt-embeds", "--para-adapter-dir", str(adapter_dir),
         "--max-cpu-para-adapters", str(HOST_CACHE)],
        tmp_path_factory.mktemp("hostile") / "server.log",
        env={"VLLM_ALLOW_RUNTIME_PARA_UPDATING": "1"},
        compiled=True,  # tenant isolation is checked on the forward users run: torch.compile'd
    ).wait_ready()
    yield srv
    srv.stop()


def _body(model, prompt, **extra):
    return {"model": model, "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0, "ignore_eos": True,
            "return_token_ids": True, **extra}


def _tokens(server, model, prompt, **extra) -> list[int]:
    r = server.post("/v1/completions", _body(model, prompt, **extra))
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["token_ids"]


@pytest.fixture(scope="module")
def fixed_output(server, reference, tiny_llama):
    ids = token_prompts(tiny_llama, [FIXED[1]])
    want = reference.greedy(ids, [FIXED[0]], MAX_TOKENS, stop_at_eos=False)[0].token_ids
    assert _tokens(server, *FIXED) == want
    return want


def _still_fine(server, fixed_output):
    assert server.get("/health").status_code == 200, server.log_tail()
    assert _tokens(server, *FIXED) == fixed_output


def _refused(r: requests.Response, status: int | tuple[int, ...], *words: str) -> str:
    statuses = (status,) if isinstance(status, int) else status
    assert r.status_code in statuses, (r.status_code, r.text[:500])
    message = r.json()["error"]["message"] if "error" in r.json() else str(r.json())
    for word in words:
        assert word in message, (word, message[:500])
    return message


@pytest.mark.parametrize("xargs, model, status, words", HOSTILE_XARGS, ids=[str(i) for i in range(len(HOSTILE_XARGS))])
def test_hostile_vllm_xargs(server, fixed_output, tiny_llama, xargs, model, status, words):
    for path, body in (
        ("/v1/completions", _body(model or str(tiny_llama), PROMPTS[1], vllm_xargs=xargs)),
        ("/v1/chat/completions", {"model": model or str(tiny_llama), "max_tokens": 4, "vllm_xargs": xargs,
                                  "messages": [{"role": "user", "content": PROMPTS[1]}]}),
        ("/v1/completions", _body(model or str(tiny_llama), PROMPTS[1], vllm_xargs=xargs, stream=True)),
    ):
        _refused(server.post(path, body), status, *words)
    _still_fine(server, fixed_output)


@pytest.mark.parametrize("model", HOSTILE_MODEL_NAMES)
def test_hostile_model_names(server, fixed_output, model):
    r = server.post("/v1/completions", _body(model, PROMPTS[1]))
    assert r.status_code in (400, 404), r.text[:300]
    assert len(r.text) < 5000  # a 10 kB name is not echoed back in full
    _still_fine(server, fixed_output)


def test_hostile_field_types(server, fixed_output, tiny_llama):
    for body in field_type_bodies(_body, PROMPTS[1]):
        r = server.post("/v1/completions", body)
        assert 400 <= r.status_code < 500, (body, r.status_code, r.text[:300])
    _still_fine(server, fixed_output)


def test_prompt_embeds_with_adapter_refused(server, fixed_output, tiny_llama):
    import torch
    from transformers import AutoConfig

    hidden = AutoConfig.from_pretrained(str(tiny_llama)).hidden_size
    buf = io.BytesIO()
    torch.save(torch.randn(5, hidden), buf)
    embeds = base64.b64encode(buf.getvalue()).decode()
    base = {"prompt_embeds": embeds, "max_tokens": 3, "temperature": 0}
    _refused(server.post("/v1/completions", {"model": "sql", **base}), 400, "prompt_embeds")
    _refused(server.post("/v1/completions", {"model": str(tiny_llama), **base, "vllm_xargs": {"para_adapter": "qa"}}),
             400, "prompt_embeds")
    # the base model still serves prompt embeddings
    assert server.post("/v1/completions", {"model": str(tiny_llama), **base}).status_code == 200
    _still_fine(server, fixed_output)


def test_beam_search_base_model_with_xargs_adapter(server, fixed_output, tiny_llama):
    body = {"prompt": PROMPTS[3], "use_beam_search": True, "n": 2, "max_tokens": 5, "ignore_eos": True,
            "temperature": 0, "length_penalty": 0.0, "return_token_ids": True}
    by_model = server.post("/v1/completions", {**body, "model": "sql"})
    by_xargs = server.post("/v1/completions", {**body, "model": str(tiny_llama), "vllm_xargs": {"para_adapter": "sql"}})
    base = server.post("/v1/completions", {**body, "model": str(tiny_llama)})
    assert by_model.status_code == by_xargs.status_code == base.status_code == 200
    beams = lambda r: [c["token_ids"] for c in r.json()["choices"]]  # noqa: E731
    assert beams(by_xargs) == beams(by_model)
    assert beams(base) != beams(by_model)
    _refused(server.post("/v1/completions", {**body, "model": str(tiny_llama), "vllm_xargs": {"para_adapter": "zz"}}),
             404, "Available adapters")
    _still_fine(server, fixed_output)


def _load(server, name, path):
    return server.post("/v1/load_para_adapter", {"para_name": name, "para_path": str(path)})


def _unload(server, name):
    return server.post("/v1/unload_para_adapter", {"para_name": name})


def test_runtime_load_rank_above_max_refused(server, fixed_output, tiny_llama, tmp_path):
    from testkit.tiny_models import build_random_adapter

    build_random_adapter(tiny_llama, tmp_path / "big", r=32)
    _refused(_load(server, "big", tmp_path / "big"), 400, "r=32 > max_rank=16", "--max-para-rank")
    _refused(server.post("/v1/completions", _body("big", PROMPTS[1])), 404)
    _still_fine(server, fixed_output)


def test_runtime_load_bad_admin_calls(server, fixed_output, adapters):
    for body in bad_admin_load_bodies(adapters["sql"]):
        r = server.post("/v1/load_para_adapter", body)
        assert 400 <= r.status_code < 500, (body, r.status_code, r.text[:300])
    for body, statuses in BAD_UNLOADS:
        assert server.post("/v1/unload_para_adapter", body).status_code in statuses
    _still_fine(server, fixed_output)


def test_deleted_and_rewritten_adapter_dirs_serve_loaded_weights(server, fixed_output, adapters, tmp_path):
    """Weights are kept in host memory at load: evicted slots refill from there, never from disk."""
    gone, rewritten = tmp_path / "gone", tmp_path / "rewritten"
    shutil.copytree(adapters["sql"], gone)
    shutil.copytree(adapters["qa"], rewritten)
    assert _load(server, "gone", gone).status_code == 200
    assert _load(server, "rewritten", rewritten).status_code == 200
    want = {name: _tokens(server, name, PROMPTS[2]) for name in ("gone", "rewritten")}
    assert want["gone"] == _tokens(server, "sql", PROMPTS[2])
    shutil.rmtree(gone)
    shutil.copyfile(adapters["tone"] + "/adapter_model.safetensors", rewritten / "adapter_model.safetensors")
    # 4 adapters over 2 slots: each use below evicts another
    for _ in range(3):
        for name in ("sql", "qa", "gone", "rewritten"):
            out = _tokens(server, name, PROMPTS[2])
            if name in want:
                assert out == want[name], name
    assert _unload(server, "gone").status_code == 200
    assert _unload(server, "rewritten").status_code == 200
    _still_fine(server, fixed_output)


def test_unload_lets_in_flight_requests_finish(server, fixed_output, adapters):
    assert _load(server, "inflight", adapters["sql"]).status_code == 200
    body = _body("inflight", PROMPTS[0], max_tokens=120, stream=True)
    got = 0
    with requests.post(server.url + "/v1/completions", json=body, stream=True, timeout=120) as r:
        lines = r.iter_lines()
        for line in lines:
            if line.startswith(b"data: {"):
                got += 1
                if got == 2:
                    assert _unload(server, "inflight").status_code == 200
                    assert server.post("/v1/completions", _body("inflight", PROMPTS[0])).status_code == 404
        assert r.status_code == 200
    assert got >= 100
    _still_fine(server, fixed_output)


def test_reload_same_name_while_old_version_drains(server, fixed_output, adapters):
    """Unload, then load the same name from other files while a request of the old
    version is still running: the new load succeeds, new requests get the new weights,
    the running one finishes under the old (soak run regression)."""
    want_old = _tokens(server, "sql", PROMPTS[1], max_tokens=300)
    want_new = _tokens(server, "qa", PROMPTS[1])
    assert _load(server, "swap", adapters["sql"]).status_code == 200
    body = _body("swap", PROMPTS[1], max_tokens=300, stream=True, logprobs=1, return_tokens_as_token_ids=True)
    tokens = []
    with requests.post(server.url + "/v1/completions", json=body, stream=True, timeout=120) as r:
        lines = r.iter_lines()
        first = next(line for line in lines if line.startswith(b"data: {"))
        assert _unload(server, "swap").status_code == 200
        assert _load(server, "swap", adapters["qa"]).status_code == 200, "reload while the old version drains"
        assert _tokens(server, "swap", PROMPTS[1]) == want_new
        for line in [first, *lines]:
            if line.startswith(b"data: {"):
                tokens += [int(t.split(":")[1]) for t in json.loads(line[6:])["choices"][0]["logprobs"]["tokens"]]
    assert tokens == want_old
    assert _tokens(server, "swap", PROMPTS[1]) == want_new  # the old version's retirement left the new one alone
    assert _unload(server, "swap").status_code == 200
    _still_fine(server, fixed_output)


def test_unknown_names_do_not_grow_metrics(server, fixed_output, tiny_llama):
    def series():
        return sum(1 for line in server.get("/metrics").text.splitlines()
                   if line.startswith("vllm_para:requests_total{"))

    before = series()
    rng = random.Random(0)
    for _ in range(40):
        name = "".join(rng.choice("abcdefghij") for _ in range(12))
        server.post("/v1/completions", _body(name, PROMPTS[0]))
        server.post("/v1/completions", _body(str(tiny_llama), PROMPTS[0], vllm_xargs={"para_adapter": name}))
    assert series() == before
    _still_fine(server, fixed_output)


def test_fuzzed_adapter_dirs_refused_at_runtime_load(server, fixed_output, adapters, tmp_path):
    from adapter_corruptions import generate_corruptions

    cases = generate_corruptions(
        __import__("pathlib").Path(adapters["sql"]), tmp_path / "fuzz", seed=1
    )
    assert len(cases) >= 200
    for i, case in enumerate(cases):
        r = _load(server, f"fuzz{i}", case.path)
        msg = _refused(r, 400)
        assert case.expect in msg.lower(), (case.name, case.expect, msg[:400])
        if i % 50 == 0:
            _still_fine(server, fixed_output)
    names = {m["id"] for m in server.get("/v1/models").json()["data"]}
    assert not any(n.startswith("fuzz") for n in names)
    _still_fine(server, fixed_output)


# Over the file system's name limit (255 bytes in UTF-8): answered 500 from an OSError before.
@pytest.mark.parametrize("name", LONG_NAMES, ids=LONG_NAME_IDS)
def test_names_over_the_file_name_limit_are_400(server, fixed_output, tiny_llama, name):
    _refused(server.post("/v1/completions", _body(name, PROMPTS[0])), 400, "255")
    _refused(server.post("/v1/chat/completions", {"model": name, "max_tokens": 2,
                                                  "messages": [{"role": "user", "content": "hi"}]}), 400, "255")
    _refused(server.post("/v1/completions", _body(str(tiny_llama), PROMPTS[0], vllm_xargs={"para_adapter": name})),
             400, "para_adapter", "255")
    _refused(_load(server, name, "/nonexistent"), 400, "255")
    _still_fine(server, fixed_output)


def test_base_model_name_is_not_an_adapter(server, fixed_output, tiny_llama, adapter_dir):
    base = str(tiny_llama)
    _refused(server.post("/v1/completions", _body(base, PROMPTS[0], vllm_xargs={"para_adapter": base})),
             400, "base model")
    ids = [m["id"] for m in server.get("/v1/models").json()["data"]]
    assert len(ids) == len(set(ids)), ids
    _still_fine(server, fixed_output)


LOAD_TIMEOUT_S = 5.0  # --para-load-timeout's default: no load may take much longer


@pytest.mark.parametrize("via", ["admin", "first_use"])
def test_fifo_race_during_loads_never_stalls_serving(server, fixed_output, tiny_llama, adapters, adapter_dir,
                                                     tmp_path, via):
    """A real race against the server: a thread swaps tt/adapter_model.safetensors between a regular
    file and a FIFO (by rename) while loads of `tt` (admin loads, or first-use requests naming it in
    --para-adapter-dir) run one after another and another thread keeps sending base requests. Each
    load is a 200 or a 400 within the deadline; base requests never stall (before, a worker's
    open() of the FIFO blocked every tenant for ~70 s)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    name = "tt" if via == "admin" else "tt-first-use"
    d = (tmp_path if via == "admin" else adapter_dir) / name
    shutil.copytree(adapters["sql"], d)
    stop = threading.Event()

    def base_requests():
        worst = 0.0
        while not stop.is_set():
            began = time.monotonic()
            r = server.post("/v1/completions", _body(str(tiny_llama), PROMPTS[3], max_tokens=4))
            assert r.status_code == 200, r.text[:300]
            worst = max(worst, time.monotonic() - began)
        return worst

    statuses = []
    with swapping_with_fifo(d / "adapter_model.safetensors", tmp_path, pause=0.002), ThreadPoolExecutor(1) as pool:
        base = pool.submit(base_requests)
        try:
            for _ in range(12):
                began = time.monotonic()
                r = (_load(server, name, d) if via == "admin"
                     else server.post("/v1/completions", _body(name, PROMPTS[0])))
                assert r.status_code in (200, 400), r.text[:300]
                assert time.monotonic() - began < LOAD_TIMEOUT_S + 5, "a load stalled"
                statuses.append(r.status_code)
                if r.status_code == 200:
                    assert _unload(server, name).status_code == 200
        finally:
            stop.set()
        worst_base = base.result(timeout=60)
    assert worst_base < LOAD_TIMEOUT_S + 5, f"a base request took {worst_base:.1f} s during the race"
    assert 200 in statuses or 400 in statuses
    assert name not in {m["id"] for m in server.get("/v1/models").json()["data"]}
    _still_fine(server, fixed_output)


@pytest.mark.parametrize("fname", ["adapter_model.safetensors", "para_config.json"])
def test_fifo_in_place_of_a_file_is_400_at_once(server, fixed_output, adapters, adapter_dir, fname):
    """Only a FIFO where an adapter file should be (nothing ever writes to it): the admin load and
    the first-use load are each a 400 saying so, at once (opened O_NONBLOCK, refused on fstat),
    never a wait for a writer."""
    name = "fifo-" + fname.split(".")[0].replace("_", "-")
    d = adapter_dir / name
    shutil.copytree(adapters["sql"], d)
    (d / fname).unlink()
    os.mkfifo(d / fname)
    for send in (lambda: _load(server, name, d), lambda: server.post("/v1/completions", _body(name, PROMPTS[0]))):
        began = time.monotonic()
        _refused(send(), 400, "not a regular file")
        assert time.monotonic() - began < LOAD_TIMEOUT_S, "the load waited on the FIFO"
    assert name not in {m["id"] for m in server.get("/v1/models").json()["data"]}
    _still_fine(server, fixed_output)


# ------------------------------------------------------------------ first-use loading (--para-adapter-dir)
def _dir_reference(tiny_llama, adapter_dir, names):
    from vllm_para.training.reference import PARAReferenceModel

    return PARAReferenceModel.from_pretrained(tiny_llama, adapters={n: str(adapter_dir / n) for n in names})


def _wait_metric(server, name, ok, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = server.metric(name)
        if value is not None and ok(value):
            return value
        time.sleep(0.5)
    return server.metric(name)


def test_first_use_loads_once_and_is_exact(server, fixed_output, tiny_llama, adapter_dir):
    from concurrent.futures import ThreadPoolExecutor

    names = [f"t{i}" for i in range(10)]
    ids = token_prompts(tiny_llama, [PROMPTS[4]])[0]
    reference = _dir_reference(tiny_llama, adapter_dir, names)
    want = {n: reference.greedy([ids], [n], MAX_TOKENS, stop_at_eos=False)[0].token_ids for n in names}
    misses_before = server.metric("vllm_para:adapter_cache_total", '{result="miss"}') or 0.0
    jobs = [names[i % 10] for i in range(50)]
    # The cache holds 4: ask for the 10 adapters in waves of 4, 50 concurrent requests per wave overall.
    got = {}
    for wave in (names[0:4], names[4:8], names[8:10]):
        wave_jobs = [n for n in jobs if n in wave]
        with ThreadPoolExecutor(len(wave_jobs)) as pool:
            outs = list(pool.map(lambda n: (n, _tokens(server, n, PROMPTS[4])), wave_jobs))
        for n, toks in outs:
            assert toks == want[n], n
            got[n] = toks
    assert set(got) == set(names)
    misses = server.metric("vllm_para:adapter_cache_total", '{result="miss"}') - misses_before
    assert misses == 10, f"each adapter must be loaded once, got {misses} loads for 10"
    assert server.metric("vllm_para:adapter_cold_load_seconds_count") >= 10
    _still_fine(server, fixed_output)


def test_first_use_refusals(server, fixed_output, tiny_llama, adapter_dir):
    for name in FIRST_USE_BAD_NAMES:
        _refused(server.post("/v1/completions", _body(name, PROMPTS[0])), 400)
    _refused(server.post("/v1/completions", _body("escape", PROMPTS[0])), 404)  # symlink out of the dir
    _refused(server.post("/v1/completions", _body("nothere", PROMPTS[0])), 404, "nothere")
    bad = adapter_dir / "broken"
    bad.mkdir()
    (bad / "para_config.json").write_text("{")
    _refused(server.post("/v1/completions", _body("broken", PROMPTS[0])), 400, "broken", "not valid JSON")
    by_xargs = server.post("/v1/completions", _body(str(tiny_llama), PROMPTS[0], vllm_xargs={"para_adapter": "t11"}))
    assert by_xargs.status_code == 200
    assert by_xargs.json()["choices"][0]["token_ids"] == _tokens(server, "t11", PROMPTS[0])
    _still_fine(server, fixed_output)


def test_host_cache_bound_and_in_flight_adapter_kept(server, fixed_output, tiny_llama, adapter_dir):
    names = [f"t{i}" for i in range(DIR_ADAPTERS)]
    ids = token_prompts(tiny_llama, [PROMPTS[2]])[0]
    reference = _dir_reference(tiny_llama, adapter_dir, names)
    long_want = reference.greedy([ids], ["t19"], 300, stop_at_eos=False)[0].token_ids
    start_named = 2  # sql, qa stay: never evicted
    peak = 0
    body = _body("t19", PROMPTS[2], max_tokens=300, stream=True, logprobs=1, return_tokens_as_token_ids=True)
    streamed = []
    with requests.post(server.url + "/v1/completions", json=body, stream=True, timeout=300) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        for _i, name in enumerate(names[:19] * 2):
            want = reference.greedy([ids], [name], MAX_TOKENS, stop_at_eos=False)[0].token_ids
            assert _tokens(server, name, PROMPTS[2]) == want, name
            held = _wait_metric(server, "vllm_para:adapters_in_host_memory", lambda v: v <= HOST_CACHE + start_named)
            peak = max(peak, held)
            streamed += [line for line in itertools.islice(lines, 1)]
        streamed += list(lines)
    assert peak <= HOST_CACHE + start_named, peak
    tokens = []
    for line in streamed:
        if line.startswith(b"data: {"):
            tokens += [int(t.split(":")[1]) for t in json.loads(line[6:])["choices"][0]["logprobs"]["tokens"]]
    assert tokens == long_want  # the in-flight adapter was never evicted under it
    _still_fine(server, fixed_output)


def test_pages_and_slots_back_to_idle(server, fixed_output):
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and server.metric("vllm_para:side_buffer_pages_in_use") != 0.0:
        time.sleep(0.5)
    assert server.metric("vllm_para:side_buffer_pages_in_use") == 0.0
    assert server.metric("vllm_para:adapter_host_bytes") > 0
    _still_fine(server, fixed_output)
    assert "Traceback" not in server.log.read_text(), server.log_tail()


def test_ia3_adapters_by_first_use_and_admin_load(server, fixed_output, tiny_llama, adapter_dir, tmp_path):
    """PEFT (IA)^3 directories are accepted wherever PARA ones are: first use from
    --para-adapter-dir and the admin route, served beside PARA tenants in one batch with PEFT's
    own tokens; a module PARA cannot express is a 400 naming it, on both paths."""
    from concurrent.futures import ThreadPoolExecutor

    from testkit.tiny_models import build_random_ia3_adapter

    ids = token_prompts(tiny_llama, [PROMPTS[3]])[0]
    first_use = build_random_ia3_adapter(tiny_llama, adapter_dir / "ia3dir", seed=11)  # PEFT's Llama defaults
    admin = build_random_ia3_adapter(tiny_llama, tmp_path / "ia3admin", seed=12, target_modules=["q_proj", "v_proj"],
                                     feedforward_modules=[])
    r = server.post("/v1/load_para_adapter", {"para_name": "ia3admin", "para_path": str(tmp_path / "ia3admin")})
    assert r.status_code == 200, r.text
    want = {name: peft_greedy_and_logprobs(model, ids, MAX_TOKENS)[0]
            for name, model in (("ia3dir", first_use), ("ia3admin", admin))}
    jobs = ["ia3dir", "ia3admin", "t1", "ia3dir", "ia3admin", "t1"]
    with ThreadPoolExecutor(len(jobs)) as pool:  # (IA)^3 and PARA tenants in the same steps
        outs = list(pool.map(lambda n: (n, _tokens(server, n, PROMPTS[3])), jobs))
    for name, toks in outs:
        if name in want:
            assert toks == want[name], name
    assert len({tuple(t) for n, t in outs if n == "t1"}) == 1
    cards = {m["id"]: m for m in server.get("/v1/models").json()["data"]}
    assert cards["ia3dir"]["metadata"] == cards["ia3admin"]["metadata"] == {"kind": "ia3"}
    assert cards["t1"]["metadata"] == {"kind": "para"}
    for path, _name in ((adapter_dir / "ia3oproj", "ia3oproj"), (tmp_path / "ia3oproj2", "ia3oproj2")):
        build_random_ia3_adapter(tiny_llama, path, seed=13, target_modules=["k_proj", "o_proj"], feedforward_modules=[])
    _refused(server.post("/v1/completions", _body("ia3oproj", PROMPTS[0])), 400, "o_proj")
    _refused(server.post("/v1/load_para_adapter", {"para_name": "ia3oproj2", "para_path": str(tmp_path / "ia3oproj2")}),
             400, "o_proj")
    assert server.post("/v1/unload_para_adapter", {"para_name": "ia3admin"}).status_code == 200
    _still_fine(server, fixed_output)
