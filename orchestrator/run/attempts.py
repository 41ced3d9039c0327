"""One attempt of a run: an offer's instance that failed to boot or was taken back (a spot reclaim).

The run record keeps each as a dict (`RunRecord.attempts`, in the ledger and the shutdown proof);
`Attempt` is the one place its keys are written, for provisioning and recovery alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from orchestrator.plan.words import offer_label
from providers.base import Offer


class Cause(str, Enum):
    BOOT = "boot"  # it never came up (no capacity, a boot failure, the boot window passed)
    PREEMPTED = "preempted"  # it ran, and the provider took it back

    def __str__(self) -> str:
        return self.value


@dataclass
class Attempt:
    number: int
    cause: Cause
    offer: Offer
    instance_id: str | None
    reason: str
    created_at: float
    gone_at: float
    cost_usd: float
    evidence: dict[str, Any] = field(default_factory=dict)  # terminate requests, the final describe

    def to_dict(self) -> dict[str, Any]:
        return {
            "attempt": self.number, "cause": self.cause.value, "provider": self.offer.provider,
            "offer": offer_label(self.offer),
            "instance_type": self.offer.instance_type, "region": self.offer.region,
            "usd_per_hour": self.offer.total_usd_per_hour, "instance_id": self.instance_id, "reason": self.reason,
            "created_at": self.created_at, "gone_at": self.gone_at, "cost_usd": self.cost_usd, **self.evidence,
        }


def _cause(attempt: dict[str, Any]) -> Cause:
    return Cause(attempt.get("cause", Cause.BOOT.value))


def failed_boots_usd(attempts: list[dict[str, Any]]) -> float:
    """What boots that never came up cost (a preempted attempt did boot: it is not counted here)."""
    return sum(float(a.get("cost_usd") or 0.0) for a in attempts if _cause(a) is Cause.BOOT)


def attempts_usd(attempts: list[dict[str, Any]]) -> float:
    """What every earlier attempt of the run cost: failed boots and preempted instances."""
    return sum(float(a.get("cost_usd") or 0.0) for a in attempts)


def spent_on(attempts: list[dict[str, Any]]) -> str:
    """What the earlier attempts were, in words, for a refusal: "failed boots", "a preempted instance"."""
    boots = sum(1 for a in attempts if _cause(a) is Cause.BOOT)
    lost = len(attempts) - boots
    words = ([("a failed boot" if boots == 1 else "failed boots")] if boots else []) + \
        ([("a preempted instance" if lost == 1 else "preempted instances")] if lost else [])
    return " and ".join(words) or "earlier attempts"
