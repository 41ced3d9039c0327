"""The caps a launch holds against: the account's, its provider's, its pool's and its person's.

`reserve` holds the run's whole budget (like a card hold) in one ledger transaction: on a shared
ledger that transaction holds the ledger's lock row (orchestrator/state/db.py), so two launches
from two machines against one cap are serialised and the second sees the first's hold. A refusal
names the cap, what is spent or held against it and what is left, before anything is rented.
`settle` replaces the hold by the actual cost. Days and months are local time.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import datetime

from orchestrator import settings
from orchestrator.money.budgets_file import Budgets
from orchestrator.money.errors import BudgetError
from orchestrator.money.pools import Pool
from orchestrator.state.ledger import Ledger
from orchestrator.state.values import LedgerError

EPS_USD = 1e-9  # float slack when comparing money (0.1 + 0.2 style noise), far below a cent


def day_start(now: float) -> float:
    """Local midnight at or before `now` (the daily cap's window)."""
    d = datetime.fromtimestamp(now)
    return d.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()


def month_start(now: float) -> float:
    """Local midnight of the first of the month (the monthly cap's window)."""
    d = datetime.fromtimestamp(now)
    return d.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp()


@dataclass(frozen=True)
class Cap:
    """One cap: its name in a refusal, its budgets.yaml key, the limit, its window and whose holds count."""

    label: str
    key: str
    usd: float | None
    since: float
    provider: str | None = None
    person: str | None = None
    pool: str | None = None

    def used(self, ledger: Ledger, exclude_run: str | None = None) -> float:
        return ledger.committed_usd(self.since, self.provider, exclude_run, person=self.person, pool=self.pool)


def pool_caps(pool: Pool, when: float, person: str | None = None) -> list[Cap]:
    """The pool's own caps, or (person given) that person's caps in the pool."""
    day, month = day_start(when), month_start(when)
    if person is None:
        key, label = f"pools.{pool.name}", f"pool {pool.name}"
        return [Cap(f"{label} daily cap", f"{key}.daily_usd", pool.daily_usd, day, pool=pool.name),
                Cap(f"{label} monthly cap", f"{key}.monthly_usd", pool.monthly_usd, month, pool=pool.name),
                Cap(f"{label} total", f"{key}.total_usd", pool.total_usd, 0.0, pool=pool.name)]
    key, mine = f"pools.{pool.name}.per_person", pool.per_person
    return [Cap(f"{person}'s daily cap in pool {pool.name}", f"{key}.daily_usd", mine.daily_usd, day, person=person),
            Cap(f"{person}'s monthly cap in pool {pool.name}", f"{key}.monthly_usd", mine.monthly_usd, month,
                person=person),
            Cap(f"{person}'s total cap in pool {pool.name}", f"{key}.total_usd", mine.total_usd, 0.0, person=person)]


def caps_for(budgets: Budgets, provider: str, person: str, when: float) -> list[Cap]:
    """Every windowed cap a launch by `person` on `provider` holds against, the narrowest first."""
    caps: list[Cap] = []
    pool = budgets.pool_of(person)
    if pool is not None:
        caps += pool_caps(pool, when, person) + pool_caps(pool, when)
    caps += [Cap("daily cap", "daily_usd", budgets.daily_usd, day_start(when)),
             Cap("monthly cap", "monthly_usd", budgets.monthly_usd, month_start(when))]
    pb = budgets.providers.get(provider)
    if pb is not None:
        caps += [Cap(f"{provider} daily cap", f"providers.{provider}.daily_usd", pb.daily_usd, day_start(when),
                     provider=provider),
                 Cap(f"{provider} monthly cap", f"providers.{provider}.monthly_usd", pb.monthly_usd,
                     month_start(when), provider=provider)]
    return [c for c in caps if c.usd is not None]


def _lower_to(left: float) -> str:
    return (f"lower --max-usd to {math.floor(left * 100 + 1e-6) / 100:.2f} or less" if left >= 0.01
            else "wait for the window to roll over")


def check_caps(
    budgets: Budgets, ledger: Ledger, provider: str, max_usd: float, now: float | None = None,
    exclude_run: str | None = None, person: str | None = None,
) -> None:
    """Refuse (BudgetError) if holding `max_usd` would break a cap of the account, the provider,
    `person`'s pool or `person` (default: GPURUN_USER / the login name); read-only."""
    if isinstance(max_usd, bool) or not isinstance(max_usd, (int, float)) or not math.isfinite(max_usd) or max_usd < 0:
        raise BudgetError(f"cannot hold {max_usd!r} USD: the hold must be a finite number >= 0")
    when = time.time() if now is None else float(now)
    who = settings.person() if person is None else person
    pool = budgets.pool_of(who)
    per_run = pool.per_person.per_run_usd if pool is not None else None
    if per_run is not None and max_usd > per_run + EPS_USD:
        raise BudgetError(f"{who}'s per-run cap in pool {pool.name} {per_run:.2f} USD: this launch holds"  # type: ignore[union-attr]
                          f" {max_usd:.2f}: {_lower_to(per_run)}, or raise pools.{pool.name}.per_person.per_run_usd"  # type: ignore[union-attr]
                          f" in {budgets.path}")
    for cap in caps_for(budgets, provider, who, when):
        used = cap.used(ledger, exclude_run)
        assert cap.usd is not None
        if used + max_usd > cap.usd + EPS_USD:
            left = max(0.0, cap.usd - used)
            raise BudgetError(
                f"{cap.label} {cap.usd:.2f} USD: {used:.2f} already spent or held, this launch"
                f" holds {max_usd:.2f}: {_lower_to(left)}, or raise {cap.key} in {budgets.path}"
            )


def reserve(
    budgets: Budgets, ledger: Ledger, run_id: str, provider: str, max_usd: float, now: float | None = None,
    person: str | None = None,
) -> None:
    """Hold `max_usd` for the run against every cap, or refuse; check and hold are one transaction
    (a ledger that cannot be reached refuses: LedgerUnavailable becomes the BudgetError)."""
    when = time.time() if now is None else float(now)
    who = settings.person() if person is None else person
    pool = budgets.pool_of(who)
    try:
        with ledger.transaction():
            check_caps(budgets, ledger, provider, max_usd, when, exclude_run=run_id, person=who)
            ledger.add_hold(run_id, provider, max_usd, at=when, person=who, pool=pool.name if pool else None)
    except LedgerError as exc:
        raise BudgetError(str(exc)) from None


def settle(ledger: Ledger, run_id: str, actual_usd: float) -> None:
    """Replace the run's hold by its actual cost (call when the instance is verified gone)."""
    if isinstance(actual_usd, bool) or not isinstance(actual_usd, (int, float)) \
            or not math.isfinite(actual_usd) or actual_usd < 0:
        raise BudgetError(f"cannot settle run {run_id} at {actual_usd!r} USD: the cost must be a finite number >= 0")
    try:
        ledger.settle(run_id, float(actual_usd))
    except LedgerError as exc:
        raise BudgetError(str(exc)) from None


@dataclass(frozen=True)
class CapUse:
    """How much of one cap is taken now (what `gpurun cost` prints and `gpurun dashboard` draws as a bar)."""

    name: str  # "daily cap", "runpod monthly cap", "pool course daily cap", "ann's daily cap in pool course" ...
    limit_usd: float | None  # None: the account's daily/monthly cap is not set in budgets.yaml
    used_usd: float  # spent + still held in the cap's window

    @property
    def over(self) -> bool:
        return self.limit_usd is not None and self.used_usd > self.limit_usd + EPS_USD


def cap_uses(ledger: Ledger, conf: Budgets, now: float) -> list[CapUse]:
    """The account's daily and monthly caps (set or not), each provider's, each pool's and each pool
    member's that budgets.yaml sets: the same caps a launch holds against (caps_for)."""
    day, month = day_start(now), month_start(now)
    caps = [Cap("daily cap", "daily_usd", conf.daily_usd, day), Cap("monthly cap", "monthly_usd", conf.monthly_usd, month)]
    for name, pb in conf.providers.items():
        caps += [Cap(f"{name} daily cap", f"providers.{name}.daily_usd", pb.daily_usd, day, provider=name),
                 Cap(f"{name} monthly cap", f"providers.{name}.monthly_usd", pb.monthly_usd, month, provider=name)]
    for pool in conf.pools.values():
        caps += pool_caps(pool, now)
        for person in pool.members:
            caps += pool_caps(pool, now, person)
    account = caps[:2]
    return [CapUse(c.label, c.usd, c.used(ledger)) for c in caps if c in account or c.usd is not None]
