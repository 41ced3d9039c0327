"""The CLI's two consoles and the few lines every command prints the same way: a run's summary, a confirmation."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.console import Console

from orchestrator.state.rows import Run
from providers.base import ProviderError

console = Console()
err_console = Console(stderr=True)


def say(line: str) -> None:
    err_console.print(line, markup=False, highlight=False, soft_wrap=True)


def confirm(question: str) -> None:
    if not sys.stdin.isatty():
        raise ProviderError("confirmation needed and no terminal to ask on: pass --yes")
    click.confirm(question, abort=True)


def summary(run: Run) -> None:
    cost = run.cost_usd if run.cost_usd is not None else 0.0
    console.print(
        f"run {run.run_id}: {run.phase}; cost {cost:.4f} USD of {run.max_usd:.4f}; outputs in {run.run_dir}"
    )
    evidence = Path(run.run_dir) / "EVIDENCE.md"
    if evidence.exists():
        console.print(f"evidence card: {evidence}")
