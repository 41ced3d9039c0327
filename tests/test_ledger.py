"""The SQLite ledger: runs, phases and timings, instances, holds, proofs, and two processes at once."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from orchestrator.state import tables
from orchestrator.state.db import default_home
from orchestrator.state.ledger import Ledger
from orchestrator.state.phases import MAIN_PHASES
from orchestrator.state.rows import Event, Run
from orchestrator.state.values import LedgerError
from tests.e2e_helpers import files_holding

REPO = Path(__file__).resolve().parent.parent


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# Every test here runs on both engines: SQLite (ledger.db) and PostgreSQL (GPURUN_LEDGER).
pytestmark = pytest.mark.usefixtures("ledger_engine")


@pytest.fixture
def ledger(gpurun_home: Path) -> Ledger:
    return Ledger()


@pytest.fixture
def sqlite_only(ledger_engine: str) -> None:
    if ledger_engine != "sqlite":
        pytest.skip("the SQLite file itself (its modes, its journal) is what this test checks")


def test_home_and_file_modes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sqlite_only: None) -> None:
    home = tmp_path / "fresh" / "gpurun"
    monkeypatch.setenv("GPURUN_HOME", str(home))
    assert default_home() == home
    led = Ledger()
    assert led.home == home and led.path == home / "ledger.db"
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE(led.path.stat().st_mode) == 0o600
    mode = sqlite3.connect(led.path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    monkeypatch.delenv("GPURUN_HOME")
    assert default_home() == Path.home() / ".gpurun"


def test_explicit_home_and_reopen(tmp_path: Path) -> None:
    led = Ledger(tmp_path / "h")
    led.create_run("run-one", "local", 1.0, {"a": 1}, "/r/run-one")
    again = Ledger(tmp_path / "h")
    run = again.get_run("run-one")
    assert run is not None and run.plan == {"a": 1}


def test_create_and_get_run(ledger: Ledger) -> None:
    before = time.time()
    run = ledger.create_run("abc-123", "runpod", 3.0, {"gpu": "RTX 4090"}, "/runs/abc-123")
    assert isinstance(run, Run)
    assert (run.run_id, run.provider, run.phase, run.max_usd) == ("abc-123", "runpod", "planned", 3.0)
    assert before <= run.created_at <= time.time() and run.updated_at == run.created_at
    assert run.open and not run.settled and run.cost_usd is None and run.error is None
    assert run.plan == {"gpu": "RTX 4090"} and run.run_dir == "/runs/abc-123"
    assert [e.phase for e in ledger.events("abc-123")] == ["planned"]
    assert ledger.get_run("nope") is None
    with pytest.raises(LedgerError, match="already exists"):
        ledger.create_run("abc-123", "runpod", 3.0, {}, "/x")
    for bad in (-1.0, float("nan"), "x"):
        with pytest.raises(LedgerError, match="max_usd"):
            ledger.create_run("bad-run", "local", bad, {}, "/x")  # type: ignore[arg-type]


def test_set_phase_events_and_open(ledger: Ledger) -> None:
    ledger.create_run("r-1", "aws", 1.0, {}, "/r")
    ledger.set_phase("r-1", "creating", instance_type="g5.xlarge")
    ledger.record_event("r-1", "sync", files=3, bytes=1024)
    ledger.set_phase("r-1", "failed_creating", error="capacity")
    run = ledger.get_run("r-1")
    assert run is not None and run.phase == "failed_creating" and run.failed and run.open
    assert run.error == "capacity"
    evs = ledger.events("r-1")
    assert all(isinstance(e, Event) for e in evs)
    assert [e.phase for e in evs] == ["planned", "creating", "sync", "failed_creating"]
    assert evs[1].payload == {"instance_type": "g5.xlarge"}
    assert evs[2].payload == {"files": 3, "bytes": 1024}
    assert evs == sorted(evs, key=lambda e: e.time)
    ledger.set_phase("r-1", "terminating")
    ledger.set_phase("r-1", "verified")
    run = ledger.get_run("r-1")
    assert run is not None and not run.open


def test_phase_validation(ledger: Ledger) -> None:
    ledger.create_run("r-1", "aws", 1.0, {}, "/r")
    for bad in ("runing", "failed_verified", "failed_", ""):
        with pytest.raises(LedgerError, match="unknown phase"):
            ledger.set_phase("r-1", bad)
    with pytest.raises(LedgerError, match="is a phase"):
        ledger.record_event("r-1", "running")
    with pytest.raises(LedgerError, match="no run"):
        ledger.set_phase("ghost", "creating")
    with pytest.raises(LedgerError, match="no run"):
        ledger.record_event("ghost", "sync")
    assert ledger.get_run("r-1").phase == "planned"  # type: ignore[union-attr]


def test_phase_transitions_are_enforced(ledger: Ledger) -> None:
    ledger.create_run("r-1", "aws", 1.0, {}, "/r")
    for p in MAIN_PHASES[1:]:  # the whole chain from planned, preparing_data included
        ledger.set_phase("r-1", p)
    assert ledger.get_run("r-1").phase == "verified"  # type: ignore[union-attr]
    assert [e.phase for e in ledger.events("r-1")] == [p.value for p in MAIN_PHASES]
    with pytest.raises(LedgerError, match="^run r-1: cannot go from verified to terminating$"):
        ledger.set_phase("r-1", "terminating")

    ledger.create_run("r-2", "aws", 1.0, {}, "/r")
    for p in ("creating", "booting", "ssh_ready"):
        ledger.set_phase("r-2", p)
    with pytest.raises(LedgerError) as info:
        ledger.set_phase("r-2", "verified")
    assert str(info.value) == "run r-2: cannot go from ssh_ready to verified"
    run = ledger.get_run("r-2")
    assert run is not None and run.phase == "ssh_ready" and run.open  # refused: nothing changed
    assert [e.phase for e in ledger.events("r-2")][-1] == "ssh_ready"
    # The other ways out of a job phase, then a failed teardown retried.
    ledger.set_phase("r-2", "bootstrapped")
    ledger.set_phase("r-2", "running")  # no data to prepare
    ledger.set_phase("r-2", "failed_running", error="exit 1")
    with pytest.raises(LedgerError, match="cannot go from failed_running to stopping"):
        ledger.set_phase("r-2", "stopping")
    for p in ("terminating", "failed_terminating", "terminating", "terminating", "verified"):
        ledger.set_phase("r-2", p)
    assert ledger.get_run("r-2").phase == "verified"  # type: ignore[union-attr]
    # The phase never changes behind the transition check.
    with pytest.raises(LedgerError, match="set_phase"):
        ledger.update_run("r-2", phase="running")


def test_payloads_are_redacted(ledger: Ledger) -> None:
    secret = "rpa_" + "A" * 40
    ledger.create_run("r-1", "runpod", 1.0, {"env": {"RUNPOD_API_KEY": secret}}, "/r")
    ledger.set_phase("r-1", "creating", api_key=secret, note=f"Authorization: Bearer {secret}")
    ledger.record_event("r-1", "terminate_request", response={"token": "t0ps3cr3t-value"})
    ledger.add_instance("r-1", "runpod", "pod-1", "pending", {"password": "hunter22"})
    ledger.update_run("r-1", error=f"401 for api_key={secret}")
    with ledger.reading() as conn:  # every stored value, on either engine
        raw = repr([conn.execute(select(t)).all() for t in tables.metadata.sorted_tables]).encode()
    assert b"runpod" in raw and secret.encode() not in raw
    assert b"t0ps3cr3t-value" not in raw and b"hunter22" not in raw
    if not ledger.shared:  # nor the SQLite file's bytes, its write-ahead log included
        assert files_holding(sorted(ledger.home.glob("ledger.db*")), [secret, "t0ps3cr3t-value", "hunter22"]) == []
    assert ledger.events("r-1")[1].payload["api_key"] == "***"


def test_update_run_fields_and_plan_merge(ledger: Ledger) -> None:
    ledger.create_run("r-1", "aws", 2.0, {"gpu": "A10G", "n": 1}, "/r")
    ledger.update_run(
        "r-1",
        usd_per_hour=1.006,
        clock_start_epoch=100.0,
        deadline_epoch=200.0,
        stop_at_epoch=180.0,
        controller_pid=4242,
        plan={"n": 2, "region": "us-east-1"},
    )
    run = ledger.get_run("r-1")
    assert run is not None
    assert (run.usd_per_hour, run.clock_start_epoch, run.deadline_epoch, run.stop_at_epoch) == (1.006, 100.0, 200.0, 180.0)
    assert run.controller_pid == 4242
    assert run.plan == {"gpu": "A10G", "n": 2, "region": "us-east-1"}
    assert run.updated_at >= run.created_at
    ledger.update_run("r-1", controller_pid=None)
    assert ledger.get_run("r-1").controller_pid is None  # type: ignore[union-attr]
    with pytest.raises(LedgerError, match="run_id"):
        ledger.update_run("r-1", run_id="other")
    with pytest.raises(LedgerError, match="colour"):
        ledger.update_run("r-1", colour="red")
    with pytest.raises(LedgerError, match="only through set_phase"):
        ledger.update_run("r-1", phase="creating")
    with pytest.raises(LedgerError, match="no run"):
        ledger.update_run("ghost", usd_per_hour=1.0)


def test_list_runs_and_resolve_run(ledger: Ledger) -> None:
    with pytest.raises(LedgerError, match="no runs in the ledger yet"):
        ledger.resolve_run(None)
    for i, rid in enumerate(("alpha-100", "alpha-200", "beta-300")):
        ledger.create_run(rid, "local", 1.0, {}, "/r")
        ledger.update_run(rid, created_at=1000.0 + i)
    ledger.set_phase("alpha-100", "terminating")
    ledger.set_phase("alpha-100", "verified")
    assert [r.run_id for r in ledger.list_runs()] == ["beta-300", "alpha-200", "alpha-100"]
    assert [r.run_id for r in ledger.list_runs(open_only=True)] == ["beta-300", "alpha-200"]
    assert ledger.resolve_run(None).run_id == "beta-300"
    assert ledger.resolve_run("alpha-200").run_id == "alpha-200"
    assert ledger.resolve_run("alpha-1").run_id == "alpha-100"
    assert ledger.resolve_run("b").run_id == "beta-300"
    with pytest.raises(LedgerError) as info:
        ledger.resolve_run("alpha")
    assert "ambiguous" in str(info.value) and "alpha-100" in str(info.value) and "alpha-200" in str(info.value)
    with pytest.raises(LedgerError) as info:
        ledger.resolve_run("x")
    assert str(info.value) == "no run matches 'x' (see `gpurun status`)"
    # LIKE wildcards in a ref are literal, and case matters.
    with pytest.raises(LedgerError, match="no run matches"):
        ledger.resolve_run("%")
    with pytest.raises(LedgerError, match="no run matches"):
        ledger.resolve_run("alpha_")
    with pytest.raises(LedgerError, match="no run matches"):
        ledger.resolve_run("BETA")


def test_timings(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    ledger.create_run("r-1", "local", 1.0, {}, "/r")
    for phase, dt in (("creating", 2.0), ("booting", 0.5), ("ssh_ready", 10.0)):
        clock[0] += dt
        ledger.set_phase("r-1", phase)
    clock[0] += 1.0
    ledger.record_event("r-1", "sync", n=1)  # not a phase: does not split ssh_ready
    clock[0] += 3.0
    assert ledger.timings("r-1") == [
        ("planned", 1000.0, 2.0),
        ("creating", 1002.0, 0.5),
        ("booting", 1002.5, 10.0),
        ("ssh_ready", 1012.5, 4.0),  # open run: the last phase lasts until now
    ]
    ledger.set_phase("r-1", "terminating")
    clock[0] += 2.0
    ledger.set_phase("r-1", "verified")
    clock[0] += 100.0
    t = ledger.timings("r-1")
    assert t[-3] == ("ssh_ready", 1012.5, 4.0)
    assert t[-2] == ("terminating", 1016.5, 2.0)
    assert t[-1] == ("verified", 1018.5, 0.0)  # closed: no time accrues after the end
    assert ledger.timings("r-1") == t
    with pytest.raises(LedgerError, match="no run"):
        ledger.timings("ghost")


def test_instances_and_host_keys(ledger: Ledger) -> None:
    ledger.create_run("r-1", "aws", 1.0, {}, "/r")
    ledger.create_run("r-2", "aws", 1.0, {}, "/r")
    ledger.add_instance("r-1", "aws", "i-0abc", "pending", {"type": "g5.xlarge"})
    ledger.update_instance("i-0abc", state="running", info={"ip": "1.2.3.4"})
    ledger.update_instance("i-0abc", info={"port": 22})
    (row,) = ledger.instances("r-1")
    assert (row.run_id, row.provider, row.instance_id, row.state) == ("r-1", "aws", "i-0abc", "running")
    assert row.info == {"type": "g5.xlarge", "ip": "1.2.3.4", "port": 22}
    assert row.host_key is None and row.host_key_type is None
    assert ledger.instances("r-2") == []
    assert ledger.instance_owner("i-0abc") == "r-1"
    assert ledger.instance_owner("i-unknown") is None
    # Re-adding for the same run (a resumed create) updates; another run cannot claim it.
    ledger.add_instance("r-1", "aws", "i-0abc", "running", {"zone": "a"})
    assert ledger.instances("r-1")[0].info["zone"] == "a"
    with pytest.raises(LedgerError, match="already belongs to run 'r-1'"):
        ledger.add_instance("r-2", "aws", "i-0abc", "pending")
    with pytest.raises(LedgerError, match="no instance"):
        ledger.update_instance("i-ghost", state="running")

    assert ledger.host_key("i-0abc") is None
    ledger.pin_host_key("i-0abc", "ssh-ed25519", "AAAAC3Nza")
    assert ledger.host_key("i-0abc") == ("ssh-ed25519", "AAAAC3Nza")
    ledger.pin_host_key("i-0abc", "ssh-ed25519", "AAAAC3Nza")  # same key again: fine
    with pytest.raises(LedgerError, match="different pinned host key"):
        ledger.pin_host_key("i-0abc", "ssh-ed25519", "AAAAother")
    assert ledger.host_key("i-0abc") == ("ssh-ed25519", "AAAAC3Nza")
    with pytest.raises(LedgerError, match="no instance"):
        ledger.pin_host_key("i-ghost", "ssh-ed25519", "AAAA")
    assert ledger.host_key("i-ghost") is None


def test_holds_settlement_and_committed(ledger: Ledger) -> None:
    for rid, prov in (("r-1", "aws"), ("r-2", "runpod"), ("r-3", "aws"), ("r-old", "aws")):
        ledger.create_run(rid, prov, 5.0, {}, "/r")
    ledger.add_hold("r-1", "aws", 3.0, at=1000.0)
    ledger.add_hold("r-2", "runpod", 2.0, at=1000.0)
    ledger.add_hold("r-old", "aws", 9.0, at=10.0)
    assert ledger.committed_usd(500.0) == pytest.approx(5.0)
    assert ledger.committed_usd(500.0, "aws") == pytest.approx(3.0)
    assert ledger.committed_usd(0.0) == pytest.approx(14.0)
    assert ledger.committed_usd(500.0, exclude_run="r-1") == pytest.approx(2.0)
    # Re-holding an unsettled run replaces its hold.
    ledger.add_hold("r-1", "aws", 4.0, at=1000.0)
    assert ledger.committed_usd(500.0, "aws") == pytest.approx(4.0)

    ledger.settle("r-1", 0.75)
    run = ledger.get_run("r-1")
    assert run is not None and run.settled and run.cost_usd == 0.75
    assert ledger.committed_usd(500.0, "aws") == pytest.approx(0.75)
    assert ledger.hold("r-1")["settled_usd"] == 0.75  # type: ignore[index]
    ledger.settle("r-1", 0.80)  # a corrected settlement replaces the first
    assert ledger.committed_usd(500.0, "aws") == pytest.approx(0.80)
    with pytest.raises(LedgerError, match="already settled"):
        ledger.add_hold("r-1", "aws", 1.0)

    # A run settled without a hold still counts what it cost (from its creation time).
    ledger.settle("r-3", 0.5)
    assert ledger.committed_usd(0.0, "aws") == pytest.approx(0.80 + 0.5 + 9.0)
    with pytest.raises(LedgerError, match="no run"):
        ledger.settle("ghost", 1.0)
    for bad in (-0.01, float("nan"), float("inf")):
        with pytest.raises(LedgerError):
            ledger.settle("r-2", bad)
        with pytest.raises(LedgerError):
            ledger.add_hold("r-2", "runpod", bad)


def test_spend_by(ledger: Ledger) -> None:
    d1 = datetime(2026, 3, 1, 10, 0).timestamp()
    d2 = datetime(2026, 3, 2, 23, 30).timestamp()
    d3 = datetime(2026, 4, 1, 0, 30).timestamp()
    rows = (("a", "aws", d1, 1.0, 0.5), ("b", "runpod", d1, 2.0, None), ("c", "aws", d2, 3.0, 1.25), ("d", "aws", d3, 1.0, None))
    for rid, prov, at, held, cost in rows:
        ledger.create_run(rid, prov, held, {}, "/r")
        ledger.add_hold(rid, prov, held, at=at)
        if cost is not None:
            ledger.settle(rid, cost)
    ledger.create_run("e", "local", 1.0, {}, "/r")  # never held nor settled: a zero row
    ledger.update_run("e", created_at=d2)

    by_day = ledger.spend_by("day")
    assert by_day == [
        {"key": "2026-04-01", "provider": "aws", "runs": 1, "cost_usd": 0.0, "held_usd": 1.0},
        {"key": "2026-03-02", "provider": "aws", "runs": 1, "cost_usd": 1.25, "held_usd": 0.0},
        {"key": "2026-03-02", "provider": "local", "runs": 1, "cost_usd": 0.0, "held_usd": 0.0},
        {"key": "2026-03-01", "provider": "aws", "runs": 1, "cost_usd": 0.5, "held_usd": 0.0},
        {"key": "2026-03-01", "provider": "runpod", "runs": 1, "cost_usd": 0.0, "held_usd": 2.0},
    ]
    by_provider = {r["key"]: r for r in ledger.spend_by("provider")}
    assert by_provider["aws"]["runs"] == 3
    assert by_provider["aws"]["cost_usd"] == pytest.approx(1.75) and by_provider["aws"]["held_usd"] == 1.0
    by_month = {(r["key"], r["provider"]): r for r in ledger.spend_by("month")}
    assert by_month[("2026-03", "aws")]["cost_usd"] == pytest.approx(1.75)
    with pytest.raises(LedgerError, match="group"):
        ledger.spend_by("week")


def test_proof_hash_chain(ledger: Ledger) -> None:
    ledger.create_run("r-1", "aws", 1.0, {}, "/r")
    ledger.create_run("r-2", "aws", 1.0, {}, "/r")
    assert ledger.last_proof_sha256() is None
    assert ledger.proofs() == []
    h1, h2, h3 = sha("one"), sha("two"), sha("three")
    ledger.add_proof("r-1", h1, "/r/r-1/shutdown_proof.json", None)
    assert ledger.last_proof_sha256() == h1
    ledger.add_proof("r-2", h2, "/r/r-2/shutdown_proof.json", h1)
    # A writer that read an old head would fork the chain: refused.
    with pytest.raises(LedgerError, match="chains to"):
        ledger.add_proof("r-2", h3, "/r/x.json", h1)
    with pytest.raises(LedgerError, match="chains to"):
        ledger.add_proof("r-2", h3, "/r/x.json", None)
    with pytest.raises(LedgerError, match="64 lower-case hex"):
        ledger.add_proof("r-2", "abc", "/r/x.json", h2)
    ledger.add_proof("r-1", h3, "/r/r-1/shutdown_proof-2.json", h2)
    chain = ledger.proofs()
    assert [(p["run_id"], p["sha256"], p["prev_sha256"]) for p in chain] == [
        ("r-1", h1, None),
        ("r-2", h2, h1),
        ("r-1", h3, h2),
    ]
    for prev, cur in zip(chain, chain[1:], strict=False):
        assert cur["prev_sha256"] == prev["sha256"]
    assert [p["sha256"] for p in ledger.proofs("r-1")] == [h1, h3]
    assert chain[0]["path"] == "/r/r-1/shutdown_proof.json" and chain[0]["created_at"] > 0


def test_transaction_rolls_back_on_error(ledger: Ledger) -> None:
    ledger.create_run("r-1", "aws", 1.0, {}, "/r")
    with pytest.raises(RuntimeError):
        with ledger.transaction():
            ledger.set_phase("r-1", "creating")  # nested: joins the outer transaction
            ledger.add_hold("r-1", "aws", 1.0)
            raise RuntimeError("boom")
    assert ledger.get_run("r-1").phase == "planned"  # type: ignore[union-attr]
    assert ledger.hold("r-1") is None
    with ledger.transaction() as conn:
        assert conn.in_transaction
        ledger.set_phase("r-1", "creating")
    assert ledger.get_run("r-1").phase == "creating"  # type: ignore[union-attr]


def test_threads_share_a_ledger(ledger: Ledger) -> None:
    import threading

    ledger.create_run("r-1", "aws", 1.0, {}, "/r")
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(20):
                ledger.record_event("r-1", "guard", thread=n, i=i)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(ledger.events("r-1")) == 1 + 80


_WRITER = r"""
import sys, time
from pathlib import Path
from orchestrator.state.ledger import Ledger

home, tag, n, ready = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
led = Ledger(Path(home))
(ready / tag).touch()  # a barrier: each starts once both have imported and opened the ledger
while len(list(ready.iterdir())) < 2:
    time.sleep(0.005)
print("start", time.time())
for i in range(n):
    rid = f"{tag}-{i:03d}"
    led.create_run(rid, "local", 0.1, {"i": i}, "/r/" + rid)
    led.set_phase(rid, "creating")
    led.add_instance(rid, "local", "inst-" + rid, "pending")
    led.add_hold(rid, "local", 0.1)
    # read-modify-write of one shared counter: lost updates would show in the final count
    with led.transaction() as conn:
        shared = led.get_run("shared-000")
        led.update_run("shared-000", plan={"count": shared.plan.get("count", 0) + 1})
    led.record_event("shared-000", "tick", by=tag, i=i)
print("end", time.time())
"""


def test_two_processes_write_concurrently(gpurun_home: Path, tmp_path: Path) -> None:
    led = Ledger(gpurun_home)
    led.create_run("shared-000", "local", 1.0, {"count": 0}, "/r")
    n = 40
    ready = tmp_path / "ready"  # both import (seconds on a loaded machine) before either starts
    ready.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(gpurun_home), tag, str(n), str(ready)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for tag in ("pa", "pb")
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    runs = {r.run_id for r in led.list_runs()}
    assert len(runs) == 2 * n + 1
    assert led.get_run("shared-000").plan["count"] == 2 * n  # type: ignore[union-attr]
    assert len([e for e in led.events("shared-000") if e.phase == "tick"]) == 2 * n
    assert led.committed_usd(0.0, "local") == pytest.approx(2 * n * 0.1)
    assert all(len(led.instances(r)) == 1 for r in runs if r != "shared-000")
    # The two writers really overlapped in time (otherwise this tests nothing).
    spans = [[float(line.split()[1]) for line in out.splitlines()] for out, _ in outs]
    assert max(start for start, _ in spans) < min(end for _, end in spans), spans


_CHAINER = r"""
import hashlib, sys, time
from pathlib import Path
from orchestrator.state.ledger import Ledger

home, tag, n, go_at = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
led = Ledger(Path(home))
while time.time() < go_at:
    time.sleep(0.005)
for i in range(n):
    with led.transaction():  # what teardown does: read the head and append under one lock
        head = led.last_proof_sha256()
        time.sleep(0.002)  # widen the window: without the lock both would chain to the same head
        led.add_proof("shared-000", hashlib.sha256(f"{tag}-{i}".encode()).hexdigest(), f"/p/{tag}-{i}", head)
"""


def test_two_machines_extend_one_proof_chain(tmp_path: Path, gpurun_home: Path) -> None:
    """Two processes (two GPURUN_HOMEs: two machines on a shared ledger, or one SQLite file) append
    proofs at the same time: one chain, never forked."""
    led = Ledger(gpurun_home)
    led.create_run("shared-000", "local", 1.0, {}, "/r")
    n, go_at = 15, time.time() + 3.0
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    homes = [gpurun_home, tmp_path / "second-machine"] if led.shared else [gpurun_home, gpurun_home]
    procs = [subprocess.Popen([sys.executable, "-c", _CHAINER, str(home), tag, str(n), str(go_at)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for home, tag in zip(homes, ("a", "b"), strict=True)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    chain = led.proofs()
    assert len(chain) == 2 * n and chain[0]["prev_sha256"] is None
    assert all(cur["prev_sha256"] == prev["sha256"] for prev, cur in zip(chain, chain[1:], strict=False))
