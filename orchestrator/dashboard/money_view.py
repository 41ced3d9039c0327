"""The money page: spend by day, by provider and by person against the caps in budgets.yaml, and the
last `gpurun audit` with its orphans marked.

By day and by provider are the ledger's own `spend_by` (`gpurun cost`); the caps are
money.caps.cap_uses (`gpurun cost` too). By person adds up each run's cost as `gpurun status` shows
it (settled, else spent so far); a ledger without people puts every run under "-".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator import settings
from orchestrator.money import last_audit
from orchestrator.money.budgets_file import load_budgets
from orchestrator.money.caps import CapUse, cap_uses
from orchestrator.money.errors import BudgetError
from orchestrator.run.status import spent_usd
from orchestrator.state.ledger import Ledger


@dataclass(frozen=True)
class PersonSpend:
    person: str
    runs: int
    spent_usd: float
    open_runs: int


def by_person(ledger: Ledger, now: float) -> tuple[list[PersonSpend], list[str]]:
    """(each person's spend, biggest first; the runs that could not be counted, with why)."""
    totals: dict[str, list[float]] = {}
    problems: list[str] = []
    for run in ledger.list_runs():
        person = str(getattr(run, "person", None) or "-")
        try:
            spent = float(spent_usd(run, now))
        except Exception as exc:  # noqa: BLE001 - a malformed row is listed, not fatal
            problems.append(f"run {run.run_id}: {type(exc).__name__}: {exc}")
            continue
        entry = totals.setdefault(person, [0, 0.0, 0])
        entry[0] += 1
        entry[1] += spent
        entry[2] += int(run.open)
    rows = [PersonSpend(p, int(n), usd, int(o)) for p, (n, usd, o) in totals.items()]
    return sorted(rows, key=lambda r: (-r.spent_usd, r.person)), problems


def per_day(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ledger's spend_by("day") rows (one per day and provider) as one row per day, newest first."""
    days: dict[str, dict[str, Any]] = {}
    for row in rows:
        day = days.setdefault(row["key"], {"key": row["key"], "runs": 0, "cost_usd": 0.0, "held_usd": 0.0,
                                          "providers": []})
        day["runs"] += row["runs"]
        day["cost_usd"] += row["cost_usd"]
        day["held_usd"] += row["held_usd"]
        day["providers"].append(row["provider"])
    return sorted(days.values(), key=lambda d: d["key"], reverse=True)


def caps(ledger: Ledger, budgets: str | None, now: float) -> tuple[list[CapUse], str, str]:
    """(the caps' use, budgets.yaml's path, "" or why budgets.yaml could not be read)."""
    try:
        conf = load_budgets(budgets)
    except BudgetError as exc:
        return [], str(budgets or "budgets.yaml"), str(exc)
    return cap_uses(ledger, conf, now), str(conf.path), ""


def money(ledger: Ledger, budgets: str | None, now: float) -> dict[str, Any]:
    uses, path, problem = caps(ledger, budgets, now)
    daily = next((u.limit_usd for u in uses if u.name == "daily"), None)
    people, person_problems = by_person(ledger, now)
    audit, no_audit = last_audit.load(settings.home())
    return {
        "caps": uses, "budgets_path": path, "budgets_problem": problem, "daily_cap": daily,
        "by_day": per_day(ledger.spend_by("day")), "by_provider": ledger.spend_by("provider"),
        "by_person": people, "person_problems": person_problems,
        "audit": audit, "no_audit": no_audit,
    }
