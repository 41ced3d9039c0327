"""`gpurun status -w`: a live burn-down of every open run that fits an 80-column terminal.

One row per open run: phase, step, loss, tokens/s (from the metrics the guard's periodic sync
brought home: no SSH), USD spent / cap, USD per hour, and the time to the guard's stop (moved
earlier where the measured link needs it: orchestrator/run/link.py). Every
column is no-wrap with an ellipsis, so a narrow terminal shortens cells instead of breaking lines.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from rich.table import Table

from orchestrator.run.status import last_step, spent_usd
from orchestrator.run.syncing import link_status
from orchestrator.state.ledger import Ledger


def short_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{sec:02d}s" if m else f"{sec}s")


def compact_rate(value: float | None) -> str:
    """1234567 -> "1.2M", 9400 -> "9.4k", 950 -> "950": a tokens/s cell a narrow terminal keeps whole."""
    if value is None:
        return "-"
    v = float(value)
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if v >= scale:
            return f"{v / scale:.1f}{unit}"
    return f"{v:.0f}"


def rows(ledger: Ledger, now: float) -> Iterator[tuple[str, ...]]:
    for run in ledger.list_runs(open_only=True):
        step = last_step(run)
        tok_s = step.get("tokens_per_s")
        yield (
            run.run_id,
            run.phase,
            "-" if step.get("step") is None else str(step["step"]),
            "-" if step.get("loss") is None else f"{float(step['loss']):.3f}",
            compact_rate(tok_s),
            f"{spent_usd(run, now):.2f}/{run.max_usd:.2f}",
            "-" if run.usd_per_hour is None else f"{run.usd_per_hour:.2f}",
            short_duration(stop_at - now if (stop_at := link_status(ledger.events(run.run_id), run.stop_at_epoch)[0])
                           else None),
        )


def burn_down(ledger: Ledger, now: float | None = None) -> Table:
    """The table of open runs; "no open runs" as its caption when there is none."""
    now = time.time() if now is None else now
    # One space between columns and no frame: 8 columns of a long run id and money fit in 80.
    table = Table(box=None, pad_edge=False, padding=(0, 1, 0, 0), title="gpurun open runs", header_style="bold",
                  caption=time.strftime("%H:%M:%S", time.localtime(now)))
    for col, justify in (("run", "left"), ("phase", "left"), ("step", "right"), ("loss", "right"),
                         ("tok/s", "right"), ("USD/cap", "right"), ("USD/h", "right"), ("stop in", "right")):
        # The run id is what a person types next (`gpurun logs RUN`): never shortened.
        table.add_column(col, no_wrap=True, overflow="ellipsis", justify=justify,  # type: ignore[arg-type]
                         min_width=20 if col == "run" else None)
    found = False
    for row in rows(ledger, now):
        table.add_row(*row)
        found = True
    if not found:
        table.caption = "no open runs"
    return table
