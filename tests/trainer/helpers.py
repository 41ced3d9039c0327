"""Shared helpers for the trainer tests: run the trainer in- or out-of-process, read its outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]

# A tiny, fast model on the built-in corpus; tests add what they exercise. On the CPU whatever the
# machine has: a GPU box's default device would give a 2-rank test cuda:1, and bitwise resumes.
FAST = [
    "--device", "cpu", "--threads", "1", "--model", "tiny", "--n-embd", "32", "--block-size", "32", "--batch-size", "4",
    "--eval-interval", "0", "--ckpt-interval-s", "0", "--sample-tokens", "0", "--progress", "off",
]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    e["OMP_NUM_THREADS"] = "1"
    return e


def trainer_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "trainer.train", *args]


def run_trainer(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(trainer_cmd(*args), cwd=REPO, env=env(), capture_output=True, text=True, timeout=timeout)


def records(out_dir: Path, kind: str) -> list[dict[str, Any]]:
    path = out_dir / "metrics.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["type"] == kind]


def step_losses(out_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in records(out_dir, "step")}
