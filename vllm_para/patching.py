"""The one way vllm-para changes vLLM at run time: wrap a named attribute.

A wrapper calls the original; wrapping twice (vLLM loads plugins once per
process, but tests may register again) is a no-op; a missing attribute means
vLLM moved the code, and fails loudly instead of silently serving without PARA.

Runs in: every process (called by `vllm_para.hooks.install_hooks`).
"""

from __future__ import annotations

from collections.abc import Callable

WRAPPED_FLAG = "__para_wrapped__"


def is_wrapped(fn) -> bool:
    return getattr(fn, WRAPPED_FLAG, False)


def wrap_attribute(owner, name: str, make_wrapper: Callable, *, kind: Callable | None = None) -> None:
    """Replace `owner.name` by `make_wrapper(original)` (once).

    `kind` re-applies `staticmethod`/`classmethod` for such class attributes;
    `make_wrapper` then receives the underlying function.
    """
    raw = owner.__dict__.get(name) if isinstance(owner, type) else None
    original = getattr(owner, name, None)
    if original is None:
        where = getattr(owner, "__qualname__", None) or getattr(owner, "__name__", repr(owner))
        raise RuntimeError(f"vllm-para: {where}.{name} not found; this vLLM is not supported (need 0.32.x).")
    if is_wrapped(original):
        return
    if kind is not None:
        original = raw.__func__ if raw is not None and hasattr(raw, "__func__") else original
    wrapper = make_wrapper(original)
    setattr(wrapper, WRAPPED_FLAG, True)
    setattr(owner, name, kind(wrapper) if kind is not None else wrapper)
