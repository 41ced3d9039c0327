"""Smoke tests of the bench scripts: they run and write their figures. No speed is asserted."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from orchestrator.state.rows import Event

REPO = Path(__file__).resolve().parents[1]


def test_trainer_bench_writes_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    result = subprocess.run(
        [sys.executable, "bench/trainer_bench.py", "--config", "tiny", "--steps", "2", "--warmup", "1",
         "--threads", "1", "--device", "cpu", "--json", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "ms/step" in result.stdout and "tokens/s" in result.stdout
    figures = json.loads(out.read_text())
    assert figures["bench"] == "trainer_bench" and figures["config"] == "tiny"
    (row,) = figures["rows"]
    for key in ("ms_per_step", "tokens_per_s", "mfu", "peak_memory_mib", "loader_wait_share", "batch_size",
                "seq_len", "dtype", "compile", "threads", "device", "device_name", "parameters"):
        assert key in row, key
    assert row["ms_per_step"] > 0 and row["tokens_per_s"] > 0
    assert 0 <= row["loader_wait_share"] <= 1
    assert row["mfu"] is None  # a CPU has no known peak
    assert row["device"] == "cpu" and row["threads"] == 1 and row["steps"] == 2


def bench_module(name: str) -> ModuleType:
    """A script of bench/ imported as a module (bench/ is no package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses in the script look their module up
    spec.loader.exec_module(module)
    return module


def _controller_bench() -> ModuleType:
    return bench_module("controller_bench")


def test_controller_bench_reads_its_intervals_from_the_ledger_events(tmp_path: Path) -> None:
    bench = _controller_bench()
    t0 = 1_000_000.0
    events = [Event("r", t0 + dt, phase, {}) for dt, phase in [
        (0, "creating"), (1, "booting"), (2, "ssh_ready"), (5, "bootstrapped"), (5.5, "running"),
        (5.6, "job_started"), (20, "sync"), (40.5, "stopping"), (43, "syncing_final"), (43.25, "terminating"),
        (44, "terminate_request"), (45, "verified"), (46, "verified"),  # a later duplicate does not count
    ]]
    seconds = bench.intervals(events, stop_at=t0 + 40, deadline=t0 + 55, first_step=t0 + 9)
    assert seconds == {
        "ssh_ready → bootstrapped": 3.0, "bootstrapped → running": 0.5, "running → first step": 3.5,
        "ssh_ready → first step": 7.0, "stop time → stopping": 0.5, "stopping → syncing_final": 2.5,
        "syncing_final → terminating": 0.25, "terminating → verified": 1.75, "stop time → verified": 5.0,
        "verified before the deadline by": 10.0,
    }
    # A run that never reached its first step or a stop time: only what its events show.
    assert bench.intervals(events[:4], stop_at=None, deadline=None, first_step=None) == {"ssh_ready → bootstrapped": 3.0}

    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"type": "eval", "step": 0, "time": 5.0}\nnot json\n{"type": "step", "step": 1, "time": 7.5}\n')
    assert bench.first_step_time(metrics) == 7.5
    assert bench.first_step_time(tmp_path / "missing.jsonl") is None

    med = bench.medians([{"a": 1.0, "b": 4.0}, {"a": 3.0}, {"a": 2.0, "b": 2.0}])
    assert med == {"a": 2.0}  # only what every run measured
    assert bench.ratios({"a": 2.0, "b": 1.0, "c": 1.0}, {"a": 4.0, "b": 0.0}) == {"a": 0.5}
    assert bench.ratios({"a": 2.0}, None) == {}


def test_controller_bench_help() -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "bench/controller_bench.py", "--help"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "--baseline" in result.stdout, result.stderr


def _schedule_bench() -> ModuleType:
    return bench_module("schedule_bench")


def test_schedule_bench_reads_the_deadline_checkpoint_and_its_eval(tmp_path: Path) -> None:
    bench = _schedule_bench()
    records = [
        {"type": "eval", "step": 0, "train_loss": 4.2, "val_loss": 4.2},
        {"type": "step", "step": 10, "loss": 3.0, "lr": 1e-3, "tokens_per_s": 900.0},
        {"type": "step", "step": 20, "loss": 2.5, "lr": 1e-4, "tokens_per_s": 1100.0},
        {"type": "checkpoint", "step": 23},
        {"type": "eval", "step": 23, "train_loss": 2.4, "val_loss": 2.45},
        {"type": "end", "reason": "deadline", "step": 23, "val_loss": 2.45, "lr": 1e-4},
    ]
    assert bench.summarise(records) == {
        "reason": "deadline", "step": 23, "val_loss": 2.45, "stop_lr": 1e-4, "train_loss": 2.4,
        "checkpoint_at_stop": True,
        "last_logged_step": 20, "last_logged_lr": 1e-4, "tokens_per_s_median": 1000.0,
    }
    assert bench.summarise([])["val_loss"] is None  # a run that never started
    args = bench.argparse.Namespace(config="baby", max_iters=20000, threads=1)
    cmd = bench.trainer_cmd(args, "cosine", tmp_path / "d", tmp_path / "o", 1234.5, ["--lr-decay-frac", "0.3"])
    flags = dict(zip(cmd[3::2], cmd[4::2], strict=False))
    assert flags["--lr-schedule"] == "cosine" and flags["--deadline-epoch"] == "1234.500"
    assert flags["--max-iters"] == "20000" and flags["--lr-decay-iters"] == "none"
    assert flags["--config"].endswith("trainer/configs/baby.yaml") and cmd[-2:] == ["--lr-decay-frac", "0.3"]


def test_compare_nanogpt_kills_a_silent_run_at_its_wall_limit(tmp_path: Path) -> None:
    compare_nanogpt = bench_module("compare_nanogpt")
    silent = [sys.executable, "-c", "import time; print('starting', flush=True); time.sleep(600)"]
    with pytest.raises(compare_nanogpt.WallLimit, match="killed at its wall limit of 1 s"):
        compare_nanogpt.run_one(silent, tmp_path, dict(os.environ), re.compile(r"^never$"), timeout=1)
    lines = "\n".join(f"step {i} | x | {i}.0" for i in range(5))
    done = compare_nanogpt.run_one([sys.executable, "-c", f"print({lines!r})"], tmp_path, dict(os.environ),
                                   re.compile(r"^step (\d+) \| (x) \| ([\d.]+)$"), timeout=60)
    assert [n for n, _, _ in done["lines"]] == [0, 1, 2, 3, 4]


def test_speedrun_bench_compares_both_arms_and_writes_its_figures(tmp_path: Path) -> None:
    text = tmp_path / "input.txt"
    text.write_text("".join(f"{w} the king and queen, {w} said the fool.\n" for w in ("First", "Second", "Third") * 300))
    out = tmp_path / "speedrun.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    result = subprocess.run(
        [sys.executable, "bench/speedrun_bench.py", "--seeds", "1,2", "--scales", "baby", "--max-iters", "4",
         "--eval-every", "2", "--val-tokens", "128", "--text-file", str(text), "--json", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "wall-time ratio" in result.stdout or "never reached" in result.stdout
    (scale,) = json.loads(out.read_text())["scales"]
    assert scale["scale"] == "baby" and scale["iters"] == 4 and len(scale["grid_finals"]["baseline"]) == 3
    assert [r["seed"] for r in scale["rows"]] == [1, 2] and all(r["baseline_steps"] == 4 for r in scale["rows"])


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="CPU time of another process: Linux /proc")
def test_compare_nanogpt_records_each_runs_cpu_time_per_step(tmp_path: Path) -> None:
    compare_nanogpt = bench_module("compare_nanogpt")
    # A "trainer" that burns CPU between its log lines, then sleeps (no CPU) between the later ones.
    script = ("import time\n"
              "for i in range(4):\n"
              "    t = time.process_time()\n"
              "    while time.process_time() - t < 0.05 * (i > 0): pass\n"
              "    print(f'step {i} | x | {i}.0', flush=True)\n"
              "for i in range(4, 6):\n"
              "    time.sleep(0.1)\n"
              "    print(f'step {i} | x | {i}.0', flush=True)\n")
    done = compare_nanogpt.run_one([sys.executable, "-c", script], tmp_path, dict(os.environ),
                                   re.compile(r"^step (\d+) \| (x) \| ([\d.]+)$"), timeout=60)
    cpu = done["cpu"]
    assert [step for step, _ in cpu] == [0, 1, 2, 3, 4, 5] and all(c is not None for _, c in cpu)
    assert [c for _, c in cpu] == sorted(c for _, c in cpu)  # cumulative
    assert cpu[3][1] - cpu[0][1] >= 0.1  # 3 x 50 ms burnt, in clock ticks of 10 ms
    assert cpu[5][1] - cpu[3][1] <= 0.05  # sleeping costs no CPU time, however long the wall clock runs
    assert compare_nanogpt.cpu_ms_per_step([(0, 1.0), (10, 1.5), (20, 2.0)], warmup=10) == pytest.approx(50.0)
    assert compare_nanogpt.cpu_ms_per_step([(0, 1.0), (10, None), (20, 2.0)], warmup=10) is None  # one point
    assert compare_nanogpt.cpu_seconds(2**22 + 12345) is None  # no such process
