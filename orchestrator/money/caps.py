"""How much of each cap in budgets.yaml is taken now: the account's daily and monthly caps and each
provider's, against the ledger's open holds + settled costs (what `gpurun cost` prints and `gpurun
dashboard` draws as bars)."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.money.budget import day_start, month_start
from orchestrator.money.budgets_file import Budgets
from orchestrator.state.ledger import Ledger


@dataclass(frozen=True)
class CapUse:
    name: str  # "daily", "monthly", "runpod daily" ...
    limit_usd: float | None  # None: no such cap in budgets.yaml
    used_usd: float  # spent + still held in the cap's window

    @property
    def over(self) -> bool:
        return self.limit_usd is not None and self.used_usd > self.limit_usd + 1e-9


def cap_uses(ledger: Ledger, conf: Budgets, now: float) -> list[CapUse]:
    """The account's daily and monthly caps, then each provider's that budgets.yaml sets."""
    day0, month0 = day_start(now), month_start(now)
    uses = [CapUse("daily", conf.daily_usd, ledger.committed_usd(day0)),
            CapUse("monthly", conf.monthly_usd, ledger.committed_usd(month0))]
    for name, pb in conf.providers.items():
        if pb.daily_usd is not None or pb.monthly_usd is not None:
            uses.append(CapUse(f"{name} daily", pb.daily_usd, ledger.committed_usd(day0, name)))
            uses.append(CapUse(f"{name} monthly", pb.monthly_usd, ledger.committed_usd(month0, name)))
    return uses
