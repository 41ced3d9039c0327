"""Whether a bundled-trainer run produced anything: a run that logged no training step and saved
no checkpoint is not a success, whatever stopped it, and neither is one whose final checkpoint did
not come home (the README's exit codes: 6, with one line saying why).

Read from the run directory after the final sync: out/metrics.jsonl's step records and
out/checkpoints/MANIFEST.json, the same files the evidence card reads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from orchestrator.run.context import RunContext
from orchestrator.run.stop import End
from orchestrator.state.endings import Ending
from orchestrator.state.events import EventKind
from orchestrator.state.phases import Phase
from orchestrator.state.rows import Event
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


def nothing_trained(end: End, job_exit_code: int | None, got: Produced,
                    started_after_s: float | None, budget_s: float) -> End | None:
    """The run's end when it ended "cleanly" (the stop time, or the job's exit 0) with nothing to
    show, else None. `started_after_s`: from the create call to the job's start (None: it never
    started); `budget_s`: the billed time the cap buys."""
    if not clean(end, job_exit_code) or not got.nothing:
        return None
    if started_after_s is None:
        why = "the job never started"
    else:
        why = f"start-up (boot, bootstrap, data) took {started_after_s:.0f} s of the {budget_s:.0f} s the budget buys"
    return End.because(Ending.RUN_FAILED, "nothing trained: no training step logged and no checkpoint saved"
                       f" before {end.reason}; {why}: raise --max-usd")


def clean(end: End, job_exit_code: int | None) -> bool:
    return end.ending is Ending.DEADLINE or (end.ending is Ending.JOB_ENDED and job_exit_code == 0)


def final_checkpoint_missing(events: list[Event]) -> str | None:
    """Why the job's last checkpoint is not home and verified (None: it is, or there was none):
    read from the final pull's `sync` event (complete, latest, latest_home)."""
    finals = [e.payload for e in events if e.phase == EventKind.SYNC.value and e.payload.get("final")]
    if not finals:
        return "no final pull was made"
    last = finals[-1]
    if last.get("complete") is False:
        return f"the final pull did not finish ({last.get('error') or 'cut off'})"
    if last.get("latest_home") is False:
        return f"the instance's newest checkpoint {last.get('latest')} did not arrive verified"
    return None


def judge_final_checkpoint(ctx: RunContext, end: End, job_exit_code: int | None) -> End | None:
    """A clean end whose final checkpoint did not come home is a failed run: what it trained is on
    an instance that is gone. The end that says so (None: the checkpoint is home)."""
    if not clean(end, job_exit_code):
        return None
    events = ctx.ledger.events(ctx.run_id)
    why = final_checkpoint_missing(events)
    if why is None:
        return None
    home = newest_home(ctx.run_dir)
    reason = (f"the final checkpoint did not come home: {why}; newest at home: {home or 'none'}: raise reserve_s"
              " in budgets.yaml or keep smaller checkpoints")
    ctx.event(EventKind.FINAL_CHECKPOINT_MISSING, reason=reason, newest_home=home)
    ctx.notice("final_checkpoint_missing", f"run {ctx.run_id}: {reason}", reason=reason)
    return End.because(Ending.RUN_FAILED, reason)


def newest_home(run_dir: Path) -> str | None:
    try:
        manifest = json.loads((Path(run_dir) / contract.MANIFEST_PATH).read_text())
    except (OSError, ValueError):
        return None
    return manifest.get(contract.MANIFEST_LATEST) if isinstance(manifest, dict) else None


def judge_outputs(ctx: RunContext) -> None:
    """A bundled-trainer run that stopped "cleanly" with no step logged and no checkpoint saved
    failed, and so did one whose final checkpoint did not come home: its end says so, and why
    (a `nothing_trained` or `final_checkpoint_missing` event beside it)."""
    run = ctx.refresh()
    if run.ending is None or run.end_reason is None:
        return
    started = [e.time for e in ctx.ledger.events(run.run_id) if e.phase == Phase.RUNNING.value]
    after = started[-1] - run.clock_start_epoch if started and run.clock_start_epoch else None
    failed = nothing_trained(End(run.ending, run.end_reason), run.job_exit_code, produced(ctx.run_dir), after,
                             ctx.allowance.max_runtime_s)
    if failed is not None:
        ctx.event(EventKind.NOTHING_TRAINED, reason=failed.reason)
    else:
        failed = judge_final_checkpoint(ctx, End(run.ending, run.end_reason), run.job_exit_code)
    if failed is not None:
        ctx.ledger.update_run(run.run_id, end_reason=failed.reason, ending=failed.ending)
        ctx.refresh()
