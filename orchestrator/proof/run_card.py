"""A run's evidence card written from the ledger's row and its synced files (launch, guard, teardown,
`gpurun reconcile` alike: the money commands need no controller for it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestrator.money.reconcile import Reconciliation
from orchestrator.plan.record import RunRecord, is_orphan
from orchestrator.proof.evidence import write_evidence
from orchestrator.state.rows import Run


def write_run_evidence(run: Run, proof_path: Path | None, cost: float | None, runtime_s: float | None) -> Path:
    """The run's evidence card from its synced files; a run adopted by sweep has no offer to show."""
    offer = None if is_orphan(run) else RunRecord.of_run(run).offer.to_dict()
    return write_evidence(
        Path(run.run_dir),
        run={"run_id": run.run_id, "provider": run.provider, "phase": run.phase, "plan": run.plan,
             "end_reason": run.end_reason, "ending": run.ending, "job_exit_code": run.job_exit_code,
             "billed": billed_of(run)},
        offer=offer, proof_path=proof_path, runtime_s=runtime_s, cost_usd=cost, max_usd=run.max_usd,
    )


def billed_of(run: Run) -> dict[str, Any]:
    """What the card shows of the provider's own figure: the figure, its source, final or not, the flag."""
    rec = Reconciliation.of_run(run)
    return {"usd": rec.billed_usd, "source": rec.source, "complete": rec.complete, "flag": rec.flag}
