"""What a ledger operation costs on each engine: open, a launch's hold (cap check + hold + run row in
one locked transaction), a phase change, an event, a read.

    .venv/bin/python bench/ledger_bench.py                      # SQLite (a temp GPURUN_HOME)
    .venv/bin/python bench/ledger_bench.py --url postgresql://gpurun@127.0.0.1:5432/bench

The PostgreSQL database should be empty or a bench's own: the bench writes runs named bench-*.
Prints the median and the 95th percentile of each, in milliseconds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestrator.money.budgets_file import Budgets  # noqa: E402
from orchestrator.money.caps import reserve  # noqa: E402
from orchestrator.state.ledger import Ledger  # noqa: E402


def timed(n: int, step: Callable[[int], object]) -> list[float]:
    out = []
    for i in range(n):
        start = time.perf_counter()
        step(i)
        out.append((time.perf_counter() - start) * 1000)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", help="postgresql://... (default: SQLite under a temp GPURUN_HOME)")
    ap.add_argument("-n", type=int, default=200, help="operations of each kind")
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="gpurun-ledger-bench-"))
    budgets = Budgets(path=home / "budgets.yaml", per_run_default_usd=1, per_run_max_usd=5, daily_usd=1e9,
                      monthly_usd=1e9)
    tag = uuid.uuid4().hex[:6]
    ledger = Ledger(home, url=args.url)
    ids = [f"bench-{tag}-{i:05d}" for i in range(args.n)]

    def hold(i: int) -> None:
        with ledger.transaction():
            reserve(budgets, ledger, ids[i], "local", 0.01, person="bench")
            ledger.create_run(ids[i], "local", 0.01, {"i": i}, "/tmp/bench")

    figures = {
        "open (Ledger())": timed(min(args.n, 50), lambda _: Ledger(home, url=args.url)),
        "launch hold (caps + hold + run)": timed(args.n, hold),
        "set_phase": timed(args.n, lambda i: ledger.set_phase(ids[i], "creating")),
        "record_event": timed(args.n, lambda i: ledger.record_event(ids[i], "sync", bytes=i)),
        "get_run": timed(args.n, lambda i: ledger.get_run(ids[i])),
    }
    print(f"engine: {'PostgreSQL ' + ledger.where if ledger.shared else 'SQLite ' + str(ledger.path)}")
    for name, ms in figures.items():
        p95 = sorted(ms)[int(len(ms) * 0.95) - 1]
        print(f"{name:34s} median {statistics.median(ms):7.2f} ms   p95 {p95:7.2f} ms   (n={len(ms)})")


if __name__ == "__main__":
    main()
