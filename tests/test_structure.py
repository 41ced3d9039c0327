"""The controller stays a place a newcomer can find their way in (docs/ARCHITECTURE.md): small
modules, short functions, a short Controller, and no end reason read back out of its words."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ORCHESTRATOR = REPO / "orchestrator"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
MAX_CONTROLLER_LINES = 300


def modules() -> list[Path]:
    return sorted(ORCHESTRATOR.rglob("*.py"))


def test_no_module_is_over_400_lines() -> None:
    big = {str(p.relative_to(REPO)): n for p in modules() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not big, big


def test_no_function_is_over_60_lines() -> None:
    long = []
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long


def test_the_controller_class_is_under_300_lines() -> None:
    tree = ast.parse((ORCHESTRATOR / "run" / "controller.py").read_text())
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Controller"]
    assert cls.end_lineno - cls.lineno + 1 < MAX_CONTROLLER_LINES  # type: ignore[operator]


def test_no_end_reason_is_parsed_back_out_of_its_words() -> None:
    """An ending is typed (Run.ending); only the schema-3 migration reads the words old ledgers kept."""
    found = []
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
                    "startswith", "endswith"):
                target = ast.unparse(node.func.value)
                if "reason" in target and path.name != "schema.py":
                    found.append(f"{path.relative_to(REPO)}:{node.lineno} {ast.unparse(node)}")
            if isinstance(node, ast.Compare) and any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops):
                if any(_names_a_reason(c) for c in node.comparators):
                    found.append(f"{path.relative_to(REPO)}:{node.lineno} {ast.unparse(node)}")
    assert not found, found


def _names_a_reason(node: ast.expr) -> bool:
    """`reason`, `run.end_reason`, `(run.end_reason or "")`: a variable or field holding a reason."""
    return any(isinstance(n, ast.Name) and "reason" in n.id or isinstance(n, ast.Attribute) and "reason" in n.attr
               for n in ast.walk(node))


def test_the_reason_check_sees_the_old_patterns() -> None:
    for old in ('DATA_FAILED in (run.end_reason or "")', '"(exit 0)" not in reason'):
        (compare,) = [n for n in ast.walk(ast.parse(old)) if isinstance(n, ast.Compare)]
        assert any(_names_a_reason(c) for c in compare.comparators)
