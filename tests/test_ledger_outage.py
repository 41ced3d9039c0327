"""The shared ledger's server goes away: a launch refuses, a running controller keeps guarding and
queues its writes under the run directory, and they reach the ledger once the server is back.

Each test starts a PostgreSQL server of its own (tests/fixtures/postgres.py): it is killed mid-test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.state import journal
from orchestrator.state.ledger import Ledger
from orchestrator.state.phases import Phase
from orchestrator.state.values import LedgerUnavailable
from tests.e2e_helpers import wait_for
from tests.fixtures.postgres import Cluster, make_root, pg_bin

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def own_server() -> Iterator[Cluster]:
    if pg_bin() is None:
        pytest.skip("PostgreSQL is not installed (make sysdeps installs Debian's postgresql package)")
    cluster = Cluster.start(make_root("gpurun-pg-outage-"), durable=True)
    try:
        yield cluster
    finally:
        cluster.stop_and_remove()


def test_a_journaled_run_queues_while_the_server_is_away_and_writes_it_out_after(
        own_server: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal, "RETRY_S", 0.2)
    url = own_server.url()
    ledger = Ledger(tmp_path / "home", url=url)
    run = ledger.create_run("r-1", "local", 1.0, {"a": 1}, str(tmp_path / "r-1"))
    (tmp_path / "r-1").mkdir()
    ledger.set_phase("r-1", "creating")
    ledger.keep_journal(run)
    own_server.kill()
    with pytest.raises(LedgerUnavailable, match="cannot be reached"):
        Ledger(tmp_path / "other", url=url).committed_usd(0.0)  # what a launch meets: no hold, so no launch
    home = tmp_path / "launcher"
    env = {**os.environ, "PYTHONPATH": str(REPO), "GPURUN_LEDGER": url, "GPURUN_HOME": str(home),
           "GPURUN_RUNS_DIR": str(home / "runs")}
    refused = subprocess.run([sys.executable, "-m", "orchestrator.cli.main", "launch", "--provider", "local",
                              "--max-usd", "0.02", "--usd-per-hour", "1.2", "--yes", "--", "true"], cwd=tmp_path,
                             env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert refused.returncode == 2 and len(lines) == 1 and "cannot be reached" in lines[0], refused.stderr
    assert not (home / "sandboxes").exists() and not (home / "runs").exists()  # nothing rented, nothing made
    before = time.time()
    ledger.set_phase("r-1", Phase.BOOTING)
    ledger.record_event("r-1", "sync", files=3, bytes=100)
    ledger.update_run("r-1", plan={"b": 2}, controller_pid=4242)
    assert ledger.pending_writes("r-1") == 3 and (tmp_path / "r-1" / journal.OUTBOX).exists()
    seen = ledger.get_run("r-1")  # the run's last known state, queued changes applied
    assert seen is not None and seen.phase is Phase.BOOTING and seen.plan == {"a": 1, "b": 2}
    assert [e.phase for e in ledger.events("r-1")][-2:] == ["booting", "sync"]
    resumed_at = time.time()
    own_server.resume()
    # The next read after the (doubling) wait finds the server back and writes the queue out first.
    wait_for(lambda: ledger.get_run("r-1") is not None and ledger.pending_writes("r-1") == 0, 20, "the queue")
    assert not (tmp_path / "r-1" / journal.OUTBOX).exists()
    fresh = Ledger(tmp_path / "third", url=url)  # another machine sees it all, at the times it happened
    events = fresh.events("r-1")
    assert [e.phase for e in events] == ["planned", "creating", "booting", "sync"]
    assert before <= events[2].time <= events[3].time <= resumed_at  # queued times, not write-out times
    assert fresh.get_run("r-1").plan == {"a": 1, "b": 2}  # type: ignore[union-attr]


def test_killing_the_server_mid_run_the_run_still_ends_inside_its_cap_verified(
        own_server: Cluster, tmp_path: Path, gpurun_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = own_server.url()
    monkeypatch.setenv("GPURUN_LEDGER", url)
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    job = "for i in $(seq 1 12); do echo step $i; sleep 1; done"
    launch = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli.main", "launch", "--provider", "local", "--max-usd", "0.05",
         "--usd-per-hour", "1.2", "--sync-interval", "1", "--yes", "--", "sh", "-c", job],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    ledger = Ledger()

    def running() -> bool:
        runs = ledger.list_runs()
        return bool(runs) and runs[0].phase == Phase.RUNNING
    wait_for(running, 120, "the run to start its job")
    (run,) = ledger.list_runs()
    own_server.kill()
    killed_at = time.time()
    time.sleep(4)  # the guard polls, syncs (queued), keeps its deadline
    assert launch.poll() is None, launch.communicate()
    outbox = Path(run.run_dir) / journal.OUTBOX
    assert outbox.exists() and outbox.read_text().count('"sync"') >= 1
    own_server.resume()
    out, err = launch.communicate(timeout=240)
    assert launch.returncode == 0, out + err
    ended = Ledger().get_run(run.run_id)
    assert ended is not None and ended.phase == Phase.VERIFIED
    assert ended.cost_usd is not None and ended.cost_usd <= 0.05
    assert len(Ledger().proofs(run.run_id)) == 1
    syncs = [e for e in Ledger().events(run.run_id) if e.phase == "sync"]
    assert any(killed_at < e.time < killed_at + 4 for e in syncs)  # written while the server was away
    assert not outbox.exists()
