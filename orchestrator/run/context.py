"""One run's facts and its record-keeping, shared by the controller and the strategies it calls.

The ledger's row (`run`) and the typed record (`record`, kept in the row's plan) are the one place
each fact lives: the current offer and allowance are the record's, the clock and the stop time the
row's. Every phase is written to the ledger BEFORE its action is taken (write-ahead), so a
controller killed at any point leaves enough behind for `gpurun teardown` or a detached guard.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from orchestrator.money.budget import Allowance
from orchestrator.money.budgets_file import Budgets, load_budgets
from orchestrator.money.errors import BudgetError
from orchestrator.notify import Notifier
from orchestrator.plan.options import LaunchOptions
from orchestrator.plan.record import RunRecord
from orchestrator.run.status import LiveStatus, Reporter, quiet
from orchestrator.run.stop import End
from orchestrator.state.endings import Ending
from orchestrator.state.events import EventKind
from orchestrator.state.ledger import Ledger
from orchestrator.state.phases import Phase
from orchestrator.state.rows import Run
from providers import get_provider
from providers.base import Offer, Provider

# Endings a person is told of as they happen (budgets.yaml notify:), beside started/verified.
_NOTIFIED = {Ending.STALLED: "stalled", Ending.DEADLINE: "deadline"}


class RunContext:
    def __init__(self, ledger: Ledger, run: Run, provider: Provider, report: Reporter = quiet,
                 budgets: Budgets | None = None, providers: dict[str, Provider] | None = None) -> None:
        self.ledger = ledger
        self.run = run
        # The database may go away mid-run (a team's server): the run's writes queue under its
        # directory and go out when it is back; the guard keeps its deadline meanwhile (state/journal.py).
        ledger.keep_journal(run)
        # The current attempt's provider: every create, get, terminate and verify of the attempt goes
        # through it. With --provider any a fallback may switch it (orchestrator/run/provisioning.py).
        self.provider = provider
        # Provider objects by name (the plan's, credentials checked), made on first use otherwise.
        self._providers = {**(providers or {}), provider.name: provider}
        self.report = report
        self.record = RunRecord.of_run(run)
        self.run_dir = Path(run.run_dir)
        self._budgets = budgets  # the launch's budgets.yaml (offer fallback re-reads it)
        self._notifier: Notifier | None = None
        # Set by the syncer when the measured link needs more of the reserve than the plan gave the
        # final pull (orchestrator/run/link.py): the guard stops then instead, never later than the plan.
        self.guard_stop_at: float | None = None
        self.sync_line = ""  # "sync 1.4 MB/s, final pull ~23 s": the live view's

    @property
    def run_id(self) -> str:
        return self.run.run_id

    @property
    def options(self) -> LaunchOptions:
        return self.record.options

    @property
    def offer(self) -> Offer:
        return self.record.offer

    @property
    def allowance(self) -> Allowance:
        return self.record.allowance

    def provider_for(self, name: str) -> Provider:
        """The provider object called `name`, made with the launch's options for it on first use."""
        if name not in self._providers:
            self._providers[name] = get_provider(name, **self.options.provider_options(name))
        return self._providers[name]

    def use_provider(self, provider: Provider) -> None:
        """Make `provider` the current attempt's: the run row names it (a teardown from another
        process asks it), and the record keeps the options it was made with."""
        self.provider = provider
        self.record.provider_options = self.options.provider_options(provider.name)
        self.ledger.update_run(self.run_id, provider=provider.name)
        self.save_record("provider_options")

    # --- the ledger ---------------------------------------------------------------------------
    def refresh(self) -> Run:
        run = self.ledger.get_run(self.run_id)
        assert run is not None
        self.run = run
        return run

    def phase(self, name: Phase, **payload: Any) -> None:
        """Record the phase (the ledger refuses a transition the lifecycle does not allow)."""
        self.ledger.set_phase(self.run_id, name, **payload)
        self.run.phase = Phase(name)
        self.report(self.status(message=payload.get("message") or payload.get("reason", "")))

    def event(self, kind: EventKind, **payload: Any) -> None:
        self.ledger.record_event(self.run_id, kind, **payload)

    def save_record(self, *keys: str) -> None:
        """Write the record (or only `keys` of it) into the run row's plan."""
        data = self.record.to_dict()
        self.ledger.update_run(self.run_id, plan={k: data[k] for k in keys} if keys else data)
        self.refresh()

    def end(self, end: End) -> None:
        """Keep why the run ended; the first end stays (a later teardown only finishes the job)."""
        if self.refresh().end_reason is not None:
            return
        self.ledger.update_run(self.run_id, end_reason=end.reason, ending=end.ending)
        self.refresh()
        event = "job_failed" if end.job_failed else _NOTIFIED.get(end.ending)
        if event:
            self.notice(event, f"run {self.run_id}: {end.reason}", reason=end.reason)

    # --- money and time -----------------------------------------------------------------------
    def spent_usd(self, at: float | None = None) -> float:
        """The run's cost so far: compute under the billing rule, plus the egress of what was pulled."""
        start = self.run.clock_start_epoch
        if start is None:
            return 0.0
        pulled = self.pulled_bytes() if self.allowance.egress_usd_per_gb else 0
        return self.allowance.cost_at((at or time.time()) - start, pulled)

    def pulled_bytes(self) -> int:
        """Every byte the run's pulls brought home (its sync events, every attempt's): the egress meter."""
        return sum(int(e.payload.get("bytes") or 0) for e in self.ledger.events(self.run_id)
                   if e.phase == EventKind.SYNC.value)

    def stop_at(self) -> float | None:
        """The guard's stop time: the plan's, or earlier where the link needs it (never later)."""
        plan = self.run.stop_at_epoch
        if plan is None or self.guard_stop_at is None:
            return plan
        return min(plan, self.guard_stop_at)

    def status(self, **extra: Any) -> LiveStatus:
        stop_at = self.stop_at()
        extra.setdefault("sync", self.sync_line)
        return LiveStatus(phase=self.run.phase, spent_usd=self.spent_usd(), max_usd=self.allowance.max_usd,
                          seconds_to_stop=(stop_at - time.time()) if stop_at else None, **extra)

    def watchdog_deadline(self) -> float:
        """When the on-instance switch acts: half the reserve past the stop time, so that its
        self-destruct lands before the money deadline."""
        assert self.run.stop_at_epoch is not None
        return self.run.stop_at_epoch + self.allowance.reserve_s / 2

    def grace_s(self) -> float:
        """How long a stopped job has to checkpoint before it is killed."""
        return max(3.0, min(30.0, self.allowance.reserve_s / 4))

    # --- budgets.yaml and notifications -------------------------------------------------------
    @property
    def budgets(self) -> Budgets:
        if self._budgets is None:
            self._budgets = load_budgets(self.options.budgets)
        return self._budgets

    @property
    def notifier(self) -> Notifier:
        """Run events to budgets.yaml's `notify:` targets; a budgets file that no longer loads only
        turns them off (a teardown must never fail for a notification)."""
        if self._notifier is None:
            try:
                config = self.budgets.notify
            except BudgetError as exc:
                self.event(EventKind.NOTIFY_OFF, error=str(exc))
                config = None
            self._notifier = Notifier(config, on_failure=lambda event, target, error: self.event(
                "notify_failed", event=event, target=target, error=error))
        return self._notifier

    def notice(self, event: str, message: str, **facts: Any) -> None:
        self.notifier.send(event, self.run_id, message, provider=self.provider.name, phase=self.run.phase,
                           spent_usd=round(self.spent_usd(), 6), max_usd=self.allowance.max_usd, **facts)
