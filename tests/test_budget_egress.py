"""Egress: the plan reserves the expected pulls out of the cap, the meter adds every byte pulled, and
a run on an offer that bills egress ends with compute + egress <= --max-usd (docs/BUDGET.md, "Egress")."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from orchestrator.money.budget import BYTES_PER_GB, allowance_for, egress_usd
from orchestrator.money.budgets_file import load_budgets
from orchestrator.money.errors import BudgetError
from orchestrator.plan.egress import BYTES_PER_PARAM, parameters
from orchestrator.plan.job import effective_config
from orchestrator.plan.launch import make_plan
from orchestrator.plan.options import LaunchOptions
from orchestrator.run.controller import Controller
from orchestrator.state.events import EventKind
from orchestrator.state.ledger import Ledger
from orchestrator.state.phases import is_phase
from providers.base import ProviderError
from trainer import recipes

RATE = 0.09  # USD/GB: AWS's first data-transfer-out tier


def local(tmp_path: Path, rate: float | None = RATE, max_usd: float = 0.02) -> LaunchOptions:
    return LaunchOptions(provider="local", max_usd=max_usd, usd_per_hour=1.2, egress_usd_per_gb=rate,
                         runs_dir=str(tmp_path))


def rows(plan) -> dict[str, str]:  # noqa: ANN001 - a LaunchPlan
    return dict(plan.rows())


def test_the_parameter_count_is_gpt2s() -> None:
    gpt2 = effective_config(LaunchOptions(trainer_args=["--model", "gpt2", "--tokenizer", "gpt2"]), None)
    assert parameters(gpt2) == 124_475_904  # GPT-2 124M (vocab 50304, tied lm_head), as nanoGPT counts it
    lab = effective_config(LaunchOptions(recipe="lab"), recipes.get("lab"))
    assert 29e6 < parameters(lab) < 31e6  # the recipe's own comment: ~30M


def test_the_plan_reserves_the_expected_pulls_out_of_the_cap(tmp_path: Path) -> None:
    free = make_plan(local(tmp_path, rate=None))
    billed = make_plan(local(tmp_path))
    b = billed.allowance
    assert "egress" in rows(free) and rows(free)["egress"] == "free (local: nothing leaves this machine)"
    assert free.allowance.egress_reserve_usd == 0 and free.allowance.max_runtime_s == 60

    # The pulls: every sync of the training time the whole budget buys (45 s every 5 s) and the final
    # one, each with a checkpoint of the model at 16 bytes a parameter (the smoke run writes one every 5 s).
    pulls = billed.egress
    assert pulls is not None and pulls.pulls == 10 and pulls.checkpoints == 10
    cfg = effective_config(local(tmp_path), recipes.get("smoke"))
    assert pulls.checkpoint_bytes == parameters(cfg) * BYTES_PER_PARAM
    assert b.egress_bytes == pulls.bytes and b.egress_usd_per_gb == RATE
    assert b.egress_reserve_usd == pytest.approx(pulls.bytes / BYTES_PER_GB * RATE) and b.egress_reserve_usd > 0
    # The runtime is what the rest of the cap buys: less than without the reserve.
    assert b.max_runtime_s == int((0.02 - b.egress_reserve_usd) * 3600 / 1.2)
    assert b.max_runtime_s < free.allowance.max_runtime_s
    assert b.billing.cost(b.max_runtime_s, b.usd_per_hour) + b.egress_reserve_usd <= 0.02
    row = rows(billed)["egress"]
    assert row.startswith("0.0900 USD/GB (configured (--egress-usd-per-gb))")
    assert f"{b.egress_reserve_usd:.4f} USD, reserved out of the budget" in row
    assert f"after {b.egress_reserve_usd:.4f} USD reserved for egress" in rows(billed)["budget"]


def test_a_reserve_the_budget_cannot_carry_is_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(BudgetError) as exc:
        make_plan(local(tmp_path, rate=50.0))  # 50 USD/GB: the pulls alone cost more than the cap
    assert "\n" not in str(exc.value) and "reserved for egress" in str(exc.value)
    assert "raise --max-usd to at least" in str(exc.value)
    with pytest.raises(ProviderError, match="--egress-usd-per-gb must be a finite number >= 0"):
        make_plan(local(tmp_path, rate=-1.0))
    with pytest.raises(ProviderError, match="--egress-usd-per-gb does not apply to provider 'aws'"):
        LaunchOptions(provider="aws", egress_usd_per_gb=0.1).provider_options()


def test_a_command_reserves_its_logs_and_says_its_outputs_are_not_known(tmp_path: Path) -> None:
    plan = make_plan(LaunchOptions(provider="local", max_usd=0.02, usd_per_hour=1.2, egress_usd_per_gb=RATE,
                                   runs_dir=str(tmp_path), command=["sleep", "1"]))
    assert plan.egress is not None and plan.egress.checkpoint_bytes == 0
    assert "a command's own outputs in out/ are not known" in rows(plan)["egress"]


def test_fallback_offers_keep_the_plans_pulls_at_their_own_rate(tmp_path: Path) -> None:
    budgets = load_budgets(None)
    plain = allowance_for(budgets, "local", 0.02, 1.2, now=0)
    reserved = allowance_for(budgets, "local", 0.02, 1.2, now=0, egress_usd_per_gb=RATE, egress_bytes=40e6)
    assert reserved.egress_reserve_usd == pytest.approx(egress_usd(40e6, RATE)) == pytest.approx(0.0036)
    assert reserved.max_runtime_s == int((0.02 - 0.0036) * 3600 / 1.2) < plain.max_runtime_s
    # The record keeps both (a guard or `gpurun teardown` reads them back).
    from orchestrator.money.budget import Allowance

    again = Allowance.from_dict(reserved.to_dict())
    assert (again.egress_usd_per_gb, again.egress_bytes) == (RATE, 40e6)
    assert again.cost_at(10, pulled_bytes=1e9) == pytest.approx(reserved.attempt_cost_at(10) + RATE)


def test_a_run_on_an_offer_that_bills_egress_ends_with_compute_plus_egress_within_the_cap(tmp_path: Path) -> None:
    """The worst case the guard allows: the instance lives until the switch acts (half the reserve
    past the stop time) and the run pulled every byte the plan expected. The settled cost, the
    proof's and the card's, is compute + egress, and it is within the cap."""
    ledger = Ledger()
    plan = make_plan(local(tmp_path))
    controller = Controller.create(ledger, plan)
    rid = controller.run.run_id
    b = controller.ctx.allowance
    for phase in ("creating", "booting", "failed_booting"):
        ledger.set_phase(rid, phase, error="no capacity" if phase.startswith("failed") else None)
    # The clock started so long ago that the teardown is verified as late as the switch would act.
    ledger.update_run(rid, clock_start_epoch=time.time() - (b.train_s + b.reserve_s / 2))
    half = int(b.egress_bytes // 2)
    for size in (half, int(b.egress_bytes) - half):  # a periodic pull and the final one
        ledger.record_event(rid, EventKind.SYNC, final=False, files=3, bytes=size, method="copy")
    controller.refresh()
    controller._fail(RuntimeError("the boot failed"))

    run = ledger.get_run(rid)
    assert run is not None and run.phase == "verified" and run.settled
    assert [e.phase for e in ledger.events(rid) if is_phase(e.phase)][-2:] == ["terminating", "verified"]
    proof = json.loads((tmp_path / rid / "shutdown_proof.json").read_text())
    egress = proof["billing"]["egress"]
    assert egress["bytes_pulled"] == int(b.egress_bytes) and egress["usd_per_gb"] == RATE
    assert egress["usd"] == pytest.approx(b.egress_bytes / BYTES_PER_GB * RATE)
    assert egress["reserved_usd"] == pytest.approx(b.egress_reserve_usd)
    cost = proof["cost"]["estimated_usd"]
    assert cost == pytest.approx(egress["compute_usd"] + egress["usd"]) and egress["usd"] > 0
    assert run.cost_usd == pytest.approx(cost) and ledger.hold(rid)["settled_usd"] == pytest.approx(cost)  # type: ignore[index]
    # meter <= cap: compute + egress; without the reserve the same run would have bought the whole
    # cap's runtime and gone over it by the egress.
    assert cost <= 0.02 and proof["cost"]["within_cap"] is True
    unreserved = plan.allowance.billing.cost(60, 1.2) + egress["usd"]
    assert unreserved > 0.02
    card = (tmp_path / rid / "EVIDENCE.md").read_text()
    assert f"GB pulled x $0.0900/GB = ${egress['usd']:.4f}, in the cost" in card
    assert json.loads((tmp_path / rid / "evidence.json").read_text())["cost"]["egress"]["usd"] == egress["usd"]


def test_a_local_launch_that_bills_egress_meters_every_byte_it_pulled_inside_the_cap(tmp_path: Path) -> None:
    """End to end: the real CLI and trainer on the local provider at an egress price; the guard stops the
    run, and what the sync events say was pulled is in the settled cost, which stays within the cap."""
    from tests.test_launch_local import gpurun

    res = gpurun("launch", "--provider", "local", "--max-usd", "0.02", "--usd-per-hour", "1.2",
                 "--egress-usd-per-gb", "0.09", "--yes", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0.0900 USD/GB (configured (--egress-usd-per-gb))" in " ".join(res.stdout.split())
    ledger = Ledger()
    (run,) = ledger.list_runs()
    assert run.phase == "verified"
    pulled = sum(int(e.payload.get("bytes") or 0) for e in ledger.events(run.run_id) if e.phase == "sync")
    proof = json.loads((Path(run.run_dir) / "shutdown_proof.json").read_text())
    egress = proof["billing"]["egress"]
    assert pulled > 0 and egress["bytes_pulled"] == pulled
    assert egress["usd"] == pytest.approx(pulled / BYTES_PER_GB * RATE, abs=1e-9)  # the proof keeps 9 decimals
    assert egress["usd"] <= egress["reserved_usd"]  # the estimate held: the pulls stayed inside the reserve
    assert run.cost_usd == pytest.approx(egress["compute_usd"] + egress["usd"])
    assert run.cost_usd is not None and run.cost_usd <= 0.02 and proof["cost"]["within_cap"] is True
    assert "| egress |" in (Path(run.run_dir) / "EVIDENCE.md").read_text()


def test_the_guard_stops_a_run_whose_pulls_went_past_the_egress_reserve(tmp_path: Path) -> None:
    """Pulls beyond the plan's estimate are metered; once what is left of the cap is only what the stop,
    the final sync and the teardown need, the guard ends the run at its next poll."""
    from orchestrator.run.boot import create_head
    from orchestrator.run.stop import StopKind
    from orchestrator.state.endings import Ending

    plan = make_plan(LaunchOptions(provider="local", max_usd=0.05, usd_per_hour=1.2, runs_dir=str(tmp_path / "runs"),
                                   egress_usd_per_gb=0.09))
    ctl = Controller.create(Ledger(), plan)
    create_head(ctl.ctx, ctl.group)
    assert ctl.watch._asked("") is None  # nothing pulled yet: the run goes on
    within = int(ctl.allowance.egress_reserve_usd / 0.09 * BYTES_PER_GB)
    ctl.ctx.event(EventKind.SYNC, final=False, files=1, bytes=within, method="rsync", verified=[], rejected=[])
    assert ctl.watch._asked("") is None  # inside the reserve
    ctl.ctx.event(EventKind.SYNC, final=False, files=1, bytes=int(0.05 / 0.09 * BYTES_PER_GB), method="rsync",
                  verified=[], rejected=[])  # a pull that alone costs the whole cap
    stop = ctl.watch._asked("")
    assert stop is not None and stop.kind is StopKind.ENDED and stop.end is not None
    assert stop.end.ending is Ending.DEADLINE and "egress reserve" in stop.end.reason
    ctl.teardown()


def test_a_budget_whose_whole_time_pulls_too_much_trains_the_longest_time_its_pulls_fit(tmp_path: Path) -> None:
    """Syncing every second at 0.5 USD/GB, the pulls of all 150 s 0.05 USD buys would cost more than
    the cap: the plan trains for the longest time whose own pulls, kept back, still fit."""
    from orchestrator.plan.egress import expected_pulls

    options = LaunchOptions(provider="local", max_usd=0.05, usd_per_hour=1.2, runs_dir=str(tmp_path / "runs"),
                            egress_usd_per_gb=0.5, sync_interval_s=1)
    plan = make_plan(options)
    a = plan.allowance
    assert a.train_s > 0 and a.egress_reserve_usd > 0
    covered = expected_pulls(options, plan.offer, a.train_s, 1)
    assert covered.bytes <= a.egress_bytes  # what it will pull in the time it buys is kept back
    assert a.cost_at(a.max_runtime_s, pulled_bytes=a.egress_bytes) <= 0.05 + 1e-9
    whole = expected_pulls(options, plan.offer, 150.0, 1)  # the time the whole cap would buy
    assert egress_usd(whole.bytes, 0.5) + 0.05 * a.reserve_s / 150 > 0.05  # that would not have fit
