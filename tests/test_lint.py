"""The repository passes its linter (ruff.toml: pyflakes, pycodestyle at 120 columns, bugbear)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_ruff_check_is_clean():
    if importlib.util.find_spec("ruff") is None:
        pytest.fail("ruff is not installed: it is in the `test` extra (pip install -e '.[test]')", pytrace=False)
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (f"ruff check found problems (fix them, or `ruff check --fix .`):\n"
                                  f"{proc.stdout}{proc.stderr}")
