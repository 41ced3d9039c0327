"""Bad trainer input (`--set`, `--config`) is refused on the controller before anything is rented.

Through the real CLI on the `local` provider: one line on stderr, exit 2 (Exit.REFUSED), and no run,
instance or hold row in the ledger. Before this check such a launch rented, failed on the instance,
billed and reported "verified". The check is torch-free: the controller need not have torch.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.state.endings import Exit
from orchestrator.state.ledger import Ledger

REPO = Path(__file__).resolve().parent.parent
# A real launch, small and cheap, so that a launch that is not refused ends soon (and fails the test).
LAUNCH = ["launch", "--provider", "local", "--max-usd", "0.02", "--usd-per-hour", "1.2", "--yes"]


def gpurun(*args: str, cwd: Path, pythonpath: tuple[Path, ...] = ()) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, (*pythonpath, REPO))), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "orchestrator.cli.main", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL)


def rows(table: str) -> int:
    with sqlite3.connect(Ledger().path) as conn:
        return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


def assert_refused(res: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert res.returncode == Exit.REFUSED, res.stdout + res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert not res.stdout.strip(), res.stdout  # not even the plan: the refusal comes first
    for needle in needles:
        assert needle in lines[0], lines[0]
    # Nothing was created: no run, no instance, no hold (so no spend), no run directory.
    assert (rows("runs"), rows("instances"), rows("holds")) == (0, 0, 0)
    runs_dir = Path(os.environ["GPURUN_RUNS_DIR"])
    assert not runs_dir.exists() or not any(runs_dir.iterdir())
    return lines[0]


@pytest.fixture
def no_torch(tmp_path: Path) -> Path:
    """A PYTHONPATH entry whose sitecustomize makes `import torch` fail, as on a controller without it."""
    site = tmp_path / "no_torch"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import sys\nsys.modules['torch'] = None  # import torch -> ImportError\n")
    return site


def test_set_with_a_wrong_type_is_refused_before_renting(tmp_path: Path) -> None:
    res = gpurun(*LAUNCH, "--set", "max_iters=abc", cwd=tmp_path)
    assert_refused(res, "max_iters must be int", "'abc'", "--set max_iters")


def test_unknown_set_key_is_refused_with_the_closest_key(tmp_path: Path) -> None:
    line = assert_refused(gpurun(*LAUNCH, "--set", "max_iter=5", cwd=tmp_path), "max_iter=5")
    assert "unknown config key 'max_iter'" in line and "did you mean max_iters" in line


@pytest.mark.parametrize(("key", "why"), [("deadline_epoch", "--max-usd"), ("out_dir", "gpurun sets it"),
                                          ("config", "--config FILE")])
def test_set_of_a_flag_gpurun_passes_itself_is_refused(key: str, why: str, tmp_path: Path) -> None:
    assert_refused(gpurun(*LAUNCH, "--set", f"{key}=x", cwd=tmp_path), f"--set {key}=x", why)


def test_set_checks_the_trainers_own_rules(tmp_path: Path) -> None:
    assert_refused(gpurun(*LAUNCH, "--set", "model=gpt5", cwd=tmp_path), "unknown model preset 'gpt5'")
    assert_refused(gpurun(*LAUNCH, "--set", "batch_size=0", cwd=tmp_path), "batch_size must be positive")
    assert_refused(gpurun(*LAUNCH, "--set", "dtype=fp8", cwd=tmp_path), "dtype must be one of")


def test_set_with_a_command_is_refused(tmp_path: Path) -> None:
    res = gpurun(*LAUNCH, "--set", "max_iters=5", "--", "python", "-c", "pass", cwd=tmp_path)
    assert_refused(res, "--set configures the bundled trainer")


def test_config_file_with_a_wrong_type_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: tiny\nbatch_size: many\n")
    res = gpurun(*LAUNCH, "--config", str(cfg), cwd=tmp_path)
    assert_refused(res, "batch_size must be int", "'many'", str(cfg))


def test_config_file_with_an_unknown_key_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("max_iters: 5\nlearning_rat: 0.1\n")
    assert_refused(gpurun(*LAUNCH, "--config", str(cfg), cwd=tmp_path), "unknown config key 'learning_rat'", str(cfg))


def test_without_torch_input_is_still_checked_and_local_training_is_refused(tmp_path: Path, no_torch: Path) -> None:
    # The checks need no torch: a bad --set is named as such on a controller without it.
    assert_refused(gpurun(*LAUNCH, "--set", "max_iters=abc", cwd=tmp_path, pythonpath=(no_torch,)),
                   "max_iters must be int")
    # Valid input: the local provider trains with this very interpreter, and never installs into it.
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: tiny\nbatch_size: 4\ncompile: false\n")
    res = gpurun(*LAUNCH, "--config", str(cfg), "--set", "max_iters=5", "--set", "compile=false",
                 cwd=tmp_path, pythonpath=(no_torch,))
    line = assert_refused(res, f"this Python ({sys.executable}) has no PyTorch", "never installs into an interpreter",
                          "pip install 'gpurun[train]'")
    assert "Traceback" not in line and rows("runs") == 0 and rows("instances") == 0
    # A command of the user's needs no torch: it plans.
    res = gpurun(*LAUNCH, "--dry-run", "--", "python3", "-c", "pass", cwd=tmp_path, pythonpath=(no_torch,))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "nothing is installed for your command" in res.stdout


def test_the_plan_says_what_bootstrap_installs(tmp_path: Path) -> None:
    res = gpurun(*LAUNCH, "--dry-run", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"this Python ({sys.executable}) carries PyTorch: a check, nothing to install" in res.stdout


def test_trainer_config_imports_and_validates_without_torch(no_torch: Path) -> None:
    code = ("try:\n    import torch\nexcept ImportError:\n    pass\nelse:\n    raise SystemExit('torch importable')\n"
            "import sys, trainer.config as c, orchestrator.plan.launch\n"
            "cfg = c.validate(None, ['--max-iters', '5', '--model', 'baby'])\n"
            "assert (cfg.max_iters, cfg.model_config(65).n_layer) == (5, 4)\n"
            "try:\n    c.validate(None, ['--max-iters', 'abc'])\nexcept c.ConfigError as e:\n    print(e)\n"
            "assert 'torch' not in sys.modules or sys.modules['torch'] is None\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join((str(no_torch), str(REPO)))}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "max_iters must be int, got 'abc' (--max-iters)" in res.stdout


@pytest.mark.parametrize(("extra", "needles"), [
    (["--nodes", "0"], ["--nodes 0", "from 1 to 64"]),
    (["--nodes", "2", "--spot"], ["--nodes 2 with --spot", "drop --spot"]),
    (["--nodes", "2", "--resume", "20260101-000000-abcd"], ["--nodes 2 with --resume", "drop --nodes"]),
])
def test_nodes_that_gpurun_cannot_carry_are_refused_before_renting(tmp_path: Path, extra: list[str],
                                                                     needles: list[str]) -> None:
    assert_refused(gpurun(*LAUNCH, *extra, cwd=tmp_path), *needles)


def test_the_plan_prices_every_node_against_the_one_cap(tmp_path: Path) -> None:
    from orchestrator.plan.launch import make_plan
    from orchestrator.plan.options import LaunchOptions

    plan = make_plan(LaunchOptions(provider="local", max_usd=0.04, usd_per_hour=1.2, nodes=2))
    # Two nodes at 1.2 USD/h bill 2.4 USD/h: 0.04 USD buys 60 s of both, not 120 s of one.
    assert plan.allowance.usd_per_hour == pytest.approx(2.4) and plan.allowance.max_runtime_s == 60
    assert "2 x 1.2000 = 2.4000 USD/h" in dict(plan.rows())["nodes"]
