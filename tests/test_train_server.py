"""Adapters trained by `vllm_para.training.train` served by a real `vllm serve --enable-para`:

* a PARA adapter trained on chat data: `/v1/chat/completions` prefills exactly
  the prompt the trainer pooled (same token ids, so the same pooled token) and
  answers with the reference's greedy tokens;
* a PARA adapter trained with `--bf16` (base in bfloat16 on the CPU) loads and
  serves (on a float32 server) with the reference's tokens.
"""

from __future__ import annotations

import pytest

from server_support import Server
from vllm_para.training.datasets import ChatExample, make_toy_chat_dataset, make_toy_dataset, toy_chat
from vllm_para.training.train import TrainArgs, train
from vllm_para.training import chat_prompt_ids, encode_chat

pytestmark = pytest.mark.server

MAX_TOKENS = 8
CONVERSATIONS = [
    toy_chat("cat")["messages"][:-1],
    toy_chat("city", system=True)["messages"][:-1],
    toy_chat("dog")["messages"] + [{"role": "user", "content": "color of table?"}],
]


@pytest.fixture(scope="module")
def trained(tiny_llama, tmp_path_factory):
    d = tmp_path_factory.mktemp("trained")
    common = dict(base_model=str(tiny_llama), device="cpu", progress=False, save_steps=0, batch_size=8, lr=2e-2)
    chat = train(TrainArgs(data=make_toy_chat_dataset(d / "chat.jsonl", n=48), output=d / "chat", epochs=2, **common))
    bf16 = train(TrainArgs(data=make_toy_dataset(d / "toy.jsonl", n=48), output=d / "bf16", bf16=True, max_steps=6,
                           **common))
    assert chat.global_step == 12 and bf16.global_step == 6
    return {"chat": str(d / "chat"), "bf16": str(d / "bf16")}


@pytest.fixture(scope="module")
def server(tiny_llama, trained, tmp_path_factory):
    srv = Server(
        tiny_llama,
        ["--enable-para", "--para-modules", *(f"{k}={v}" for k, v in trained.items()), "--max-para-adapters", "2"],
        tmp_path_factory.mktemp("logs") / "server.log",
    ).wait_ready()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def reference(tiny_llama, trained):
    from vllm_para.training.reference import PARAReferenceModel

    return PARAReferenceModel.from_pretrained(tiny_llama, adapters=trained)


@pytest.fixture(scope="module")
def tokenizer(tiny_llama):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_llama))


@pytest.mark.parametrize("messages", CONVERSATIONS, ids=["user", "system+user", "multi-turn"])
def test_chat_trained_adapter_pools_and_answers_like_reference(server, reference, tokenizer, messages):
    body = {"model": "chat", "messages": messages, "max_tokens": MAX_TOKENS, "temperature": 0, "ignore_eos": True,
            "return_token_ids": True}
    r = server.post("/v1/chat/completions", body)
    assert r.status_code == 200, r.text
    out = r.json()
    # the trainer's example for this conversation (answered) pools the prompt vLLM prefilled
    answered = ChatExample(tuple(messages) + ({"role": "assistant", "content": "red"},))
    example = encode_chat(tokenizer, answered, max_length=512)[-1]
    assert out["prompt_token_ids"] == example.input_ids[: example.prompt_length] == chat_prompt_ids(tokenizer, messages)
    want = reference.greedy([out["prompt_token_ids"]], ["chat"], MAX_TOKENS, stop_at_eos=False)[0]
    assert out["choices"][0]["token_ids"] == want.token_ids
    base = reference.greedy([out["prompt_token_ids"]], [None], MAX_TOKENS, stop_at_eos=False)[0]
    assert want.token_ids != base.token_ids  # the trained adapter changes the answer


def test_bf16_trained_adapter_serves_like_reference(server, reference, tokenizer):
    for prompt in ("color of cat?", "color of city?"):
        r = server.post("/v1/completions", {"model": "bf16", "prompt": prompt, "max_tokens": MAX_TOKENS,
                                            "temperature": 0, "ignore_eos": True, "return_token_ids": True})
        assert r.status_code == 200, r.text
        want = reference.greedy([tokenizer(prompt)["input_ids"]], ["bf16"], MAX_TOKENS, stop_at_eos=False)[0]
        assert r.json()["choices"][0]["token_ids"] == want.token_ids


def test_runtime_endpoints_off_by_default(server):
    """Without VLLM_ALLOW_RUNTIME_PARA_UPDATING the admin routes do not exist, like vLLM's LoRA ones."""
    for route in ("/v1/load_para_adapter", "/v1/unload_para_adapter"):
        r = server.post(route, {"para_name": "x", "para_path": "/nonexistent"})
        assert r.status_code == 404, (route, r.text[:200])
    assert {"chat", "bf16"} <= {m["id"] for m in server.get("/v1/models").json()["data"]}
