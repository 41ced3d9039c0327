"""Signals to a gpurun that holds a run, through the real CLI on the `local` provider: SIGTERM tears
the run down like `gpurun teardown` (to an attached launch, and to a detached guard); SIGHUP hands
an attached run to a detached guard, which ends it at its deadline."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.state.endings import Exit, by_signal
from orchestrator.state.ledger import Ledger
from orchestrator.state.phases import is_phase
from orchestrator.state.rows import Run
from providers.local import LocalProvider, pgid_alive
from tests.e2e_helpers import wait_for
from tests.test_launch_local import REPO, gpurun

# A job that says when it is asked to stop (its "checkpoint"), so the log shows the stop came first.
POLITE_JOB = ["sh", "-c", "trap 'echo got TERM; exit 0' TERM; while :; do sleep 1; done"]
FOREVER = ["sh", "-c", "sleep 100000"]


def popen_launch(cwd: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli.main", "launch", "--yes", *args],
        cwd=cwd, env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )


def started_run() -> Run | None:
    """The run, once the ledger has its job_started event."""
    ledger = Ledger()
    runs = ledger.list_runs()
    if runs and any(e.phase == "job_started" for e in ledger.events(runs[0].run_id)):
        return runs[0]
    return None


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # an exited process not yet reaped is not a guard


def guard_of(run_id: str) -> int | None:
    """The pid of the detached guard (`gpurun guard RUN`) holding the run, once it has recorded itself."""
    pid = Ledger().resolve_run(run_id).controller_pid
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    return pid if pid and b"guard" in argv and alive(pid) else None


def kinds(run_id: str) -> list[str]:
    return [e.phase for e in Ledger().events(run_id)]


def assert_gone_with_proof(run: Run, job_pid: int) -> None:
    assert run.phase == "verified" and [k for k in kinds(run.run_id) if is_phase(k)][-1] == "verified"
    assert not pgid_alive(job_pid)
    assert LocalProvider().get(f"local-{run.run_id}").state == "terminated"  # job and watchdog gone
    proof = json.loads((Path(run.run_dir) / "shutdown_proof.json").read_text())
    assert proof["verified"] is True and len(Ledger().proofs(run.run_id)) == 1


@pytest.fixture
def cleanup(tmp_path: Path) -> Iterator[None]:
    """A test that fails half-way must not leave a guard or a job behind."""
    yield
    if any(r.open for r in Ledger().list_runs()):
        gpurun("teardown", "--all", cwd=tmp_path)


def job_pid_of(run: Run) -> int:
    return int((Path(os.environ["GPURUN_HOME"]) / "sandboxes" / run.run_id / "job.pid").read_text())


def test_sigterm_to_an_attached_launch_tears_the_run_down(tmp_path: Path, cleanup: None) -> None:
    proc = popen_launch(tmp_path, "--max-usd", "1", "--usd-per-hour", "1.2", "--", *POLITE_JOB)
    run = wait_for(started_run, 120, "the job to start")
    job_pid = job_pid_of(run)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == by_signal(signal.SIGTERM) == 143, out
    run = Ledger().resolve_run(run.run_id)
    assert_gone_with_proof(run, job_pid)
    events = Ledger().events(run.run_id)
    order = kinds(run.run_id)
    assert order.index("job_started") < order.index("stopping") < order.index("syncing_final") < order.index("verified")
    assert "SIGTERM" in next(e for e in events if e.phase == "stopping").payload["reason"]
    assert "got TERM" in (Path(run.run_dir) / "job.log").read_text()  # stopped first, then the final sync
    assert run.cost_usd is not None and run.cost_usd <= run.max_usd


def test_sighup_hands_the_run_to_a_guard_that_ends_it_at_its_deadline(tmp_path: Path, cleanup: None) -> None:
    proc = popen_launch(tmp_path, "--max-usd", "0.02", "--usd-per-hour", "1.2", "--", *FOREVER)
    run = wait_for(started_run, 120, "the job to start")
    job_pid = job_pid_of(run)
    proc.send_signal(signal.SIGHUP)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == by_signal(signal.SIGHUP), out
    assert "detached: guard pid" in out
    ledger = Ledger()
    guard = wait_for(lambda: guard_of(run.run_id), 60, "a guard to take the run over")
    assert guard != proc.pid
    wait_for(lambda: not ledger.resolve_run(run.run_id).open, 180, "the guard to end the run")
    run = ledger.resolve_run(run.run_id)
    assert_gone_with_proof(run, job_pid)
    order = kinds(run.run_id)
    assert order.index("job_started") < order.index("handoff") < order.index("stopping") < order.index("verified")
    stop = next(e for e in ledger.events(run.run_id) if e.phase == "stopping")
    assert stop.payload["reason"].startswith("deadline")  # the guard's own stop time, not the hangup
    assert run.cost_usd is not None and run.cost_usd <= 0.02
    assert run.controller_pid == guard and "verified" in (Path(run.run_dir) / "controller.log").read_text()


def test_sigterm_to_a_detached_guard_tears_the_run_down(tmp_path: Path, cleanup: None) -> None:
    launched = gpurun("launch", "--max-usd", "1", "--usd-per-hour", "1.2", "--detach", "--yes", "--", *POLITE_JOB,
                      cwd=tmp_path)
    assert launched.returncode == Exit.OK, launched.stdout + launched.stderr
    ledger = Ledger()
    (run,) = ledger.list_runs()
    guard = wait_for(lambda: guard_of(run.run_id), 60, "the detached guard to watch the run")
    job_pid = job_pid_of(run)
    os.kill(guard, signal.SIGTERM)
    wait_for(lambda: not ledger.resolve_run(run.run_id).open, 120, "the guard to tear the run down")
    run = ledger.resolve_run(run.run_id)
    assert_gone_with_proof(run, job_pid)
    assert "SIGTERM" in next(e for e in ledger.events(run.run_id) if e.phase == "stopping").payload["reason"]
    assert "got TERM" in (Path(run.run_dir) / "job.log").read_text()
    wait_for(lambda: not alive(guard), 30, "the guard to exit")

