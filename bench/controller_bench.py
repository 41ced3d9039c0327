"""The controller's own overhead on the local provider, read from the ledger's phase events.

    python bench/controller_bench.py                       # 3 runs, attached, 0.02 USD at 1.2 USD/h each
    python bench/controller_bench.py --baseline bench/results/controller_bench-1700000000.json

docs/DESIGN.md's target ("Performance targets"): from SSH-ready to the first training step, and from the stop time to a verified
termination, each a few seconds beyond what the provider itself takes (on `local`, almost nothing).
Each run is a real `gpurun launch --provider local` in a fresh GPURUN_HOME and working directory;
the intervals come from the ledger's events (the same rows as `gpurun status RUN --timings`) and the
first step from the trainer's metrics.jsonl. Beside each run the bare trainer (the run's own job
command, same python, a fresh out dir) runs alone to its first step: the part of SSH-ready → first
step that is the trainer's start-up, not the controller's. Figures are medians over the runs; with
--baseline (an earlier result of this script) each also prints as a ratio to that one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from orchestrator.state.ledger import Event, Ledger  # noqa: E402
from trainer.hardware import cpu_model  # noqa: E402

# (name, from, to): phases of the ledger, plus "stop_at" (the guard's stop time, from the run row)
# and "first_step" (the trainer's first step record).
INTERVALS: tuple[tuple[str, str, str], ...] = (
    ("ssh_ready → bootstrapped", "ssh_ready", "bootstrapped"),
    ("bootstrapped → running", "bootstrapped", "running"),
    ("running → first step", "running", "first_step"),
    ("ssh_ready → first step", "ssh_ready", "first_step"),
    ("stop time → stopping", "stop_at", "stopping"),
    ("stopping → syncing_final", "stopping", "syncing_final"),
    ("syncing_final → terminating", "syncing_final", "terminating"),
    ("terminating → verified", "terminating", "verified"),
    ("stop time → verified", "stop_at", "verified"),
)


def marks(events: Sequence[Event], stop_at: float | None, first_step: float | None) -> dict[str, float]:
    """The epoch of each mark: a phase's first event, the stop time, the first step."""
    out: dict[str, float] = {}
    for e in events:
        out.setdefault(e.phase, e.time)
    if stop_at is not None:
        out["stop_at"] = stop_at
    if first_step is not None:
        out["first_step"] = first_step
    return out


def intervals(events: Sequence[Event], stop_at: float | None, deadline: float | None,
              first_step: float | None) -> dict[str, float]:
    """Seconds for each INTERVALS entry whose two marks exist, plus how early the run was verified."""
    m = marks(events, stop_at, first_step)
    out = {name: round(m[b] - m[a], 3) for name, a, b in INTERVALS if a in m and b in m}
    if deadline is not None and "verified" in m:
        out["verified before the deadline by"] = round(deadline - m["verified"], 3)
    return out


def first_step_time(metrics: Path) -> float | None:
    """The time of the trainer's first step record, or None when there is none."""
    if not metrics.is_file():
        return None
    for line in metrics.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("type") == "step":
            return float(rec["time"])
    return None


def launch_local(work: Path, max_usd: float, usd_per_hour: float, timeout_s: float) -> dict[str, Any]:
    """One attached local launch in a fresh home; its intervals and the job's command line."""
    home, cwd = work / "home", work / "cwd"
    cwd.mkdir(parents=True)
    env = dict(os.environ, GPURUN_HOME=str(home), PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("GPURUN_RUNS_DIR", None)
    cmd = [sys.executable, "-m", "orchestrator.cli.main", "launch", "--provider", "local", "--max-usd", str(max_usd),
           "--usd-per-hour", str(usd_per_hour), "--yes", "--set", "max_iters=1000000"]
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s,
                         stdin=subprocess.DEVNULL)
    if res.returncode != 0:
        raise SystemExit(f"error: the local launch failed (exit {res.returncode}): {res.stdout[-2000:]}{res.stderr[-2000:]}")
    ledger = Ledger(home)
    try:
        (run,) = ledger.list_runs()
        events = ledger.events(run.run_id)
    finally:
        ledger.close()
    command = next((e.payload.get("command") for e in events if e.phase == "running"), None)
    first = first_step_time(Path(run.run_dir) / "out" / "metrics.jsonl")
    return {"run_id": run.run_id, "phase": run.phase, "command": command,
            "seconds": intervals(events, run.stop_at_epoch, run.deadline_epoch, first)}


def bare_trainer(command: str, work: Path, timeout_s: float) -> float:
    """Seconds from starting the run's job command alone (two steps, fresh out dir) to its first step."""
    argv = shlex.split(command)
    out = work / "out"
    if "--deadline-epoch" in argv:  # no deadline: it stops after its two steps
        i = argv.index("--deadline-epoch")
        del argv[i:i + 2]
    argv = [a for a in argv if not a.startswith("--out-dir=")]
    if "--out-dir" in argv:
        i = argv.index("--out-dir")
        del argv[i:i + 2]
    argv += ["--out-dir", str(out), "--max-iters", "2", "--sample-tokens", "0"]  # the same start-up as the run's
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    started = time.time()
    res = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s,
                         stdin=subprocess.DEVNULL)
    first = first_step_time(out / "metrics.jsonl")
    if res.returncode != 0 or first is None:
        raise SystemExit(f"error: the bare trainer failed (exit {res.returncode}): {res.stderr[-2000:]}")
    return round(first - started, 3)


def medians(runs: Sequence[dict[str, float]]) -> dict[str, float]:
    names = [n for n in runs[0] if all(n in r for r in runs)]
    return {n: round(statistics.median(r[n] for r in runs), 3) for n in names}


def ratios(med: dict[str, float], baseline: dict[str, float] | None) -> dict[str, float]:
    """Each median over the baseline's, where the baseline has a non-zero one."""
    return {n: round(v / baseline[n], 3) for n, v in med.items() if baseline and baseline.get(n)}


def report(med: dict[str, float], spread: dict[str, tuple[float, float]], ratio: dict[str, float]) -> None:
    head = f"{'interval':44} {'median s':>9} {'min … max':>17}"
    print(head + (f" {'vs baseline':>12}" if ratio else ""))
    for name, value in med.items():
        lo, hi = spread[name]
        line = f"{name:44} {value:9.2f} {lo:8.2f} … {hi:6.2f}"
        if name in ratio:
            line += f" {ratio[name]:11.2f}x"
        print(line)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="local launches (default 3), each beside a bare trainer")
    ap.add_argument("--max-usd", type=float, default=0.02, help="each run's budget (default 0.02)")
    ap.add_argument("--usd-per-hour", type=float, default=1.2, help="the local provider's simulated price")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per launch")
    ap.add_argument("--baseline", help="an earlier result JSON of this script: print ratios to its medians")
    ap.add_argument("--json", help="where to write the figures (default bench/results/controller_bench-<time>.json)")
    a = ap.parse_args(argv)
    baseline = json.loads(Path(a.baseline).read_text())["medians"] if a.baseline else None

    work = Path(tempfile.mkdtemp(prefix="gpurun-controller-bench-"))
    try:
        runs: list[dict[str, Any]] = []
        for i in range(a.runs):
            run = launch_local(work / f"run{i}", a.max_usd, a.usd_per_hour, a.timeout)
            if run["command"]:
                bare = bare_trainer(run["command"], work / f"bare{i}", a.timeout)
                run["seconds"]["bare trainer → first step"] = bare
                if "ssh_ready → first step" in run["seconds"]:
                    run["seconds"]["controller share of ssh_ready → first step"] = round(
                        run["seconds"]["ssh_ready → first step"] - bare, 3)
            runs.append(run)
            s = run["seconds"]
            print(f"run {i + 1}: {run['run_id']} {run['phase']}; ssh_ready → first step "
                  f"{s.get('ssh_ready → first step', float('nan')):.2f} s (bare trainer "
                  f"{s.get('bare trainer → first step', float('nan')):.2f} s); stop time → verified "
                  f"{s.get('stop time → verified', float('nan')):.2f} s", flush=True)
        secs = [r["seconds"] for r in runs]
        med = medians(secs)
        spread = {n: (min(s[n] for s in secs), max(s[n] for s in secs)) for n in med}
        ratio = ratios(med, baseline)
        print()
        report(med, spread, ratio)
        result = {
            "bench": "controller_bench", "date": time.strftime("%Y-%m-%d %H:%M:%S"), "provider": "local",
            "command": " ".join(["bench/controller_bench.py", *(argv if argv is not None else sys.argv[1:])]),
            "python": platform.python_version(), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
            "max_usd": a.max_usd, "usd_per_hour": a.usd_per_hour, "runs": runs, "medians": med,
            "baseline": a.baseline,
            "ratios_to_baseline": ratio,
        }
        out = Path(a.json) if a.json else REPO / "bench" / "results" / f"controller_bench-{int(time.time())}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        print(f"figures: {out}")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
