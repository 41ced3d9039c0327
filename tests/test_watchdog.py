"""The dead-man's switch on its own: no controller after install, a real detached job (over a real sshd,
or on the local transport for the idle and stall rules)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from orchestrator.run.watchdog import (
    heartbeat,
    heartbeat_interval_s,
    install_watchdog,
    read_deadline,
    read_reason,
    set_pre_job,
)
from orchestrator.transport import keys
from orchestrator.transport.hostkeys import MemoryHostKeyStore
from orchestrator.transport.local import LocalTransport
from orchestrator.transport.ssh import SSHTransport
from tests.e2e_helpers import wait_for
from tests.fixtures.sshd import SSHServer, sshd  # noqa: F401
from tests.watchdog_helpers import disarm_watchdog, move_deadline_earlier

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
    # Until its whole line is there: a shell's `>` creates the file before the command writes it.
    wait_for(lambda: p.exists() and p.read_text().endswith("\n"), timeout, f"{p.name} to be written", every_s=0.1)


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
        assert (root / "watchdog.reason").read_text().strip() == "deadline" and "reason: deadline" in log
    finally:
        with transport(sshd, root) as t2:
            disarm_watchdog(t2)


def test_deadline_moves_earlier_never_later(sshd: SSHServer, tmp_path):  # noqa: F811
    root = tmp_path / "run"
    with transport(sshd, root) as t:
        far = int(time.time()) + 300
        install_watchdog(t, far, grace_s=1, self_destruct_cmd=f"echo destructed > {root}/destructed")
        try:
            with pytest.raises(ValueError, match="only move earlier"):
                move_deadline_earlier(t, far + 100)
            soon = int(time.time()) + 6  # room for the refusal below on a busy machine
            assert move_deadline_earlier(t, soon) == soon
            # Re-installing with a later deadline keeps the earlier one.
            install_watchdog(t, far + 600, grace_s=1, self_destruct_cmd=f"echo destructed > {root}/destructed")
            assert read_deadline(t) == soon
            # A later value written behind the controller's back is refused by the script itself.
            (root / "watchdog.deadline").write_text(f"{far + 900}\n")
            start = time.monotonic()
            while read_deadline(t) != soon and time.monotonic() - start < 5:
                time.sleep(0.2)
            assert read_deadline(t) == soon
            wait_file(root / "destructed", 20)
            assert time.time() >= soon
            log = (root / "watchdog.log").read_text()
            assert f"deadline moved earlier: {far} -> {soon}" in log and "refused deadline" in log
            assert "no job.pid" in log
        finally:
            disarm_watchdog(t)
        assert not t.job_state("watchdog").running


# ---- the idle and stall rules (issue 12), on the local transport: same script, same job convention ----

DESTRUCT = "date +%s.%N > {root}/destructed"


@pytest.fixture
def box(tmp_path: Path) -> Iterator[LocalTransport]:
    """An "instance" directory on this machine; every process group started there dies with the test."""
    t = LocalTransport(tmp_path / "run")
    t.wait_ready(5)
    for sub in ("code", "out"):  # what upload and bootstrap leave: jobs run in code/, write out/
        (tmp_path / "run" / sub).mkdir()
    try:
        yield t
    finally:
        pgids = (Path(t.root) / "pgids").read_text().split() if (Path(t.root) / "pgids").exists() else []
        for pgid in pgids:
            try:
                os.killpg(int(pgid), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def arm(t: LocalTransport, *, idle_s: float | None = None, stall_s: float | None = None, grace_s: float = 1,
        progress_file: str | None = None, **pre: str) -> None:
    far = int(time.time()) + 3600  # the money deadline is never what acts in these tests
    install_watchdog(t, far, grace_s=grace_s, self_destruct_cmd=DESTRUCT.format(root=t.root), poll_s=0.2,
                     idle_s=idle_s, stall_s=stall_s, progress_file=progress_file, **pre)


def destructed_at(root: Path, timeout: float = 30) -> float:
    wait_file(root / "destructed", timeout)
    return float((root / "destructed").read_text())


def keep_beating(t: LocalTransport, until: Callable[[], bool], hang_guard_s: float = 60) -> float:
    """Touch the heartbeat like a live controller (through the module's own call) until `until()`."""
    def beat_until() -> bool:
        assert heartbeat(t)
        return until()

    wait_for(beat_until, hang_guard_s, "the watchdog to act while the controller beats")
    return time.time()


def log_of(root: Path) -> str:
    return _read(root / "watchdog.log").decode()


def test_ended_job_with_no_controller_self_destructs_after_the_idle_window(box: LocalTransport) -> None:
    root = Path(box.root)
    box.start_detached("job", "echo trained > ../out/result.txt")
    arm(box, idle_s=2)
    fired = destructed_at(root)
    ended = (root / "job.exit").stat().st_mtime
    assert (root / "job.exit").read_text().strip() == "0"
    # The outputs were on disk, untouched, when the instance destroyed itself: after the job's end.
    assert (root / "out" / "result.txt").read_text() == "trained\n"
    assert (root / "out" / "result.txt").stat().st_mtime <= ended < fired
    assert (root / "watchdog.reason").read_text().strip() == "idle" == read_reason(box)
    log = log_of(root)
    assert "reason: idle" in log and "idle: running the self-destruct command" in log


@pytest.mark.parametrize("stat_works", [True, False], ids=["stat", "no-stat"])
def test_fresh_heartbeat_keeps_an_ended_jobs_instance(box: LocalTransport, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch, stat_works: bool) -> None:
    if not stat_works:  # an image whose `stat` cannot tell an mtime: the script's fallback must see beats
        shim = tmp_path / "bin"
        shim.mkdir()
        (shim / "stat").write_text("#!/bin/sh\nexit 1\n")
        (shim / "stat").chmod(0o755)
        monkeypatch.setenv("PATH", f"{shim}:{os.environ['PATH']}")
    root = Path(box.root)
    box.start_detached("job", "true")
    arm(box, idle_s=2)
    assert heartbeat(box)
    # A controller that keeps beating past the moment the idle rule would have fired without it.
    wait_file(root / "job.exit", 10)
    keep_until = time.time() + 2 + 3
    last_beat = keep_beating(box, lambda: time.time() >= keep_until)
    assert not (root / "destructed").exists(), log_of(root)
    fired = destructed_at(root)  # the controller is gone from here on
    assert fired >= last_beat, "the idle window counts from the last heartbeat"
    assert read_reason(box) == "idle"


def test_running_job_is_never_idle(box: LocalTransport) -> None:
    root = Path(box.root)
    box.start_detached("job", "sleep 3; echo done")
    arm(box, idle_s=1)  # no heartbeat at all, stall rule off: only the job's end may start the clock
    fired = destructed_at(root)
    assert (root / "job.log").read_text() == "done\n"
    assert fired > (root / "job.exit").stat().st_mtime
    assert read_reason(box) == "idle"


def test_silent_job_with_no_controller_is_stopped_as_stalled_then_destroyed(box: LocalTransport) -> None:
    root = Path(box.root)
    box.start_detached("job", "sleep 100000")
    arm(box, idle_s=1, stall_s=2)
    fired = destructed_at(root)
    assert (root / "job.exit").read_text().strip() == "143"  # SIGTERM: the job could checkpoint
    assert fired > (root / "job.exit").stat().st_mtime
    assert (root / "watchdog.reason").read_text().strip() == "stalled"
    log = log_of(root)
    assert log.index("stalled: job.log has not changed") < log.index("sent SIGTERM to job job")
    assert log.index("sent SIGTERM to job job") < log.index("running the self-destruct command")
    assert "reason: idle" not in log  # the first reason stays


def test_stalled_job_that_ignores_sigterm_is_killed_after_the_grace(box: LocalTransport) -> None:
    root = Path(box.root)
    box.start_detached("job", "trap '' TERM; echo started; sleep 100000")
    arm(box, idle_s=1, stall_s=2, grace_s=1)
    destructed_at(root)
    pgid = int((root / "job.pid").read_text())
    log = log_of(root)
    assert log.index("sent SIGTERM to job job") < log.index("sent SIGKILL to job job"), log
    assert live_in_group(pgid) == [], "nothing of the job is left"
    assert read_reason(box) == "stalled"


def live_in_group(pgid: int) -> list[int]:
    """Processes of a group that are not zombies (this machine's PID 1 may never reap them)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        fields = _read(stat).decode().rsplit(")", 1)[-1].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


def test_growing_progress_file_is_not_a_stall(box: LocalTransport) -> None:
    root = Path(box.root)
    box.start_detached("job", "for i in 1 2 3 4 5 6 7 8 9 10; do echo step $i >> ../out/metrics.jsonl; "
                              "sleep 0.5; done")
    arm(box, idle_s=1, stall_s=3, progress_file="out/metrics.jsonl")
    destructed_at(root)
    assert (root / "job.exit").read_text().strip() == "0"  # it ran to its end
    assert len((root / "out" / "metrics.jsonl").read_text().splitlines()) == 10
    assert read_reason(box) == "idle" and "stalled" not in log_of(root)


def test_fresh_heartbeat_leaves_a_stall_to_the_controller(box: LocalTransport) -> None:
    root = Path(box.root)
    box.start_detached("job", "sleep 100000")
    arm(box, idle_s=1, stall_s=2)
    keep_until = time.time() + 2 + 3
    last_beat = keep_beating(box, lambda: time.time() >= keep_until)
    assert box.job_state("job").running and not (root / "destructed").exists(), log_of(root)
    fired = destructed_at(root)  # the controller is gone: now the stall rule acts
    assert fired >= last_beat and read_reason(box) == "stalled"


def test_install_refuses_a_bad_window_or_progress_path(box: LocalTransport) -> None:
    for bad in ({"idle_s": 0}, {"stall_s": -1}, {"idle_s": float("nan")},
                {"progress_file": "../elsewhere"}, {"progress_file": "/etc/passwd"}, {"progress_file": "a b"}):
        with pytest.raises(ValueError):
            install_watchdog(box, time.time() + 60, grace_s=1, self_destruct_cmd="true", **bad)
    assert not (Path(box.root) / "watchdog.pid").exists()
    assert heartbeat_interval_s(6.0, 600.0) == 1.5 and heartbeat_interval_s(600.0, None) == 5.0


def test_deadline_reason_is_written_only_when_the_switch_acts(box: LocalTransport) -> None:
    root = Path(box.root)
    box.start_detached("job", "true")  # ended: at deadline - grace the controller is tearing down
    wait_file(root / "job.exit", 10)
    deadline = int(time.time()) + 6
    install_watchdog(box, deadline, grace_s=4, self_destruct_cmd=DESTRUCT.format(root=root), poll_s=0.2)
    # printed after the deadline - grace step
    wait_for(lambda: "job job already ended" in log_of(root), 30, "the deadline - grace step",
             lambda: log_of(root))
    assert not (root / "watchdog.reason").exists(), "nothing was stopped: no reason yet"
    assert destructed_at(root) >= deadline
    assert read_reason(box) == "deadline"


# ---- the data phase before the job: watched with the same rules (a recipe's `data` job) ----

DATA_WATCH = {"pre_job": "data", "pre_progress_file": "data/lab/progress.json"}
# A preparer that rewrites progress.json in place (same size, new content) a few times, then ends.
PREPARER = ("mkdir -p ../data/lab; for i in 1 2 3 4 5 6; do "
            "echo '{\"stage\": \"tokenize\", \"fraction\": 0.'$i'}' > ../data/lab/progress.json; sleep 0.5; done")


def test_a_silent_data_phase_with_no_controller_is_stopped_as_stalled(box: LocalTransport) -> None:
    root = Path(box.root)
    arm(box, idle_s=1, stall_s=2, **DATA_WATCH)
    box.start_detached("data", "sleep 100000")  # a download that hangs, the controller gone
    destructed_at(root)
    assert (root / "data.exit").read_text().strip() == "143"
    log = log_of(root)
    assert log.index("watching job data") < log.index("stalled: data/lab/progress.json has not changed")
    assert log.index("stalled: data/lab") < log.index("sent SIGTERM to job data")
    assert read_reason(box) == "stalled" and not (root / "job.pid").exists()


def test_a_data_phase_that_gets_further_is_no_stall_and_its_end_then_idles(box: LocalTransport) -> None:
    root = Path(box.root)
    arm(box, idle_s=2, stall_s=2, **DATA_WATCH)
    box.start_detached("data", PREPARER)  # 3 s of rewrites, each the same size: only the content moves
    destructed_at(root)
    assert (root / "data.exit").read_text().strip() == "0"  # it ran to its end
    log = log_of(root)
    assert "stalled" not in log and read_reason(box) == "idle"
    assert log.index("job data ended") < log.index("idle: the job ended")


def test_the_watchdog_moves_on_to_the_job_once_it_starts(box: LocalTransport) -> None:
    root = Path(box.root)
    arm(box, idle_s=3, **DATA_WATCH)
    box.start_detached("data", "true")
    wait_file(root / "data.exit", 10)
    wait_for(lambda: "watching job data" in log_of(root), 10, "the watchdog to watch the data job")
    assert heartbeat(box)  # the controller, alive between the two jobs: the idle clock starts again
    box.start_detached("job", "sleep 2; echo trained")
    destructed_at(root)
    log = log_of(root)
    assert log.index("watching job data") < log.index("watching job job") < log.index("job job ended")
    assert (root / "job.log").read_text() == "trained\n" and read_reason(box) == "idle"


def test_a_switch_armed_before_bootstrap_waits_with_no_job_then_takes_the_data_phase_named_later(
        box: LocalTransport) -> None:
    root = Path(box.root)
    for sub in ("code", "out"):  # armed in the first session: nothing uploaded yet
        (root / sub).rmdir()
    arm(box, idle_s=1, stall_s=2)
    assert "watching job data" not in log_of(root) and not (root / "destructed").exists()  # no job: nothing to judge
    set_pre_job(box, **DATA_WATCH)  # bootstrap decided the data phase
    box.start_detached("data", "sleep 100000")
    destructed_at(root)
    log = log_of(root)
    assert log.index("pre-job data (progress: data/lab/progress.json)") < log.index("watching job data")
    assert log.index("watching job data") < log.index("stalled: data/lab/progress.json has not changed")
    assert read_reason(box) == "stalled"


def test_set_pre_job_refuses_a_bad_name_or_path(box: LocalTransport) -> None:
    for job, progress in (("job", "x"), ("a b", "x"), ("data", "../x"), ("data", "/etc/passwd")):
        with pytest.raises(ValueError):
            set_pre_job(box, job, progress)
