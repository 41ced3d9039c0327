"""Reading a run directory's files for the evidence card: every file may be missing or torn."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except (OSError, ValueError):
        return None


def read_json(path: Path) -> tuple[Any, str | None]:
    """(value, problem); value None when missing or unreadable."""
    text = read_text(path)
    if text is None:
        return None, None
    try:
        return json.loads(text), None
    except json.JSONDecodeError as e:
        return None, f"{path.name} is not valid JSON ({e.msg} at line {e.lineno})"


def read_jsonl(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Rows that parse as JSON objects, and how many lines did not (a half-synced last line)."""
    text = read_text(path)
    if text is None:
        return [], 0
    rows: list[dict[str, Any]] = []
    bad = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            bad += 1
    return rows, bad


def first_middle_last(items: list[Any]) -> list[Any]:
    if len(items) <= 3:
        return list(items)
    return [items[0], items[len(items) // 2], items[-1]]


def num(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def rel_path(path: Path, run_dir: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(run_dir.resolve()))
    except ValueError:
        return str(path)

