"""`vllm serve --enable-para` end to end: a real server subprocess on 127.0.0.1."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from engine_support import PROMPTS, peft_greedy_and_logprobs, token_prompts
from server_support import Server, vllm_command

pytestmark = pytest.mark.server

MAX_TOKENS = 10


@pytest.fixture(scope="module")
def ia3_adapter(tiny_llama, tmp_path_factory):
    """A PEFT (IA)^3 adapter (PEFT's default Llama targets), served beside the PARA ones."""
    from testkit.tiny_models import build_random_ia3_adapter

    directory = tmp_path_factory.mktemp("ia3") / "ia3"
    return directory, build_random_ia3_adapter(tiny_llama, directory, seed=3)


@pytest.fixture(scope="module")
def server(tiny_llama, adapters, ia3_adapter, tmp_path_factory):
    modules = [f"{name}={path}" for name, path in adapters.items() if name != "tone"] + [f"ia3={ia3_adapter[0]}"]
    srv = Server(
        tiny_llama,
        ["--enable-para", "--para-modules", *modules, "--max-para-adapters", "2"],
        tmp_path_factory.mktemp("logs") / "server.log",
        env={"VLLM_ALLOW_RUNTIME_PARA_UPDATING": "1"},
    ).wait_ready()
    yield srv
    srv.stop()


def _complete(server, model, prompt, **extra):
    body = {"model": model, "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0, "ignore_eos": True,
            "return_token_ids": True, **extra}
    r = server.post("/v1/completions", body)
    assert r.status_code == 200, r.text
    return r.json()


def _stream_text(server, path, body):
    text = []
    with requests.post(server.url + path, json={**body, "stream": True}, stream=True, timeout=120) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            choice = json.loads(line[6:])["choices"]
            if choice:
                text.append(choice[0].get("text") or (choice[0].get("delta") or {}).get("content") or "")
    return "".join(text)


def test_models_lists_adapters_with_parent(server, tiny_llama):
    data = server.get("/v1/models").json()["data"]
    cards = {m["id"]: m for m in data}
    assert cards["sql"]["parent"] == cards["qa"]["parent"] == cards["ia3"]["parent"] == str(tiny_llama)
    assert str(tiny_llama) in cards
    assert cards["sql"]["metadata"] == {"kind": "para"} and cards["ia3"]["metadata"] == {"kind": "ia3"}
    assert server.metric("vllm_para:adapters_loaded_by_kind", '{kind="ia3"}') == 1.0
    assert server.metric("vllm_para:adapters_loaded_by_kind", '{kind="para"}') == 2.0


def test_ia3_adapter_over_http_equals_peft(server, tiny_llama, ia3_adapter):
    for ids, prompt in zip(token_prompts(tiny_llama, PROMPTS[:2]), PROMPTS[:2]):
        want, _ = peft_greedy_and_logprobs(ia3_adapter[1], ids, MAX_TOKENS)
        assert _complete(server, "ia3", prompt)["choices"][0]["token_ids"] == want


def test_completions_equal_reference(server, reference, tiny_llama):
    ids = token_prompts(tiny_llama, PROMPTS[:3])
    for model in ["sql", "qa", None]:
        want = reference.greedy(ids, [model] * 3, MAX_TOKENS, stop_at_eos=False)
        for prompt, w in zip(PROMPTS[:3], want):
            out = _complete(server, model or str(tiny_llama), prompt)
            assert out["model"] == (model or str(tiny_llama))
            assert out["choices"][0]["token_ids"] == w.token_ids
            streamed = _stream_text(server, "/v1/completions",
                                    {"model": model or str(tiny_llama), "prompt": prompt, "max_tokens": MAX_TOKENS,
                                     "temperature": 0, "ignore_eos": True})
            assert streamed == out["choices"][0]["text"]


def test_generated_tokens_counted_exactly_per_adapter(server):
    """One streamed and one whole completion add exactly their tokens to their adapter's
    counter (counted once per request, when it finishes)."""
    name, labels = "vllm_para:generation_tokens_total", '{adapter="qa"}'
    before = server.metric(name, labels) or 0.0
    _complete(server, "qa", PROMPTS[0])
    _stream_text(server, "/v1/completions", {"model": "qa", "prompt": PROMPTS[1], "max_tokens": MAX_TOKENS,
                                             "temperature": 0, "ignore_eos": True})
    assert server.metric(name, labels) == before + 2 * MAX_TOKENS


def test_vllm_xargs_selects_adapter(server, tiny_llama):
    by_name = _complete(server, "sql", PROMPTS[0])
    by_xargs = _complete(server, str(tiny_llama), PROMPTS[0], vllm_xargs={"para_adapter": "sql"})
    assert by_xargs["choices"][0]["token_ids"] == by_name["choices"][0]["token_ids"]


def test_chat_equals_reference(server, reference, tiny_llama):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_llama))
    messages = [{"role": "user", "content": PROMPTS[1]}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    want = reference.greedy([ids], ["qa"], MAX_TOKENS, stop_at_eos=False)[0]
    body = {"model": "qa", "messages": messages, "max_tokens": MAX_TOKENS, "temperature": 0, "ignore_eos": True,
            "return_token_ids": True}
    r = server.post("/v1/chat/completions", body)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert r.json()["model"] == "qa"
    assert choice["token_ids"] == want.token_ids
    assert _stream_text(server, "/v1/chat/completions", body) == choice["message"]["content"]


def test_beam_search_over_http_uses_adapter(server, reference, tiny_llama):
    import torch

    ids = token_prompts(tiny_llama, [PROMPTS[3]])[0]
    body = {"model": "sql", "prompt": PROMPTS[3], "use_beam_search": True, "n": 3, "max_tokens": 6,
            "ignore_eos": True, "temperature": 0, "length_penalty": 0.0, "return_token_ids": True}
    r = server.post("/v1/completions", body)
    assert r.status_code == 200, r.text
    choices = r.json()["choices"]
    assert len(choices) == 3
    hf = reference.generate(
        torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long), adapter_names=["sql"],
        num_beams=3, max_new_tokens=6, min_new_tokens=6, do_sample=False, length_penalty=0.0,
    )
    assert choices[0]["token_ids"] == hf[0].tolist()[len(ids):]
    base = server.post("/v1/completions", {**body, "model": str(tiny_llama)}).json()["choices"]
    assert [c["token_ids"] for c in base] != [c["token_ids"] for c in choices]


def test_concurrent_mixed_tenants_then_no_pages(server, tiny_llama):
    models = ["sql", "qa", str(tiny_llama)]
    singles = {(m, p): _complete(server, m, p)["choices"][0]["token_ids"] for m in models for p in PROMPTS}
    jobs = [(models[i % len(models)], PROMPTS[i % len(PROMPTS)]) for i in range(200)]
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda job: _complete(server, *job)["choices"][0]["token_ids"], jobs))
    assert all(r == singles[job] for r, job in zip(results, jobs))
    assert _wait_metric(server, "vllm_para:side_buffer_pages_in_use", 0.0)


def _wait_metric(server, name, value, labels="", timeout=15, at_least=False):
    """Poll /metrics until `name` equals `value` (or reaches it, `at_least`); the last value seen."""
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        seen = server.metric(name, labels)
        if seen is not None and (seen >= value if at_least else seen == value):
            return True
        time.sleep(0.25)
    print(f"{name}{labels}: last value {seen}, wanted {'>= ' if at_least else ''}{value}")
    return False


def test_unknown_model_404_names_available(server):
    r = server.post("/v1/completions", {"model": "nope", "prompt": "hi", "max_tokens": 2})
    assert r.status_code == 404
    err = r.json()["error"]
    assert (err["type"] == "NotFoundError" and "nope" in err["message"] and "'qa'" in err["message"]
            and "'sql'" in err["message"])
    base = server.get("/v1/models").json()["data"][0]["id"]
    r = server.post("/v1/completions",
                    {"model": base, "prompt": "hi", "max_tokens": 2, "vllm_xargs": {"para_adapter": "zzz"}})
    assert r.status_code == 404 and "Available adapters: ['ia3', 'qa', 'sql']" in r.json()["error"]["message"]
    r = server.post("/v1/completions",
                    {"model": "sql", "prompt": "hi", "max_tokens": 2, "vllm_xargs": {"para_adapter": "qa"}})
    assert r.status_code == 400 and "name different PARA adapters" in r.json()["error"]["message"]


def test_prompt_too_long_400(server):
    r = server.post("/v1/completions", {"model": "sql", "prompt": "the " * 600, "max_tokens": 2})
    assert r.status_code == 400 and "512" in r.json()["error"]["message"]
    assert _complete(server, "sql", PROMPTS[0])["choices"][0]["token_ids"]


def test_runtime_load_serve_unload_cycle(server, adapters, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "para_config.json").write_text("{}")
    r = server.post("/v1/load_para_adapter", {"para_name": "bad", "para_path": str(bad)})
    assert r.status_code == 400 and "bad" in r.json()["error"]["message"]
    r = server.post("/v1/load_para_adapter", {"para_name": "tone", "para_path": adapters["tone"]})
    assert r.status_code == 200, r.text
    assert server.post("/v1/load_para_adapter", {"para_name": "tone", "para_path": adapters["tone"]}).status_code == 400
    assert "tone" in {m["id"] for m in server.get("/v1/models").json()["data"]}
    out = _complete(server, "tone", PROMPTS[2])
    assert out["model"] == "tone" and len(out["choices"][0]["token_ids"]) == MAX_TOKENS
    assert _wait_metric(server, "vllm_para:adapters_loaded", 4.0)
    assert server.metric("vllm_para:requests_total", '{adapter="tone"}') >= 1
    assert server.metric("vllm_para:generation_tokens_total", '{adapter="tone"}') >= MAX_TOKENS
    assert server.post("/v1/unload_para_adapter", {"para_name": "tone"}).status_code == 200
    assert server.post("/v1/completions", {"model": "tone", "prompt": "hi", "max_tokens": 2}).status_code == 404
    assert server.post("/v1/unload_para_adapter", {"para_name": "tone"}).status_code == 404
    assert _wait_metric(server, "vllm_para:adapters_loaded", 3.0)
    assert _complete(server, "sql", PROMPTS[0])["choices"][0]["token_ids"]  # others untouched


def test_client_disconnect_frees_page(server):
    """The page gauge is read from the workers when /metrics is scraped (reusing the last value
    for MIN_REFRESH_SECONDS): the stream asks for as many tokens as the context allows, is read
    slowly, and its first scrape comes after that window, so it reads the workers while the
    request runs."""
    from vllm_para.api.metrics import MIN_REFRESH_SECONDS

    pages = "vllm_para:side_buffer_pages_in_use"
    assert _wait_metric(server, pages, 0.0)  # nothing left over from earlier tests
    body = {"model": "sql", "prompt": PROMPTS[0], "max_tokens": 480, "ignore_eos": True, "stream": True}
    seen_in_use = False
    for _ in range(3):  # the tiny model can finish 480 tokens before a scrape reaches the workers (CI: once)
        time.sleep(2 * MIN_REFRESH_SECONDS)
        with requests.post(server.url + "/v1/completions", json=body, stream=True, timeout=120) as r:
            lines = r.iter_lines()
            next(lines)
            seen_in_use = _wait_metric(server, pages, 1.0, timeout=10, at_least=True)
            next(lines)
        # connection closed mid-stream: vLLM aborts the request, the page returns
        assert _wait_metric(server, pages, 0.0, timeout=30)
        if seen_in_use:
            break
    assert seen_in_use, "the page gauge never showed the running request's page"
    assert _complete(server, "qa", PROMPTS[1])["choices"][0]["token_ids"]


def test_invalid_adapter_at_startup_refused(tiny_llama, tmp_path):
    import subprocess

    broken = tmp_path / "broken"
    broken.mkdir()
    cmd = vllm_command() + ["serve", str(tiny_llama), "--enable-para", "--para-modules", f"broken={broken}",
                            "--port", "0", "--max-model-len", "512"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "PARA adapter 'broken'" in proc.stderr + proc.stdout and "para_config.json" in proc.stderr + proc.stdout


def test_para_flags_need_enable_para(tiny_llama):
    import subprocess

    cmd = vllm_command() + ["serve", str(tiny_llama), "--para-modules", "a=/x", "--port", "0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "--para-modules given without --enable-para" in proc.stderr + proc.stdout


def test_sigterm_clean_shutdown(server):
    """Runs last against the shared server (one server at a time on 2 cores)."""
    start = time.monotonic()
    code = server.stop(timeout=60)
    assert code == 0, server.log_tail()
    assert time.monotonic() - start < 60
    assert "PARA enabled: 3 adapters registered ['ia3', 'qa', 'sql'] (host memory" in server.log.read_text()


