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
from typing import Any, Protocol

from orchestrator.errors import BootFailed, RunFailed
from orchestrator.money.budget import Allowance, max_runtime_s
from orchestrator.money.budgets_file import BudgetError
from orchestrator.plan.launch import offer_label
from orchestrator.plan.record import RunRecord
from orchestrator.run import teardown as teardown_mod
from orchestrator.state.ledger import Ledger, Run
from providers.base import Instance, NoCapacityError, Offer, Provider


class Controller(Protocol):
    """What provisioning needs of orchestrator.run.controller.Controller (which imports this module)."""

    ledger: Ledger
    provider: Provider
    run: Run
    record: RunRecord
    offer: Offer
    allowance: Allowance
    instance: Instance | None

    def switch_offer(self, offer: Offer, remaining: list[Offer], spent_usd: float, spent_on: str) -> None: ...
    def create_instance(self) -> Instance: ...
    def create_workers(self) -> None: ...
    def attempt_instance_ids(self) -> list[str]: ...
    def boot_and_connect(self, instance: Instance, until: float) -> None: ...
    def record_failed_attempt(self, attempt: dict[str, Any]) -> None: ...

MAX_BOOT_S = 900.0  # one attempt that has not come up in 15 minutes is stuck, whatever the budget


def failed_boots_usd(attempts: list[dict[str, Any]]) -> float:
    """What boots that never came up cost (a preempted attempt did boot: it is not counted here)."""
    return sum(float(a.get("cost_usd") or 0.0) for a in attempts if a.get("cause", "boot") == "boot")


def attempts_usd(attempts: list[dict[str, Any]]) -> float:
    """What every earlier attempt of the run cost: failed boots and preempted instances."""
    return sum(float(a.get("cost_usd") or 0.0) for a in attempts)


def spent_on(attempts: list[dict[str, Any]]) -> str:
    """What the earlier attempts were, in words, for a refusal: "failed boots", "a preempted instance"."""
    boots = sum(1 for a in attempts if a.get("cause", "boot") == "boot")
    lost = len(attempts) - boots
    words = ([("a failed boot" if boots == 1 else "failed boots")] if boots else []) + \
        ([("a preempted instance" if lost == 1 else "preempted instances")] if lost else [])
    return " and ".join(words) or "earlier attempts"


def boot_window_s(ctl: Controller, boot_left_usd: float, last: bool) -> float:
    """How long this attempt may take to come up: what its share of the boot budget left buys at
    its price. An attempt with offers after it takes half of what is left (a stuck boot must not
    leave the next offers no window); the last one may use all of it."""
    allowance = ctl.allowance
    share = max(0.0, boot_left_usd) * (1.0 if last else 0.5)
    bought = max_runtime_s(share, allowance.usd_per_hour, allowance.billing)
    # The create already incurred the smallest charge (the minimum, or one whole increment):
    # waiting that long costs nothing more.
    return min(MAX_BOOT_S, max(bought, float(allowance.billing.billed_seconds(1))))


def provision(ctl: Controller, resume: bool = False) -> Instance:
    """The run's instance, created and reachable; RunFailed naming every offer tried when none came up.

    resume: after a preemption (orchestrator.run.recovery): the current offer is tried again first,
    with what is left of the cap after every earlier attempt."""
    candidates = [ctl.offer, *ctl.record.fallbacks]
    failures: list[str] = []
    for n, offer in enumerate(candidates, 1):
        if n > 1 or resume:
            try:
                ctl.switch_offer(offer, remaining=candidates[n:], spent_usd=attempts_usd(ctl.record.attempts),
                                spent_on=spent_on(ctl.record.attempts))
            except BudgetError as exc:
                failures.append(f"{n}. {offer_label(offer)}: not tried: {exc}")
                break
        boot_left = ctl.record.max_boot_usd - failed_boots_usd(ctl.record.attempts)
        if boot_left <= 0:
            failures.append(f"{n}. {offer_label(offer)}: not tried: failed boots used the"
                            f" {ctl.record.max_boot_usd:.4f} USD of --max-boot-usd")
            break
        reason = _attempt(ctl, n, offer, boot_left, last=n == len(candidates))
        if reason is None:
            assert ctl.instance is not None
            return ctl.instance
        failures.append(f"{n}. {offer_label(offer)}: {reason}")
    if resume:  # after a preemption: the lost instance booted; what stops the resume is the rest of the cap
        raise RunFailed("no offer to resume on: " + "; ".join(failures)
                        + ". Each instance was verified gone; the checkpoint is home: `gpurun launch --resume"
                        f" {ctl.run.run_id} --max-usd N` continues from it")
    raise RunFailed("no offer came up: " + "; ".join(failures)
                    + ". Each attempt was verified gone; try later, another --gpu, or raise --max-boot-usd")


def _attempt(ctl: Controller, n: int, offer: Offer, boot_left_usd: float, last: bool) -> str | None:
    """One offer: None when its instance is up and reachable, else why not (its instance verified gone)."""
    created_at = time.time()
    try:
        instance = ctl.create_instance()
    except NoCapacityError as exc:
        _record(ctl, n, offer, None, f"no capacity: {exc}", created_at, time.time(), 0.0)
        return f"no capacity: {exc}"
    until = min(created_at + boot_window_s(ctl, boot_left_usd, last), ctl.run.stop_at_epoch or created_at + MAX_BOOT_S)
    try:
        ctl.create_workers()  # a multi-node run's other nodes, created together with node 0
        ctl.boot_and_connect(instance, until)
        return None
    except BootFailed as exc:
        reason = str(exc)
    # Every node of the attempt goes, not only the one that failed (no worker is left billing).
    retired = teardown_mod.retire_all(ctl.ledger, ctl.provider, ctl.run.run_id, ctl.attempt_instance_ids())
    gone_at = max(r.verified_at for r in retired)
    cost = ctl.allowance.attempt_cost_at(gone_at - created_at)
    final = retired[0].final_describe if len(retired) == 1 else [r.final_describe for r in retired]
    _record(ctl, n, offer, instance.id, reason, created_at, gone_at, cost,
            terminate_requests=[q.__dict__ for r in retired for q in r.requests], final_describe=final,
            **({"instance_ids": [r.instance_id for r in retired]} if len(retired) > 1 else {}))
    return f"{reason} (verified gone, {cost:.4f} USD)"


def _record(ctl: Controller, n: int, offer: Offer, instance_id: str | None, reason: str,
            created_at: float, gone_at: float, cost_usd: float, **evidence: Any) -> None:
    attempt = {
        "attempt": len(ctl.record.attempts) + 1, "cause": "boot", "offer": offer_label(offer), "instance_type": offer.instance_type, "region": offer.region,
        "usd_per_hour": offer.total_usd_per_hour, "instance_id": instance_id, "reason": reason,
        "created_at": created_at, "gone_at": gone_at, "cost_usd": cost_usd, **evidence,
    }
    ctl.record_failed_attempt(attempt)
