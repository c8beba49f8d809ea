"""The narrow places vllm-para hooks into vLLM: they must exist with the shapes
we rely on (fails loudly if vLLM moves them), and engine set-up must refuse
what PARA cannot serve. No engine is started here."""

from __future__ import annotations

import inspect
import json
import shutil

import pytest

import vllm_para.plugin as plugin
from vllm_para.hooks import HOOKS, PATCHES, owner_of
from vllm_para.patching import is_wrapped


@pytest.fixture(scope="module", autouse=True)
def registered():
    plugin.register()


def _resolve(dotted: str):
    import importlib

    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


ENGINE_SIGNATURES = {
    "create_engine_config": ["self", "usage_context", "headless"],
    "process_inputs": ["self", "request_id", "prompt", "params"],
    "generate_block_hash_extra_keys": ["request", "start_token_idx", "end_token_idx", "start_mm_idx"],
    "_model_forward": ["self"],
    "_on_request_state_removed": ["self", "req_id", "req_state"],
    "_check_model": ["self", "request"],
    "_maybe_get_adapters": ["self", "request"],
    "model_name": ["self", "lora_request"],
    "attach_endpoint_plugins": ["app"],
    "init_endpoint_plugins_state": ["engine_client", "state", "args"],
    "generate": ["self", "prompt", "sampling_params", "request_id"],
    "add_request": ["self", "request_id", "prompt", "params"],
    "beam_search": ["self", "prompt", "request_id", "params"],
}


# The graph guard's two hooks are checked in tests/test_graph_guard.py (their SIGNATURES).
GUARD_CHECKED = {"_determine_batch_execution_and_padding", "dispatch"}


def test_the_hook_table():
    """One table, every entry distinct and well formed; every private vLLM method hooked has
    its signature pinned here or in tests/test_graph_guard.py (vLLM promises nothing for them)."""
    assert len(set(PATCHES)) == len(PATCHES) == len(HOOKS)
    for hook in HOOKS:
        assert hook.process in {"api server", "engine core", "worker"}, hook
        assert hook.kind in {None, "staticmethod", "classmethod"}, hook
        assert hook.purpose, hook
        module, _, factory = hook.wrapper.partition(":")
        assert module.startswith("vllm_para.") and factory, hook
        name = hook.attr.rsplit(".", 1)[-1]
        if hook.private:
            assert name in ENGINE_SIGNATURES or name in GUARD_CHECKED, f"private hook {hook.target} is not pinned"


@pytest.mark.parametrize("target", [h.target for h in HOOKS if owner_of(h) is not None])
def test_patched_targets_exist_and_are_wrapped(target):
    fn = _resolve(target)
    assert is_wrapped(fn), f"{target} is not wrapped by vllm-para"
    original = inspect.unwrap(fn)
    params = list(inspect.signature(original).parameters)
    expected = ENGINE_SIGNATURES.get(target.rsplit(".", 1)[1], [])
    assert params[: len(expected)] == expected, f"{target} signature changed: {params}"


def test_runner_state_we_read_is_still_there():
    from vllm.v1.worker import gpu_model_runner

    source = inspect.getsource(gpu_model_runner.GPUModelRunner)
    for needle in (
        "self._on_request_state_removed(req_id, req_state)",  # called for finished/aborted requests
        "self.query_start_loc.np[1 : num_reqs + 1] = cu_num_tokens",  # flat token layout
        "self._model_forward(",  # the forward goes through the wrapped method
    ):
        assert needle in source, f"vLLM moved: {needle!r}"
    from vllm.v1.worker.gpu_input_batch import InputBatch

    batch_source = inspect.getsource(InputBatch)
    for needle in ("num_computed_tokens_cpu", "num_prompt_tokens", "def req_ids"):
        assert needle in batch_source, f"InputBatch no longer has {needle}"


def test_prefix_cache_key_only_for_para_requests():
    from types import SimpleNamespace

    from vllm.v1.core import kv_cache_utils

    def req(extra):
        return SimpleNamespace(
            sampling_params=SimpleNamespace(extra_args=extra), prompt_token_ids=[1, 2, 3, 4],
            lora_request=None, mm_features=[], cache_salt=None, prompt_embeds=None,
        )

    base, _ = kv_cache_utils.generate_block_hash_extra_keys(req(None), 0, 4, 0)
    a, _ = kv_cache_utils.generate_block_hash_extra_keys(req({"para_adapter": "a", "para_cache_key": "a@1"}), 0, 4, 0)
    b, _ = kv_cache_utils.generate_block_hash_extra_keys(req({"para_adapter": "b", "para_cache_key": "b@2"}), 0, 4, 0)
    assert base is None and a != b and a[-1][0] == "para"


def test_version_check_refuses_other_vllm(monkeypatch):
    import vllm

    monkeypatch.setattr(vllm, "__version__", "0.31.2")
    with pytest.raises(RuntimeError, match=r"supports vLLM 0\.32\.x only, found vLLM 0\.31\.2"):
        plugin.check_vllm_version()


def _engine_config(model, **kwargs):
    from vllm.engine.arg_utils import EngineArgs

    return EngineArgs(model=str(model), dtype="float32", max_model_len=256, **kwargs).create_engine_config()


def test_para_engine_config(tiny_llama, tmp_path):
    from testkit.tiny_models import build_random_adapter

    build_random_adapter(tiny_llama, tmp_path / "a")
    config = _engine_config(tiny_llama, additional_config={"para": {"modules": {"a": str(tmp_path / "a")}}})
    plain_chunked = _engine_config(tiny_llama).scheduler_config.enable_chunked_prefill
    assert config.scheduler_config.enable_chunked_prefill == plain_chunked  # base requests keep chunking
    assert config.parallel_config.worker_extension_cls.endswith("PARAWorkerExtension")
    assert config.scheduler_config.get_scheduler_cls().__name__ in ("PARAScheduler", "PARAAsyncScheduler")
    assert config.scheduler_config.long_prefill_token_threshold == 0
    plain = _engine_config(tiny_llama)
    assert plain.parallel_config.worker_extension_cls == ""
    assert plain.scheduler_config.scheduler_cls is None


def test_two_engines_keep_their_own_adapters(tiny_llama, tmp_path):
    """Frontend state belongs to the engine's config, not to the module."""
    from vllm_para.api.admission import frontend_registry
    from testkit.tiny_models import build_random_adapter

    build_random_adapter(tiny_llama, tmp_path / "a")
    build_random_adapter(tiny_llama, tmp_path / "b", seed=3)
    first = _engine_config(tiny_llama, additional_config={"para": {"modules": {"a": str(tmp_path / "a")}}})
    second = _engine_config(tiny_llama, additional_config={"para": {"modules": {"b": str(tmp_path / "b")}}})
    assert frontend_registry(first).names() == ["a"]
    assert frontend_registry(second).names() == ["b"]
    assert frontend_registry(_engine_config(tiny_llama)) is None


def test_page_ledger_admits_up_to_capacity():
    from vllm_para.enginecore.scheduler import PageLedger

    ledger = PageLedger(2)
    assert ledger.try_reserve("a") and ledger.try_reserve("b")
    assert ledger.try_reserve("a")  # a holder asking again keeps its page
    assert not ledger.try_reserve("c")
    ledger.release("a")
    ledger.release("zzz")  # unknown: no effect
    assert ledger.try_reserve("c") and not ledger.try_reserve("d")
    assert ledger.holders == {"b", "c"}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"enable_lora": True}, "PARA and LoRA cannot be enabled together"),
        ({"additional_config": {"para": {"modules": {"a": "/nonexistent"}}}},
         r"PARA adapter 'a' \(/nonexistent\) cannot be loaded"),
        ({"additional_config": {"para": {"max_adapters": 0}}}, "para.max_adapters"),
        ({"additional_config": {"para": {"bogus": 1}}}, "para.bogus"),
        ({"long_prefill_token_threshold": 16}, "--long-prefill-token-threshold splits long prompts"),
        ({"scheduler_cls": "my.Scheduler"}, "PARA installs its own scheduler"),
        ({"additional_config": {"para": {"modules": {"a/b": "/x"}}}}, "invalid adapter name"),
    ],
)
def test_engine_config_refusals(tiny_llama, kwargs, message):
    kwargs = {"additional_config": {"para": {}}, **kwargs}
    with pytest.raises(Exception, match=message):
        _engine_config(tiny_llama, **kwargs)


def test_adapter_for_other_base_model_refused(tiny_llama, tiny_gemma, tmp_path):
    from testkit.tiny_models import build_random_adapter

    build_random_adapter(tiny_gemma, tmp_path / "g", r=4)
    # same hidden size but Gemma adapters are checked against this Llama's shapes
    cfg = json.loads((tmp_path / "g" / "para_config.json").read_text())
    cfg["intermediate_size"] += 1
    (tmp_path / "g" / "para_config.json").write_text(json.dumps(cfg))
    with pytest.raises(Exception, match=r"'g'.*intermediate_size=257 \(base model has 256\)"):
        _engine_config(tiny_llama, additional_config={"para": {"modules": {"g": str(tmp_path / "g")}}})


def test_unsupported_architecture_refused(tiny_llama, tmp_path):
    model = tmp_path / "qwen"
    shutil.copytree(tiny_llama, model)
    cfg = json.loads((model / "config.json").read_text())
    cfg.update(architectures=["MixtralForCausalLM"], model_type="mixtral")
    (model / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(Exception, match=r"PARA does not support architecture \[.MixtralForCausalLM.\]; supported:"):
        _engine_config(model, additional_config={"para": {}})


def test_v2_model_runner_settings_refused(tiny_llama):
    """Settings that switch vLLM to its V2 runner would bypass every PARA hook."""
    with pytest.raises(Exception, match="V2 model runner"):
        _engine_config(tiny_llama, additional_config={"para": {}}, watermark_config={"type": "gumbel"})


def test_runtime_updating_refused_with_several_api_servers(tiny_llama, monkeypatch):
    from vllm.engine.arg_utils import EngineArgs

    monkeypatch.setenv("VLLM_ALLOW_RUNTIME_PARA_UPDATING", "1")
    args = EngineArgs(model=str(tiny_llama), dtype="float32", max_model_len=256, additional_config={"para": {}})
    args._api_process_count = 2
    with pytest.raises(Exception, match="api-server-count > 1"):
        args.create_engine_config()


def test_fuzzed_adapters_refused_at_startup(tiny_llama, adapters, tmp_path):
    """Start-up validation (EngineArgs.create_engine_config) refuses corrupt adapter
    directories with the adapter's name and the reason, before any engine process starts.
    (All 440 corruptions go through load_adapter in test_adapter_fuzz.py and through a
    running server's runtime load in test_hostile_server.py.)"""
    from pathlib import Path

    from adapter_corruptions import generate_corruptions

    cases = generate_corruptions(Path(adapters["sql"]), tmp_path / "fuzz", seed=2)
    for case in cases[:: max(1, len(cases) // 25)]:
        with pytest.raises(Exception) as info:
            _engine_config(tiny_llama, additional_config={"para": {"modules": {"fz": str(case.path)}}})
        message = str(info.value)
        assert "PARA adapter 'fz'" in message and case.expect in message.lower(), (case.name, message[:300])


def test_architecture_doc_lists_every_hook():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "architecture.md").read_text()
    missing = [h.target for h in HOOKS if f"`{h.target}`" not in doc]
    assert not missing, f"docs/architecture.md's hook table lacks {missing}"
