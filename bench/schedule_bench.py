"""The deadline-aware LR schedule against a cosine over a large max_iters, at the same wall-clock budget.

    python bench/schedule_bench.py                         # baby Shakespeare-char, 90 s a run, 3 pairs
    python bench/schedule_bench.py --budget 120 --pairs 5

Each run is `python -m trainer.train --config trainer/configs/baby.yaml` on tinyshakespeare (char
level, prepared once), with `--deadline-epoch` = its launch time + the budget, so start-up counts
against both alike. `auto` is the default schedule: WSD ending at the trainer's own deadline stop.
`cosine` is what a budget-stopped run did before it: a cosine over `--max-iters` (default 20000,
the trainer's default, meant to be ended by the guard), stopped at the same deadline. The figure is
the val loss of the checkpoint saved at the deadline, as the trainer evaluates it when it stops
(the same `eval_iters` batches for both, seeded). Runs alternate auto, cosine, auto, cosine...; the
result is the median over pairs of (cosine - auto) and of auto / cosine. Other `--key value` flags
go to both trainers (e.g. `--lr-decay-frac 0.3`, which only the WSD run uses).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.data_files import shakespeare  # noqa: E402
from trainer import data as tdata  # noqa: E402
from trainer.hardware import cpu_model  # noqa: E402

TARGET = 0.015  # issue 14: the deadline-aware run must be lower by at least this much
ARMS = ("auto", "cosine")


def find_text(path: str | None) -> Path | None:
    if path:
        return Path(path)
    return shakespeare()


def config_file(name: str) -> Path:
    p = REPO / "trainer" / "configs" / f"{name}.yaml"
    return p if p.is_file() else Path(name)


def trainer_cmd(a: argparse.Namespace, arm: str, data_dir: Path, out: Path, deadline: float,
                extra: list[str]) -> list[str]:
    return [
        sys.executable, "-m", "trainer.train", "--config", str(config_file(a.config)), "--data-dir", str(data_dir),
        "--out-dir", str(out), "--resume", "never", "--lr-schedule", arm, "--max-iters", str(a.max_iters),
        "--lr-decay-iters", "none", "--deadline-epoch", f"{deadline:.3f}", "--threads", str(a.threads),
        "--sample-tokens", "0", "--progress", "off", *extra,
    ]


def read_records(out: Path) -> list[dict[str, Any]]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    """One run's figures from its metrics.jsonl: the stop, its checkpoint and its evaluation."""
    end = next((r for r in records if r["type"] == "end"), {})
    steps = [r for r in records if r["type"] == "step"]
    ckpts = [r for r in records if r["type"] == "checkpoint"]
    evals = [r for r in records if r["type"] == "eval"]
    stop = end.get("step")
    final_eval = next((e for e in reversed(evals) if e["step"] == stop), None)
    return {
        "reason": end.get("reason"), "step": stop, "val_loss": end.get("val_loss"), "stop_lr": end.get("lr"),
        "train_loss": final_eval["train_loss"] if final_eval else None,
        "checkpoint_at_stop": bool(ckpts) and ckpts[-1]["step"] == stop,
        # The LR of the last logged step (every log_interval steps), not necessarily the stop step.
        "last_logged_step": steps[-1]["step"] if steps else None, "last_logged_lr": steps[-1]["lr"] if steps else None,
        "tokens_per_s_median": statistics.median(s["tokens_per_s"] for s in steps) if steps else None,
    }


def run_one(cmd: list[str], env: dict[str, str], out: Path, budget: float) -> dict[str, Any]:
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=budget + 300)
    if proc.returncode != 0:
        raise RuntimeError(f"trainer failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    row = summarise(read_records(out))
    row["wall_s"] = round(time.time() - t0, 2)
    return row


def median_or_none(values: list[float | None]) -> float | None:
    got = [v for v in values if v is not None]
    return statistics.median(got) if got else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument("--budget", type=float, default=90.0, help="wall-clock seconds per run, start-up included")
    ap.add_argument("--pairs", type=int, default=3, help="auto/cosine pairs (default 3)")
    ap.add_argument("--max-iters", type=int, default=20000, help="the cosine's length (default 20000)")
    ap.add_argument("--config", default="baby", help="a trainer/configs name or a YAML file (default baby)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads for both (default 1)")
    ap.add_argument("--text-file", help="text to train on (default: tinyshakespeare, bench/data_files.py)")
    ap.add_argument("--json", help="output file (default bench/results/schedule_bench-<time>.json)")
    a, extra = ap.parse_known_args(argv)
    text = find_text(a.text_file)
    if text is None:
        raise SystemExit("error: tinyshakespeare not found: pass --text-file or set GPURUN_SHAKESPEARE or GPURUN_DATA_DIR")

    work = Path(tempfile.mkdtemp(prefix="gpurun-schedule-bench-"))
    try:
        data_dir = work / "data"
        tdata.prepare_file(str(text), data_dir, "char", None)
        env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads),
                   PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        env.pop("RANK", None)
        print(f"device: cpu ({cpu_model()}, {os.cpu_count()} cores); config {a.config}, threads {a.threads}; "
              f"data: {text}")
        print(f"{a.pairs} pairs, {a.budget:.0f} s per run; auto (wsd to the deadline) vs cosine over "
              f"{a.max_iters} steps; extra trainer flags: {' '.join(extra) or 'none'}")
        pairs: list[dict[str, Any]] = []
        for i in range(a.pairs):
            row: dict[str, Any] = {"pair": i + 1}
            for arm in ARMS:
                out = work / f"{arm}-{i}"
                deadline = time.time() + a.budget
                row[arm] = run_one(trainer_cmd(a, arm, data_dir, out, deadline, extra), env, out, a.budget)
                shutil.rmtree(out, ignore_errors=True)
            va, vc = row["auto"]["val_loss"], row["cosine"]["val_loss"]
            row["difference"] = round(vc - va, 4) if va is not None and vc is not None else None
            row["ratio"] = round(va / vc, 4) if va is not None and vc else None
            pairs.append(row)
            au, co = row["auto"], row["cosine"]
            print(f"pair {i + 1}: auto val {va} ({au['step']} steps, lr at the stop {au['stop_lr']})   "
                  f"cosine val {vc} ({co['step']} steps, lr at the stop {co['stop_lr']})   "
                  f"cosine - auto {row['difference']}   auto/cosine {row['ratio']}", flush=True)

        def med(arm: str, key: str) -> float | None:
            return median_or_none([p[arm][key] for p in pairs])

        diff = median_or_none([p["difference"] for p in pairs])
        ratio = median_or_none([p["ratio"] for p in pairs])
        print()
        print(f"{'':8} {'val loss':>9} {'steps':>7} {'tokens/s':>9}   (medians over {a.pairs} runs)")
        for arm in ARMS:
            v, s, t = med(arm, "val_loss"), med(arm, "step"), med(arm, "tokens_per_s_median")
            print(f"{arm:8} {v if v is None else f'{v:9.4f}'} {s if s is None else f'{s:7.0f}'} "
                  f"{t if t is None else f'{t:9.0f}'}")
        diffs = [p["difference"] for p in pairs if p["difference"] is not None]
        meets = diff is not None and diff >= TARGET
        if diffs:
            print(f"cosine - auto val loss: median {diff:.4f} over {len(diffs)} pairs (min {min(diffs):.4f}, "
                  f"max {max(diffs):.4f}); auto/cosine {ratio:.4f}; target >= {TARGET}: {'met' if meets else 'NOT met'}")
        result = {
            "bench": "schedule_bench", "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "device": f"cpu ({cpu_model()})", "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "command": " ".join(["bench/schedule_bench.py", *(argv if argv is not None else sys.argv[1:])]),
            "config": a.config, "budget_s": a.budget, "max_iters": a.max_iters, "threads": a.threads,
            "extra_flags": extra, "data": str(text), "pairs": pairs,
            "auto_val_loss_median": med("auto", "val_loss"), "cosine_val_loss_median": med("cosine", "val_loss"),
            "difference_median": diff, "ratio_median": ratio, "target": TARGET, "meets_target": meets,
        }
        out_json = Path(a.json) if a.json else REPO / "bench" / "results" / f"schedule_bench-{int(time.time())}.json"
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"figures: {out_json}")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
