"""Smoke test of bench/trainer_bench.py: it runs and writes its figures. No speed is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
