"""The run's outputs for humans and for the controller: train.log, metrics.jsonl, a terminal progress bar.

Only rank 0 writes. Files are line-buffered so a sync mid-run sees whole lines.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from trainer import contract


class RunLog:
    def __init__(self, out_dir: Path, enabled: bool, progress: str, total_steps: int) -> None:
        self.enabled = enabled
        self.total = total_steps
        self.stdout: TextIO = sys.stdout
        self.bar = enabled and (progress == "on" or (progress == "auto" and self.stdout.isatty()))
        self._bar_drawn = False
        self._bar_time = 0.0
        self.log: TextIO | None = None
        self.metrics: TextIO | None = None
        if enabled:
            out_dir.mkdir(parents=True, exist_ok=True)
            self.log = open(out_dir / contract.TRAIN_LOG, "a", buffering=1, encoding="utf-8")
            self.metrics = open(out_dir / contract.METRICS, "a", buffering=1, encoding="utf-8")

    def line(self, text: str) -> None:
        if not self.enabled:
            return
        self._clear_bar()
        print(text, file=self.stdout, flush=True)
        assert self.log is not None
        self.log.write(text + "\n")

    def record(self, kind: str, **fields: Any) -> None:
        if not self.enabled:
            return
        assert self.metrics is not None
        self.metrics.write(json.dumps({contract.TYPE: kind, **fields, contract.TIME: round(time.time(), 3)}) + "\n")

    def progress(self, step: int, loss: float | None = None) -> None:
        """Redraw the bar at most 10 times a second; a no-op off a terminal."""
        if not self.bar:
            return
        now = time.monotonic()
        if now - self._bar_time < 0.1 and step < self.total:
            return
        self._bar_time = now
        width = 30
        done = int(width * min(step, self.total) / max(self.total, 1))
        tail = f" loss {loss:.4f}" if loss is not None else ""
        self.stdout.write(f"\r[{'#' * done}{'.' * (width - done)}] {step}/{self.total}{tail}")
        self.stdout.flush()
        self._bar_drawn = True

    def _clear_bar(self) -> None:
        if self._bar_drawn:
            self.stdout.write("\r\033[K")
            self._bar_drawn = False

    def close(self) -> None:
        self._clear_bar()
        for f in (self.log, self.metrics):
            if f is not None:
                f.close()
