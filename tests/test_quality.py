"""What the money buys in quality: the plan's quality line, `gpurun recipes`' quality columns, and the
evidence card's final_val row (issue 26). Each test builds its own Recipe: the figures are the test's."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator.cli import console as console_mod
from orchestrator.cli.main import main
from orchestrator.money.budget import allowance_for
from orchestrator.money.budgets_file import load_budgets
from orchestrator.plan.forecast import Forecast
from orchestrator.plan.options import LaunchOptions
from orchestrator.plan.quality import split_label
from providers.base import Offer
from tests.test_evidence import T0, card, write_run_proof, write_trainer_out
from trainer import contract, recipes
from trainer.recipes import DataSpec, QualityTarget, Recipe

TARGET = QualityTarget(contract.FINEWEB_VAL, 3.28, 1_000_000_000, "a test's source")
# 400k tok/s on an H100; 16 x 1024 tokens a step; max_iters far past the target's tokens.
SPEEDRUN = Recipe(
    name="quality-test", summary="a recipe with a quality target", data=DataSpec("builtin", "char", None, 0),
    config=dict(model="tiny", batch_size=16, block_size=1024, max_iters=1_000_000),
    tokens_per_s={"cpu": 50, "H100": 400_000}, sources="the test", quality=TARGET,
)
H100 = Offer(provider="local", gpu="H100", gpu_count=1, instance_type="h100-box", usd_per_hour=2.0)


def quality_row(max_usd: float, recipe: Recipe = SPEEDRUN) -> str:
    allowance = allowance_for(load_budgets(None), "local", max_usd, H100.total_usd_per_hour)
    forecast = Forecast.of(LaunchOptions(), recipe, False, H100)
    rows = dict(forecast.rows(LaunchOptions(), allowance, H100))
    return " ".join(rows["quality"].split())


def test_plan_says_the_cap_buys_enough_tokens_for_the_target_and_what_they_cost() -> None:
    row = quality_row(10.0)  # 10 USD at 2 USD/h: ~5 h of training at 400k tok/s = ~7B tokens
    assert row.startswith("at ~400,000 tok/s on this GPU the cap buys ")
    assert ": enough for FineWeb val 3.28 (needs 1.0B tokens = ~0.7 h ~ 1.39 USD at this price" in row  # 2,500 s at 2 USD/h
    assert "a test's source" in row


def test_plan_says_not_enough_when_the_cap_trains_fewer_tokens_than_the_target() -> None:
    row = quality_row(1.0)  # half an hour minus the reserve: ~0.7B tokens
    assert ": not enough for FineWeb val 3.28 (needs 1.0B tokens = ~0.7 h ~ 1.39 USD" in row


def test_plan_says_not_enough_when_max_iters_stops_short_of_the_target() -> None:
    short = Recipe(**{**SPEEDRUN.__dict__, "config": {**SPEEDRUN.config, "max_iters": 100}})
    row = quality_row(10.0, short)
    assert "not enough" in row and "max_iters stops the job at 1.6M tokens" in row


@pytest.fixture
def speedrun() -> Iterator[Recipe]:
    """`gpt2-speedrun` as trainer/recipes.py has it, else this test's stand-in under that name."""
    with pytest.MonkeyPatch.context() as mp:
        if "gpt2-speedrun" not in recipes.RECIPES:
            mp.setitem(recipes.RECIPES, "gpt2-speedrun", Recipe(**{**SPEEDRUN.__dict__, "name": "gpt2-speedrun"}))
        mp.setattr(console_mod.console, "_width", 400)  # one line a row: the words are asserted whole
        yield recipes.RECIPES["gpt2-speedrun"]


def test_dry_run_on_the_local_provider_prints_the_quality_line(speedrun: Recipe, gpurun_home: Path) -> None:
    res = CliRunner().invoke(main, ["launch", "--provider", "local", "--recipe", "gpt2-speedrun", "--dry-run",
                                    "--max-usd", "1", "--usd-per-hour", "1"])
    assert res.exit_code == 0, res.output
    (line,) = [ln for ln in res.output.splitlines() if ln.lstrip("│ ").startswith("quality")]
    assert "on this CPU the cap buys" in line and "not enough for FineWeb val 3.28" in line  # a CPU: ~50 tok/s


def test_recipes_lists_the_quality_target_gpu_hours_and_cost_per_offer(
        gpurun_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(recipes.RECIPES, SPEEDRUN.name, SPEEDRUN)
    monkeypatch.setattr(console_mod.console, "_width", 400)
    res = CliRunner().invoke(main, ["recipes", "--provider", "local", "--usd-per-hour", "2"])
    assert res.exit_code == 0, res.output
    assert "FineWeb val 3.28 in 1.0B tokens" in res.output  # the recipes table's quality target
    assert "FineWeb val 3.28: 1.0B tokens (a test's source) = ~0.7 H100-hours" in res.output  # by GPU class
    assert "quality-test: FineWeb val 3.28" in res.output  # the per-offer table's column
    assert "~231d11h, 11111.11 USD" in res.output  # 1B tokens at 50 tok/s on the local offer at 2 USD/h


def test_evidence_card_shows_the_final_val_row_beside_steps_tokens_and_dollars(tmp_path: Path) -> None:
    write_trainer_out(tmp_path, steps=200)
    with (tmp_path / "out" / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"type": contract.RECORD_FINAL_VAL, "step": 200, "split": contract.FINEWEB_VAL,
                            "tokens": contract.FINEWEB_VAL_TOKENS, "val_loss": 3.2712, "time": T0 + 13}) + "\n")
    write_run_proof(tmp_path)
    plan = {"options": {"recipe": "gpt2-124m", "trainer_args": ["--batch-size", "8"]}, "job": {"recipe": "gpt2-124m"}}
    md, ev = card(tmp_path, run={"run_id": "run-abc", "provider": "runpod", "phase": "verified", "plan": plan},
                  cost_usd=0.05)
    fv = ev["final_val"]
    assert split_label(contract.FINEWEB_VAL, contract.FINEWEB_VAL_TOKENS) == "FineWeb val (10.5M tokens)"
    per_step = 8 * 1024 * 32  # gpt2-124m's seq_len and grad_accum, --set batch_size=8
    assert fv["label"] == "FineWeb val (10.5M tokens)" and fv["val_loss"] == 3.2712
    assert fv["step"] == 200 and fv["tokens_per_step"] == per_step and fv["trained_tokens"] == 200 * per_step
    row = f"| FineWeb val (10.5M tokens) | 3.2712 | 200 | {recipes.human(200 * per_step)} ({per_step:,} per step) | 0.0500 USD |"
    assert row in md


def test_evidence_card_has_no_quality_row_without_a_final_val_record(tmp_path: Path) -> None:
    write_trainer_out(tmp_path, steps=100)
    write_run_proof(tmp_path)
    md, ev = card(tmp_path)
    assert ev["final_val"] == {"status": "missing"} and "FineWeb val" not in md
