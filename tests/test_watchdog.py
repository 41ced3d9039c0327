"""The dead-man's switch on its own: no controller after install, a real sshd and a real detached job."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from orchestrator import keys
from orchestrator.remote import MemoryHostKeyStore, SSHTransport
from orchestrator.watchdog import disarm_watchdog, install_watchdog, move_deadline_earlier, read_deadline
from tests.fixtures.sshd import SSHServer, sshd  # noqa: F401

# The stand-in job: on SIGTERM it checkpoints (writes a file with the time) and exits 0.
JOB = """\
import signal, sys, time
def stop(signum, frame):
    open("../out/stopped_at", "w").write(repr(time.time()))
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
while True:
    time.sleep(0.1)
"""


def transport(srv: SSHServer, root: Path) -> SSHTransport:
    kp = keys.ensure_keypair("wd")
    srv.authorize(kp.public_line)
    return SSHTransport(srv.endpoint, kp.private_path, str(root), "inst-wd", MemoryHostKeyStore())


def _read(p: Path) -> bytes:
    try:
        return p.read_bytes()
    except OSError:
        return b""


def wait_file(p: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not p.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert p.exists(), f"{p.name} never appeared"


def test_watchdog_stops_job_then_self_destructs_without_controller(sshd: SSHServer, tmp_path):  # noqa: F811
    root = tmp_path / "run"
    t = transport(sshd, root)
    t.write_file("code/job.py", JOB)
    t.start_detached("job", "python3 job.py")
    deadline = int(time.time()) + 5
    # The command may carry a credential (DataCrunch): it must not show in a log or a process listing.
    cmd = f"TOKEN=s3cr3t-t0ken; date +%s.%N > {root}/destructed"
    install_watchdog(t, deadline, grace_s=2, self_destruct_cmd=cmd, job_name="job")
    t.close()  # the controller is gone from here on
    try:
        assert not [p for p in Path("/proc").glob("[0-9]*/cmdline") if b"s3cr3t" in _read(p)]
        wait_file(root / "destructed", 10)
        stopped = float((root / "out" / "stopped_at").read_text())
        destructed = float((root / "destructed").read_text())
        assert deadline - 2 - 1 <= stopped < deadline  # SIGTERM'd in the grace window, before the deadline
        assert destructed >= deadline and destructed > stopped
        assert (root / "job.exit").read_text().strip() == "0"  # the job shut down cleanly on its own
        log = (root / "watchdog.log").read_text()
        assert "sent SIGTERM to job job" in log and "running the self-destruct command" in log
        assert "s3cr3t" not in log
    finally:
        with transport(sshd, root) as t2:
            disarm_watchdog(t2)


def test_deadline_moves_earlier_never_later(sshd: SSHServer, tmp_path):  # noqa: F811
    root = tmp_path / "run"
    with transport(sshd, root) as t:
        far = int(time.time()) + 300
        install_watchdog(t, far, grace_s=1, self_destruct_cmd=f"touch {root}/destructed")
        try:
            with pytest.raises(ValueError, match="only move earlier"):
                move_deadline_earlier(t, far + 100)
            soon = int(time.time()) + 3
            assert move_deadline_earlier(t, soon) == soon
            # Re-installing with a later deadline keeps the earlier one.
            install_watchdog(t, far + 600, grace_s=1, self_destruct_cmd=f"touch {root}/destructed")
            assert read_deadline(t) == soon
            # A later value written behind the controller's back is refused by the script itself.
            (root / "watchdog.deadline").write_text(f"{far + 900}\n")
            start = time.monotonic()
            while read_deadline(t) != soon and time.monotonic() - start < 5:
                time.sleep(0.2)
            assert read_deadline(t) == soon
            wait_file(root / "destructed", 8)
            assert time.time() >= soon
            log = (root / "watchdog.log").read_text()
            assert f"deadline moved earlier: {far} -> {soon}" in log and "refused deadline" in log
            assert "no job.pid" in log
        finally:
            disarm_watchdog(t)
        assert not t.job_state("watchdog").running
