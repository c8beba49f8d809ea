"""The package is laid out by process, and every module says which process runs it."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vllm_para"
# the process-shaped packages, and what their modules may import of each other
PROCESS_PACKAGES = ("api", "enginecore", "worker", "common")


def _modules():
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_module_says_which_process_runs_it():
    missing = []
    for path in _modules():
        if path.parts[-2] == "training":
            continue  # the trainer is not a vLLM process; its package docstring says so
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        if "Runs in:" not in doc:
            missing.append(str(path.relative_to(PACKAGE)))
    assert not missing, f"module docstrings without a 'Runs in:' line: {missing}"


def test_process_packages_do_not_reach_into_each_other():
    """Worker code never imports the API server's modules (nor the engine core's), and
    the engine core never imports the API server's or the workers': what crosses a
    process boundary lives in vllm_para.common."""
    forbidden = {"worker": ("vllm_para.api", "vllm_para.enginecore"),
                 "enginecore": ("vllm_para.api", "vllm_para.worker"),
                 "common": ("vllm_para.api", "vllm_para.enginecore", "vllm_para.worker")}
    bad = []
    for pkg, banned in forbidden.items():
        for path in (PACKAGE / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
                bad += [f"{path.relative_to(PACKAGE)} imports {n}" for n in names if n.startswith(banned)]
    assert not bad, bad


def test_no_study_or_test_code_in_the_package():
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"} == {
        "api", "common", "enginecore", "training", "worker"}
