"""Every relative link in README.md and docs/*.md points at a file that exists (and, for
`file.md#anchor`, at a heading of that file)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md",
         *sorted((ROOT / "bench" / "gpu").glob("*.md")), *sorted((ROOT / "reproduction").glob("*.md"))]
RESULTS = (ROOT / "bench" / "results", ROOT / "reproduction" / "results")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _anchors(page: Path) -> set[str]:
    out = set()
    for line in page.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return out


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve(page):
    broken = []
    for target in LINK.findall(page.read_text()):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(target)
    assert not broken, f"{page.name}: broken links {broken}"


def test_readme_is_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 260


def _linked_results() -> set[Path]:
    """Result entries (a run directory or a single report) reachable by links from the pages, and
    from the reports those links reach."""
    entries = [p for d in RESULTS for p in d.iterdir()]

    def entry_of(path: Path) -> Path | None:
        return next((e for e in entries if path == e or e in path.parents), None)

    kept, todo, seen = set(), list(PAGES), set()
    while todo:
        page = todo.pop()
        if page in seen or not page.is_file() or page.suffix != ".md":
            continue
        seen.add(page)
        for target in LINK.findall(page.read_text(errors="replace")):
            if "://" in target:
                continue
            dest = (page.parent / target.partition("#")[0]).resolve()
            entry = entry_of(dest)
            if entry is not None and entry not in kept:
                kept.add(entry)
                todo += [entry] if entry.is_file() else sorted(entry.rglob("*.md"))
    return kept


def test_every_committed_result_is_linked_and_holds_no_raw_records():
    """Only reports the docs link to are kept (with their CSVs and plots); no raw per-request
    records, server logs or Locust files."""
    entries = {p for d in RESULTS for p in d.iterdir()}
    unlinked = sorted(str(p.relative_to(ROOT)) for p in entries - _linked_results())
    assert not unlinked, f"result entries no page links to (link them from docs/ or remove them): {unlinked}"
    raw = sorted(str(p.relative_to(ROOT)) for d in RESULTS for p in d.rglob("*")
                 if p.name in ("locust", "logs", "raw") or p.suffix in (".jsonl", ".log", ".data"))
    assert not raw, f"raw records committed: {raw[:10]}"
