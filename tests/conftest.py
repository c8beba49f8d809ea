"""Shared fixtures: tiny locally built checkpoints (never downloaded)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    from testkit.tiny_models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny_llama"), arch="llama")


@pytest.fixture(scope="session")
def tiny_gemma(tmp_path_factory):
    from testkit.tiny_models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny_gemma"), arch="gemma")


@pytest.fixture(scope="session", params=["llama", "gemma"])
def tiny_model(request, tiny_llama, tiny_gemma):
    """Both architectures, one after the other."""
    return {"llama": tiny_llama, "gemma": tiny_gemma}[request.param]


@pytest.fixture(scope="session")
def adapters(tiny_llama, tmp_path_factory):
    """The three test adapters (different targets, poolings, ranks) for the tiny Llama."""
    from engine_support import build_adapters

    return build_adapters(tiny_llama, tmp_path_factory.mktemp("adapters"))


@pytest.fixture(scope="session")
def reference(tiny_llama, adapters):
    """The transformers reference holding those adapters: what vLLM must reproduce."""
    from vllm_para.training.reference import PARAReferenceModel

    return PARAReferenceModel.from_pretrained(tiny_llama, adapters=adapters)
