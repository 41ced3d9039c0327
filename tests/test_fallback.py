"""Offer fallback (orchestrator.run.provisioning): the plan's offers are tried in order, each failed
boot torn down and verified before the next, their cost bounded by --max-boot-usd and counted
inside --max-usd. Driven through the scripted provider of tests/fakes/shelf_provider.py; the
fallback against the RunPod and DataCrunch API fakes is in tests/test_e2e_fallback.py."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from orchestrator.errors import RunFailed
from orchestrator.money.budget import allowance_for
from orchestrator.money.budgets_file import Budgets, ProviderBudget
from orchestrator.money.errors import BudgetError
from orchestrator.plan.launch import make_plan
from orchestrator.plan.options import LaunchError, LaunchOptions
from orchestrator.plan.record import RunRecord
from orchestrator.run.controller import Controller
from orchestrator.run.provisioning import boot_window_s
from orchestrator.state.ledger import Ledger
from orchestrator.state.phases import is_phase
from providers.base import BillingRule, ProviderError

PRICE = 36.0  # USD/h: 0.01 USD a second, so the money in each assertion is easy to read


@pytest.fixture(autouse=True)
def shelf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPURUN_PROVIDERS", "shelf=tests.fakes.shelf_provider:ShelfProvider")


def stock(monkeypatch: pytest.MonkeyPatch, *offers: tuple[str, str, float, str]) -> None:
    monkeypatch.setenv("GPURUN_SHELF", json.dumps(
        [{"gpu": g, "region": r, "usd_per_hour": p, "boot": b} for g, r, p, b in offers]))


def budgets(tmp_path: Path) -> str:
    path = tmp_path / "budgets.yaml"
    path.write_text("per_run_default_usd: 2\nper_run_max_usd: 20\ndaily_usd: null\nmonthly_usd: null\n"
                    "reserve_s: 5\nmin_runtime_s: 5\nboot_share: 0.2\n"
                    "providers:\n  shelf:\n    billing: {increment_s: 1, minimum_s: 0, source: test}\n")
    return str(path)


def make_budgets(tmp_path: Path, rule: BillingRule) -> Budgets:
    return Budgets(path=tmp_path / "budgets.yaml", per_run_default_usd=1.0, per_run_max_usd=20.0, daily_usd=None,
                   monthly_usd=None, reserve_s=5, min_runtime_s=5, providers={"shelf": ProviderBudget(billing=rule)})


def options(tmp_path: Path, **kw: Any) -> LaunchOptions:
    workdir = tmp_path / "job"
    workdir.mkdir(exist_ok=True)
    base: dict[str, Any] = dict(provider="shelf", max_usd=1.0, budgets=budgets(tmp_path),
                                runs_dir=str(tmp_path / "runs"), workdir=str(workdir),
                                command=["python3", "-c", "print('trained')"])
    return LaunchOptions(**{**base, **kw})


def launch(tmp_path: Path, **kw: Any) -> Controller:
    ctl = Controller.create(Ledger(), make_plan(options(tmp_path, **kw)))
    ctl.launch(attach=True)
    return ctl


def attempts(ctl: Controller) -> list[dict[str, Any]]:
    return RunRecord.of_run(ctl.refresh()).attempts


def phases(ctl: Controller) -> list[str]:
    return [e.phase for e in Ledger().events(ctl.run.run_id) if is_phase(e.phase)]


def proof(ctl: Controller) -> dict[str, Any]:
    return json.loads((Path(ctl.run.run_dir) / "shutdown_proof.json").read_text())


# ---- the plan ---------------------------------------------------------------------------------------


def test_the_plan_ranks_the_gpus_asked_in_order_each_cheapest_variant_first(tmp_path, monkeypatch) -> None:
    stock(monkeypatch, ("H100", "us", 3.0, "ok"), ("A100", "eu", 1.0, "ok"), ("H100", "eu", 2.0, "ok"),
          ("L4", "us", 0.5, "ok"))
    plan = make_plan(options(tmp_path, gpu="H100,A100"))
    assert (plan.offer.gpu, plan.offer.region) == ("H100", "eu")  # the user's first GPU, not the cheapest GPU
    assert [(o.gpu, o.region) for o in plan.fallbacks] == [("H100", "us"), ("A100", "eu")]
    rows = dict(plan.rows())
    assert "2. H100 x1 (H100-box, us)" in rows["fallback"] and "3. A100" in rows["fallback"]
    assert "L4" not in rows["fallback"]  # a GPU the user did not name is never chosen for them
    assert "--max-boot-usd" in rows["failed boots"] and "0.2000 USD" in rows["failed boots"]


def test_without_gpu_only_the_cheapest_gpus_other_variants_are_fallbacks(tmp_path, monkeypatch) -> None:
    stock(monkeypatch, ("H100", "us", 3.0, "ok"), ("L4", "us", 0.5, "ok"), ("L4", "eu", 0.6, "ok"))
    plan = make_plan(options(tmp_path))
    assert [(o.gpu, o.region) for o in [plan.offer, *plan.fallbacks]] == [("L4", "us"), ("L4", "eu")]


def test_a_candidate_the_budget_cannot_carry_is_skipped_with_its_reason(tmp_path, monkeypatch) -> None:
    # 1 USD at 7200 USD/h buys 0.5 s: that offer is dropped, the plan says why; the cheap one stays.
    stock(monkeypatch, ("H100", "us", 3.0, "ok"), ("H100", "eu", 7200.0, "ok"))
    plan = make_plan(options(tmp_path, gpu="H100"))
    assert plan.fallbacks == [] and plan.skipped[0][0].region == "eu"
    assert "raise --max-usd" in dict(plan.rows())["skipped"]


def test_no_candidate_left_refuses_with_the_chosen_offers_reason(tmp_path, monkeypatch) -> None:
    stock(monkeypatch, ("H100", "us", 7200.0, "ok"))
    with pytest.raises(BudgetError, match="raise --max-usd"):
        make_plan(options(tmp_path, gpu="H100"))


@pytest.mark.parametrize("value", [0.0, -1.0, 1.5])
def test_max_boot_usd_must_be_a_part_of_the_cap(tmp_path, monkeypatch, value: float) -> None:
    stock(monkeypatch, ("H100", "us", PRICE, "ok"))
    with pytest.raises(LaunchError, match="--max-boot-usd"):
        make_plan(options(tmp_path, max_boot_usd=value))


def test_an_unknown_gpu_in_the_list_is_refused_naming_what_exists(tmp_path, monkeypatch) -> None:
    stock(monkeypatch, ("H100", "us", PRICE, "ok"))
    with pytest.raises(ProviderError, match="available: H100"):
        make_plan(options(tmp_path, gpu="B200,GB300"))


# ---- the attempts -----------------------------------------------------------------------------------


def test_each_failed_offer_is_gone_before_the_next_and_the_run_lands_on_the_first_that_boots(
        tmp_path, monkeypatch) -> None:
    stock(monkeypatch, ("H100", "r1", PRICE, "no_capacity"), ("H100", "r2", PRICE, "boot_failure"),
          ("H100", "r3", PRICE, "vanishes"), ("H100", "r4", PRICE, "ok"))
    ctl = launch(tmp_path, gpu="H100")
    run = ctl.refresh()
    assert run.phase == "verified" and run.job_exit_code == 0
    tried = attempts(ctl)
    assert [(a["attempt"], a["region"]) for a in tried] == [(1, "r1"), (2, "r2"), (3, "r3")]
    assert "no capacity" in tried[0]["reason"] and tried[0]["instance_id"] is None
    assert "will not boot" in tried[1]["reason"] and "went away" in tried[2]["reason"]
    # Order of events: each failed attempt's terminate request comes before the next create.
    events = [(e.phase, e.payload) for e in Ledger().events(run.run_id)]
    creates = [i for i, (p, _) in enumerate(events) if p == "creating"]
    assert len(creates) == 4
    for failed in tried[1:]:
        term = next(i for i, (p, pl) in enumerate(events)
                    if p == "terminate_request" and pl.get("instance_id") == failed["instance_id"])
        assert creates[failed["attempt"] - 1] < term < creates[failed["attempt"]]
    # The run's one proof: every attempt's instance gone, the attempts listed, the cost inside the cap.
    p = proof(ctl)
    assert p["verified"] is True and len(p["instance_ids"]) == 3
    assert all(s in ("terminated", "not_found") for s in p["final_states"].values())
    assert [a["attempt"] for a in p["attempts"]] == [1, 2, 3]
    assert p["cost"]["estimated_usd"] <= 1.0
    assert phases(ctl)[:6] == ["planned", "creating", "creating", "booting", "creating", "booting"]
    card = (Path(run.run_dir) / "EVIDENCE.md").read_text()
    assert "- failed attempt 1: H100 x1 (H100-box, r1)" in card and "instance none made" in card
    assert "- failed attempt 3:" in card


def test_failed_boots_count_against_the_cap_and_shorten_the_next_deadline(tmp_path, monkeypatch) -> None:
    stock(monkeypatch, ("H100", "r1", PRICE, "boot_failure"), ("H100", "r2", PRICE, "ok"))
    ctl = launch(tmp_path, gpu="H100")
    run = ctl.refresh()
    (failed,) = attempts(ctl)
    assert failed["cost_usd"] > 0  # billing starts at the create call, booted or not
    allowance = RunRecord.of_run(run).allowance
    assert allowance.spent_before_usd == pytest.approx(failed["cost_usd"])
    # The second offer's deadline is what is left of the cap at its price, from its own create call.
    left_s = (1.0 - failed["cost_usd"]) * 3600 / PRICE
    assert run.deadline_epoch - run.clock_start_epoch == pytest.approx(left_s, abs=1.0)
    assert run.cost_usd is not None and failed["cost_usd"] < run.cost_usd <= 1.0


def test_a_boot_that_never_ends_is_abandoned_when_the_boot_budget_is_spent(tmp_path, monkeypatch) -> None:
    # 0.06 USD of boot budget at 0.01 USD/s: the pending offer gets half, a 3 s window, then the next one.
    stock(monkeypatch, ("H100", "r1", PRICE, "pending"), ("H100", "r2", PRICE, "ok"))
    ctl = launch(tmp_path, gpu="H100", max_boot_usd=0.06)
    (failed,) = attempts(ctl)
    assert "boot window (3 s)" in failed["reason"] and failed["cost_usd"] < 0.06
    assert ctl.refresh().phase == "verified" and ctl.run.job_exit_code == 0


def test_when_no_offer_boots_the_run_fails_naming_each_and_nothing_is_left(tmp_path, monkeypatch) -> None:
    stock(monkeypatch, ("H100", "r1", PRICE, "no_capacity"), ("A100", "r2", PRICE, "boot_failure"))
    ctl = Controller.create(Ledger(), make_plan(options(tmp_path, gpu="H100,A100")))
    with pytest.raises(RunFailed) as err:
        ctl.launch(attach=True)
    message = str(err.value)
    assert "no offer came up" in message and "1. H100" in message and "2. A100" in message
    assert "\n" not in message
    run = ctl.refresh()
    assert run.phase == "verified" and proof(ctl)["verified"] is True
    assert all(Ledger().instances(run.run_id)[i].state in ("terminated", "not_found")
               for i in range(len(Ledger().instances(run.run_id))))


def test_the_boot_budget_spent_stops_the_fallback_before_the_next_offer(tmp_path, monkeypatch) -> None:
    # Half of 0.01 USD buys no whole second: the first pending offer is abandoned at its first look,
    # and the second billed second it cost leaves nothing: the second offer is never created.
    stock(monkeypatch, ("H100", "r1", PRICE, "pending"), ("H100", "r2", PRICE, "ok"))
    ctl = Controller.create(Ledger(), make_plan(options(tmp_path, gpu="H100", max_boot_usd=0.01)))
    with pytest.raises(RunFailed, match="not tried: failed boots used the 0.0100 USD of --max-boot-usd"):
        ctl.launch(attach=True)
    assert len(Ledger().instances(ctl.run.run_id)) == 1


@pytest.mark.parametrize(("rule", "last", "window"), [
    (BillingRule(1, 0, "per second"), False, 3.0),  # half of 0.06 USD at 0.01 USD/s
    (BillingRule(1, 0, "per second"), True, 6.0),  # the last offer takes all that is left
    (BillingRule(1, 60, "AWS-like"), False, 60.0),  # the 60 s minimum is paid at create anyway
    (BillingRule(600, 0, "10-minute"), True, 600.0),  # so is the first whole increment
    (BillingRule(1, 0, "per second"), None, 900.0),  # a big share: never past MAX_BOOT_S
])
def test_the_boot_window_is_the_share_of_the_boot_budget_or_what_the_create_already_paid(
        tmp_path: Path, rule: BillingRule, last: bool | None, window: float) -> None:
    allowance = allowance_for(make_budgets(tmp_path, rule), "shelf", 10.0, PRICE)
    boot_left = 100.0 if last is None else 0.06
    assert boot_window_s(SimpleNamespace(allowance=allowance), boot_left, bool(last)) == window
