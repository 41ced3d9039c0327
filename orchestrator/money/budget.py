"""The money maths: what `--max-usd N` buys, the deadline, and the account caps.

budgets.yaml itself is read and validated by `orchestrator.money.budgets_file`; this module only computes.
- `allowance_for` turns a budget and a live price into a deadline under the provider's billing rule:
  the instance is verified gone by `deadline_epoch`; the guard starts stopping the job at
  `stop_at_epoch` = deadline - reserve; a budget that leaves less than the minimum useful training
  time is refused with what it buys and what would be needed.
- `reserve` (money/caps.py) holds the run's whole budget against the account's, its pool's and its
  person's caps, in one ledger transaction, like a card hold; `settle` replaces the hold by the actual cost.

See docs/BUDGET.md for the user-facing semantics.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Any

from orchestrator.money.budgets_file import Budgets
from orchestrator.money.caps import EPS_USD as _EPS_USD
from orchestrator.money.caps import check_caps, day_start, month_start, reserve, settle
from orchestrator.money.errors import BudgetError
from providers.base import BillingRule

# Bytes in one GB of data transfer out, as the meter counts them: decimal, so a pull counts as at least
# as many GB as a provider that bills GiB (2**30) would: the meter never reads low.
BYTES_PER_GB = 1e9

# ---- deadline maths ---------------------------------------------------------------------------


def _check_price(usd_per_hour: float) -> float:
    if isinstance(usd_per_hour, bool) or not isinstance(usd_per_hour, (int, float)) \
            or not math.isfinite(usd_per_hour) or usd_per_hour < 0:
        raise BudgetError(f"price {usd_per_hour!r} USD/h is not a finite number >= 0: check the offer or --usd-per-hour")
    return float(usd_per_hour)


def max_runtime_s(max_usd: float, usd_per_hour: float, rule: BillingRule) -> float:
    """The longest runtime whose billed cost under `rule` stays <= max_usd (inf when the price is 0).

    Exact under the increment and the minimum: billing rounds a runtime up to a whole number of
    increments (and at least the minimum), so the answer is the largest multiple of the increment
    that is affordable, or 0 when even the minimum charge is not.
    """
    price = _check_price(usd_per_hour)
    if isinstance(max_usd, bool) or not isinstance(max_usd, (int, float)) or math.isnan(max_usd) or max_usd < 0:
        raise BudgetError(f"budget {max_usd!r} USD is not a number >= 0: pass a positive --max-usd")
    if price == 0:
        return math.inf
    inc = max(1, int(rule.increment_s))
    affordable = max_usd * 3600.0 / price
    # Round the seconds a hair before flooring: 0.02 USD at 1.2 USD/h is 60 s, not 59.999... s.
    steps = math.floor(round(affordable / inc, 9))
    runtime = steps * inc
    while runtime > 0 and rule.cost(runtime, price) > max_usd + _EPS_USD:
        runtime -= inc  # guard against rounding making a step one too many
    if runtime <= 0 or rule.billed_seconds(runtime) > runtime:
        return 0.0  # the minimum charge alone is more than the budget
    return float(runtime)


def _check_rate(usd_per_gb: float) -> float:
    if isinstance(usd_per_gb, bool) or not isinstance(usd_per_gb, (int, float)) \
            or not math.isfinite(usd_per_gb) or usd_per_gb < 0:
        raise BudgetError(f"egress price {usd_per_gb!r} USD/GB is not a finite number >= 0:"
                          " check the offer or --egress-usd-per-gb")
    return float(usd_per_gb)


def egress_usd(pulled_bytes: float, usd_per_gb: float) -> float:
    """What pulling `pulled_bytes` home costs at `usd_per_gb` (data transfer out)."""
    return max(0.0, float(pulled_bytes)) / BYTES_PER_GB * float(usd_per_gb)


def egress_figure(pulled_bytes: int, usd_per_gb: float, source: str, reserved_usd: float) -> dict[str, Any]:
    """The egress the meter counted, as the shutdown proof's billing and the card show it."""
    return {"usd_per_gb": float(usd_per_gb), "source": source, "bytes_pulled": int(pulled_bytes),
            "gb_pulled": round(max(0, pulled_bytes) / BYTES_PER_GB, 9),
            "usd": round(egress_usd(pulled_bytes, usd_per_gb), 9), "reserved_usd": round(float(reserved_usd), 9)}


def _fmt_s(seconds: float) -> str:
    if math.isinf(seconds):
        return "unlimited time"
    s = int(round(seconds))
    if s < 120:
        return f"{s} s"
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    if not h:
        return f"{m} min {sec} s" if sec else f"{m} min"
    return f"{h} h {m} min" if m else f"{h} h"


def _fmt_price(usd_per_hour: float) -> str:
    return f"{usd_per_hour:.2f}" if usd_per_hour >= 0.1 else f"{usd_per_hour:.4g}"


def _ceil_cents(usd: float) -> float:
    return math.ceil(round(usd * 100, 6)) / 100


@dataclass
class Allowance:
    """What `--max-usd N` allows under the provider's billing rule: how long the instance may bill,
    and, once the clock starts at the create call, the deadline and the guard's stop time."""

    provider: str
    max_usd: float
    usd_per_hour: float
    billing: BillingRule
    reserve_s: float
    min_runtime_s: float
    max_runtime_s: float  # longest runtime whose billed cost <= max_usd, bounded by max_runtime_h
    clock_start_epoch: float  # the create call: billing starts here, not at SSH
    deadline_epoch: float  # clock_start + max_runtime_s: the instance is verified gone by then
    stop_at_epoch: float  # deadline - reserve_s: the guard starts stopping the job
    train_s: float  # stop_at - clock_start (boot time included: the clock runs during boot)
    # What earlier attempts of this run already cost (offer fallback: boots that failed, each
    # verified gone). The attempt this allowance is for may spend max_usd - spent_before_usd.
    spent_before_usd: float = 0.0
    # Data transfer out: the offer's USD per GB pulled home, and the bytes the plan expects the run to
    # pull (checkpoints and logs, the final pull included). Their product is kept out of the cap
    # before max_runtime_s is computed (`egress_reserve_usd`), so compute + egress stays <= max_usd.
    egress_usd_per_gb: float = 0.0
    egress_bytes: float = 0.0

    @property
    def egress_reserve_usd(self) -> float:
        """What the expected pulls cost at this offer's egress price: kept out of the cap."""
        return egress_usd(self.egress_bytes, self.egress_usd_per_gb)

    def egress_usd(self, pulled_bytes: float) -> float:
        """What `pulled_bytes` actually pulled home cost at this offer's egress price (the meter)."""
        return egress_usd(pulled_bytes, self.egress_usd_per_gb)

    def cost_at(self, elapsed_s: float, pulled_bytes: float = 0.0) -> float:
        """The run's billed cost `elapsed_s` seconds after this attempt's clock started, earlier
        attempts included, plus the egress of `pulled_bytes` pulled home: THE cost function."""
        return self.spent_before_usd + self.attempt_cost_at(elapsed_s) + self.egress_usd(pulled_bytes)

    def attempt_cost_at(self, elapsed_s: float) -> float:
        """What this attempt alone has cost after `elapsed_s` seconds (its billing rule and price)."""
        return self.billing.cost(elapsed_s, self.usd_per_hour)

    def with_clock_start(self, epoch: float) -> Allowance:
        """The same allowance with the clock started at `epoch`: the one place the deadline and the
        stop time are computed (at plan time for the preview, at the create call for real)."""
        return replace(
            self,
            clock_start_epoch=epoch,
            deadline_epoch=epoch + self.max_runtime_s,
            stop_at_epoch=epoch + self.max_runtime_s - self.reserve_s,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "max_usd": self.max_usd,
            "usd_per_hour": self.usd_per_hour,
            "billing": {
                "increment_s": self.billing.increment_s,
                "minimum_s": self.billing.minimum_s,
                "source": self.billing.source,
            },
            "reserve_s": self.reserve_s,
            "min_runtime_s": self.min_runtime_s,
            "max_runtime_s": self.max_runtime_s,
            "clock_start_epoch": self.clock_start_epoch,
            "deadline_epoch": self.deadline_epoch,
            "stop_at_epoch": self.stop_at_epoch,
            "train_s": self.train_s,
            "spent_before_usd": self.spent_before_usd,
            "egress_usd_per_gb": self.egress_usd_per_gb,
            "egress_bytes": self.egress_bytes,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Allowance:
        b = data["billing"]
        billing = b if isinstance(b, BillingRule) else BillingRule(
            increment_s=int(b["increment_s"]), minimum_s=int(b["minimum_s"]), source=str(b.get("source", ""))
        )
        return cls(
            provider=str(data["provider"]),
            max_usd=float(data["max_usd"]),
            usd_per_hour=float(data["usd_per_hour"]),
            billing=billing,
            reserve_s=float(data["reserve_s"]),
            min_runtime_s=float(data["min_runtime_s"]),
            max_runtime_s=float(data["max_runtime_s"]),
            clock_start_epoch=float(data["clock_start_epoch"]),
            deadline_epoch=float(data["deadline_epoch"]),
            stop_at_epoch=float(data["stop_at_epoch"]),
            train_s=float(data["train_s"]),
            spent_before_usd=float(data.get("spent_before_usd", 0.0)),
            egress_usd_per_gb=float(data.get("egress_usd_per_gb", 0.0)),
            egress_bytes=float(data.get("egress_bytes", 0.0)),
        )


def _check_max_usd(budgets: Budgets, max_usd: Any) -> float:
    if isinstance(max_usd, bool) or not isinstance(max_usd, (int, float)):
        raise BudgetError(f"--max-usd {max_usd!r} is not a number: pass a dollar amount such as --max-usd 3")
    value = float(max_usd)
    if math.isnan(value) or math.isinf(value):
        raise BudgetError(f"--max-usd {max_usd} is not a finite number: pass a dollar amount such as --max-usd 3")
    if value <= 0:
        raise BudgetError(f"--max-usd {max_usd:g} must be more than 0: pass a positive dollar amount")
    if value > budgets.per_run_max_usd + _EPS_USD:
        raise BudgetError(
            f"--max-usd {value:.2f} is above per_run_max_usd {budgets.per_run_max_usd:.2f} in {budgets.path}:"
            " lower --max-usd or raise per_run_max_usd there"
        )
    return value


def _too_little(budgets: Budgets, provider: str, budget: float, price: float, bought: float, spent: float,
                spent_on: str, egress_reserve: float = 0.0) -> BudgetError:
    """The refusal of a budget that buys less than the minimum useful run: what it buys, what is needed."""
    rule = budgets.billing_for(provider)
    reserve_s = budgets.reserve_for(provider)
    min_runtime_s = budgets.min_runtime_for(provider)
    cap_s = budgets.max_runtime_h * 3600.0
    need_s = min_runtime_s + reserve_s
    if bought > cap_s:  # money is not the limit: max_runtime_h is
        return BudgetError(
            f"max_runtime_h {budgets.max_runtime_h:g} in {budgets.path} allows {_fmt_s(cap_s)}; a run needs"
            f" {_fmt_s(min_runtime_s)} of training + {_fmt_s(reserve_s)} reserve: raise max_runtime_h"
        )
    need_usd = rule.cost(need_s, price)
    raise_to = _ceil_cents(need_usd + spent + egress_reserve)
    above = (f" (above per_run_max_usd {budgets.per_run_max_usd:.2f}: raise it in {budgets.path} too)"
             if raise_to > budgets.per_run_max_usd + _EPS_USD else "")
    why = ""
    if bought == 0 and price > 0:
        first = rule.billed_seconds(1)  # the smallest possible charge: minimum or one increment
        what = "the minimum charge" if rule.minimum_s >= rule.increment_s else "one billing increment"
        why = f" (less than {what} of {_fmt_s(first)})"
    billed = rule.billed_seconds(need_s)
    billed_note = f" (billed as {_fmt_s(billed)})" if billed > need_s else ""
    spent_note = f" ({spent:.4f} USD already spent on {spent_on})" if spent else ""
    if egress_reserve > _EPS_USD:
        spent_note += f" (less {egress_reserve:.4f} USD reserved for egress)"
    return BudgetError(
        f"--max-usd {budget:g}{spent_note} at {_fmt_price(price)} USD/h buys {_fmt_s(bought)}{why}; a run needs"
        f" {_fmt_s(min_runtime_s)} of training + {_fmt_s(reserve_s)} reserve{billed_note} = {need_usd:.4f} USD:"
        f" raise --max-usd to at least {raise_to:.2f}{above}"
    )


def allowance_for(
    budgets: Budgets, provider: str, max_usd: float | None, usd_per_hour: float, now: float | None = None,
    spent_before_usd: float = 0.0, spent_on: str = "failed boots", egress_usd_per_gb: float = 0.0,
    egress_bytes: float = 0.0,
) -> Allowance:
    """What the budget allows at this price, or BudgetError saying what it buys and what is needed.

    `max_usd` is validated here, once, at the edge (None: budgets.yaml's per_run_default_usd).
    `spent_before_usd`: what earlier attempts of the run cost (offer fallback); this attempt may
    spend only the rest of the cap; `spent_on` names those attempts in a refusal ("failed boots",
    "a preempted instance"). `egress_usd_per_gb` x `egress_bytes` (the pulls the plan expects) is
    reserved out of the cap before the runtime is bought."""
    budget = _check_max_usd(budgets, budgets.per_run_default_usd if max_usd is None else max_usd)
    price = _check_price(usd_per_hour)
    rule = budgets.billing_for(provider)
    reserve_s = budgets.reserve_for(provider)
    min_runtime_s = budgets.min_runtime_for(provider)
    cap_s = budgets.max_runtime_h * 3600.0
    spent = max(0.0, float(spent_before_usd))
    rate = _check_rate(egress_usd_per_gb)
    expected = max(0.0, float(egress_bytes))
    egress_reserve = egress_usd(expected, rate)
    left = budget - spent
    if spent and left <= _EPS_USD:
        raise BudgetError(f"--max-usd {budget:g}: earlier attempts of this run already cost {spent:.4f} USD,"
                          " nothing is left for another offer")
    bought = max_runtime_s(max(0.0, left - egress_reserve), price, rule)
    runtime = min(bought, cap_s)
    train_s = runtime - reserve_s
    if train_s < min_runtime_s:
        raise _too_little(budgets, provider, budget, price, bought, spent, spent_on, egress_reserve)
    start = time.time() if now is None else float(now)
    return Allowance(
        provider=provider,
        max_usd=budget,
        usd_per_hour=price,
        billing=rule,
        reserve_s=reserve_s,
        min_runtime_s=min_runtime_s,
        max_runtime_s=runtime,
        clock_start_epoch=start,
        deadline_epoch=start,
        stop_at_epoch=start,
        train_s=train_s,
        spent_before_usd=spent,
        egress_usd_per_gb=rate,
        egress_bytes=expected,
    ).with_clock_start(start)


# ---- account, pool and person caps: holds and settlement (money/caps.py) ---------------------
# Importable from here as before.
__all__ = ["Allowance", "BYTES_PER_GB", "allowance_for", "check_caps", "day_start", "egress_figure", "egress_usd",
           "max_runtime_s", "month_start", "reserve", "settle"]
