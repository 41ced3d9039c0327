"""People and pools: budgets.yaml `pools:`, the caps a launch holds against, who may end whose run.

The holds are taken on both engines (SQLite and PostgreSQL): a pool shared by several machines is
the reason the ledger moved to a server.
"""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import pytest

from orchestrator.money.budgets_file import load_budgets
from orchestrator.money.caps import check_caps, reserve, settle
from orchestrator.money.errors import BudgetError
from orchestrator.money.pools import may_end
from orchestrator.state.ledger import Ledger

COURSE = """
per_run_default_usd: 1
per_run_max_usd: 5
daily_usd: 20
monthly_usd: null
pools:
  course:
    members: [ana, ben]
    admin: teacher
    daily_usd: 3
    total_usd: 4
    per_person:
      per_run_usd: 1.5
      daily_usd: 2
      monthly_usd: null
      total_usd: 2.5
"""


def course(tmp_path: Path, text: str = COURSE) -> Path:
    path = tmp_path / "budgets.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def launch_hold(budgets_file: Path, ledger: Ledger, run_id: str, person: str, usd: float, now: float) -> None:
    """What a launch does first: the hold, then the run (its person and pool come from the hold)."""
    b = load_budgets(budgets_file)
    with ledger.transaction():
        reserve(b, ledger, run_id, "local", usd, now=now, person=person)
        ledger.create_run(run_id, "local", usd, {}, "/tmp/" + run_id)


def test_pools_are_read_and_checked(tmp_path: Path) -> None:
    b = load_budgets(course(tmp_path))
    pool = b.pools["course"]
    assert pool.members == ("ana", "ben") and pool.admin == "teacher" and pool.people == ("ana", "ben", "teacher")
    assert pool.per_person.per_run_usd == 1.5 and pool.per_person.monthly_usd is None and pool.total_usd == 4
    assert b.pool_of("ana") is pool and b.pool_of("teacher") is pool and b.pool_of("zoe") is None
    twice = COURSE + "  other:\n    members: [ben]\n"
    with pytest.raises(BudgetError, match=r"line \d+: pools.other ben is already in pool course"):
        load_budgets(course(tmp_path, twice))
    with pytest.raises(BudgetError, match="pools.course.per_person.weekly_usd is not a known key"):
        load_budgets(course(tmp_path, COURSE.replace("monthly_usd: null\n      total", "weekly_usd: 1\n      total")))
    with pytest.raises(BudgetError, match="pools.course.members must be a list of people"):
        load_budgets(course(tmp_path, COURSE.replace("[ana, ben]", "ana")))
    with pytest.raises(BudgetError, match="ledger must be a postgresql://.*the value is not shown"):
        load_budgets(course(tmp_path, COURSE + "ledger: mysql://root:hunter2@db/x\n"))


@pytest.mark.usefixtures("ledger_engine")
def test_a_learner_over_their_cap_is_refused_while_another_member_launches(tmp_path: Path) -> None:
    file, ledger, now = course(tmp_path), Ledger(), time.time()
    launch_hold(file, ledger, "ana-1", "ana", 1.5, now)
    b = load_budgets(file)
    with pytest.raises(BudgetError, match=r"^ana's per-run cap in pool course 1\.50 USD: this launch holds 1\.60"):
        check_caps(b, ledger, "local", 1.6, now, person="ana")
    with pytest.raises(BudgetError, match=r"^ana's daily cap in pool course 2\.00 USD: 1\.50 already spent or held,"
                                          r" this launch holds 1\.00: lower --max-usd to 0\.50 or less, or raise"
                                          r" pools\.course\.per_person\.daily_usd in "):
        launch_hold(file, ledger, "ana-2", "ana", 1.0, now)
    assert ledger.get_run("ana-2") is None and ledger.hold("ana-2") is None  # nothing created for it
    launch_hold(file, ledger, "ben-1", "ben", 1.0, now)  # the other learner still launches
    run = ledger.get_run("ben-1")
    assert run is not None and (run.person, run.pool) == ("ben", "course")
    assert ledger.committed_usd(0.0, person="ana") == 1.5 and ledger.committed_usd(0.0, pool="course") == 2.5
    # The pool's own daily cap: 2.5 held, 3 a day for the pool.
    with pytest.raises(BudgetError, match=r"^pool course daily cap 3\.00 USD: 2\.50 already spent or held"):
        launch_hold(file, ledger, "ben-2", "ben", 1.0, now)
    # Tomorrow the daily caps start again; the totals (all time) do not.
    settle(ledger, "ana-1", 1.4)
    with pytest.raises(BudgetError, match=r"^ana's total cap in pool course 2\.50 USD: 1\.40 already spent"):
        launch_hold(file, ledger, "ana-3", "ana", 1.5, now + 86400)
    launch_hold(file, ledger, "ana-4", "ana", 1.0, now + 86400)
    with pytest.raises(BudgetError, match=r"^pool course total 4\.00 USD: 3\.40 already spent or held"):
        launch_hold(file, ledger, "ben-3", "ben", 1.0, now + 86400)
    # Someone outside every pool holds against the account's caps only.
    launch_hold(file, ledger, "zoe-1", "zoe", 5.0, now)
    assert ledger.get_run("zoe-1").pool is None  # type: ignore[union-attr]
    by_person = {(r["key"], r["provider"]): r for r in ledger.spend_by("person")}
    assert by_person[("ana", "local")]["runs"] == 2 and by_person[("ana", "local")]["cost_usd"] == pytest.approx(1.4)
    assert by_person[("zoe", "local")]["held_usd"] == 5.0


def test_who_may_end_whose_run(tmp_path: Path) -> None:
    pools = load_budgets(course(tmp_path)).pools
    assert may_end(pools, "ana", "ana", "course") is None
    assert "it is ana's run: only ana or pool course's admin (teacher) may tear it down (you are ben" in (
        may_end(pools, "ben", "ana", "course") or "")
    assert may_end(pools, "teacher", "ana", "course") is None
    assert may_end(pools, "teacher", None, None) is None  # an orphan no one owns is the admin's
    assert "only a pool admin (teacher)" in (may_end(pools, "ana", None, None) or "")
    assert may_end({}, "me", None, None) is None  # one person, no pools: every owner-less run is theirs
    assert "it is ana's run" in (may_end({}, "me", "ana", None) or "")
