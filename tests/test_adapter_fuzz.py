"""Fuzz the adapter loader with corrupt adapter directories (no vLLM engine).

Every case from tests/adapter_corruptions.py must be refused with a
`PARAConfigError` (`PARAAdapterError` for weights and directory faults) whose
message names the adapter path and says what is wrong; nothing else may escape
(KeyError, TypeError, UnicodeDecodeError, OSError, RecursionError, ...), and no
case may hang or allocate much memory.
"""

from __future__ import annotations

import hashlib
import os
import resource
import shutil
import signal
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from adapter_corruptions import (
    CONFIG_FILE, WEIGHTS_FILE, generate_corruptions, generate_valid_variants, swapping_with_fifo,
)

from vllm_para.adapter import PARAAdapterError, load_adapter
from vllm_para.config import ModelShape, PARAConfigError
from testkit.tiny_models import build_random_adapter

PER_CASE_S = 5.0
MAX_RSS_GROWTH_MB = 512


@pytest.fixture(scope="module")
def base_shape(tiny_llama) -> ModelShape:
    from transformers import AutoConfig

    return ModelShape.from_hf_config(AutoConfig.from_pretrained(str(tiny_llama)))


@pytest.fixture(scope="module")
def good_adapter(tiny_llama, tmp_path_factory) -> Path:
    # r and targets differ from the defaults, so dropping them from the config is a detectable fault.
    d = tmp_path_factory.mktemp("fuzz_good") / "adapter"
    return build_random_adapter(tiny_llama, d, r=8, targets=("q", "k", "v", "u"), pooling="mean", seed=3)


@pytest.fixture(scope="module")
def cases(good_adapter, tmp_path_factory):
    return generate_corruptions(good_adapter, tmp_path_factory.mktemp("fuzz_cases"))


@contextmanager
def deadline(seconds: float, what: str):
    def expired(signum, frame):
        raise TimeoutError(f"{what}: still loading after {seconds} s (hang?)")

    old = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def refusal(path: Path, base_shape: ModelShape | None) -> BaseException | None:
    """The exception load_adapter raises for `path`, or None when it loads."""
    with deadline(PER_CASE_S, str(path)):
        try:
            load_adapter(path, base_shape=base_shape)
        except TimeoutError:
            raise
        except BaseException as exc:  # noqa: BLE001 - the point is to see what escapes
            return exc
    return None


def test_good_adapter_loads(good_adapter, base_shape):
    adapter = load_adapter(good_adapter, base_shape=base_shape)
    assert adapter.config.r == 8 and adapter.config.targets == ("q", "k", "v", "u")


def test_enough_distinct_cases(cases, tmp_path):
    assert len(cases) >= 200, len(cases)
    assert len({c.name for c in cases}) == len(cases)
    assert all(c.expect == c.expect.lower() and c.error in ("config", "adapter") for c in cases)
    out = cases[0].path.parent
    assert all(c.path.parent == out for c in cases)
    groups = {c.name.split("_")[0] for c in cases}
    assert {"cfg", "weights", "st", "tn", "shape", "dtype", "nonfinite", "dir"} <= groups, groups


def test_every_corruption_refused(cases, base_shape):
    failures = []
    rss_before = rss_mb()
    slowest = (0.0, "")
    for case in cases:
        t0 = time.perf_counter()
        exc = refusal(case.path, base_shape)
        took = time.perf_counter() - t0
        slowest = max(slowest, (took, case.name))
        wanted = PARAAdapterError if case.error == "adapter" else PARAConfigError
        if exc is None:
            failures.append(f"{case.name}: loaded without error")
            continue
        msg = str(exc)
        if not isinstance(exc, wanted):
            failures.append(f"{case.name}: {type(exc).__name__} (wanted {wanted.__name__}): {msg[:300]}")
        elif case.expect not in msg.lower():
            failures.append(f"{case.name}: message lacks {case.expect!r}: {msg[:300]}")
        elif str(case.path) not in msg:
            failures.append(f"{case.name}: message does not name the adapter path: {msg[:300]}")
        elif len(msg) > 2000:
            failures.append(f"{case.name}: message is {len(msg)} characters long")
        else:
            try:
                msg.encode("utf-8")
            except UnicodeEncodeError:
                failures.append(f"{case.name}: message cannot be encoded as UTF-8 (lone surrogates)")
    assert not failures, f"{len(failures)} of {len(cases)} cases not refused properly:\n" + "\n".join(failures)
    assert slowest[0] < PER_CASE_S, slowest
    assert rss_mb() - rss_before < MAX_RSS_GROWTH_MB


def test_every_corruption_refused_without_base_shape(cases):
    """Without the base model's shapes the config alone must still keep every
    case from loading (or escaping with a foreign exception)."""
    failures = []
    for case in cases:
        exc = refusal(case.path, None)
        if exc is None:
            if "mismatch" not in case.name:  # a valid config for another base model loads without base_shape
                failures.append(f"{case.name}: loaded")
        elif not isinstance(exc, PARAConfigError):
            failures.append(f"{case.name}: {type(exc).__name__}: {str(exc)[:300]}")
    assert not failures, "\n".join(failures)


def test_valid_variants_load(good_adapter, base_shape, tmp_path):
    good = load_adapter(good_adapter, base_shape=base_shape)
    variants = generate_valid_variants(good_adapter, tmp_path / "valid")
    assert len(variants) >= 6
    for v in variants:
        adapter = load_adapter(v.path, base_shape=base_shape)
        assert adapter.config == good.config, v.name
        tol = 0 if "float16" not in v.name else 1e-2
        assert torch.allclose(adapter.weights.up, good.weights.up, atol=tol, rtol=tol), v.name


def test_symlink_outside_refused_plain_directory_loads(good_adapter, base_shape, tmp_path):
    plain = tmp_path / "plain"
    shutil.copytree(good_adapter, plain)
    load_adapter(plain, base_shape=base_shape)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for fname in (CONFIG_FILE, WEIGHTS_FILE):
        linked = tmp_path / f"linked_{fname}"
        shutil.copytree(good_adapter, linked)
        shutil.copy(good_adapter / fname, elsewhere / fname)
        (linked / fname).unlink()
        (linked / fname).symlink_to(elsewhere / fname)
        with pytest.raises(PARAConfigError) as e:
            load_adapter(linked, base_shape=base_shape)
        msg = str(e.value)
        assert "symlink" in msg.lower() and str(linked / fname) in msg, msg
        if fname == WEIGHTS_FILE:
            assert isinstance(e.value, PARAAdapterError)

    # the adapter directory itself may be a symlink, and files may link within it
    dir_link = tmp_path / "dir_link"
    dir_link.symlink_to(plain, target_is_directory=True)
    load_adapter(dir_link, base_shape=base_shape)
    (plain / "blobs").mkdir()
    (plain / WEIGHTS_FILE).rename(plain / "blobs" / "w")
    (plain / WEIGHTS_FILE).symlink_to(Path("blobs") / "w")
    load_adapter(dir_link, base_shape=base_shape)


def _digest(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):  # never follows symlinks (some cases loop)
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "-> " + str(os.readlink(p)).replace(str(root.resolve()), "<root>")
            elif p.is_file():
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                out[rel] = "dir"
    return out


def test_generation_is_deterministic(good_adapter, tmp_path):
    a = generate_corruptions(good_adapter, tmp_path / "a", seed=0)
    b = generate_corruptions(good_adapter, tmp_path / "b", seed=0)
    assert [(c.name, c.expect, c.error) for c in a] == [(c.name, c.expect, c.error) for c in b]
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")


@pytest.mark.parametrize("fname", [CONFIG_FILE, WEIGHTS_FILE])
def test_fifo_refused_without_hanging(good_adapter, base_shape, tmp_path, fname):
    """Not among the generated cases: copying a FIFO (shutil.copytree) would hang."""
    d = tmp_path / "fifo"
    shutil.copytree(good_adapter, d)
    (d / fname).unlink()
    os.mkfifo(d / fname)
    exc = refusal(d, base_shape)
    assert isinstance(exc, PARAConfigError) and "not a regular file" in str(exc) and str(d / fname) in str(exc), exc


def test_fifo_swapped_in_while_reading_never_hangs(good_adapter, base_shape, tmp_path):
    """A real race: a thread swaps adapter_model.safetensors between the regular file and a FIFO
    (by rename) while the adapter is loaded over and over. Every load either succeeds (the bytes
    of the regular file) or is refused as not a regular file; none blocks (a FIFO opened by name
    without O_NONBLOCK would wait for a writer)."""
    import time

    from vllm_para.adapter import load_adapter

    d = tmp_path / "race"
    shutil.copytree(good_adapter, d)
    outcomes = {"loaded": 0, "refused": 0}
    with swapping_with_fifo(d / WEIGHTS_FILE, tmp_path):
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            began = time.monotonic()
            try:
                load_adapter(d, base_shape=base_shape)
                outcomes["loaded"] += 1
            except PARAConfigError as exc:
                assert "not a regular file" in str(exc) or "missing" in str(exc) or "cannot be" in str(exc), exc
                outcomes["refused"] += 1
            assert time.monotonic() - began < 2.0, "a load waited on the FIFO"
    assert outcomes["loaded"] and outcomes["refused"], outcomes


def test_read_past_the_deadline_fails_that_load(good_adapter, monkeypatch):
    """A read that never finishes (a stuck mount: simulated by a reader that blocks) fails the load
    after the deadline with a clear error, instead of blocking the caller."""
    import threading
    import time

    from vllm_para import adapter

    release = threading.Event()
    monkeypatch.setattr(adapter, "_read_files", lambda directory, kind=None: release.wait(30))
    began = time.monotonic()
    with pytest.raises(adapter.PARAAdapterError, match=r"took longer than 0.3 s.*--para-load-timeout"):
        adapter.read_adapter_files(good_adapter, timeout_s=0.3)
    assert time.monotonic() - began < 2.0
    release.set()
