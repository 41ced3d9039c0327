"""budgets.yaml lookup and validation, the deadline maths under each billing rule, caps and holds."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from datetime import datetime
from pathlib import Path

import pytest

from orchestrator.money.budget import (
    Allowance,
    allowance_for,
    day_start,
    max_runtime_s,
    month_start,
    reserve,
    settle,
)
from orchestrator.money.budgets_file import (
    CONSERVATIVE_BILLING,
    Budgets,
    ProviderBudget,
    find_budgets_file,
    load_budgets,
    packaged_budgets_file,
)
from orchestrator.money.errors import BudgetError
from orchestrator.state.ledger import Ledger
from providers.base import BillingRule

REPO = Path(__file__).resolve().parent.parent

PER_SECOND = BillingRule(1, 0, "test")
AWS_LIKE = BillingRule(1, 60, "test")
TEN_MIN = BillingRule(600, 0, "test")


def make_budgets(tmp_path: Path, **over) -> Budgets:
    values = dict(
        path=tmp_path / "budgets.yaml",
        per_run_default_usd=2.0,
        per_run_max_usd=20.0,
        daily_usd=None,
        monthly_usd=None,
        reserve_s=180.0,
        min_runtime_s=300.0,
        max_runtime_h=24.0,
        default_billing=CONSERVATIVE_BILLING,
        providers={
            "local": ProviderBudget(billing=PER_SECOND, reserve_s=15, min_runtime_s=20),
            "aws": ProviderBudget(billing=AWS_LIKE),
            "slow": ProviderBudget(billing=TEN_MIN),
        },
    )
    values.update(over)
    return Budgets(**values)


def write(tmp_path: Path, text: str, name: str = "budgets.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


MINIMAL = """
per_run_default_usd: 1
per_run_max_usd: 5
daily_usd: 10
monthly_usd: null
"""


# ---- the packaged default ---------------------------------------------------------------------


def test_packaged_default_loads_and_is_the_repo_file() -> None:
    packaged = packaged_budgets_file()
    assert packaged.resolve() == (REPO / "budgets.yaml").resolve()
    b = load_budgets(packaged)
    assert set(b.providers) >= {"local", "runpod", "aws", "datacrunch"}
    assert b.billing_for("aws") == BillingRule(1, 60, b.billing_for("aws").source)
    assert b.billing_for("runpod").increment_s == 1 and b.billing_for("runpod").minimum_s == 0
    # No sourced rule for DataCrunch: the conservative default, and it says so.
    assert b.billing_for("datacrunch").increment_s == 600
    assert "conservative default" in b.billing_for("datacrunch").source
    assert b.default_billing.increment_s == 600
    for name, pb in b.providers.items():
        assert pb.billing.source, f"{name} billing has no source"
    assert b.reserve_for("aws") == 180 and b.min_runtime_for("aws") == 300
    assert b.reserve_for("local") == 15 and b.min_runtime_for("local") == 20
    assert b.per_run_default_usd <= b.per_run_max_usd


def test_packaged_default_allows_the_make_run_launch() -> None:
    # `gpurun launch --provider local --max-usd 0.02 --usd-per-hour 1.2`: 60 s of budget.
    b = load_budgets(packaged_budgets_file())
    plan = allowance_for(b, "local", 0.02, 1.2, now=1000.0)
    assert plan.max_runtime_s == 60
    assert plan.deadline_epoch == 1060.0
    assert plan.stop_at_epoch == 1045.0 < plan.deadline_epoch
    assert plan.cost_at(plan.max_runtime_s) <= 0.02 + 1e-12


# ---- deadline maths ---------------------------------------------------------------------------


def test_max_runtime_per_second() -> None:
    assert max_runtime_s(0.02, 1.2, PER_SECOND) == 60
    assert max_runtime_s(1.0, 3.6, PER_SECOND) == 1000
    assert max_runtime_s(0.0199, 1.2, PER_SECOND) == 59  # 59.7 s affordable: whole seconds only
    assert max_runtime_s(0, 1.2, PER_SECOND) == 0


def test_max_runtime_sixty_second_minimum() -> None:
    # 60 s at 1.2 USD/h costs 0.02: below that the minimum charge alone is over budget.
    assert max_runtime_s(0.02, 1.2, AWS_LIKE) == 60
    assert max_runtime_s(0.0199, 1.2, AWS_LIKE) == 0
    assert max_runtime_s(0.01, 1.2, AWS_LIKE) == 0
    assert max_runtime_s(0.05, 1.2, AWS_LIKE) == 150
    assert AWS_LIKE.cost(max_runtime_s(0.05, 1.2, AWS_LIKE), 1.2) <= 0.05


def test_max_runtime_ten_minute_increments() -> None:
    # 2 USD/h: one 10-minute block costs 0.3333.
    assert max_runtime_s(0.33, 2.0, TEN_MIN) == 0
    assert max_runtime_s(0.34, 2.0, TEN_MIN) == 600
    assert max_runtime_s(1.0, 2.0, TEN_MIN) == 1800  # exactly 3 blocks
    assert max_runtime_s(0.99, 2.0, TEN_MIN) == 1200
    # One second more than the answer is billed a whole extra block: over budget.
    assert TEN_MIN.cost(1200 + 1, 2.0) > 0.99


def test_max_runtime_minimum_not_a_multiple_of_increment() -> None:
    rule = BillingRule(600, 900, "test")  # billed at least 900 s, rounded up to 600 s: 1200 s
    assert rule.billed_seconds(1) == 1200
    assert max_runtime_s(1100 / 3600, 1.0, rule) == 0
    assert max_runtime_s(1200 / 3600, 1.0, rule) == 1200


@pytest.mark.parametrize("rule", [PER_SECOND, AWS_LIKE, TEN_MIN, BillingRule(7, 30, "odd")])
@pytest.mark.parametrize("budget", [0.01, 0.02, 0.1, 0.37, 1.0, 3.0, 17.31])
@pytest.mark.parametrize("price", [0.19, 1.2, 2.0, 3.89, 32.77])
def test_max_runtime_is_exact(rule: BillingRule, budget: float, price: float) -> None:
    t = max_runtime_s(budget, price, rule)
    if t > 0:
        assert rule.cost(t, price) <= budget + 1e-9
    # Any longer runtime is billed more than the budget (the answer is the longest affordable one).
    assert rule.cost(t + 1, price) > budget or (t == 0 and rule.cost(1, price) > budget)


def test_max_runtime_zero_price_is_unbounded_and_plan_bounds_it(tmp_path: Path) -> None:
    assert math.isinf(max_runtime_s(1.0, 0.0, PER_SECOND))
    b = make_budgets(tmp_path, max_runtime_h=2.0)
    plan = allowance_for(b, "local", 1.0, 0.0, now=0.0)
    assert plan.max_runtime_s == 7200
    assert plan.deadline_epoch == 7200 and plan.stop_at_epoch == 7200 - 15
    assert plan.cost_at(10_000) == 0


def test_max_runtime_h_bounds_a_priced_run(tmp_path: Path) -> None:
    b = make_budgets(tmp_path, max_runtime_h=0.5)
    plan = allowance_for(b, "aws", 20.0, 1.0, now=0.0)  # 20 USD buys 20 h; the bound is 30 min
    assert plan.max_runtime_s == 1800


def test_plan_fields_and_round_trip(tmp_path: Path) -> None:
    b = make_budgets(tmp_path)
    plan = allowance_for(b, "slow", 1.0, 2.0, now=5000.0)
    assert plan.billing == TEN_MIN
    assert plan.max_runtime_s == 1800
    assert plan.clock_start_epoch == 5000.0
    assert plan.deadline_epoch == 5000.0 + 1800
    assert plan.stop_at_epoch == plan.deadline_epoch - 180
    assert plan.train_s == 1800 - 180
    assert plan.cost_at(1) == pytest.approx(600 * 2.0 / 3600)
    assert plan.cost_at(plan.max_runtime_s) <= 1.0
    assert Allowance.from_dict(plan.to_dict()) == plan
    moved = plan.with_clock_start(9000.0)
    assert moved.deadline_epoch == 9000.0 + 1800 and moved.stop_at_epoch == 9000.0 + 1620


def test_plan_uses_default_budget_and_default_billing(tmp_path: Path) -> None:
    b = make_budgets(tmp_path)
    plan = allowance_for(b, "unlisted", None, 2.0, now=0.0)
    assert plan.max_usd == 2.0
    assert plan.billing == CONSERVATIVE_BILLING
    assert plan.max_runtime_s == 3600
    assert plan.reserve_s == 180 and plan.min_runtime_s == 300


# ---- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, words",
    [
        (-1.0, "more than 0"),
        (0.0, "more than 0"),
        (float("nan"), "not a finite number"),
        (float("inf"), "not a finite number"),
        ("3", "not a number"),
        (True, "not a number"),
        (25.0, "above per_run_max_usd 20.00"),
    ],
)
def test_plan_refuses_bad_budgets(tmp_path: Path, bad: object, words: str) -> None:
    b = make_budgets(tmp_path)
    with pytest.raises(BudgetError) as info:
        allowance_for(b, "local", bad, 1.2)  # type: ignore[arg-type]
    msg = str(info.value)
    assert words in msg and "\n" not in msg


def test_plan_refuses_bad_price(tmp_path: Path) -> None:
    b = make_budgets(tmp_path)
    for price in (-1.0, float("nan"), float("inf")):
        with pytest.raises(BudgetError, match="USD/h"):
            allowance_for(b, "local", 1.0, price)


def test_plan_refuses_too_small_budget_with_buys_and_needs(tmp_path: Path) -> None:
    b = make_budgets(tmp_path)
    with pytest.raises(BudgetError) as info:
        allowance_for(b, "local", 0.01, 1.2)
    assert str(info.value) == (
        "--max-usd 0.01 at 1.20 USD/h buys 30 s; a run needs 20 s of training + 15 s reserve = 0.0117 USD:"
        " raise --max-usd to at least 0.02"
    )
    # ... and the suggested budget really is enough.
    plan = allowance_for(b, "local", 0.02, 1.2, now=0.0)
    assert plan.train_s >= plan.min_runtime_s


def test_too_small_under_minimum_and_increments(tmp_path: Path) -> None:
    b = make_budgets(tmp_path)
    with pytest.raises(BudgetError) as info:
        allowance_for(b, "aws", 0.01, 1.2)
    msg = str(info.value)
    assert "buys 0 s (less than the minimum charge of 60 s)" in msg
    assert "5 min of training + 3 min reserve = 0.1600 USD: raise --max-usd to at least 0.16" in msg
    assert allowance_for(b, "aws", 0.16, 1.2, now=0).train_s >= 300

    with pytest.raises(BudgetError) as info:
        allowance_for(b, "slow", 0.05, 2.0)
    msg = str(info.value)
    assert "(less than one billing increment of 10 min)" in msg
    assert "(billed as 10 min) = 0.3333 USD: raise --max-usd to at least 0.34" in msg
    assert allowance_for(b, "slow", 0.34, 2.0, now=0).train_s >= 300


def test_too_small_says_when_needed_budget_is_over_the_max(tmp_path: Path) -> None:
    b = make_budgets(tmp_path, per_run_max_usd=1.0)
    with pytest.raises(BudgetError, match=r"at least 2\.00 \(above per_run_max_usd 1\.00"):
        allowance_for(b, "aws", 1.0, 15.0)


def test_too_short_max_runtime_h(tmp_path: Path) -> None:
    b = make_budgets(tmp_path, max_runtime_h=0.05)  # 3 min
    with pytest.raises(BudgetError) as info:
        allowance_for(b, "aws", 5.0, 1.0)
    assert str(info.value) == (
        f"max_runtime_h 0.05 in {b.path} allows 3 min; a run needs 5 min of training + 3 min reserve:"
        " raise max_runtime_h"
    )


# ---- budgets.yaml validation ------------------------------------------------------------------


def test_wrong_type_names_file_key_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, """
        per_run_default_usd: 1
        per_run_max_usd: 5
        daily_usd: 10
        monthly_usd: 50
        providers:
          aws:
            daily_usd: ten
        """)
    with pytest.raises(BudgetError) as info:
        load_budgets(path)
    assert str(info.value) == f"{path} line 7: providers.aws.daily_usd must be a number >= 0 (or null for no cap), got 'ten'"


@pytest.mark.parametrize(
    "text, line, words",
    [
        (MINIMAL + "reserve_s: -5\n", 5, "reserve_s must be a number >= 0, got -5"),
        (MINIMAL + "max_runtime_h: 0\n", 5, "max_runtime_h must be a number > 0"),
        (MINIMAL + "default_billing:\n  increment_s: 1.5\n  minimum_s: 0\n  source: x\n", 6,
         "default_billing.increment_s must be a whole number > 0, got 1.5"),
        (MINIMAL + "default_billing:\n  increment_s: 1\n  minimum_s: 0\n  source: ''\n", 8,
         "default_billing.source must be a non-empty text"),
        (MINIMAL + "providers:\n  aws:\n    billing:\n      increment_s: 1\n      minimum_s: 60\n", 7,
         "providers.aws.billing.source is missing"),
        (MINIMAL + "providers:\n  aws:\n    reserve_s: [1, 2]\n", 7, "got a list"),
        (MINIMAL.replace("daily_usd: 10", "daily_usd: yes"), 3, "daily_usd must be a number >= 0 (or null for no cap), got True"),
        (MINIMAL.replace("per_run_default_usd: 1", "per_run_default_usd: 9"), 1, "above per_run_max_usd"),
        (MINIMAL + "providers:\n  AWS!: {}\n", 6, "is not a provider name"),
        (MINIMAL + "monthly_usd: 3\n", 5, "monthly_usd appears twice (first on line 4)"),
    ],
)
def test_invalid_values_name_key_and_line(tmp_path: Path, text: str, line: int, words: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(BudgetError) as info:
        load_budgets(path)
    msg = str(info.value)
    assert msg.startswith(f"{path} line {line}: "), msg
    assert words in msg and "\n" not in msg


def test_unknown_keys_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "dayly_usd: 3\n")
    with pytest.raises(BudgetError, match=r"line 5: dayly_usd is not a known key: use one of per_run_default_usd"):
        load_budgets(path)
    path = write(tmp_path, MINIMAL + "providers:\n  aws:\n    dailyusd: 3\n")
    with pytest.raises(BudgetError, match=r"line 7: providers.aws.dailyusd is not a known key"):
        load_budgets(path)
    path = write(tmp_path, MINIMAL + "default_billing:\n  increment: 1\n")
    with pytest.raises(BudgetError, match=r"line 6: default_billing.increment is not a known key"):
        load_budgets(path)


def test_wrong_value_reported_before_missing_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "per_run_default_usd: 2\nmonthly_usd: lots\n")
    with pytest.raises(BudgetError) as info:
        load_budgets(path)
    assert str(info.value) == f"{path} line 2: monthly_usd must be a number >= 0 (or null for no cap), got 'lots'"


def test_missing_required_keys_and_bad_files(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace("daily_usd: 10\n", ""))
    with pytest.raises(BudgetError, match="daily_usd is missing: set a number, or null for no daily cap"):
        load_budgets(path)
    path = write(tmp_path, "")
    with pytest.raises(BudgetError, match="the file is empty"):
        load_budgets(path)
    path = write(tmp_path, "- 1\n- 2\n")
    with pytest.raises(BudgetError, match="must be a mapping"):
        load_budgets(path)
    path = write(tmp_path, "per_run_default_usd: [1,\n")
    with pytest.raises(BudgetError, match=r"line \d+: not valid YAML .*fix the syntax"):
        load_budgets(path)
    with pytest.raises(BudgetError, match=r"--budgets .*nope.yaml: no such file"):
        load_budgets(tmp_path / "nope.yaml")


def test_minimal_file_fills_defaults(tmp_path: Path) -> None:
    b = load_budgets(write(tmp_path, MINIMAL + "providers:\n  aws:\n  runpod:\n    monthly_usd: 7\n"))
    assert b.daily_usd == 10 and b.monthly_usd is None
    assert b.reserve_s == 180 and b.min_runtime_s == 300 and b.max_runtime_h == 24
    assert b.default_billing == CONSERVATIVE_BILLING
    assert b.billing_for("aws") == CONSERVATIVE_BILLING  # listed without billing: conservative
    assert b.providers["runpod"].monthly_usd == 7
    assert b.reserve_for("runpod") == 180


# ---- lookup order -----------------------------------------------------------------------------


def test_lookup_order(tmp_path: Path, gpurun_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cwd = tmp_path / "work"
    cwd.mkdir()
    assert find_budgets_file(cwd=cwd) == packaged_budgets_file()
    home_file = write(gpurun_home, MINIMAL)
    assert find_budgets_file(cwd=cwd) == home_file
    here = write(cwd, MINIMAL)
    assert find_budgets_file(cwd=cwd) == here
    explicit = write(tmp_path, MINIMAL, "mine.yaml")
    assert find_budgets_file(explicit, cwd=cwd) == explicit
    assert find_budgets_file(str(explicit), cwd=cwd) == explicit
    with pytest.raises(BudgetError, match="no such file"):
        find_budgets_file(tmp_path / "missing.yaml", cwd=cwd)
    # load_budgets(None) follows the same order from the process's cwd.
    monkeypatch.chdir(cwd)
    assert load_budgets().path.samefile(here)


def test_packaged_default_used_outside_the_repo(tmp_path: Path) -> None:
    env = {**os.environ, "GPURUN_HOME": str(tmp_path / "home"), "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", "from orchestrator.money.budgets_file import load_budgets; print(load_budgets().path)"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=True,
    )
    assert Path(out.stdout.strip()) == packaged_budgets_file()


# ---- caps, holds and settlement ---------------------------------------------------------------


def new_run(ledger: Ledger, run_id: str, provider: str = "aws", max_usd: float = 1.0) -> None:
    ledger.create_run(run_id, provider, max_usd, {}, "/tmp/" + run_id)


@pytest.mark.usefixtures("ledger_engine")  # both engines: SQLite and PostgreSQL
def test_reserve_holds_and_settle_releases(tmp_path: Path) -> None:
    ledger = Ledger()
    b = make_budgets(tmp_path, daily_usd=5.0, monthly_usd=50.0)
    now = datetime(2026, 3, 10, 12, 0).timestamp()
    new_run(ledger, "run-a")
    reserve(b, ledger, "run-a", "aws", 3.0, now=now)
    assert ledger.committed_usd(day_start(now)) == pytest.approx(3.0)
    # A resumed launch re-reserving the same run does not count itself twice.
    reserve(b, ledger, "run-a", "aws", 3.0, now=now)
    assert ledger.committed_usd(day_start(now)) == pytest.approx(3.0)

    new_run(ledger, "run-b")
    with pytest.raises(BudgetError) as info:
        reserve(b, ledger, "run-b", "aws", 2.5, now=now)
    assert str(info.value) == (
        f"daily cap 5.00 USD: 3.00 already spent or held, this launch holds 2.50: lower --max-usd to 2.00 or less,"
        f" or raise daily_usd in {b.path}"
    )
    assert ledger.hold("run-b") is None  # a refusal holds nothing

    settle(ledger, "run-a", 0.4)
    run = ledger.get_run("run-a")
    assert run is not None and run.settled and run.cost_usd == pytest.approx(0.4)
    assert ledger.committed_usd(day_start(now)) == pytest.approx(0.4)
    reserve(b, ledger, "run-b", "aws", 2.5, now=now)  # fits now that the hold is released
    assert ledger.committed_usd(day_start(now)) == pytest.approx(2.9)

    with pytest.raises(BudgetError, match="finite number >= 0"):
        settle(ledger, "run-b", float("nan"))


@pytest.mark.usefixtures("ledger_engine")  # both engines: SQLite and PostgreSQL
def test_monthly_cap_already_spent(tmp_path: Path) -> None:
    ledger = Ledger()
    b = make_budgets(tmp_path, daily_usd=None, monthly_usd=50.0)
    now = datetime(2026, 3, 20, 12, 0).timestamp()
    earlier_this_month = datetime(2026, 3, 2, 9, 0).timestamp()
    last_month = datetime(2026, 2, 27, 9, 0).timestamp()
    new_run(ledger, "old-run")
    ledger.add_hold("old-run", "aws", 40.0, at=last_month)
    settle(ledger, "old-run", 40.0)  # last month: does not count
    new_run(ledger, "spent-run")
    ledger.add_hold("spent-run", "aws", 45.0, at=earlier_this_month)
    settle(ledger, "spent-run", 45.0)
    new_run(ledger, "held-run")
    ledger.add_hold("held-run", "runpod", 4.1, at=earlier_this_month)
    new_run(ledger, "new-run")
    with pytest.raises(BudgetError) as info:
        reserve(b, ledger, "new-run", "aws", 3.0, now=now)
    assert str(info.value) == (
        "monthly cap 50.00 USD: 49.10 already spent or held, this launch holds 3.00: lower --max-usd to 0.90"
        f" or less, or raise monthly_usd in {b.path}"
    )
    reserve(b, ledger, "new-run", "aws", 0.9, now=now)


@pytest.mark.usefixtures("ledger_engine")  # both engines: SQLite and PostgreSQL
def test_per_provider_cap(tmp_path: Path) -> None:
    ledger = Ledger()
    b = make_budgets(tmp_path, daily_usd=100.0)
    b.providers["aws"].daily_usd = 2.0
    now = datetime(2026, 3, 20, 12, 0).timestamp()
    for rid, prov in (("r1", "aws"), ("r2", "runpod"), ("r3", "aws"), ("r4", "runpod")):
        new_run(ledger, rid, prov)
    reserve(b, ledger, "r1", "aws", 1.5, now=now)
    reserve(b, ledger, "r2", "runpod", 5.0, now=now)  # other providers do not count against aws
    with pytest.raises(BudgetError, match=r"^aws daily cap 2\.00 USD: 1\.50 already spent or held, this launch holds"
                                          r" 1\.00: .*providers\.aws\.daily_usd"):
        reserve(b, ledger, "r3", "aws", 1.0, now=now)
    reserve(b, ledger, "r4", "runpod", 5.0, now=now)
    # Yesterday's aws spend does not count today.
    tomorrow = datetime(2026, 3, 21, 0, 0, 1).timestamp()
    reserve(b, ledger, "r3", "aws", 2.0, now=tomorrow)


@pytest.mark.usefixtures("ledger_engine")  # both engines: SQLite and PostgreSQL
def test_cap_fully_spent_says_wait(tmp_path: Path) -> None:
    ledger = Ledger()
    b = make_budgets(tmp_path, daily_usd=1.0)
    now = datetime(2026, 3, 20, 12, 0).timestamp()
    new_run(ledger, "r1")
    new_run(ledger, "r2")
    reserve(b, ledger, "r1", "aws", 1.0, now=now)
    with pytest.raises(BudgetError, match="wait for the window to roll over, or raise daily_usd"):
        reserve(b, ledger, "r2", "aws", 0.5, now=now)


def test_local_day_and_month_boundaries() -> None:
    t = datetime(2026, 7, 15, 23, 59, 59).timestamp()
    assert datetime.fromtimestamp(day_start(t)) == datetime(2026, 7, 15)
    assert datetime.fromtimestamp(month_start(t)) == datetime(2026, 7, 1)
    assert day_start(datetime(2026, 7, 16, 0, 0, 0).timestamp()) == datetime(2026, 7, 16).timestamp()


def test_local_time_is_the_tz_of_the_process(tmp_path: Path) -> None:
    # The same instant is a different calendar day in two time zones: caps follow the local one.
    code = (
        "from orchestrator.money.budget import day_start; import sys; "
        "print(day_start(1767225600.0 + 3600))"  # 2026-01-01 01:00 UTC
    )
    outs = {}
    for tz in ("UTC", "America/New_York"):
        env = {**os.environ, "TZ": tz, "PYTHONPATH": str(REPO)}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        outs[tz] = float(out.stdout)
    assert outs["UTC"] == 1767225600.0
    if not Path("/usr/share/zoneinfo/America/New_York").exists():
        pytest.skip("no tz database on this machine")
    assert outs["America/New_York"] == 1767225600.0 - 24 * 3600 + 5 * 3600  # 2025-12-31 00:00 EST


@pytest.mark.usefixtures("ledger_engine")  # both engines: SQLite and PostgreSQL
def test_reserve_rejects_bad_hold(tmp_path: Path) -> None:
    ledger = Ledger()
    b = make_budgets(tmp_path)
    new_run(ledger, "r1")
    for bad in (float("nan"), -1.0, float("inf")):
        with pytest.raises(BudgetError, match="cannot hold"):
            reserve(b, ledger, "r1", "aws", bad)
    settle(ledger, "r1", 0.1)
    with pytest.raises(BudgetError, match="already settled"):
        reserve(b, ledger, "r1", "aws", 1.0)


_RACE_SCRIPT = r"""
import sys, time
from pathlib import Path
from orchestrator.money.budget import reserve
from orchestrator.money.budgets_file import load_budgets
from orchestrator.money.errors import BudgetError
from orchestrator.state.ledger import Ledger

home, budgets_file, run_id, go_at = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
ledger = Ledger(Path(home))
budgets = load_budgets(budgets_file)
# Widen the window between "read the total" and "add the hold": without the write lock taken up
# front, both processes would read 0.00 and both hold.
original = ledger.committed_usd
def slow_committed(*args, **kwargs):
    value = original(*args, **kwargs)
    time.sleep(0.5)
    return value
ledger.committed_usd = slow_committed
while time.time() < go_at:
    time.sleep(0.005)
try:
    reserve(budgets, ledger, run_id, "aws", 3.0)
    print("HELD")
except BudgetError as exc:
    print("REFUSED", exc)
"""


@pytest.mark.usefixtures("ledger_engine")  # both engines: SQLite and PostgreSQL
def test_two_processes_cannot_both_pass_a_cap(tmp_path: Path, gpurun_home: Path) -> None:
    budgets_file = write(tmp_path, MINIMAL.replace("daily_usd: 10", "daily_usd: 5"))
    ledger = Ledger(gpurun_home)
    new_run(ledger, "race-a")
    new_run(ledger, "race-b")
    import time

    go_at = time.time() + 1.5  # both start importing now; both call reserve at the same instant
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RACE_SCRIPT, str(gpurun_home), str(budgets_file), rid, str(go_at)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for rid in ("race-a", "race-b")
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    results = sorted(o[0].split()[0] for o in outs)
    assert results == ["HELD", "REFUSED"], outs
    assert ledger.committed_usd(0.0) == pytest.approx(3.0)


# ---- offer fallback: what earlier attempts cost ----------------------------------------------------


def test_an_attempt_after_failed_boots_gets_only_the_rest_of_the_cap(tmp_path: Path) -> None:
    b = make_budgets(tmp_path)
    fresh = allowance_for(b, "local", 1.0, 36.0, now=0.0)
    after = allowance_for(b, "local", 1.0, 36.0, now=0.0, spent_before_usd=0.25)
    assert after.max_usd == 1.0 and after.spent_before_usd == 0.25
    assert after.max_runtime_s == 75 and fresh.max_runtime_s == 100  # 0.75 USD at 0.01 USD/s
    # The cost function is the run's: earlier attempts plus this one; never more than the cap.
    assert after.cost_at(after.max_runtime_s) == pytest.approx(1.0)
    assert after.attempt_cost_at(10) == pytest.approx(0.1) and after.cost_at(10) == pytest.approx(0.35)
    assert Allowance.from_dict(after.to_dict()) == after


def test_failed_boots_that_leave_too_little_are_refused_saying_so(tmp_path: Path) -> None:
    b = make_budgets(tmp_path)
    with pytest.raises(BudgetError, match=r"0\.9000 USD already spent on failed boots.*raise --max-usd to at least 1\.25"):
        allowance_for(b, "local", 1.0, 36.0, spent_before_usd=0.9)
    with pytest.raises(BudgetError, match="nothing is left for another offer"):
        allowance_for(b, "local", 1.0, 36.0, spent_before_usd=1.0)


@pytest.mark.parametrize("value", ["0", "1.5", "-0.1"])
def test_boot_share_must_be_a_share_of_the_cap(tmp_path: Path, value: str) -> None:
    with pytest.raises(BudgetError, match="boot_share"):
        load_budgets(write(tmp_path, MINIMAL + f"boot_share: {value}\n"))
    assert load_budgets(write(tmp_path, MINIMAL + "boot_share: 0.5\n")).boot_share == 0.5
    assert load_budgets(write(tmp_path, MINIMAL)).boot_share == 0.2
