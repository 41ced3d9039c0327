"""The typed record of what a run was launched with: options, offer, allowance, account, bootstrap.

The ledger keeps it as JSON in the run row (`runs.plan`) and the run directory as `plan.json`;
everything that reads a run's launch facts goes through `RunRecord`, never the raw dict. The cap
itself is stored once, in the run row's `max_usd` column: the record leaves it out and takes it
from the row when it is loaded, so the two can never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from orchestrator.money.budget import Allowance
from orchestrator.plan.launch import LaunchPlan
from orchestrator.plan.options import LaunchOptions
from orchestrator.state.rows import Run
from orchestrator.state.values import LedgerError
from providers.base import BillingRule, Offer

ORPHAN_KEY = "orphan"  # the record of a run `gpurun sweep` adopted: no launch facts, only the orphan


@dataclass
class RunRecord:
    options: LaunchOptions
    provider_options: dict[str, Any]
    offer: Offer
    allowance: Allowance
    account: dict[str, Any] = field(default_factory=dict)
    bootstrap: dict[str, Any] | None = None  # what bootstrap found on the instance
    # Offer fallback: the offers still to try, what failed boots may cost in total, and every
    # attempt that failed (offer, instance, reason, cost), in order. `offer`/`allowance` are the
    # current attempt's.
    fallbacks: list[Offer] = field(default_factory=list)
    max_boot_usd: float = 0.0
    attempts: list[dict[str, Any]] = field(default_factory=list)
    # Written as the run goes: what bootstrap decided for the job on node 0 (recipe, config file,
    # data_dir, the data command), every node of a multi-node run, and the run a `--resume` continues.
    job: dict[str, Any] | None = None
    nodes: list[dict[str, Any]] = field(default_factory=list)
    resumed_from: str | None = None

    @classmethod
    def of_launch(cls, launch: LaunchPlan) -> RunRecord:
        return cls(
            options=launch.options,
            provider_options=launch.options.provider_options(launch.provider.name),
            offer=launch.offer,
            allowance=launch.allowance,
            account=launch.account,
            fallbacks=list(launch.fallbacks),
            max_boot_usd=launch.max_boot_usd,
        )

    def to_dict(self) -> dict[str, Any]:
        options = self.options.to_dict()
        options.pop("max_usd", None)  # stored once: the run row's max_usd
        allowance = self.allowance.to_dict()
        allowance.pop("max_usd", None)
        out: dict[str, Any] = {
            "options": options,
            "provider_options": dict(self.provider_options),
            "offer": self.offer.to_dict(),
            "allowance": allowance,
            "account": dict(self.account),
            "fallbacks": [o.to_dict() for o in self.fallbacks],
            "max_boot_usd": self.max_boot_usd,
            "attempts": [dict(a) for a in self.attempts],
        }
        if self.bootstrap is not None:
            out["bootstrap"] = dict(self.bootstrap)
        if self.job is not None:
            out["job"] = dict(self.job)
        if self.nodes:
            out["nodes"] = [dict(n) for n in self.nodes]
        if self.resumed_from is not None:
            out["resumed_from"] = self.resumed_from
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], max_usd: float) -> RunRecord:
        # Runs recorded before the rename keep their allowance under "budget".
        allowance = Allowance.from_dict({**(data.get("allowance") or data["budget"]), "max_usd": max_usd})
        known = {f.name for f in fields(LaunchOptions)}
        options = LaunchOptions(**{k: v for k, v in data["options"].items() if k in known})
        options = replace(options, max_usd=max_usd)
        return cls(
            options=options,
            provider_options=dict(data.get("provider_options") or {}),
            offer=_offer(data["offer"], allowance.billing),
            allowance=allowance,
            account=dict(data.get("account") or {}),
            bootstrap=data.get("bootstrap"),
            fallbacks=[_offer(o, allowance.billing) for o in data.get("fallbacks") or []],
            max_boot_usd=float(data.get("max_boot_usd") or 0.0),
            attempts=[dict(a) for a in data.get("attempts") or []],
            job=dict(data["job"]) if isinstance(data.get("job"), dict) else None,
            nodes=[dict(n) for n in data.get("nodes") or []],
            resumed_from=data.get("resumed_from"),
        )

    @classmethod
    def of_run(cls, run: Run) -> RunRecord:
        if is_orphan(run):
            raise LedgerError(
                f"run {run.run_id} was adopted by `gpurun sweep` and has no launch record: "
                f"its shutdown proof is in {run.run_dir}"
            )
        try:
            return cls.from_dict(run.plan, run.max_usd)
        except (KeyError, TypeError) as exc:
            raise LedgerError(f"run {run.run_id}: its launch record in the ledger is incomplete ({exc})") from None


def is_orphan(run: Run) -> bool:
    return ORPHAN_KEY in run.plan


def _offer(data: dict[str, Any], billing: BillingRule) -> Offer:
    known = {f.name for f in fields(Offer)}
    return Offer(**{**{k: v for k, v in data.items() if k in known}, "billing": billing})
