"""What the user sees while attached to a launch: a live panel on a terminal, plain lines otherwise.

Not `gpurun status -w`, the table of every open run: that is cli/watch.py (whose figures this reuses).
"""

from __future__ import annotations

import time

from rich import box
from rich.console import Console
from rich.live import Live
from rich.table import Table

from orchestrator.cli.watch import compact_rate, short_duration
from orchestrator.run.status import LiveStatus


def _fmt(status: LiveStatus) -> dict[str, str]:
    left = status.seconds_to_stop
    if status.data:  # the data phase: its progress instead of the (not yet started) training columns
        return {"phase": status.phase, "data": status.data,
                "USD/cap": f"{status.spent_usd:.4f}/{status.max_usd:.2f}",
                "stop in": short_duration(left)}
    cells = {
        "phase": status.phase,
        "step": "-" if status.step is None else str(status.step),
        "loss": "-" if status.loss is None else f"{status.loss:.4f}",
        "tok/s": compact_rate(status.tokens_per_s),
        "USD/cap": f"{status.spent_usd:.4f}/{status.max_usd:.2f}",
        "stop in": short_duration(left),
    }
    if status.sync:  # the link home, once a pull has measured it: "1.4 MB/s ~23s"
        cells["sync"] = status.sync.removeprefix("sync ").replace(", final pull ~", " ~").replace(" s", "s")
    return cells


def fit(line: str, width: int) -> str:
    """One terminal line: cut with an ellipsis rather than wrapped mid-word."""
    return line if len(line) <= width else line[: max(1, width - 1)] + "…"


class LiveView:
    """A callable reporter for the Controller; use as a context manager."""

    def __init__(self, console: Console, interval_s: float = 10.0) -> None:
        self.console = console
        self.interactive = console.is_terminal
        self.interval_s = interval_s
        self._live: Live | None = None
        self._last_phase = ""
        self._last_line = 0.0
        self._last_sync = ""

    def __enter__(self) -> LiveView:
        if self.interactive:
            self._live = Live(self._table(None), console=self.console, refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)
            self._live = None

    def _table(self, status: LiveStatus | None) -> Table:
        # No cell wraps: a narrow terminal shortens cells (ellipsis) instead of breaking the panel.
        table = Table(show_header=True, header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)
        cells = _fmt(status) if status else dict.fromkeys(_fmt(LiveStatus("starting")), "")
        for key in cells:
            table.add_column(key, no_wrap=True, overflow="ellipsis")
        table.add_row(*cells.values())
        return table

    def __call__(self, status: LiveStatus) -> None:
        if status.phase != self._last_phase:
            msg = f"  {status.message}" if status.message else ""
            self.console.print(f"[bold]{time.strftime('%H:%M:%S')} {status.phase}[/bold]{msg}",
                               no_wrap=True, overflow="ellipsis")
            self._last_phase = status.phase
        if self._live is not None:
            self._live.update(self._table(status))
        elif (status.step is not None or status.data) and time.time() - self._last_line >= self.interval_s:
            self._last_line = time.time()
            line = "  " + "  ".join(f"{k} {v}" for k, v in _fmt(status).items() if k not in ("phase", "sync"))
            self.console.print(fit(line, self.console.width), markup=False, highlight=False)
            if status.sync and status.sync != self._last_sync:  # its own line: never cut off the progress one
                self._last_sync = status.sync
                self.console.print(fit(f"  link home: {status.sync}", self.console.width), markup=False,
                                   highlight=False)
