"""The SSH transport end to end: the real CLI, a real sshd on loopback as the instance, the real
trainer under torchrun (2 CPU ranks), real rsync, the real watchdog."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from orchestrator.state.ledger import Ledger
from orchestrator.state.phases import Phase
from orchestrator.transport.keys import run_key
from tests.e2e_helpers import LOOPBACK_BUDGETS, loopback_env, started_job_run_id, wait_for
from tests.fixtures.sshd import SSHServer, free_port, sshd  # noqa: F401

REPO = Path(__file__).resolve().parent.parent
T = TypeVar("T")

BUDGETS = LOOPBACK_BUDGETS


@pytest.fixture
def loopback(sshd: SSHServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:  # noqa: F811
    sshd.authorize(run_key().public_line)
    remote = tmp_path / "instance"
    remote.mkdir()
    budgets = tmp_path / "budgets.yaml"
    budgets.write_text(BUDGETS)
    env = loopback_env(sshd.host, sshd.port, sshd.user, remote)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    yield {"budgets": str(budgets), "remote": str(remote)}


def launch(args: list[str], cwd: Path, **kw: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli.main", "launch", "--provider", "loopback", "--yes", *args],
        cwd=cwd, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        stdin=subprocess.DEVNULL, **kw,  # type: ignore[call-overload]
    )


def test_full_lifecycle_over_ssh_with_ddp(loopback: dict[str, str], tmp_path: Path) -> None:
    # 0.09 USD at 0.001 USD/s buys 90 s; the guard stops the job at 60 s (30 s reserve). Two ranks
    # starting torch on a loaded 2-core CI machine took over 25 s to their first step once: the job
    # gets ~45 s, not ~20.
    proc = launch(["--budgets", loopback["budgets"], "--max-usd", "0.09", "--gpus", "2",
                   "--sync-interval", "3", "--set", "max_iters=1000000", "--set", "ckpt_interval_s=3"], tmp_path)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out
    ledger = Ledger()
    (run,) = ledger.list_runs()
    assert run.phase == "verified" and run.cost_usd is not None and run.cost_usd <= 0.09
    events = ledger.events(run.run_id)
    phases = [e.phase for e in events if e.phase in ("creating", "booting", "ssh_ready", "bootstrapped",
                                                     "running", "stopping", "syncing_final",
                                                     "terminating", "verified")]
    assert phases == ["creating", "booting", "ssh_ready", "bootstrapped", "running", "stopping",
                      "syncing_final", "terminating", "verified"]
    periodic = [e.payload for e in events if e.phase == "sync" and not e.payload["final"]]
    verified_syncs = [p for p in periodic if p["verified"] and p["method"] == "rsync"]
    assert len(verified_syncs) >= 1, periodic  # a checkpoint came home while the job ran, not only at the end
    stopping = next(e for e in events if e.phase == "stopping")
    assert "deadline" in stopping.payload["reason"]
    running = next(e for e in events if e.phase == "running")
    assert "--nproc-per-node=2" in running.payload["command"]

    run_dir = Path(run.run_dir)
    hardware = json.loads((run_dir / "out" / "hardware.json").read_text())
    assert hardware["world_size"] == 2
    ends = [json.loads(x) for x in (run_dir / "out" / "metrics.jsonl").read_text().splitlines()]
    # The trainer's own deadline is the guard's stop time: it stops itself there with a decayed, evaluated
    # checkpoint ("deadline"), or the guard's SIGTERM ("signal") gets there first on a busy machine.
    assert ends[-1]["type"] == "end" and ends[-1]["reason"] in ("deadline", "signal")
    from trainer.manifest import verify_checkpoints

    ok, bad = verify_checkpoints(run_dir / "out" / "checkpoints")
    assert ok and not bad
    manifest = json.loads((run_dir / "out" / "checkpoints" / "MANIFEST.json").read_text())
    assert manifest["checkpoints"][-1]["step"] == ends[-1]["step"]  # the final checkpoint came home
    proof = json.loads((run_dir / "shutdown_proof.json").read_text())
    assert proof["verified"] is True and proof["zero_match_listing"] == []
    assert (run_dir / "watchdog.log").exists()
    assert "Traceback" not in (run_dir / "job.log").read_text()  # a clean stop, exit 0
    assert "job ended" not in stopping.payload["reason"]
    assert "Failures:" not in (run_dir / "EVIDENCE.md").read_text()
    # The watchdog never had to fire: the guard did the job.
    assert not (Path(loopback["remote"]) / run.run_id / "self_destruct.ran").exists()
    # ... and told it so: the controller's heartbeat on the instance, beaten while the job ran.
    remote = Path(loopback["remote"]) / run.run_id
    assert (remote / "controller.heartbeat").stat().st_mtime > (remote / "job.pid").stat().st_mtime
    # (watchdog.reason may exist on a slow machine: its SIGTERM step can race the guard's own stop;
    # what matters is that the self-destruct, asserted above, never ran.)


def test_watchdog_alone_stops_the_job_and_self_destructs_when_the_controller_dies(
    loopback: dict[str, str], tmp_path: Path
) -> None:
    # 0.08 USD at 0.001 USD/s buys 80 s: the guard would stop the job at 50 s (after the job's start,
    # however busy the machine), the watchdog's SIGTERM comes at 57.5 s and its self-destruct at 65 s
    # (half the 30 s reserve before the money runs out).
    proc = launch(["--budgets", loopback["budgets"], "--max-usd", "0.08", "--set", "max_iters=1000000",
                   "--set", "ckpt_interval_s=3"], tmp_path)
    ledger = Ledger()

    try:
        # The controller dies as soon as the job is started (the watchdog was armed before it, at
        # bootstrap): long before the guard's stop time, however slowly the trainer starts.
        run_id = wait_for(lambda: started_job_run_id(ledger), 120, "the job's start in the ledger")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    run = ledger.resolve_run(run_id)
    assert run.deadline_epoch is not None
    phases = [e.phase for e in ledger.events(run_id)]
    assert "stopping" not in phases, phases  # the guard never acted: what follows is the watchdog alone
    remote = Path(loopback["remote"]) / run_id
    # With the controller gone the job trains on, checkpoints, and is stopped by the watchdog.
    marker = remote / "self_destruct.ran"
    wait_for(marker.exists, run.deadline_epoch - time.time() + 60, "the self-destruct marker",
             lambda: (remote / "watchdog.log").read_text())
    fired_at = int(marker.read_text().strip())
    assert fired_at <= run.deadline_epoch, "the self-destruct must land before the money runs out"
    ends = [json.loads(x) for x in (remote / "out" / "metrics.jsonl").read_text().splitlines()]
    assert any(e["type"] == "step" for e in ends)  # it trained
    assert ends[-1]["type"] == "end"  # the job stopped cleanly, with a checkpoint, before the kill
    manifest = json.loads((remote / "out" / "checkpoints" / "MANIFEST.json").read_text())
    assert manifest["checkpoints"][-1]["step"] == ends[-1]["step"]

    # A later teardown finds the run, sees the instance gone, and writes the proof.
    down = subprocess.run([sys.executable, "-m", "orchestrator.cli.main", "teardown", run.run_id],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    assert ledger.resolve_run(run.run_id).phase == "verified"


def test_unreachable_endpoint_fails_in_bounded_time_and_is_torn_down(
    loopback: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GPURUN_LOOPBACK_SSH", f"127.0.0.1:{free_port()}:root")  # nothing listens
    # 0.045 USD at 0.001 USD/s buys 45 s; the guard's stop time is 15 s after the create (30 s reserve).
    proc = launch(["--budgets", loopback["budgets"], "--max-usd", "0.045"], tmp_path)
    out, _ = proc.communicate(timeout=180)  # a hang guard only
    assert proc.returncode != 0, out
    assert "error:" in out and "127.0.0.1" in out, out
    ledger = Ledger()
    (run,) = ledger.list_runs()
    assert run.phase == "verified" and run.error
    # Bounded by the budget, not by a clock here: the SSH wait was given at most what was left until
    # the guard's stop time, then the run failed, was torn down and verified gone, and what it was
    # billed from the create call to the verified teardown fits in the cap.
    within = re.search(r"within (\d+)s", run.error)
    assert within and 5 <= int(within.group(1)) <= 15, run.error
    phases = [e.phase for e in ledger.events(run.run_id) if e.phase in {p.value for p in Phase}]
    assert phases == ["planned", "creating", "booting", "failed_booting", "terminating", "verified"], phases
    assert run.cost_usd is not None and run.cost_usd <= 0.045
    from tests.fakes.loopback_provider import LoopbackProvider

    assert LoopbackProvider().get(f"lb-{run.run_id}").state == "terminated"
