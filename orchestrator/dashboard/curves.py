"""A run's curves from its synced out/metrics.jsonl: the loss (train and val) against the step and
against the dollars spent, and the tokens per second.

The dollars at a record are the run's cost function (the launch record's `Allowance.cost_at`, the
one `gpurun status` uses) at the record's time since the run's clock started. Torn lines are
skipped and counted (proof.reading.read_jsonl, as the evidence card reads them); a long run is
thinned to MAX_POINTS per curve, its last point always kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestrator.plan.record import RunRecord, is_orphan
from orchestrator.proof.reading import num, read_jsonl
from orchestrator.state.rows import Run
from trainer import contract

MAX_POINTS = 2000
Point = tuple[float, float]


def _thin(points: list[Point]) -> list[Point]:
    if len(points) <= MAX_POINTS:
        return points
    every = -(-len(points) // MAX_POINTS)
    return points[::every] + ([points[-1]] if (len(points) - 1) % every else [])


def _dollars(run: Run) -> Any:
    """rec -> USD spent when the record was written; None when the run has no cost function."""
    if is_orphan(run) or not run.clock_start_epoch:
        return None
    allowance = RunRecord.of_run(run).allowance
    start = float(run.clock_start_epoch)
    return lambda rec: allowance.cost_at(max(0.0, float(rec["time"]) - start)) if num(rec.get("time")) else None


def _series(records: list[dict[str, Any]], x_of: Any, y_key: str) -> list[Point]:
    points: list[Point] = []
    for rec in records:
        x, y = x_of(rec), num(rec.get(y_key))
        if x is not None and y is not None:
            points.append((round(float(x), 6), y))
    return _thin(points)


def curves(run: Run) -> dict[str, Any]:
    """{"train": [(step, loss)], "val": [(step, val_loss)], "train_usd": [(usd, loss)], "val_usd": ...,
    "tokens": [(step, tokens/s)], "bad_lines": n}"""
    rows, bad = read_jsonl(Path(run.run_dir) / contract.METRICS_PATH)
    steps = [r for r in rows if contract.is_record(r, contract.RECORD_STEP) and num(r.get("step")) is not None]
    evals = [r for r in rows if contract.is_record(r, contract.RECORD_EVAL) and num(r.get("step")) is not None]

    def by_step(rec: dict[str, Any]) -> float:
        return float(rec["step"])

    usd = _dollars(run)
    out: dict[str, Any] = {
        "train": _series(steps, by_step, "loss"),
        "val": _series(evals, by_step, "val_loss"),
        "tokens": _series(steps, by_step, "tokens_per_s"),
        "train_usd": _series(steps, usd, "loss") if usd else [],
        "val_usd": _series(evals, usd, "val_loss") if usd else [],
        "bad_lines": bad,
    }
    return out
