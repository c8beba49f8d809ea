"""`vllm serve` PARA flags: every PARASettings field has a flag, and the flags fold into
additional_config["para"] (no engine starts here; tests/test_server.py serves with them)."""

from __future__ import annotations

import argparse

import pytest

from vllm_para.common.settings import PARASettings, PARASettingsError
from vllm_para.api.cli_args import VALUE_FLAGS, add_para_args, fold_para_args


class _EngineArgs:
    additional_config = None


def _fold(argv):
    args = add_para_args(argparse.ArgumentParser()).parse_args(argv)
    engine_args = _EngineArgs()
    fold_para_args(args, engine_args)
    return engine_args.additional_config


def test_every_setting_has_a_flag():
    assert {key for key, _ in VALUE_FLAGS.values()} | {"modules"} == set(PARASettings.model_fields)


def test_flags_fold_into_additional_config():
    got = _fold(["--enable-para", "--para-modules", "a=/x/a", "b=/x/b", "--max-para-adapters", "4",
                 "--max-para-rank", "16", "--para-adapter-dir", "/adapters", "--max-cpu-para-adapters", "32",
                 "--max-para-pages", "7"])
    assert got == {"para": {"modules": {"a": "/x/a", "b": "/x/b"}, "max_adapters": 4, "max_rank": 16,
                            "adapter_dir": "/adapters", "max_cpu_adapters": 32, "max_pages": 7}}
    PARASettings.from_additional_config(got)  # valid as folded
    assert _fold(["--enable-para"]) == {"para": {}}
    assert _fold([]) is None


def test_flag_without_enable_para_names_the_fix():
    with pytest.raises(PARASettingsError, match="--max-para-pages given without --enable-para"):
        _fold(["--max-para-pages", "3"])
