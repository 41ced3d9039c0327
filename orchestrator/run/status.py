"""What a run reports while it goes: the live line the terminal and `gpurun watch` draw, and the
two figures `gpurun status`, `status -w` and `gpurun dashboard` read from the ledger's row and the
synced metrics (no SSH): the money spent so far and the last training step."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.plan.record import RunRecord, is_orphan
from orchestrator.state.rows import Run
from trainer import contract

METRICS_TAIL_BYTES = 16384  # the last step record is near the end: never read a whole long log


@dataclass
class LiveStatus:
    phase: str
    step: int | None = None
    loss: float | None = None
    tokens_per_s: float | None = None
    spent_usd: float = 0.0
    max_usd: float = 0.0
    seconds_to_stop: float | None = None
    message: str = ""
    data: str = ""  # the data phase's progress, "tokenize 42% 12.3M tokens"
    sync: str = ""  # the link home, measured: "sync 1.4 MB/s, final pull ~23 s"


Reporter = Callable[[LiveStatus], None]


def quiet(_: LiveStatus) -> None:
    """The reporter of a run nobody watches (a detached guard, `gpurun teardown`)."""


def spent_usd(run: Run, now: float) -> float:
    """What the run has cost at `now`: its settled cost once it has one, else the billing rule's cost
    of the time since its clock started (a run `gpurun sweep` adopted has no launch record: 0)."""
    if run.cost_usd is not None:
        return run.cost_usd
    if run.clock_start_epoch and not is_orphan(run):
        return RunRecord.of_run(run).allowance.cost_at(now - run.clock_start_epoch)
    return 0.0


def last_step(run: Run) -> dict[str, Any]:
    """The last `step` record of the run's synced out/metrics.jsonl ({} before the first sync)."""
    path = Path(run.run_dir) / contract.METRICS_PATH
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            fh.seek(max(0, fh.tell() - METRICS_TAIL_BYTES))
            lines = fh.read().decode(errors="replace").splitlines()
    except OSError:
        return {}
    for line in reversed(lines):
        rec = contract.parse_record(line)
        if contract.is_record(rec, contract.RECORD_STEP):
            return rec
    return {}
