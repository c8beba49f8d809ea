"""Engine set-up and request admission for PARA (the frontend process).

- `prepare_engine_args` / `check_engine_config` wrap `EngineArgs.create_engine_config`:
  they install the PARA scheduler (page-aware admission; PARA prompts
  prefilled in one step, base prompts chunked as configured), refuse feature combinations PARA cannot honour,
  and validate every registered adapter before any engine process starts.
- `check_request_params` / `admit_request` run around `InputProcessor.process_inputs`
  (and for pre-built `EngineCoreRequest`s in `add_request`): every PARA field a
  request carries is checked here, so nothing a client sends can fail inside
  the engine. The one public field is `para_adapter`; the internal ones
  (pooling length, adapter version, prefix-cache key) are written here only,
  and a client sending them gets 400.

State (the frontend registry, in-flight requests per adapter version) lives in
a `FrontendState` attached to the engine's `VllmConfig`, so two engines in one
process never see each other's adapters.

Runs in: the API server, or the process that builds an offline `LLM`.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter

from vllm_para.common.request import PARARequest, prefix_cache_key
from vllm_para.config import WHOLE_PROMPT_POOLINGS, ModelShape
from vllm_para.common.settings import (
    INTERNAL_KEYS,
    REQUEST_ADAPTER_KEY,
    REQUEST_POOL_LEN_KEY,
    PARASettings,
    PARASettingsError,
    PooledPrefix,
    adapter_name_problem,
)
from vllm_para.common.catalog import AdapterCatalog

logger = logging.getLogger("vllm.para")  # under vLLM's logger: same handlers and level

# Families whose decoder layers have `input_layernorm`, `self_attn.qkv_proj` and
# `mlp.gate_up_proj` with PARA's meaning, each tested for exactness (tests/test_engine_families.py).
SUPPORTED_ARCHITECTURES = (
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "GemmaForCausalLM",
    "Gemma2ForCausalLM",
    "Gemma3ForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
)
_STATE_ATTR = "_para_frontend_state"


class FrontendState:
    """One engine's PARA state in its frontend process."""

    def __init__(self, settings: PARASettings, registry: AdapterCatalog) -> None:
        self.settings = settings
        self.registry = registry
        # request id -> (name, version), for requests entering through AsyncLLM (the server);
        # the unload route waits for a version's count to reach zero before workers forget it.
        self.track_inflight = False
        self._inflight: dict[str, tuple[str, int]] = {}
        self._counts: Counter[tuple[str, int]] = Counter()
        self._lock = threading.Lock()
        self.manager = None  # the API server's AdapterManager (api/adapter_manager.py), when serving

    # The config travels to the engine-core and worker processes, which keep their own
    # state (scheduler ledger, worker registry): the frontend's stays behind.
    def __reduce__(self):
        return (type(None), ())

    def __deepcopy__(self, memo):  # a copy of the config still belongs to this engine
        return self

    def admitted(self, request_id: str, key: tuple[str, int]) -> None:
        if not self.track_inflight:
            return
        with self._lock:
            if request_id not in self._inflight:
                self._inflight[request_id] = key
                self._counts[key] += 1

    def finished(self, request_id: str) -> None:
        with self._lock:
            key = self._inflight.pop(request_id, None)
            if key is not None:
                self._counts[key] -= 1
                if self._counts[key] <= 0:
                    del self._counts[key]

    def in_flight(self, key: tuple[str, int]) -> int:
        return self._counts.get(key, 0)


def frontend_state(vllm_config) -> FrontendState | None:
    """The PARA state of the engine built from `vllm_config` (None: PARA off)."""
    return getattr(vllm_config, _STATE_ATTR, None) if vllm_config is not None else None


def frontend_registry(vllm_config) -> AdapterCatalog | None:
    state = frontend_state(vllm_config)
    return state.registry if state is not None else None


def settings_of(config_or_args) -> PARASettings | None:
    return PARASettings.from_additional_config(getattr(config_or_args, "additional_config", None))


def prepare_engine_args(args, settings: PARASettings) -> None:
    """Adjust EngineArgs before vLLM builds its config."""
    if getattr(args, "enable_lora", False):
        raise PARASettingsError(
            "PARA and LoRA cannot be enabled together in one engine (--enable-lora with --enable-para); "
            "serve them from separate engines."
        )
    if getattr(args, "speculative_config", None):
        raise PARASettingsError(
            "speculative decoding is not supported with PARA: the draft model would not apply the "
            "adapters' vectors. Remove --speculative-config."
        )
    if getattr(args, "long_prefill_token_threshold", 0):
        raise PARASettingsError(
            "--long-prefill-token-threshold splits long prompts over several steps, but a PARA prompt must be "
            "prefilled in one step (its vectors need its last token at every layer). Remove the flag."
        )
    if os.environ.get("VLLM_USE_V2_MODEL_RUNNER", "0") not in ("0", ""):
        raise PARASettingsError("PARA needs vLLM's V1 model runner; unset VLLM_USE_V2_MODEL_RUNNER.")
    os.environ["VLLM_USE_V2_MODEL_RUNNER"] = "0"  # inherited by the engine and worker processes
    if getattr(args, "watermark_config", None) is not None:
        raise PARASettingsError(
            "--watermark-config switches vLLM to its V2 model runner, which PARA does not hook: the adapters "
            "would be silently ignored. Remove --watermark-config."
        )
    if getattr(args, "_api_process_count", 1) > 1 and _runtime_updating_enabled():
        raise PARASettingsError(
            "VLLM_ALLOW_RUNTIME_PARA_UPDATING cannot be used with --api-server-count > 1: a load or unload would "
            "reach one API server only (vLLM refuses the same for LoRA). Use one API server, or name adapters "
            "at start-up with --para-modules."
        )
    if getattr(args, "_api_process_count", 1) > 1 and settings.adapter_dir is not None:
        raise PARASettingsError(
            "--para-adapter-dir cannot be used with --api-server-count > 1: each API server would load adapters "
            "on first use and evict them on its own, so one server's eviction could retire an adapter another "
            "still serves. Add --api-server-count 1 (one API server still balances over every data-parallel "
            "engine), or name the adapters at start-up with --para-modules."
        )
    if getattr(args, "scheduler_cls", None):
        raise PARASettingsError(
            f"PARA installs its own scheduler (page-aware admission); --scheduler-cls {args.scheduler_cls!r} "
            "cannot be combined with it."
        )
    from vllm_para.worker.extension import EXTENSION_QUALNAME

    current = getattr(args, "worker_extension_cls", "")
    if current and current != EXTENSION_QUALNAME:
        raise PARASettingsError(
            f"PARA installs its own worker extension; --worker-extension-cls {current!r} cannot be combined with it."
        )
    args.worker_extension_cls = EXTENSION_QUALNAME


def _runtime_updating_enabled() -> bool:
    return os.environ.get("VLLM_ALLOW_RUNTIME_PARA_UPDATING", "").lower() in ("1", "true")


def check_engine_config(vllm_config, settings: PARASettings) -> None:
    """Validate the built config and every registered adapter; fail before start-up."""
    from vllm_para.enginecore.scheduler import (
        ASYNC_SCHEDULER_QUALNAME,
        SCHEDULER_QUALNAME,
    )

    archs = list(vllm_config.model_config.architectures or [])
    if not any(a in SUPPORTED_ARCHITECTURES for a in archs):
        raise PARASettingsError(
            f"PARA does not support architecture {archs}; supported: {list(SUPPORTED_ARCHITECTURES)}."
        )
    sched = vllm_config.scheduler_config
    # Chunked prefill stays as configured for base requests; the PARA scheduler
    # prefills PARA prompts in one step (enginecore/scheduler.py).
    if sched.long_prefill_token_threshold:
        logger.warning("PARA: setting long_prefill_token_threshold to 0 (a PARA prompt is prefilled in one step).")
        sched.long_prefill_token_threshold = 0
    if vllm_config.use_v2_model_runner:
        raise PARASettingsError(
            "these settings switch vLLM to its V2 model runner (e.g. --watermark-config or HiSparse attention), "
            "which PARA does not hook: its adapters would be silently ignored. Remove those settings."
        )
    sched.scheduler_cls = ASYNC_SCHEDULER_QUALNAME if sched.async_scheduling else SCHEDULER_QUALNAME
    _keep_vg_out_of_cuda_graphs(vllm_config)
    shape = ModelShape.from_hf_config(vllm_config.model_config.hf_config)
    # validates only; workers keep the weights
    registry = AdapterCatalog(shape, max_rank=settings.max_rank, read_timeout_s=settings.load_timeout_s)
    if settings.adapter_dir is not None and not os.path.isdir(settings.adapter_dir):
        raise PARASettingsError(
            f"--para-adapter-dir {settings.adapter_dir!r} is not a directory; create it or fix the path."
        )
    for name, path in settings.modules.items():
        try:
            registry.add(name, path)
        except Exception as exc:
            raise PARASettingsError(f"PARA adapter {name!r} ({path}) cannot be loaded: {exc}") from exc
    object.__setattr__(vllm_config, _STATE_ATTR, FrontendState(settings, registry))
    logger.info("PARA: %d adapters validated: %s", len(registry.names()), registry.names())


def _keep_vg_out_of_cuda_graphs(vllm_config) -> None:
    """On GPU, run the VG op between CUDA-graph pieces (like attention), so its
    host-side plan is read at every replay. A step that must run the VG never
    replays a FULL graph (worker/graph_guard.py); FULL graphs of decode-only
    steps skip the op, which has nothing to do there."""
    from vllm.platforms import current_platform

    from vllm_para.worker.ops import OP_NAME

    splitting_ops = vllm_config.compilation_config.splitting_ops
    if current_platform.is_cuda_alike() and splitting_ops is not None and OP_NAME not in splitting_ops:
        splitting_ops.append(OP_NAME)


def _shorten(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def check_request_params(vllm_config, params) -> int | None:
    """First half of admission, on the caller's params: refuse internal keys and
    malformed adapter names. Returns the trusted pooling length, if any."""
    from vllm.sampling_params import SamplingParams

    extra = getattr(params, "extra_args", None)
    if not isinstance(params, SamplingParams) or not extra:
        return None
    return check_extra_args(frontend_state(vllm_config), extra)


def check_extra_args(state: FrontendState | None, extra: dict) -> int | None:
    """The PARA fields of a request's extra_args / vllm_xargs. Also called by the
    HTTP layer before a response starts, so a streamed request gets its 4xx too."""
    from vllm.exceptions import VLLMNotFoundError, VLLMValidationError

    if state is None:
        if extra.get(REQUEST_ADAPTER_KEY) is not None:
            raise VLLMValidationError(
                f"request selects PARA adapter {_shorten(extra[REQUEST_ADAPTER_KEY])} but PARA is not enabled on "
                "this engine (start it with --enable-para or additional_config={'para': {...}}).",
                parameter=REQUEST_ADAPTER_KEY,
            )
        return None
    pooled = None
    for key in INTERNAL_KEYS:
        if key not in extra:
            continue
        value = extra[key]
        if key == REQUEST_POOL_LEN_KEY and isinstance(value, PooledPrefix):
            pooled = int(value)  # set by vllm-para's own beam search, in this process
            continue
        raise VLLMValidationError(
            f"vllm_xargs/extra_args key {key!r} is reserved for vllm-para's internal use; the only PARA request "
            f"field is {REQUEST_ADAPTER_KEY!r}. Remove {key!r}.",
            parameter=key,
        )
    name = extra.get(REQUEST_ADAPTER_KEY)
    if name is None:
        return pooled
    problem = adapter_name_problem(name)
    if problem:
        raise VLLMValidationError(f"{REQUEST_ADAPTER_KEY} {_shorten(name)} is invalid: it {problem}.",
                                  parameter=REQUEST_ADAPTER_KEY)
    if name not in state.registry:
        raise VLLMNotFoundError(state.registry.unknown_message(name))
    return pooled


def admit_request(vllm_config, request, pooled: int | None, private: bool = False):
    """Second half of admission, on the built `EngineCoreRequest`: check what
    needs the tokenized prompt and write the internal keys on a private copy of
    the params (`private`: the request's params already are one, made by vLLM's
    input processor, so no second deep copy). Mutates and returns `request`."""
    from vllm.exceptions import VLLMNotFoundError, VLLMValidationError

    params = getattr(request, "sampling_params", None)
    extra = getattr(params, "extra_args", None) or {}
    name = extra.get(REQUEST_ADAPTER_KEY)
    state = frontend_state(vllm_config)
    if state is None or name is None:
        return request
    try:
        entry = state.registry.get(name)
    except KeyError:  # unloaded between the two halves
        raise VLLMNotFoundError(state.registry.unknown_message(name)) from None
    tokens = request.prompt_token_ids
    if tokens is None or getattr(request, "prompt_embeds", None) is not None:
        raise VLLMValidationError(
            f"PARA adapter {name!r} needs a token prompt: prompt embeddings (prompt_embeds) cannot be pooled by "
            "the adapter's vector generator. Send text or token ids.",
            parameter="prompt_embeds",
        )
    step_tokens = vllm_config.scheduler_config.max_num_batched_tokens
    if len(tokens) > step_tokens:
        raise VLLMValidationError(
            f"a prompt of {len(tokens)} tokens is too long for PARA adapter {name!r}: a PARA prompt is prefilled "
            f"in one step of at most max_num_batched_tokens={step_tokens} tokens. Shorten the prompt or start "
            "the server with a larger --max-num-batched-tokens.",
            parameter="prompt",
        )
    pool_len = len(tokens) if pooled is None else pooled
    if not 1 <= pool_len <= len(tokens):
        raise VLLMValidationError(
            f"PARA pooling length {pool_len} is outside the prompt (1..{len(tokens)} tokens).",
            parameter=REQUEST_POOL_LEN_KEY,
        )
    if not private:
        params = params.clone()  # the caller may share one params object across prompts
    params.extra_args = PARARequest(
        adapter=name, version=entry.version, pool_len=pool_len,
        cache_key=prefix_cache_key(name, entry.version, entry.digest, tokens, pool_len),
    ).written(extra)
    if entry.config.pooling in WHOLE_PROMPT_POOLINGS or pool_len != len(tokens):
        # Pooling needs every pooled token computed in this request's own prefill.
        params.skip_reading_prefix_cache = True
    request.sampling_params = params
    state.admitted(getattr(request, "external_req_id", None) or request.request_id, (name, entry.version))
    return request
