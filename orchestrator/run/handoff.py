"""A run handed to a detached guard process (`gpurun guard RUN`), and one controller per run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from orchestrator.state.events import EventKind
from orchestrator.state.ledger import Ledger
from orchestrator.state.rows import Run


def spawn_guard(run: Run) -> int:
    """Hand the run to a detached guard process (`gpurun guard RUN`) that outlives this terminal."""
    log = Path(run.run_dir) / "controller.log"
    with open(log, "ab") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli.main", "guard", run.run_id],
            stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
        )
    return proc.pid


def controller_alive(run: Run) -> bool:
    pid = run.controller_pid
    if not pid or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    cmdline = Path(f"/proc/{pid}/cmdline")
    return not cmdline.exists() or b"gpurun" in cmdline.read_bytes() or b"orchestrator" in cmdline.read_bytes()


def take_over(ledger: Ledger, run: Run) -> None:
    """Stop another controller still guarding the run, so that only one tears it down."""
    if controller_alive(run):
        assert run.controller_pid is not None
        os.kill(run.controller_pid, signal.SIGKILL)
        ledger.record_event(run.run_id, EventKind.CONTROLLER_REPLACED, pid=run.controller_pid)
