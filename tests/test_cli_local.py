"""The rest of the CLI on the local provider: --detach and its guard, status --timings, logs, sync,
cost, evidence and its proof chain, and Ctrl-C while attached."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from orchestrator.state.ledger import Ledger
from tests.e2e_helpers import wait_for
from tests.test_launch_local import REPO, gpurun

# The phases that stop and end a run: none may come before `launch --detach` returns.
ENDING = {"stopping", "syncing_final", "terminating", "verified"}


def test_detached_run_is_guarded_to_the_end_and_every_command_sees_it(tmp_path: Path) -> None:
    launch = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli.main", "launch", "--max-usd", "0.02", "--usd-per-hour", "1.2",
         "--detach", "--yes", "--set", "max_iters=1000000"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
    )
    out, _ = launch.communicate(timeout=120)
    assert launch.returncode == 0, out
    ledger = Ledger()
    (run,) = ledger.list_runs()
    # `launch --detach` returns once the job runs, not at the run's end: the run is still open, its
    # job started, and nothing has asked it to stop yet.
    at_return = ledger.events(run.run_id)
    assert run.open and run.phase == "running"
    assert "job_started" in [e.phase for e in at_return]
    assert not ENDING & {e.phase for e in at_return}

    # Asked while the run is young (a loaded machine's launch may have used half of its minute).
    status = gpurun("status", cwd=tmp_path)
    assert run.run_id in status.stdout and "alive" in status.stdout, status.stdout  # the detached guard
    sandbox = Path(os.environ["GPURUN_HOME"]) / "sandboxes" / run.run_id
    wait_for(lambda: (sandbox / "out" / "checkpoints" / "MANIFEST.json").exists(), 40, "a first checkpoint")
    synced = gpurun("sync", run.run_id, cwd=tmp_path)
    assert synced.returncode == 0 and "checkpoints verified: ckpt-" in synced.stdout, synced.stdout
    logs = gpurun("logs", run.run_id, cwd=tmp_path)
    assert "device: cpu" in logs.stdout and "step " in logs.stdout

    # The guard, not this test nor the launch (gone since it returned), stops the run at the budget
    # and tears it down: every ending phase comes after the events the launch left behind.
    wait_for(lambda: not ledger.resolve_run(run.run_id).open, 90, "the guard to finish the run")
    run = ledger.resolve_run(run.run_id)
    assert run.phase == "verified" and run.cost_usd is not None and run.cost_usd <= 0.02
    events = ledger.events(run.run_id)
    assert events[: len(at_return)] == at_return
    after = [e.phase for e in events[len(at_return):]]
    assert [p for p in after if p in ENDING] == ["stopping", "syncing_final", "terminating", "verified"]
    assert run.controller_pid not in (None, launch.pid)  # the guard took the run over
    assert "deadline" in next(e for e in events if e.phase == "stopping").payload["reason"]
    assert "verified" in (Path(run.run_dir) / "controller.log").read_text()  # the guard's own output

    timings = gpurun("status", run.run_id, "--timings", cwd=tmp_path)
    for phase in ("creating", "running", "stopping", "terminating", "verified"):
        assert phase in timings.stdout, timings.stdout
    cost = gpurun("cost", "--by", "provider", cwd=tmp_path)
    assert "local" in cost.stdout and f"{run.cost_usd:.4f}" in cost.stdout, cost.stdout
    card = gpurun("evidence", run.run_id, cwd=tmp_path)
    assert card.returncode == 0 and "SMOKE TEST" in card.stdout
    chain = gpurun("evidence", "--check-chain", cwd=tmp_path)
    assert chain.returncode == 0 and "intact" in chain.stdout

    # An edit to the proof breaks the chain, and the check says so.
    proof = Path(run.run_dir) / "shutdown_proof.json"
    data = json.loads(proof.read_text())
    data["estimated_cost_usd"] = 0.0
    proof.write_text(json.dumps(data))
    broken = gpurun("evidence", "--check-chain", cwd=tmp_path)
    assert broken.returncode != 0 and "chain broken" in broken.stderr


def test_ctrl_c_without_a_terminal_tears_the_run_down(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # SIGINT as a terminal's Ctrl-C finds a foreground command: handled. A test run started in the
    # background of a script (`make test &`) ignores SIGINT, and Python keeps an inherited SIG_IGN
    # (no KeyboardInterrupt ever), so the launch gets the default disposition back before exec.
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli.main", "launch", "--max-usd", "1", "--usd-per-hour", "1.2", "--yes",
         "--set", "max_iters=1000000"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    ledger = Ledger()
    wait_for(lambda: bool(ledger.list_runs()) and ledger.list_runs()[0].phase == "running", 60, "running")
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 130, out  # torn down because of a signal (SIGINT): 128 + 2, verified
    assert "tearing down" in out
    (run,) = ledger.list_runs()
    assert run.phase == "verified"
    assert "Ctrl-C" in next(e for e in ledger.events(run.run_id) if e.phase == "stopping").payload["reason"]
