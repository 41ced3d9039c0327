"""Learning happens: nanoGPT's CPU "baby" Shakespeare-char run, cut to 200 iterations, takes the val
loss from ~4.2 (uniform over 65 characters) to under 2.8. The full run to the published val loss (1.88
after 2000 iterations; minutes of one core) is a benchmark: bench/quality_bench.py, its figure in
docs/PERFORMANCE.md ("Quality")."""

from __future__ import annotations

import json
from pathlib import Path

from tests.test_bench import bench_module


def test_the_baby_run_learns_shakespeare(tmp_path: Path, shared_data: Path) -> None:
    bench = bench_module("quality_bench")
    out = tmp_path / "baby"
    rc = bench.main(["--max-iters", "200", "--eval-iters", "20", "--max-val-loss", "2.8", "--out", str(out),
                     "--text-file", str(shared_data / "tinyshakespeare" / "input.txt")])
    figures = json.loads((out / "quality.json").read_text())
    assert rc == 0, figures
    assert figures["step"] == 200 and figures["val_loss"] <= 2.8
    assert figures["initial_val_loss"] - figures["val_loss"] >= 1.0  # from ~4.2: it learned, not drifted
