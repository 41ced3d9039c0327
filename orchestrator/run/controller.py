"""The controller: one run from the create call to the verified teardown, phase by phase (the run
state machine of docs/DESIGN.md, "The lifecycle").

The phases and the transitions between them are `orchestrator.state.phases` (the ledger refuses any
other); docs/ARCHITECTURE.md shows the diagram. The controller only sequences; each step is a
strategy it calls with the run's context (orchestrator/run/context.py) and its node group:
provisioning (offers in order), boot, setup (bootstrap), job, the watch loop, recovery (spot), the
syncer, teardown. Each phase is written to the ledger BEFORE its action is taken, so a controller
killed at any point leaves enough behind for `gpurun teardown` (or a detached guard) to finish.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path

from orchestrator.money import budget as budget_mod
from orchestrator.plan.launch import LaunchPlan
from orchestrator.plan.record import RunRecord
from orchestrator.proof.run_card import write_run_evidence
from orchestrator.run import bucket, recovery, stop_time
from orchestrator.run.boot import create_head, reconnect
from orchestrator.run.context import RunContext
from orchestrator.run.finish import end_run
from orchestrator.run.handoff import spawn_guard
from orchestrator.run.job import DataFailed, start_data, start_job, stop_job
from orchestrator.run.nodes import NodeGroup
from orchestrator.run.outcome import judge_outputs
from orchestrator.run.provisioning import provision
from orchestrator.run.setup import bootstrap_group
from orchestrator.run.status import Reporter, quiet
from orchestrator.run.stop import End, StopKind, Watched
from orchestrator.run.syncing import Syncing
from orchestrator.run.watch import Requests, Watch
from orchestrator.state.endings import Ending
from orchestrator.state.events import EventKind
from orchestrator.state.ledger import Ledger
from orchestrator.state.phases import Phase
from orchestrator.state.rows import Run
from orchestrator.transport.protocol import SyncResult, Transport
from providers import get_provider
from providers.base import Instance, Provider


def new_run_id(now: float | None = None) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now or time.time()))
    return f"{stamp}-{secrets.token_hex(2)}"


class Controller:
    """Drives one run. Constructed fresh for a launch, or from the ledger to resume/tear down."""

    def __init__(self, ledger: Ledger, run: Run, provider: Provider, reporter: Reporter = quiet,
                 ctx: RunContext | None = None) -> None:
        self.ctx = ctx or RunContext(ledger, run, provider, reporter)
        self.group = NodeGroup(gpu_count=int((self.ctx.record.bootstrap or {}).get("gpu_count") or 0))
        self.requests = Requests()
        self.watch = Watch(self.ctx, self.group, self.requests)
        self.syncing = Syncing(self.ctx, self.group, self.watch)
        # Set once the guard or a teardown runs: a signal then only sets a flag (orchestrator/cli/signals.py).
        self.deferring_signals = False
        self._judge = False  # finish() leaves the judging of the outputs to after the teardown

    # --- construction ---------------------------------------------------------------------------
    @classmethod
    def create(cls, ledger: Ledger, launch: LaunchPlan, reporter: Reporter = quiet) -> Controller:
        run_id = new_run_id()
        run_dir = launch.run_dir_root / run_id
        record = RunRecord.of_launch(launch)
        if launch.options.resume_run:  # `--resume RUN`: the same directory, its files appended to
            earlier = ledger.resolve_run(launch.options.resume_run)
            run_dir, record.resumed_from = Path(earlier.run_dir), earlier.run_id
        max_usd = launch.allowance.max_usd
        # The hold and the run row land together or not at all: a refusal leaves nothing behind.
        with ledger.transaction():
            budget_mod.reserve(launch.budgets, ledger, run_id, launch.provider.name, max_usd)
            run = ledger.create_run(run_id, launch.provider.name, max_usd, record.to_dict(), str(run_dir))
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "plan.json").write_text(json.dumps({**record.to_dict(), "max_usd": max_usd}, indent=2, default=str))
        return cls(ledger, run, launch.provider, reporter, RunContext(ledger, run, launch.provider, reporter,
                                                                      budgets=launch.budgets,
                                                                      providers=launch.providers))

    @classmethod
    def load(cls, ledger: Ledger, run: Run, reporter: Reporter = quiet) -> Controller:
        provider = get_provider(run.provider, **RunRecord.of_run(run).provider_options)
        return cls(ledger, run, provider, reporter)

    # --- what callers read ----------------------------------------------------------------------
    @property
    def run(self) -> Run:
        return self.ctx.run

    @property
    def run_dir(self) -> Path:
        return self.ctx.run_dir

    @property
    def provider(self) -> Provider:
        return self.ctx.provider

    @property
    def allowance(self) -> budget_mod.Allowance:
        return self.ctx.allowance

    def refresh(self) -> Run:
        return self.ctx.refresh()

    def phase(self, name: Phase, **payload: object) -> None:
        self.ctx.phase(name, **payload)

    def create_instance(self) -> Instance:
        """Start the money clock and create node 0 of the current offer (NoCapacityError: none)."""
        return create_head(self.ctx, self.group)

    def request_stop(self, cause: str) -> None:
        self.requests.stop, self.requests.cause = True, cause

    def request_handoff(self) -> None:
        self.requests.handoff = True

    # --- the launch -----------------------------------------------------------------------------
    def launch(self, attach: bool = True) -> int | None:
        """Create, boot, bootstrap, start the job; then guard it (attached) or hand it to a guard.

        Returns the pid of the detached guard the run was handed to (--detach, or a handoff asked
        while attached), else None: the run is verified gone."""
        try:
            provision(self.ctx, self.group)  # the plan's offers in order until one comes up
            bootstrap_group(self.ctx, self.group)
            if self.ctx.record.resumed_from:
                recovery.resume_earlier_run(self.ctx, self.ensure_transport(), self.group.head.python)
            bucket.arm(self.ctx, self.group)  # --checkpoints-to: the uploader starts before the job
            if not start_data(self.ctx, self.group):  # the data phase runs under the guard (it may take an hour)
                start_job(self.ctx, self.group)
        except Exception as exc:
            self.deferring_signals = True
            # A phase cut at the stop time says so in its own words; anything else names its error.
            detail = str(exc) if isinstance(exc, stop_time.CutOff) else f"{type(exc).__name__}: {exc}"
            self.ctx.end(End.because(Ending.RUN_FAILED, detail))
            self._fail(exc)
            raise
        if attach and self.guard():
            return None
        return spawn_guard(self.refresh())

    # --- the guard ------------------------------------------------------------------------------
    def guard(self) -> bool:
        """Follow the data phase and the job until the run ends; then stop, sync, tear down, verify:
        True. A handoff request returns False at the next poll, the run still going."""
        self.deferring_signals = True
        reconnect(self.ctx, self.group)  # a guard that took the run over reaches every node
        self.ctx.ledger.update_run(self.ctx.run_id, controller_pid=os.getpid())
        # Periodic pulls run in the background: a slow pull of a big checkpoint must never make the
        # guard late for the stop time.
        self.syncing.start()
        watched = Watched.DATA if Phase(self.run.phase) is Phase.PREPARING_DATA else Watched.JOB
        while True:
            try:
                stop = self.watch.follow(watched)
                if stop.kind is StopKind.DATA_READY:
                    start_job(self.ctx, self.group)
                    watched = Watched.JOB
                    continue
            except Exception as exc:  # a failed prepare (DataFailed), or a job that would not start
                self.syncing.stop()
                self.ctx.end(End(Ending.DATA_FAILED, f"{Ending.RUN_FAILED}: {exc}") if isinstance(exc, DataFailed)
                             else End.because(Ending.RUN_FAILED, f"{type(exc).__name__}: {exc}"))
                self._fail(exc)
                return True
            if stop.kind is StopKind.HANDOFF:
                self.syncing.stop()
                self.ctx.event(EventKind.HANDOFF, pid=os.getpid())
                return False
            assert stop.end is not None
            if stop.end.ending is Ending.PREEMPTED and (watched := self._resume(stop.end)) is not None:
                continue  # the next offer's instance, the job (or its data phase) going on it
            self.finish(stop.end)
            return True

    def _resume(self, end: End) -> Watched | None:
        """orchestrator/run/recovery.py: a preempted run goes on on the next offer from its last
        checkpoint; what it watches next (None: the run ends, its End recorded)."""
        self.syncing.stop()
        if self.group.nodes and self.group.head.transport is not None:
            # After a notice the machine still answers for a moment: the checkpoint the job just wrote
            # comes home first (a reclaimed machine does not answer: what the periodic pulls brought stays).
            try:
                self.sync_now()
            except Exception as exc:  # noqa: BLE001 - best effort: the instance may be gone already
                self.ctx.event(EventKind.ERROR, message=f"sync before resuming: {type(exc).__name__}: {exc}")
        self.group.close()
        try:
            found = recovery.reprovision(self.ctx, self.group, end)
            if isinstance(found, End):
                self.ctx.end(found)
                return None
            bootstrap_group(self.ctx, self.group)
            if found is not None:
                recovery.push_checkpoint(self.ensure_transport(), found)
            bucket.arm(self.ctx, self.group)
            self.ctx.event(EventKind.RESUMING, instance_id=self.group.head.instance.id,
                           checkpoint=None if found is None else found.path.name,
                           step=None if found is None else found.entry["step"])
            preparing = start_data(self.ctx, self.group)
            if not preparing:
                start_job(self.ctx, self.group)
        except Exception as exc:  # noqa: BLE001 - the run ends, torn down and verified, with the reason
            self.ctx.end(end.then(f"not resumed: {type(exc).__name__}: {exc}"))
            return None
        self.syncing.start()
        return Watched.DATA if preparing else Watched.JOB

    # --- the end: stop, sync, tear down, verify -------------------------------------------------
    def finish(self, end: End) -> None:
        """Stop the job if it still runs, pull the final outputs, terminate, verify, prove.

        A run that never reached its instance (Ctrl-C or a guard taking over while it booted) has
        no job to stop and nothing to pull: it goes straight to teardown."""
        self.deferring_signals = True
        self.ctx.end(end)
        if not Phase(self.run.phase).is_job():
            self.ctx.event(EventKind.FINISH, reason=end.reason, job=False)
            self.teardown()
            return
        try:
            reconnect(self.ctx, self.group)
            # First: the job checkpoints. Over a crawling link the stop itself is bounded by the time
            # the switch acts: the instance is ending then, and the teardown must not wait on it.
            stop_time.within(self.ctx.watchdog_deadline(), "stopping the job", stop_time.Steps("stopping the job"),
                             lambda: stop_job(self.ctx, self.group, end))
            self.syncing.stop()
            self.phase(Phase.SYNCING_FINAL)
            self.syncing.last()
        except Exception as exc:  # a failed stop or sync must never keep the instance alive
            self.ctx.event(EventKind.ERROR, message=f"{type(exc).__name__}: {exc}")
            self.syncing.stop()  # its pulls end by the stop time, long past: no wait here
        # Judged once the final checkpoint is home: from a bucket, only after the teardown.
        self._judge = not self.ctx.options.command
        if self._judge and not self.ctx.options.checkpoints_to:
            judge_outputs(self.ctx)
            self._judge = False
        self.teardown()

    def _fail(self, exc: BaseException) -> None:
        error = f"{type(exc).__name__}: {exc}"
        current = Phase(self.run.phase)
        if current.is_failed():  # already recorded as failed: keep that phase, add the error
            self.ctx.event(EventKind.ERROR, message=error)
        else:
            self.phase(current.failure, error=error)
        self.ctx.ledger.update_run(self.ctx.run_id, error=error)
        if self.group.nodes and self.group.head.transport is not None:
            try:
                self.syncing.now(final=True)
            except Exception:  # noqa: BLE001 - best effort; teardown matters more
                pass
        self.teardown()

    def teardown(self, verify_timeout_s: float | None = None) -> Path:
        """Terminate every instance of the run, verify, record the proof, settle, write the card:
        orchestrator/run/teardown.py. VerifyFailed if not verified gone."""
        if self.ctx.options.checkpoints_to and self.group.nodes and self.group.head.transport is not None:
            try:  # whatever ended the run: the bucket credential leaves the instance first
                bucket.remove_credentials(self.group.head.transport)
            except Exception:  # noqa: BLE001 - best effort: the instance's end removes it too, and it expires
                pass
        self.group.close()
        return end_run(self.ctx, write_run_evidence, verify_timeout_s, after_gone=self._after_gone)

    def _after_gone(self) -> None:
        """The instances verified gone: a bucket's checkpoints come home now, then the run is judged."""
        if self.ctx.options.checkpoints_to:
            bucket.fetch_home(self.ctx)
        if self._judge:
            judge_outputs(self.ctx)

    # --- transport and sync ---------------------------------------------------------------------
    def ensure_transport(self) -> Transport:
        """Node 0's transport (reconnected from the ledger when this controller did not create it)."""
        return self.syncing.head()

    def sync_now(self) -> SyncResult:
        return self.syncing.now()
