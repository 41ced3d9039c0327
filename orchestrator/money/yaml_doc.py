"""A YAML file read for validation: each value with the line it sits on, so every error can say
where it is and how to fix it (BudgetError: "FILE line N: KEY must be ...")."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from orchestrator.money.errors import BudgetError


class YamlDoc:
    """A composed YAML document: values plus the line each key sits on (for error messages)."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.name = str(path)
        try:
            self.root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            where = f" line {mark.line + 1}" if mark is not None else ""
            raise BudgetError(
                f"{self.name}{where}: not valid YAML ({exc.problem or exc.context}): fix the syntax"
            ) from None
        except yaml.YAMLError as exc:
            raise BudgetError(f"{self.name}: not valid YAML ({exc}): fix the syntax") from None

    def fail(self, node: yaml.Node | None, key: str, message: str) -> BudgetError:
        where = f" line {node.start_mark.line + 1}" if node is not None else ""
        return BudgetError(f"{self.name}{where}: {key} {message}")

    def mapping(self, node: yaml.Node, key: str, allowed: tuple[str, ...] | None) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        """{name: (key node, value node)}; unknown and duplicate keys are errors."""
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, key or "the file", f"must be a mapping of keys to values, got {_show(node)}")
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for knode, vnode in node.value:
            name = knode.value if isinstance(knode, yaml.ScalarNode) else None
            dotted = f"{key}.{name}" if key else str(name)
            if not isinstance(name, str) or knode.tag != "tag:yaml.org,2002:str":
                raise self.fail(knode, dotted, "is not a valid key: keys are plain names")
            if name in out:
                raise self.fail(knode, dotted, f"appears twice (first on line {out[name][0].start_mark.line + 1}): keep one")
            if allowed is not None and name not in allowed:
                raise self.fail(knode, dotted, f"is not a known key: use one of {', '.join(allowed)}")
            out[name] = (knode, vnode)
        return out

    def scalar(self, node: yaml.Node) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            return Unreadable(node)
        return yaml.SafeLoader("").construct_object(node, deep=True)

    def number(
        self, node: yaml.Node, key: str, *, positive: bool = False, nullable: bool = False, integer: bool = False
    ) -> float | None:
        value = self.scalar(node)
        if value is None and nullable:
            return None
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if ok and integer and float(value) != int(value):
            ok = False
        if ok and (value <= 0 if positive else value < 0):
            ok = False
        if not ok:
            kind = "a whole number" if integer else "a number"
            bound = "> 0" if positive else ">= 0"
            extra = " (or null for no cap)" if nullable else ""
            raise self.fail(node, key, f"must be {kind} {bound}{extra}, got {_show_value(value, node)}")
        return float(value)

    def string(self, node: yaml.Node, key: str) -> str:
        value = self.scalar(node)
        if not isinstance(value, str) or not value.strip():
            raise self.fail(node, key, f"must be a non-empty text, got {_show_value(value, node)}")
        return value


class Unreadable:
    def __init__(self, node: yaml.Node) -> None:
        self.node = node


def _show(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return repr(node.value)


def _show_value(value: Any, node: yaml.Node) -> str:
    if isinstance(value, Unreadable):
        return _show(node)
    if value is None:
        return "nothing (null)"
    return repr(value)

