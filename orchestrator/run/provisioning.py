"""Create and boot a run's instance, trying the plan's offers in order (offer fallback).

An attempt is one offer: create -> booting -> SSH answers. It fails when the provider refuses for
capacity (NoCapacityError at create), says the instance will never boot (`Instance.boot_failure`),
loses it while booting, or the attempt's boot window passes first. The window is what its share of
the boot budget left buys at the offer's price (--max-boot-usd, default budgets.yaml's boot_share of
the cap; half of what is left while other offers wait, all of it for the last), never less than
the smallest charge the create already incurred (the billing minimum, or one whole increment), at most MAX_BOOT_S, and never past
the guard's stop time. A failed attempt's instance is terminated and verified gone
(`teardown.retire`) before the next offer is tried; its billed cost joins the run's spend
(`Allowance.spent_before_usd`), so the next offer's deadline is computed on what is left of
--max-usd: all attempts together stay inside the cap. Every attempt is an instance row and an
`attempt_failed` event of the run, and an entry of the run record's `attempts`, which the shutdown
proof carries. Billing starts during provisioning (pods that never booted still bill), so a boot is
never waited on for free.
"""

from __future__ import annotations

import time
from typing import Any

from orchestrator.errors import BootFailed, RunFailed
from orchestrator.money import budget as budget_mod
from orchestrator.money.budget import max_runtime_s
from orchestrator.money.errors import BudgetError
from orchestrator.plan.words import offer_label
from orchestrator.run import teardown as teardown_mod
from orchestrator.run.attempts import Attempt, Cause, attempts_usd, failed_boots_usd, spent_on
from orchestrator.run.boot import boot_and_connect, create_head, create_workers
from orchestrator.run.context import RunContext
from orchestrator.run.nodes import NodeGroup
from orchestrator.state.events import EventKind
from providers.base import Instance, NoCapacityError, Offer

MAX_BOOT_S = 900.0  # one attempt that has not come up in 15 minutes is stuck, whatever the budget


def boot_window_s(ctx: Any, boot_left_usd: float, last: bool) -> float:
    """How long this attempt may take to come up (`ctx`: anything with the attempt's `allowance`):
    what its share of the boot budget left buys at its price. An attempt with offers after it takes
    half of what is left (a stuck boot must not leave the next offers no window); the last one may
    use all of it."""
    allowance = ctx.allowance
    share = max(0.0, boot_left_usd) * (1.0 if last else 0.5)
    bought = max_runtime_s(share, allowance.usd_per_hour, allowance.billing)
    # The create already incurred the smallest charge (the minimum, or one whole increment):
    # waiting that long costs nothing more.
    return min(MAX_BOOT_S, max(bought, float(allowance.billing.billed_seconds(1))))


def switch_offer(ctx: RunContext, offer: Offer, remaining: list[Offer]) -> None:
    """Make `offer` the run's current one: its allowance is what is left of the cap after the
    earlier attempts (BudgetError when that buys too little at its price). With --provider any the
    offer may be another provider's: the run's hold moves to it (its caps checked), and from here on
    every call of the attempt goes to that provider's object."""
    attempts = ctx.record.attempts
    provider = ctx.provider
    if ctx.options.any_provider and offer.provider != provider.name:
        provider = ctx.provider_for(offer.provider)
    allowance = budget_mod.allowance_for(ctx.budgets, provider.name, ctx.run.max_usd,
                                         ctx.options.group_usd_per_hour(offer), spent_before_usd=attempts_usd(attempts),
                                         spent_on=spent_on(attempts), egress_usd_per_gb=offer.egress_usd_per_gb,
                                         egress_bytes=ctx.allowance.egress_bytes)  # the plan's pulls, at this offer's rate
    if provider is not ctx.provider:  # every earlier attempt is verified gone: the run moves to it
        budget_mod.reserve(ctx.budgets, ctx.ledger, ctx.run_id, provider.name, ctx.run.max_usd)
        ctx.use_provider(provider)
        ctx.event(EventKind.PROVIDER_SWITCHED, provider=provider.name, offer=offer_label(offer))
    offer.billing = allowance.billing
    ctx.record.offer, ctx.record.allowance, ctx.record.fallbacks = offer, allowance, list(remaining)
    ctx.save_record()


def record_attempt(ctx: RunContext, attempt: Attempt) -> None:
    """A failed attempt joins the run record (the proof carries it) and the run's events."""
    entry = attempt.to_dict()
    ctx.record.attempts.append(entry)
    ctx.save_record("attempts")
    ctx.event(EventKind.ATTEMPT_FAILED, **entry)
    ctx.report(ctx.status(message=f"attempt {attempt.number} failed: {attempt.reason}"))


def provision(ctx: RunContext, group: NodeGroup, resume: bool = False) -> Instance:
    """The run's node group, created and reachable; RunFailed naming every offer tried when none came up.

    resume: after a preemption (orchestrator.run.recovery): the current offer is tried again first,
    with what is left of the cap after every earlier attempt."""
    candidates = [ctx.offer, *ctx.record.fallbacks]
    failures: list[str] = []
    for n, offer in enumerate(candidates, 1):
        if n > 1 or resume:
            try:
                switch_offer(ctx, offer, remaining=candidates[n:])
            except BudgetError as exc:
                failures.append(f"{n}. {offer_label(offer)}: not tried: {exc}")
                break
        boot_left = ctx.record.max_boot_usd - failed_boots_usd(ctx.record.attempts)
        if boot_left <= 0:
            failures.append(f"{n}. {offer_label(offer)}: not tried: failed boots used the"
                            f" {ctx.record.max_boot_usd:.4f} USD of --max-boot-usd")
            break
        reason = _attempt(ctx, group, offer, boot_left, last=n == len(candidates))
        if reason is None:
            return group.head.instance
        failures.append(f"{n}. {offer_label(offer)}: {reason}")
    if resume:  # after a preemption: the lost instance booted; what stops the resume is the rest of the cap
        raise RunFailed("no offer to resume on: " + "; ".join(failures)
                        + ". Each instance was verified gone; the checkpoint is home: `gpurun launch --resume"
                        f" {ctx.run_id} --max-usd N` continues from it")
    raise RunFailed("no offer came up: " + "; ".join(failures)
                    + ". Each attempt was verified gone; try later, another --gpu, or raise --max-boot-usd")


def _attempt(ctx: RunContext, group: NodeGroup, offer: Offer, boot_left_usd: float, last: bool) -> str | None:
    """One offer: None when every node is up and reachable, else why not (each node verified gone)."""
    created_at = time.time()
    number = len(ctx.record.attempts) + 1
    try:
        instance = create_head(ctx, group)
    except NoCapacityError as exc:
        record_attempt(ctx, Attempt(number, Cause.BOOT, offer, None, f"no capacity: {exc}", created_at, time.time(), 0.0))
        return f"no capacity: {exc}"
    until = min(created_at + boot_window_s(ctx, boot_left_usd, last), ctx.run.stop_at_epoch or created_at + MAX_BOOT_S)
    try:
        create_workers(ctx, group)  # a multi-node run's other nodes, created together with node 0
        boot_and_connect(ctx, group, until)
        return None
    except BootFailed as exc:
        reason = str(exc)
    # Every node of the attempt goes, not only the one that failed (no worker is left billing).
    group.close()
    retired = teardown_mod.retire_all(ctx.ledger, ctx.provider, ctx.run_id, group.instance_ids())
    gone_at = max(r.verified_at for r in retired)
    cost = ctx.allowance.attempt_cost_at(gone_at - created_at)
    final = retired[0].final_describe if len(retired) == 1 else [r.final_describe for r in retired]
    evidence: dict[str, Any] = {"terminate_requests": [q.__dict__ for r in retired for q in r.requests],
                                "final_describe": final}
    if len(retired) > 1:
        evidence["instance_ids"] = [r.instance_id for r in retired]
    record_attempt(ctx, Attempt(number, Cause.BOOT, offer, instance.id, reason, created_at, gone_at, cost, evidence))
    return f"{reason} (verified gone, {cost:.4f} USD)"
