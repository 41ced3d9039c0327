"""The verified end of one run: every instance terminated and verified gone, the proof recorded, the
hold settled, the evidence card written (orchestrator/run/teardown.py), and the person told."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from orchestrator.money.reconcile import reconcile_after_run
from orchestrator.run import teardown as teardown_mod
from orchestrator.run.context import RunContext
from orchestrator.state.rows import Run

CardWriter = Callable[[Run, "Path | None", "float | None", "float | None"], Path]


def end_run(ctx: RunContext, write_card: CardWriter, verify_timeout_s: float | None = None,
            after_gone: Callable[[], None] | None = None) -> Path:
    """`teardown.end` for the run; VerifyFailed (after the `not_verified` notice) if not verified gone.
    `after_gone`: what is done once the instances are verified gone, before the card (the fetch
    of a bucket's checkpoints, which needs no instance)."""

    def evidence(proof_path: Path | None, cost: float | None, runtime_s: float | None) -> Path:
        if after_gone is not None:
            after_gone()
        # The provider's own figure first (where it has one now), so that the card shows both.
        reconcile_after_run(ctx.ledger, ctx.refresh(), ctx.provider)
        return write_card(ctx.refresh(), proof_path, cost, runtime_s)

    allowance = ctx.allowance
    target = teardown_mod.Target(
        ledger=ctx.ledger, provider=ctx.provider, run_id=ctx.run_id, tag=ctx.run_id, proof_dir=ctx.run_dir,
        record_phase=ctx.phase, max_usd=allowance.max_usd, started_at=ctx.run.clock_start_epoch,
        cost_at=allowance.cost_at, billing={**allowance.billing.__dict__, "usd_per_hour": allowance.usd_per_hour},
        evidence=evidence, attempts=ctx.record.attempts, egress_usd_per_gb=allowance.egress_usd_per_gb,
        egress_source=ctx.offer.egress_source, egress_reserve_usd=allowance.egress_reserve_usd,
        pulled_bytes=ctx.pulled_bytes,
    )
    try:
        ended = teardown_mod.end(target, verify_timeout_s)
    except teardown_mod.VerifyFailed as exc:
        ctx.notice("not_verified", f"run {ctx.run_id}: NOT VERIFIED gone: {exc}", error=str(exc))
        ctx.notifier.close()
        raise
    ctx.notice("verified", f"run {ctx.run_id}: verified gone; cost {ended.cost_usd or 0:.4f} USD of"
               f" {allowance.max_usd:.4f}", cost_usd=ended.cost_usd, proof_sha256=ended.proof_sha256)
    ctx.notifier.close()
    return ended.proof_path
