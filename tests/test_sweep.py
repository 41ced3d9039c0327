"""`gpurun sweep` on the `local` provider: each orphan is ended through orchestrator.run.teardown and leaves
a shutdown proof chained into the ledger (`gpurun evidence --check-chain` counts it)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from orchestrator.cli.main import main
from orchestrator.proof.shutdown import build_proof, sha256_bytes, write_proof
from orchestrator.state.ledger import Ledger
from providers.base import InstanceSpec
from providers.local import LocalProvider, pgid_alive


def gpurun(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), env={"COLUMNS": "200"})


def make_orphan(run_id: str) -> tuple[str, int]:
    """A local instance with a live process group, made as a crashed controller would leave it."""
    provider = LocalProvider()
    inst = provider.create(InstanceSpec(run_id=run_id, offer=provider.offers()[0]))
    sandbox = Path(inst.raw["sandbox"])
    # The same detach as the local transport's jobs (orchestrator/transport/protocol.py detached_script):
    # setsid makes the job lead its own session, so its pid is its process-group id.
    pid_file = sandbox / "job.pid"
    subprocess.run(["sh", "-c", f"setsid nohup sleep 600 >/dev/null 2>&1 </dev/null & echo $! > {pid_file}"],
                   check=True)
    pgid = int(pid_file.read_text())
    with open(sandbox / "pgids", "a") as fh:
        fh.write(f"{pgid}\n")
    for _ in range(500):  # until setsid has made the group (it runs after the shell printed the pid)
        if pgid_alive(pgid):
            break
        time.sleep(0.02)
    assert provider.get(inst.id).state == "running" and pgid_alive(pgid)
    return inst.id, pgid


def verified_run_with_proof(ledger: Ledger, run_id: str, run_dir: Path) -> str:
    """A run that walked the whole lifecycle and recorded its proof: the chain's first link."""
    ledger.create_run(run_id, "local", 1.0, {}, str(run_dir))
    for phase in ("creating", "booting", "terminating"):
        ledger.set_phase(run_id, phase)
    proof = build_proof(
        run_id=run_id, provider="local", instance_ids=[f"local-{run_id}"], terminate_requests=[],
        final_describe=[{"id": f"local-{run_id}", "state": "terminated"}], zero_match_listing=[],
        deleted_resources=[], estimated_cost_usd=0.0, max_usd=1.0, billing={}, verified=True,
        prev_sha256=ledger.last_proof_sha256(), started_at=time.time() - 5, verified_at=time.time(),
    )
    _, sha = write_proof(run_dir, proof)
    ledger.add_proof(run_id, sha, str(run_dir / "shutdown_proof.json"), proof["prev_sha256"])
    ledger.set_phase(run_id, "verified", proof_sha256=sha)
    return sha


def cleanup(*pgids: int) -> None:
    for pgid in pgids:
        try:
            os.killpg(pgid, 9)
        except ProcessLookupError:
            pass


def test_sweep_ends_an_orphan_and_chains_its_proof(gpurun_home: Path) -> None:
    ledger = Ledger()
    first = verified_run_with_proof(ledger, "20250101-000000-aaaa", gpurun_home / "runs" / "20250101-000000-aaaa")
    iid, pgid = make_orphan("20250101-000000-dead")  # its run is not in this ledger
    try:
        res = gpurun("sweep", "--provider", "local", "--yes")
    finally:
        cleanup(pgid)
    assert res.exit_code == 0, res.output
    assert iid in res.output and f"local {iid}: terminated (verified)" in res.output

    # Gone: the provider says so and its process group is dead.
    assert LocalProvider().get(iid).state == "terminated"
    assert not pgid_alive(pgid)

    # The proof: where the module docstring says, verified, chained to the proof before it.
    record = f"sweep-{iid}"
    path = gpurun_home / "runs" / record / "shutdown_proof.json"
    assert path.is_file() and str(path) in res.output.replace("\n", "")
    proof = json.loads(path.read_text())
    assert proof["verified"] is True and proof["run_id"] == record and proof["instance_ids"] == [iid]
    assert proof["prev_sha256"] == first and proof["zero_match"] is True
    assert proof["terminate_requests"] and proof["final_states"] == {iid: "terminated"}
    assert any("20250101-000000-dead" in note for note in proof["notes"])
    rows = ledger.proofs()
    assert [r["run_id"] for r in rows] == ["20250101-000000-aaaa", record]
    assert rows[-1]["sha256"] == sha256_bytes(path.read_bytes()) and rows[-1]["prev_sha256"] == first

    # The ledger row the sweep adopted it as: the whole teardown, in order; no money held or settled.
    run = ledger.get_run(record)
    assert run is not None and run.phase == "verified" and not run.open and run.provider == "local"
    assert run.plan["orphan"]["tag"] == "20250101-000000-dead" and run.run_dir == str(path.parent)
    kinds = [e.phase for e in ledger.events(record)]
    assert kinds[:3] == ["planned", "orphan", "terminating"] and kinds[-1] == "verified"
    assert "terminate_request" in kinds
    assert [i.instance_id for i in ledger.instances(record)] == [iid]
    assert ledger.hold(record) is None and ledger.committed_usd(0.0) == 0.0

    check = gpurun("evidence", "--check-chain")
    assert check.exit_code == 0, check.output
    assert "proof chain intact: 2 proofs" in check.output

    again = gpurun("sweep", "--provider", "local", "--yes")
    assert again.exit_code == 0 and "nothing to sweep" in again.output


def test_sweep_records_an_orphan_of_a_closed_run_on_that_run(gpurun_home: Path) -> None:
    ledger = Ledger()
    rid = "20250101-000000-bbbb"
    run_dir = gpurun_home / "runs" / rid
    first = verified_run_with_proof(ledger, rid, run_dir)
    own_proof = (run_dir / "shutdown_proof.json").read_bytes()
    iid, pgid = make_orphan(rid)  # verified, yet an instance of it still runs
    try:
        res = gpurun("sweep", "--provider", "local", "--yes")
    finally:
        cleanup(pgid)
    assert res.exit_code == 0, res.output
    assert LocalProvider().get(iid).state == "terminated"
    path = run_dir / f"sweep-{iid}" / "shutdown_proof.json"
    proof = json.loads(path.read_text())
    assert proof["verified"] is True and proof["run_id"] == rid and proof["prev_sha256"] == first
    assert (run_dir / "shutdown_proof.json").read_bytes() == own_proof  # the run's own proof is kept
    run = ledger.get_run(rid)
    assert run is not None and run.phase == "verified"  # verified is the end: events, not phases
    kinds = [e.phase for e in ledger.events(rid)]
    assert kinds.index("orphan") < kinds.index("sweep_terminating") < kinds.index("sweep_verified")
    assert [r.run_id for r in ledger.list_runs()] == [rid]
    assert [r["run_id"] for r in ledger.proofs()] == [rid, rid]
    check = gpurun("evidence", "--check-chain")
    assert check.exit_code == 0 and "2 proofs" in check.output, check.output


def test_sweep_leaves_an_instance_tagged_with_an_open_run(gpurun_home: Path) -> None:
    """A create in flight when the controller died: no instance row yet, but the tag names an open run."""
    ledger = Ledger()
    rid = "20250101-000000-cccc"
    ledger.create_run(rid, "local", 1.0, {}, str(gpurun_home / "runs" / rid))
    ledger.set_phase(rid, "creating")
    iid, pgid = make_orphan(rid)
    try:
        res = gpurun("sweep", "--provider", "local", "--yes")
        assert res.exit_code == 0, res.output
        assert "nothing to sweep" in res.output
        assert LocalProvider().get(iid).state == "running" and pgid_alive(pgid)
        assert ledger.proofs() == []
    finally:
        cleanup(pgid)


def test_an_unverified_sweep_stays_open_and_teardown_finishes_it(
    gpurun_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    iid, pgid = make_orphan("20250101-000000-eeee")
    record = f"sweep-{iid}"
    ledger = Ledger()
    try:
        with monkeypatch.context() as patch:
            # A terminate that answers and does nothing: the sweep must not call that verified.
            patch.setattr(LocalProvider, "terminate", lambda self, iid: {"result": "terminate requested"})
            patch.setenv("GPURUN_VERIFY_TIMEOUT_S", "1")
            res = gpurun("sweep", "--provider", "local", "--yes")
        assert res.exit_code == 3, res.output
        assert "NOT VERIFIED" in res.output and f"gpurun teardown {record}" in res.output.replace("\n", "")
        assert LocalProvider().get(iid).state == "running"
        run = ledger.get_run(record)
        assert run is not None and run.phase == "failed_terminating" and run.open
        assert ledger.proofs() == []
        assert len([e for e in ledger.events(record) if e.phase == "terminate_request"]) >= 2  # asked again

        done = gpurun("teardown", record)
    finally:
        cleanup(pgid)
    assert done.exit_code == 0, done.output
    assert LocalProvider().get(iid).state == "terminated"
    run = ledger.get_run(record)
    assert run is not None and run.phase == "verified"
    assert [r["run_id"] for r in ledger.proofs()] == [record]
    check = gpurun("evidence", "--check-chain")
    assert check.exit_code == 0 and "1 proofs" in check.output, check.output
