"""Recipes (trainer/recipes.py): the packaged jobs, their training terms in the plan, `gpurun recipes`,
and the order a job's config is made in (recipe < --config < --set). No run starts here: the runs
are tests/test_e2e_recipe.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.money.budget import allowance_for
from orchestrator.money.budgets_file import load_budgets
from orchestrator.plan.forecast import Forecast
from orchestrator.plan.job import effective_config, job_config, recipe_for
from orchestrator.plan.options import LaunchOptions
from orchestrator.run.progress import StallWatch, parse_data_probe
from orchestrator.state.endings import Exit
from providers.base import Offer
from tests.test_launch_validation import assert_refused, gpurun
from trainer import config as trainer_config
from trainer import recipes

CONTRACT_NAMES = ("lab", "shakespeare-char", "tinystories", "gpt2-124m")


def offer(gpu: str, count: int = 1, usd_per_hour: float = 1.0) -> Offer:
    return Offer(provider="local", gpu=gpu, gpu_count=count, instance_type=f"{gpu}-x{count}", usd_per_hour=usd_per_hour)


@pytest.mark.parametrize("name", list(recipes.RECIPES))
def test_every_recipe_is_a_config_the_trainer_accepts(name: str, tmp_path: Path) -> None:
    r = recipes.get(name)
    assert r.name == name and r.summary and r.sources
    assert r.data.source in recipes.SOURCES and r.data.tokenizer in ("char", "gpt2")
    assert set(r.tokens_per_s) <= set(recipes.GPU_CLASSES) and "cpu" in r.tokens_per_s
    path = tmp_path / "c.yaml"
    path.write_text("".join(f"{k}: {v}\n" for k, v in r.config.items()))
    for world in (1, 2, 8):  # grad_accum must split over any usual GPU count
        cfg = trainer_config.validate(str(path), [], world_size=world)
        assert recipes.tokens_per_step(cfg.to_dict(), world) == recipes.tokens_per_step(r.config, world)


def test_the_contract_recipes_and_their_figures() -> None:
    assert set(CONTRACT_NAMES) <= set(recipes.RECIPES)
    gpt2 = recipes.get("gpt2-124m")
    assert gpt2.tokens_per_step == 16 * 1024 * 32 == 524_288  # ~0.5M tokens/step, as llm.c / build-nanogpt
    assert gpt2.max_iters == 19073 and abs(gpt2.max_iters * gpt2.tokens_per_step - 10e9) < 0.01e9
    assert gpt2.config["lr"] == 6e-4 and gpt2.config["warmup_iters"] == 700 and gpt2.config["seq_len"] == 1024
    assert (gpt2.data.source, gpt2.data.tokenizer) == ("fineweb-edu", "gpt2")
    char = recipes.get("shakespeare-char")  # nanoGPT's config/train_shakespeare_char.py
    assert {k: char.config[k] for k in ("batch_size", "block_size", "max_iters", "lr", "dropout")} == \
        {"batch_size": 64, "block_size": 256, "max_iters": 5000, "lr": 1e-3, "dropout": 0.2}
    assert (char.data.source, char.data.tokenizer) == ("shakespeare", "char")
    assert recipes.get("lab").data.source == "shakespeare"
    assert recipes.get("tinystories").data.source == "tinystories"
    # Throughput is per GPU: 8 GPUs of a class run 8 times the tokens.
    assert gpt2.throughput("H100", 8) == 8 * gpt2.tokens_per_s["H100"]
    assert gpt2.throughput(None) is None and gpt2.throughput("cpu", 4) == gpt2.tokens_per_s["cpu"]


@pytest.mark.parametrize(("name", "klass"), [
    ("NVIDIA A100-SXM4-80GB", "A100"), ("H100 SXM", "H100"), ("1x H100 SXM5 80GB", "H100"),
    ("RTX 4090", "RTX 4090"), ("NVIDIA GeForce RTX 4090", "RTX 4090"), ("A10G", "A10G"), ("Tesla T4", "T4"),
    ("NVIDIA L4", "L4"), ("cpu", "cpu"), ("L40S", None), ("RTX A4000", None), ("A10", None),
])
def test_gpu_names_map_to_classes_by_whole_words(name: str, klass: str | None) -> None:
    assert recipes.gpu_class(name) == klass


def test_unknown_recipe_is_one_line_naming_them(tmp_path: Path) -> None:
    line = assert_refused(gpurun("launch", "--provider", "local", "--recipe", "gpt5", "--yes", cwd=tmp_path),
                          "unknown recipe 'gpt5'")
    for name in recipes.RECIPES:
        assert name in line


def test_data_from_needs_a_recipe_with_data(tmp_path: Path) -> None:
    assert_refused(gpurun("launch", "--provider", "local", "--data-from", str(tmp_path), "--yes", cwd=tmp_path),
                   "--data-from", "--recipe")
    assert_refused(gpurun("launch", "--provider", "local", "--recipe", "smoke", "--data-from", str(tmp_path),
                          "--yes", cwd=tmp_path), "--data-from")


def test_gpt2_124m_dry_run_shows_the_data_phase_tokens_and_cost(tmp_path: Path) -> None:
    res = gpurun("launch", "--provider", "local", "--recipe", "gpt2-124m", "--dry-run", "--max-usd", "5",
                 "--usd-per-hour", "1.2", cwd=tmp_path)
    assert res.returncode == Exit.OK, res.stdout + res.stderr
    out = " ".join(res.stdout.split())  # rich wraps long cells
    assert "recipe gpt2-124m" in out
    assert "fineweb-edu, GPT-2 BPE" in out and "preparing_data" in out and "inside the training time" in out
    assert "524,288 per step" in out and "max_iters 19,073 = 10.0B tokens" in out
    # The data phase's cost at 1.2 USD/h, and how far the rest of 5 USD gets on this machine's CPU.
    prep_s = recipes.get("gpt2-124m").data.prepare_s("cpu")
    assert f"{prep_s * 1.2 / 3600:.4f} USD (estimate)" in out
    assert "tok/s per cpu" in out and "the guard stops it at" in out and "of 19,073 steps" in out


def test_recipes_lists_every_recipe_with_its_cost_on_each_offer(tmp_path: Path) -> None:
    res = gpurun("recipes", "--usd-per-hour", "2", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    for r in recipes.RECIPES.values():
        assert r.name in res.stdout and f"{r.tokens_per_step:,}" in res.stdout
        assert f"{r.name}: " in res.stdout  # its tokens/s and where they come from
    assert "local-cpu" in res.stdout and "USD" in res.stdout
    assert_refused(gpurun("recipes", "--provider", "nosuchcloud", cwd=tmp_path), "nosuchcloud")


def test_lab_on_a_gpu_ends_by_max_iters_long_before_the_cap() -> None:
    budgets = load_budgets()
    t4 = offer("Tesla T4", usd_per_hour=0.5)
    allowance = allowance_for(budgets, "local", 3.0, t4.usd_per_hour, now=0.0)
    lab, default = recipe_for(LaunchOptions(), gpu=True)
    assert lab is not None and lab.name == "lab" and default  # the default with a GPU
    forecast = Forecast.of(LaunchOptions(), lab, default, t4)
    assert forecast.data and forecast.job_s is not None and forecast.job_s < 600  # minutes on a T4
    rows = dict(forecast.rows(LaunchOptions(), allowance, t4))
    assert "job ends at max_iters" in rows["finish"] and "is not spent" in rows["finish"]
    # A GPU without figures says so instead of guessing.
    odd = offer("RTX A4000")
    rows = dict(Forecast.of(LaunchOptions(), lab, default, odd).rows(LaunchOptions(), allowance, odd))
    assert rows["throughput"].startswith("no estimate")


def test_the_default_job() -> None:
    assert recipe_for(LaunchOptions(), gpu=False)[0].name == "smoke"  # type: ignore[union-attr]
    assert recipe_for(LaunchOptions(), gpu=True)[0].name == "lab"  # type: ignore[union-attr]
    assert recipe_for(LaunchOptions(config="my.yaml"), gpu=True) == (None, False)  # the user's own job
    assert recipe_for(LaunchOptions(command=["echo"]), gpu=True) == (None, False)
    assert recipe_for(LaunchOptions(recipe="tinystories"), gpu=False)[0].name == "tinystories"  # type: ignore[union-attr]
    assert job_config(LaunchOptions(), recipes.get("smoke"), None) == {}  # no config file: today's smoke run


def test_recipe_then_config_then_set(tmp_path: Path) -> None:
    conf = tmp_path / "mine.yaml"
    conf.write_text("lr: 0.0003\nbatch_size: 8\n")
    options = LaunchOptions(recipe="shakespeare-char", config=str(conf), trainer_args=["--batch-size", "2"])
    recipe = recipes.get("shakespeare-char")
    cfg = effective_config(options, recipe)
    assert cfg.max_iters == 5000 and cfg.dropout == 0.2  # the recipe's, where nothing overrides it
    assert cfg.lr == 3e-4  # --config over the recipe
    assert cfg.batch_size == 2  # --set over --config
    uploaded = job_config(options, recipe, "/run/data/shakespeare-char")
    assert uploaded["lr"] == 3e-4 and uploaded["batch_size"] == 8  # --set stays a flag, above the file
    assert uploaded["data_dir"] == "/run/data/shakespeare-char"
    # The user's own data replaces the recipe's data phase.
    mine = LaunchOptions(recipe="shakespeare-char", trainer_args=["--data-dir", "/mine"])
    assert "data_dir" not in job_config(mine, recipe, None)
    assert not Forecast.of(mine, recipe, False, offer("cpu", 0)).data


def test_data_progress_counts_as_progress() -> None:
    watch = StallWatch(60, by_step=False, now=0.0)
    p1 = parse_data_probe('12\n{"stage": "download", "fraction": 0.1, "tokens": 0, "message": "", "updated_at": 1}')
    assert p1.line == "download 10%" and p1.log_bytes == 12
    assert not watch.look_mark(p1.mark, 0.0)
    # Only updated_at changed: no news. A moving fraction is.
    same = parse_data_probe('12\n{"stage": "download", "fraction": 0.1, "tokens": 0, "message": "", "updated_at": 50}')
    assert not watch.look_mark(same.mark, 59.0) and watch.look_mark(same.mark, 60.0)
    watch = StallWatch(60, by_step=False, now=0.0)
    watch.look_mark(p1.mark, 0.0)
    moved = parse_data_probe('12\n{"stage": "tokenize", "fraction": 0.5, "tokens": 1234567, "message": "shard 2"}')
    assert not watch.look_mark(moved.mark, 59.0) and not watch.look_mark(moved.mark, 100.0)
    assert moved.line == "tokenize 50% 1.2M tokens: shard 2"
    assert parse_data_probe("\n").line == "starting" and parse_data_probe("3\n{not json").progress == {}
