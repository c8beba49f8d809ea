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


def _imports(path: Path, package: str, root: Path) -> set[str]:
    """Modules of `package` that `path` imports (top-level or inside functions)."""
    mod = ".".join(path.relative_to(root).with_suffix("").parts)
    pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    if path.name == "__init__.py":
        mod = pkg[: -len(".__init__")] if pkg.endswith(".__init__") else pkg
        pkg = mod
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.add(target)
            out |= {f"{target}.{a.name}" for a in node.names}
    return {m for m in out if m == package or m.startswith(package + ".")}


def test_no_import_cycles():
    """bench/, study/ and vllm_para/ import each of their modules without cycles (lazy imports included)."""
    root = PACKAGE.parent
    for package in ("bench", "study", "vllm_para"):
        files = {".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): p
                 for p in (root / package).rglob("*.py") if "__pycache__" not in p.parts}
        graph = {m: {d for d in _imports(p, package, root) if d in files and d != m} for m, p in files.items()}
        # a package's __init__ is imported by its submodules implicitly: not an edge worth flagging
        graph = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}
        cycle = _find_cycle(graph)
        assert cycle is None, f"import cycle in {package}: {' -> '.join(cycle)}"


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (found := visit(d)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None
