"""Every repository path the docs and the code name exists: no reference to a moved or missing file.

Scanned: every *.md and *.py of the repository (not .venv/, .git/ or other ignored trees). Checked:
- a path in backticks that starts with one of the repository's folders (orchestrator/, providers/,
  trainer/, docs/, tests/, bench/, .ci/) and ends with a file extension or a slash, e.g.
  `orchestrator/run/controller.py` or `docs/BUDGET.md`, taken from the repository root;
- the target of a markdown link, [text](target), that is not a URL or an anchor: taken from the
  linking file's own folder, as a renderer does (a trailing #section is dropped);
- every mention of DESIGN.md says where it is: docs/DESIGN.md (a link from docs/ may say DESIGN.md).
Paths with placeholders or globs (`<cloud>/api.py`, `tests/fakes/*.py`) are examples, not references,
and outputs the repository's .gitignore names (bench/results/) are made by running something.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ROOTS = ("orchestrator/", "providers/", "trainer/", "docs/", "tests/", "bench/", ".ci/")
SKIP_DIRS = {".git", ".venv", "runs", "out", "build", "dist", "node_modules", "__pycache__"}

BACKTICK = re.compile(r"`([^`\s]+)`")
MD_LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")
BARE_DESIGN = re.compile(r"(?<![\w/.-])DESIGN\.md")
PLACEHOLDER = re.compile(r"[<>*{}$?\[\]]")


def scanned_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard",
                              "--", "*.md", "*.py"], capture_output=True, check=True, timeout=60).stdout
        files = [REPO / p for p in out.decode().split("\0") if p]
    except (OSError, subprocess.SubprocessError):  # no git: walk, leaving the usual trees out
        files = [p for p in REPO.rglob("*") if p.suffix in (".md", ".py")
                 and not SKIP_DIRS & set(p.relative_to(REPO).parts)]
    return sorted(p for p in files if p.is_file() and p != Path(__file__).resolve())  # not its own examples


def ignored_outputs() -> tuple[str, ...]:
    """The .gitignore entries that name a folder inside the tree (bench/results/): made by a run."""
    lines = (REPO / ".gitignore").read_text().splitlines() if (REPO / ".gitignore").is_file() else []
    return tuple(s.lstrip("/") for s in (ln.strip() for ln in lines)
                 if s and not s.startswith("#") and "/" in s.strip("/") and not PLACEHOLDER.search(s))


def repo_path(token: str) -> str | None:
    """`token` as a repository path to check, or None when it is not one (a URL, an example, a module)."""
    token = token.strip(".,;:()'\"")
    token = re.split(r"::|:\d", token)[0]  # tests/x.py::test_y, bench/x.py:12
    if not token.startswith(ROOTS) or PLACEHOLDER.search(token) or "//" in token:
        return None
    if not (token.endswith("/") or re.search(r"\.[A-Za-z0-9]+$", token)):
        return None  # no extension, no slash: a module path, a word, not a file name
    return token


def missing_references(path: Path, text: str, outputs: tuple[str, ...]) -> list[str]:
    rel = path.relative_to(REPO).as_posix()
    found: list[str] = []
    for n, line in enumerate(text.splitlines(), 1):
        for token in BACKTICK.findall(line):
            p = repo_path(token)
            if p and not (REPO / p).exists() and not p.startswith(outputs):
                found.append(f"{rel}:{n}: `{p}` does not exist")
        if path.suffix != ".md":
            continue
        for target in MD_LINK.findall(line):
            target = target.split("#", 1)[0]
            if not target or re.match(r"[a-z][a-z0-9+.-]*:", target) or PLACEHOLDER.search(target):
                continue  # an anchor, a URL (https:, mailto:), an example
            resolved = (path.parent / target).resolve()
            if not resolved.exists():
                found.append(f"{rel}:{n}: link ({target}) does not exist")
    return found


def bare_design_mentions(path: Path, text: str) -> list[str]:
    rel = path.relative_to(REPO).as_posix()
    found = []
    for n, line in enumerate(text.splitlines(), 1):
        if path.parent == REPO / "docs":  # a link beside it may name it plainly: [DESIGN.md](DESIGN.md)
            line = re.sub(r"\[[^\]\n]*\]\(DESIGN\.md(#[^)]*)?\)", "", line)
        found += [f"{rel}:{n}: DESIGN.md without its folder (docs/DESIGN.md)" for _ in BARE_DESIGN.findall(line)]
    return found


def test_every_referenced_repository_path_exists() -> None:
    outputs = ignored_outputs()
    bad = [m for p in scanned_files() for m in missing_references(p, p.read_text(errors="replace"), outputs)]
    assert not bad, "references to files that do not exist:\n" + "\n".join(bad)


def test_design_md_is_named_where_it_is() -> None:
    assert (REPO / "docs" / "DESIGN.md").is_file()
    bad = [m for p in scanned_files() for m in bare_design_mentions(p, p.read_text(errors="replace"))]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(("token", "want"), [
    ("orchestrator/run/controller.py", "orchestrator/run/controller.py"),
    ("docs/BUDGET.md", "docs/BUDGET.md"),
    ("tests/test_imports.py::test_no_import_cycle", "tests/test_imports.py"),
    ("orchestrator/run/", "orchestrator/run/"),
    ("<cloud>/api.py", None),
    ("tests/fakes/*.py", None),
    ("https://example.com/docs/x.md", None),
    ("orchestrator.run.controller", None),
    ("runs/<run-id>/out", None),
    ("out/metrics.jsonl", None),
    ("trainer/train", None),
])
def test_what_counts_as_a_repository_path(token: str, want: str | None) -> None:
    assert repo_path(token) == want


def test_the_scan_sees_a_missing_file(tmp_path: Path) -> None:
    doc = REPO / "docs" / "X.md"  # never written: only its name is used
    text = "see `orchestrator/nowhere.py`, [gone](GONE.md), [ok](BUDGET.md#x) and [web](https://a.b/c.md)\n"
    got = missing_references(doc, text, ())
    assert got == ["docs/X.md:1: `orchestrator/nowhere.py` does not exist", "docs/X.md:1: link (GONE.md) does not exist"]
    assert bare_design_mentions(REPO / "orchestrator" / "x.py", "the DESIGN.md lifecycle; docs/DESIGN.md") == [
        "orchestrator/x.py:1: DESIGN.md without its folder (docs/DESIGN.md)"]
    assert bare_design_mentions(doc, "[DESIGN.md](DESIGN.md#money)'s target") == []
