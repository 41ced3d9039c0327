"""Whether a bundled-trainer run produced anything: a run that logged no training step and saved
no checkpoint is not a success, whatever stopped it (the README's exit codes: 6, with one line
saying why).

Read from the run directory after the final sync: out/metrics.jsonl's step records and
out/checkpoints/MANIFEST.json, the same files the evidence card reads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from orchestrator.state.endings import Ending, ending_of
from trainer import contract


@dataclass(frozen=True)
class Produced:
    steps: int  # training steps in out/metrics.jsonl
    checkpoint: bool  # out/checkpoints/MANIFEST.json names at least one checkpoint

    @property
    def nothing(self) -> bool:
        return self.steps == 0 and not self.checkpoint


def produced(run_dir: Path) -> Produced:
    root = Path(run_dir)
    steps = 0
    try:
        # a torn last line, or one that is not a record, counts for nothing
        lines = (root / contract.METRICS_PATH).read_text().splitlines()
        steps = sum(contract.is_record(contract.parse_record(line), contract.RECORD_STEP) for line in lines)
    except OSError:
        pass
    try:
        manifest = json.loads((root / contract.MANIFEST_PATH).read_text())
        checkpoint = bool(manifest.get(contract.MANIFEST_ENTRIES)) if isinstance(manifest, dict) else False
    except (OSError, ValueError):
        checkpoint = False
    return Produced(steps, checkpoint)


def nothing_trained(end_reason: str | None, job_exit_code: int | None, got: Produced,
                    started_after_s: float | None, budget_s: float) -> str | None:
    """The run's end reason when it ended "cleanly" (the stop time, or the job's exit 0) with nothing
    to show, else None. `started_after_s`: from the create call to the job's start (None: it never
    started); `budget_s`: the billed time the cap buys."""
    ending = ending_of(end_reason)
    clean = ending is Ending.DEADLINE or (ending is Ending.JOB_ENDED and job_exit_code == 0)
    if not clean or not got.nothing:
        return None
    if started_after_s is None:
        why = "the job never started"
    else:
        why = f"start-up (boot, bootstrap, data) took {started_after_s:.0f} s of the {budget_s:.0f} s the budget buys"
    return (f"{Ending.RUN_FAILED}: nothing trained: no training step logged and no checkpoint saved before"
            f" {end_reason}; {why}: raise --max-usd")
