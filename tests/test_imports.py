"""The import graph of gpurun's three parts, read from the source (ast), not by importing it.

Every `import` / `from ... import` counts, at module level, inside functions and under
TYPE_CHECKING alike: an import moved into a function to dodge a cycle is still a cycle.
- no cycle among orchestrator/'s modules, nor among providers/'s;
- providers/ never imports orchestrator/ (a cloud knows nothing of the controller);
- trainer/ imports neither (it is what gets uploaded, and runs with torch + numpy only), and
  trainer/contract.py, the one file both sides import, imports nothing that needs torch;
- orchestrator/'s folders are layers (docs/ARCHITECTURE.md): a module imports only from its own
  folder and the layers below it, never from one above.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("orchestrator", "providers", "trainer")

Graph = dict[str, set[str]]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules `name` imports; `from X import y` means X.y when that is a module, else X."""
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the package the module lives in
                package = name.split(".") if is_package else name.split(".")[:-1]
                anchor = package[: len(package) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}" if base else alias.name
                out.add(sub if sub in known else base)
    return {m for m in out if m and m != name}


def graph() -> Graph:
    mods = all_modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def top(module: str) -> str:
    return module.split(".", 1)[0]


def cycles(g: Graph, package: str) -> list[list[str]]:
    """Strongly connected components (Tarjan) of more than one module among `package`'s modules."""
    nodes = [n for n in g if top(n) == package]
    edges = {n: sorted(m for m in g[n] if m in g and top(m) == package) for n in nodes}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for n in sorted(nodes):
        if n not in index:
            visit(n)
    return found


def test_the_walker_sees_every_kind_of_import(tmp_path: Path) -> None:
    src = tmp_path / "mod.py"
    src.write_text("import a.b\nfrom . import sib\nfrom ..up import thing\nfrom x import y as z\n"
                   "def f():\n    from orchestrator import sync\n"
                   "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from p.q import R\n")
    got = imports_of("pkg.sub.mod", src, known={"pkg.sub.sib", "orchestrator.sync"})
    assert got == {"a.b", "pkg.sub.sib", "pkg.up", "x", "orchestrator.sync", "typing", "p.q"}
    assert cycles({"o.a": {"o.b"}, "o.b": {"o.c"}, "o.c": {"o.a"}, "o.d": {"o.a"}}, "o") == [["o.a", "o.b", "o.c"]]


# orchestrator/'s layers, top first; the top-level modules (notify, settings, redact, errors) are the base.
LAYERS = ("cli", "dashboard", "run", "proof", "plan", "money", "transport", "state")


def layer_of(module: str) -> int:
    """The layer's index in LAYERS (len(LAYERS): a top-level module of orchestrator/)."""
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 2 and parts[1] in LAYERS else len(LAYERS)


@pytest.mark.parametrize("package", ["orchestrator", "providers"])
def test_no_import_cycle(package: str) -> None:
    found = cycles(graph(), package)
    assert not found, f"import cycles in {package}/: " + "; ".join(" <-> ".join(c) for c in found)


def test_providers_never_import_orchestrator() -> None:
    bad = {m: sorted(i for i in deps if top(i) == "orchestrator")
           for m, deps in graph().items() if top(m) == "providers"}
    assert not {m: d for m, d in bad.items() if d}


def test_trainer_imports_neither_orchestrator_nor_providers() -> None:
    bad = {m: sorted(i for i in deps if top(i) in ("orchestrator", "providers"))
           for m, deps in graph().items() if top(m) == "trainer"}
    assert not {m: d for m, d in bad.items() if d}


def test_no_orchestrator_module_imports_a_layer_above_its_own() -> None:
    mods = all_modules()
    assert {m.split(".")[1] for m in mods if top(m) == "orchestrator" and m.count(".") == 2
            and (REPO / "orchestrator" / m.split(".")[1]).is_dir()} == set(LAYERS), "a folder LAYERS does not place"
    bad = sorted(f"{m} imports {i}" for m, deps in graph().items() if top(m) == "orchestrator"
                 for i in deps if top(i) == "orchestrator" and layer_of(i) < layer_of(m))
    assert not bad, "; ".join(bad)


def test_the_layer_rule_sees_an_upward_import() -> None:
    assert layer_of("orchestrator.state.ledger") > layer_of("orchestrator.run.controller")
    assert layer_of("orchestrator.notify") == len(LAYERS) > layer_of("orchestrator.state.ledger")


def test_the_trainer_contract_imports_only_the_standard_library() -> None:
    """trainer/contract.py is imported by the controller (no torch there) and by the trainer alike."""
    path = REPO / "trainer" / "contract.py"
    outside = sorted(m for m in imports_of("trainer.contract", path, set(all_modules()))
                     if top(m) not in sys.stdlib_module_names and top(m) != "__future__")
    assert not outside, f"trainer/contract.py imports {outside}: the standard library only"
    assert imports_of("x", path, set()), "the walker read no import at all"
