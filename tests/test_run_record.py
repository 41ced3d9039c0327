"""The typed run record: the cap stored once, the deadline computed once, a run that never booted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.money.budget import Allowance
from orchestrator.plan.launch import make_plan
from orchestrator.plan.options import LaunchOptions
from orchestrator.plan.record import ORPHAN_KEY, RunRecord
from orchestrator.proof.run_card import write_run_evidence
from orchestrator.run.controller import Controller
from orchestrator.run.stop import End
from orchestrator.state.endings import Ending
from orchestrator.state.ledger import Ledger
from orchestrator.state.phases import Phase
from orchestrator.state.values import LedgerError
from providers.base import BillingRule


def _launch(tmp_path: Path, max_usd: float = 0.05) -> Controller:
    plan = make_plan(LaunchOptions(provider="local", max_usd=max_usd, usd_per_hour=1.2,
                                   runs_dir=str(tmp_path / "runs")))
    return Controller.create(Ledger(), plan)


def test_the_cap_is_stored_once_in_the_run_row(tmp_path: Path) -> None:
    controller = _launch(tmp_path)
    run = controller.run
    assert run.max_usd == pytest.approx(0.05)
    # Neither the options nor the allowance carry a second copy that could disagree with the row.
    assert "max_usd" not in run.plan["options"] and "max_usd" not in run.plan["allowance"]
    record = RunRecord.of_run(run)
    assert isinstance(record.allowance, Allowance)
    assert record.allowance.max_usd == record.options.max_usd == run.max_usd
    assert record.offer.billing == record.allowance.billing  # the rule read from budgets.yaml
    plan_json = json.loads((Path(run.run_dir) / "plan.json").read_text())
    assert plan_json["max_usd"] == pytest.approx(0.05)


def test_a_record_round_trips_and_reads_runs_recorded_before_the_rename(tmp_path: Path) -> None:
    run = _launch(tmp_path).run
    record = RunRecord.of_run(run)
    again = RunRecord.from_dict(record.to_dict(), run.max_usd)
    assert again.allowance == record.allowance and again.offer == record.offer
    assert again.options == record.options
    old = {**record.to_dict()}
    old["budget"] = {**old.pop("allowance"), "max_usd": 99.0}  # an old row kept the cap here too
    loaded = RunRecord.from_dict(old, run.max_usd)
    assert loaded.allowance.max_usd == run.max_usd  # the row wins


def test_the_deadline_is_fixed_at_the_create_call(tmp_path: Path) -> None:
    controller = _launch(tmp_path)
    planned = controller.allowance
    instance = controller.create_instance()
    run = controller.refresh()
    assert run.clock_start_epoch is not None and run.clock_start_epoch >= planned.clock_start_epoch
    clock = planned.with_clock_start(run.clock_start_epoch)
    assert (run.deadline_epoch, run.stop_at_epoch) == (clock.deadline_epoch, clock.stop_at_epoch)
    assert run.deadline_epoch - run.stop_at_epoch == planned.reserve_s
    # The record's allowance carries the same clock as the row (not the plan's), loaded or live.
    kept = RunRecord.of_run(run).allowance
    assert (kept.clock_start_epoch, kept.stop_at_epoch) == (run.clock_start_epoch, run.stop_at_epoch)
    assert controller.allowance.stop_at_epoch == run.stop_at_epoch
    controller.teardown()
    assert controller.provider.get(instance.id).gone


def test_finish_before_the_instance_is_reached_goes_straight_to_teardown(tmp_path: Path) -> None:
    # Ctrl-C while booting, or a guard taking over a booting run: there is no job to stop.
    controller = _launch(tmp_path)
    controller.create_instance()
    controller.phase(Phase.BOOTING)
    controller.finish(End.noted(Ending.REQUESTED, "Ctrl-C"))
    events = Ledger().events(controller.run.run_id)
    kinds = [e.phase for e in events]
    phases = [k for k in kinds if k in {p.value for p in Phase}]
    assert phases[-3:] == ["booting", "terminating", "verified"]
    assert not [e for e in events if e.phase == "error"], [e.payload for e in events if e.phase == "error"]
    assert controller.refresh().phase == "verified"


def test_an_allowance_costs_by_its_billing_rule() -> None:
    allowance = Allowance(provider="aws", max_usd=1.0, usd_per_hour=3.6, billing=BillingRule(1, 60, "test"),
                          reserve_s=10, min_runtime_s=10, max_runtime_s=900, clock_start_epoch=0,
                          deadline_epoch=0, stop_at_epoch=0, train_s=890)
    assert allowance.cost_at(5) == pytest.approx(0.06)  # the 60 s minimum, not 5 s
    assert allowance.cost_at(120) == pytest.approx(0.12)


def test_a_sweep_adopted_run_has_no_launch_record_but_an_evidence_card(tmp_path: Path) -> None:
    ledger = Ledger()
    run_dir = tmp_path / "runs" / "sweep-x"
    run_dir.mkdir(parents=True)
    run = ledger.create_run("sweep-x", "local", 0.0, {ORPHAN_KEY: {"instance_ids": ["local-x"]}}, str(run_dir))
    with pytest.raises(LedgerError, match="adopted by `gpurun sweep`"):
        RunRecord.of_run(run)
    card = write_run_evidence(run, None, None, None)
    assert card.is_file() and "sweep-x" in card.read_text()
