"""What the provider says a run cost, beside gpurun's estimate.

gpurun's cost is an estimate: the price read at launch times the billing rule of budgets.yaml.
After teardown the provider is asked for its own figure (`Provider.billed_cost`): RunPod's per-pod
billing history, AWS Cost Explorer by the run's tag (hours late), or "not available" where the API
has none. The figure is stored beside the estimate in the ledger (runs.billed_usd, billed_source,
billed_complete, reconciled_at) and an event `reconciled`; a figure that may still change
(`complete` False) is asked for again by `gpurun cost --reconcile`. A difference over 1 % is
flagged on the evidence card and in `gpurun cost`, and a provider figure over the cap loudly.
Asking never fails a run: an error is recorded as the figure's source.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from orchestrator import settings
from orchestrator.state.events import EventKind
from orchestrator.state.ledger import Ledger
from orchestrator.state.phases import Phase
from orchestrator.state.rows import Run
from providers.base import BilledCost, Provider, ProviderError

#: A provider figure this far (relative) from the estimate is flagged.
FLAG_FRACTION = 0.01
#: The window asked for runs a little wider than the run: billing buckets start on the hour/day.
WINDOW_SLACK_S = 60.0


@dataclass(frozen=True)
class Reconciliation:
    run_id: str
    estimate_usd: float | None
    billed_usd: float | None
    source: str
    complete: bool
    max_usd: float

    @property
    def difference(self) -> float | None:
        """(billed - estimate) / estimate; None without both figures."""
        if self.billed_usd is None or self.estimate_usd is None:
            return None
        if self.estimate_usd == 0:
            return 0.0 if self.billed_usd == 0 else float("inf")
        return (self.billed_usd - self.estimate_usd) / self.estimate_usd

    @property
    def flag(self) -> str:
        """"" when the figures agree (or there is nothing to compare), else what a person must see."""
        # A run `gpurun sweep` adopted has no cap (max_usd 0): only the difference is flagged.
        if self.max_usd > 0 and self.billed_usd is not None and self.billed_usd > self.max_usd + 1e-9:
            return f"OVER THE CAP: the provider billed {self.billed_usd:.4f} USD, the cap was {self.max_usd:.4f} USD"
        diff = self.difference
        if diff is not None and abs(diff) > FLAG_FRACTION:
            return (f"differs from the estimate by {diff * 100:+.1f} % "
                    f"({self.billed_usd:.4f} billed vs {self.estimate_usd:.4f} estimated)")
        return ""

    @classmethod
    def of_run(cls, run: Run) -> Reconciliation:
        return cls(run.run_id, run.cost_usd, run.billed_usd, run.billed_source or "not asked yet",
                   bool(run.billed_complete), run.max_usd)


def verified_at(ledger: Ledger, run: Run) -> float | None:
    """When the run was verified gone (its `verified` phase): fixed, unlike the row's updated_at."""
    times = [e.time for e in ledger.events(run.run_id) if e.phase == Phase.VERIFIED]
    return times[-1] if times else None


def window(ledger: Ledger, run: Run) -> tuple[float, float]:
    """[first create - slack, verified + slack]: every attempt of the run, the whole of its billing."""
    starts = [i.created_at for i in ledger.instances(run.run_id)]
    start = min([run.created_at, *starts]) - WINDOW_SLACK_S
    end = (verified_at(ledger, run) or time.time()) + WINDOW_SLACK_S
    return start, end


def reconcile(ledger: Ledger, run: Run, provider: Provider) -> Reconciliation:
    """Ask the provider for the run's cost and record it; never raises for the provider's sake."""
    # Its own instances: with --provider any an earlier attempt may have been another provider's.
    ids = [i.instance_id for i in ledger.instances(run.run_id) if i.provider == provider.name]
    start, end = window(ledger, run)
    try:
        got = provider.billed_cost(run.run_id, ids, start, end)
    except ProviderError as exc:  # a billing API that fails is a figure we do not have yet
        got = BilledCost(None, f"asking failed: {exc}", complete=False)
    now = time.time()
    ledger.update_run(run.run_id, billed_usd=got.usd, billed_source=got.source, billed_complete=got.complete,
                      reconciled_at=now)
    result = Reconciliation(run.run_id, run.cost_usd, got.usd, got.source, got.complete, run.max_usd)
    ledger.record_event(run.run_id, EventKind.RECONCILED, billed_usd=got.usd, source=got.source, complete=got.complete,
                        estimate_usd=run.cost_usd, flag=result.flag, details=got.details)
    return result


def reconcile_after_run(ledger: Ledger, run: Run, provider: Provider) -> Reconciliation | None:
    """Right after teardown: ask now, unless the provider's figures come hours late (AWS Cost
    Explorer, whose every request also costs money): then only note when to ask. Never raises."""
    if provider.billing_lag_s > 0:
        hours = provider.billing_lag_s / 3600
        ledger.update_run(run.run_id, billed_source=f"not asked yet: {provider.name} billing data comes up to"
                          f" {hours:g} h late; run `gpurun cost --reconcile` after that", billed_complete=False)
        return None
    try:
        return reconcile(ledger, run, provider)
    except Exception as exc:  # noqa: BLE001 - the run is verified gone; a figure we lack is not a failure
        ledger.record_event(run.run_id, EventKind.ERROR, message=f"reconcile: {type(exc).__name__}: {exc}")
        return None


def pending(ledger: Ledger, now: float | None = None, every_s: float | None = None) -> list[Run]:
    """Verified runs whose provider figure is not final yet (never asked, or `complete` False), not
    asked within `every_s` (default $GPURUN_RECONCILE_EVERY_S: each AWS Cost Explorer call costs)."""
    now = time.time() if now is None else now
    every = settings.reconcile_every_s() if every_s is None else every_s
    return [r for r in ledger.list_runs()
            if not r.open and r.cost_usd is not None and not r.billed_complete
            and (r.reconciled_at is None or now - r.reconciled_at >= every)]
