"""Is the job getting anywhere? What the guard reads each poll, and its stall check.

docs/DESIGN.md ("The guard"): a run is stalled when the bundled trainer writes no new step to out/metrics.jsonl, or
any other command writes no new output to job.log, for the stall window (`--stall-minutes`). One
cheap command on the instance per poll reads both the log's size and the metrics' last lines.
GPU utilisation is not read: a trainer that steps is making progress whatever the GPU shows.
While a recipe's data is prepared (phase preparing_data) the mark is the preparer's progress.json
(`python -m trainer.data prepare`, rewritten as it works) and its log's size: either moving counts.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from typing import Any

from trainer import contract
from trainer.recipes import human

METRICS_TAIL = 20  # lines: enough to find the last step line between eval and checkpoint records
PROGRESS_FILE = contract.PROGRESS  # in the data dir, written atomically by trainer.data prepare


def probe_command(root: str) -> str:
    """Prints job.log's size in bytes, then the last lines of out/metrics.jsonl (absolute paths:
    an SSH command starts in the login user's home, not in the run's root)."""
    q = shlex.quote
    return (f"wc -c < {q(root + '/job.log')} 2>/dev/null || echo; "
            f"tail -n {METRICS_TAIL} {q(root + '/' + contract.METRICS_PATH)} 2>/dev/null")


@dataclass
class Probe:
    log_bytes: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)  # step, loss, tokens_per_s of the last step line
    end_reason: str | None = None  # the trainer's own `end` record, once it has written one

    @property
    def step(self) -> int | None:
        return self.metrics.get("step")


def parse_probe(stdout: str) -> Probe:
    first, _, rest = stdout.partition("\n")
    size = first.strip()
    probe = Probe(log_bytes=int(size) if size.isdigit() else None)
    for line in reversed(rest.splitlines()):
        rec = contract.parse_record(line)
        if contract.is_record(rec, contract.RECORD_END) and probe.end_reason is None:
            probe.end_reason = str(rec.get("reason"))
        if contract.is_record(rec, contract.RECORD_STEP):
            probe.metrics = {k: rec.get(k) for k in ("step", "loss", "tokens_per_s")}
            break
    return probe


def data_probe_command(root: str, data_dir: str, log_name: str) -> str:
    """Prints the preparer's log size, then its progress.json (absolute paths, as probe_command)."""
    q = shlex.quote
    return (f"wc -c < {q(root + '/' + log_name)} 2>/dev/null || echo; "
            f"cat {q(data_dir + '/' + PROGRESS_FILE)} 2>/dev/null")


@dataclass
class DataProbe:
    log_bytes: int | None = None
    # {"stage": "download"|"tokenize"|"done", "fraction": 0..1, "tokens", "message", "updated_at"}
    progress: dict[str, Any] = field(default_factory=dict)

    @property
    def mark(self) -> tuple[Any, ...]:
        """What moves while the preparer works (not updated_at: a stuck loop may keep stamping it)."""
        p = self.progress
        return (self.log_bytes, p.get("stage"), p.get("fraction"), p.get("tokens"), p.get("message"))

    @property
    def line(self) -> str:
        """"tokenize 42% 12.3M tokens: shard 3 of 8" for the live view ("starting" before the file exists)."""
        p = self.progress
        if not p:
            return "starting"
        parts = [str(p.get("stage") or "")]
        fraction = p.get("fraction")
        if isinstance(fraction, (int, float)):
            parts.append(f"{100 * fraction:.0f}%")
        tokens = p.get("tokens")
        if isinstance(tokens, int) and tokens:
            parts.append(f"{human(tokens)} tokens")
        text = " ".join(x for x in parts if x)
        return f"{text}: {p['message']}" if p.get("message") else text


def parse_data_probe(stdout: str) -> DataProbe:
    first, _, rest = stdout.partition("\n")
    size = first.strip()
    try:
        progress = json.loads(rest) if rest.strip() else {}
    except ValueError:
        progress = {}  # caught mid-write by a non-atomic writer: the next poll reads it
    return DataProbe(log_bytes=int(size) if size.isdigit() else None,
                     progress=progress if isinstance(progress, dict) else {})


class StallWatch:
    """Stalled = the job's progress mark has not changed for `window_s`. The window starts at the
    first look. `by_step` (the bundled trainer): the mark is its last step once one was seen (its
    start-up, before the first step, counts any output); otherwise it is job.log's size."""

    def __init__(self, window_s: float, by_step: bool, now: float) -> None:
        self.window_s = window_s
        self.by_step = by_step
        self._mark: tuple[str, Any] | None = None
        self._since = now
        self._saw_step = False

    @property
    def what(self) -> str:
        """What did not move, for the reason: "step" or "output"."""
        return "step" if self.by_step else "output"

    def look(self, probe: Probe, now: float) -> bool:
        """Record what the job shows now; True once nothing has moved for the whole window."""
        step = probe.step if self.by_step else None
        if step is not None:
            self._saw_step = True
            mark: tuple[str, Any] | None = ("step", step)
        elif self._saw_step:
            mark = self._mark  # a tail without a step line (evals, checkpoints) is no news
        else:
            mark = ("output", probe.log_bytes)
        return self.look_mark(mark, now)

    def look_mark(self, mark: Any, now: float) -> bool:
        """The same check on any progress mark (the data phase's DataProbe.mark)."""
        if mark != self._mark:
            self._mark, self._since = mark, now
            return False
        return now - self._since >= self.window_s
