"""SSHTransport against a real OpenSSH server on loopback."""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from orchestrator.run.bootstrap import bootstrap, trainer_command
from orchestrator.state.ledger import Ledger
from orchestrator.transport import keys
from orchestrator.transport.hostkeys import LedgerHostKeys, MemoryHostKeyStore
from orchestrator.transport.openssh import HostKeyChangedError, resolve_endpoint
from orchestrator.transport.protocol import CommandResult
from orchestrator.transport.ssh import CommandTimeoutError, SSHTransport, SSHUnreachableError
from orchestrator.transport.upload import UploadTooLargeError, upload_files
from providers.base import SSHEndpoint
from tests.e2e_helpers import wait_for
from tests.fixtures.sshd import SSHServer, free_port, sshd, sshd_fn  # noqa: F401

JOB = """\
import signal, sys, time
def stop(signum, frame):
    open("stopped", "w").write(signal.Signals(signum).name)
    sys.exit(3)
signal.signal(signal.SIGTERM, stop)
print("job started", flush=True)
time.sleep(60)
"""


def make_transport(srv: SSHServer, root: Path, store: MemoryHostKeyStore | None = None, **kw) -> SSHTransport:
    kp = keys.ensure_keypair("test")
    srv.authorize(kp.public_line)
    return SSHTransport(srv.endpoint, kp.private_path, str(root), "inst-1", store or MemoryHostKeyStore(), **kw)


def record_connects(monkeypatch: pytest.MonkeyPatch, t: SSHTransport) -> list[str]:
    """The transport's connection attempts, in order ("connected" / "failed: <error type>"): what the
    reconnect and refusal tests assert on instead of how long something took."""
    events: list[str] = []
    real = t._connect_once

    def connect_once(timeout_s: float):
        try:
            conn = real(timeout_s)
        except Exception as exc:
            events.append(f"failed: {type(exc).__name__}")
            raise
        events.append("connected")
        return conn

    monkeypatch.setattr(t, "_connect_once", connect_once)
    return events


def record_probe_timeouts(monkeypatch: pytest.MonkeyPatch, t: SSHTransport) -> list[float]:
    """The socket timeout each of wait_ready's attempts was given, in order."""
    tries: list[float] = []
    real = t._probe_banner

    def probe(timeout: float) -> None:
        tries.append(timeout)
        real(timeout)

    monkeypatch.setattr(t, "_probe_banner", probe)
    return tries


def test_wait_ready_pins_key_and_runs(sshd: SSHServer, tmp_path):  # noqa: F811
    store = MemoryHostKeyStore()
    with make_transport(sshd, tmp_path / "run", store) as t:
        t.wait_ready(10)
        assert store.get("inst-1") == sshd.host_key
        res = t.run("echo hi; echo oops >&2; exit 3")
        assert (res.exit_code, res.stdout, res.stderr, res.ok) == (3, "hi\n", "oops\n", False)
        t.write_file("out/x/hello.txt", "hello\n", 0o600)
        p = tmp_path / "run" / "out" / "x" / "hello.txt"
        assert p.read_text() == "hello\n" and p.stat().st_mode & 0o777 == 0o600
        # A command that cannot end before the test lets it (bounded at 60 s, should the timeout
        # be ignored): the CommandTimeoutError can only come from the 0.5 s timeout, mid-command.
        root = tmp_path / "run"
        blocked = (f"touch {root}/started; i=0; while [ ! -e {root}/release ] && [ $i -lt 1200 ]; "
                   f"do sleep 0.05; i=$((i+1)); done; touch {root}/finished")
        with pytest.raises(CommandTimeoutError):
            t.run(blocked, timeout_s=0.5)
        wait_for(lambda: (root / "started").exists(), 30, "the command to start")  # it did run
        assert not (root / "finished").exists()  # and was still running when the timeout fired
        (root / "release").touch()
        assert t.run("echo still-ok").stdout == "still-ok\n"


def test_upload_honours_gitignore(sshd: SSHServer, tmp_path):  # noqa: F811
    src = tmp_path / "work"
    (src / "pkg" / "__pycache__").mkdir(parents=True)
    (src / "pkg" / "__init__.py").write_text("")
    (src / "pkg" / "train.py").write_text("print('train')\n")
    (src / "pkg" / "__pycache__" / "train.cpython-311.pyc").write_bytes(b"x")
    (src / "data").mkdir()
    (src / "data" / "big.bin").write_bytes(b"0" * 1000)
    (src / "notes.log").write_text("x")
    (src / "keep.log").write_text("x")
    (src / ".env").write_text("SECRET=1")
    (src / ".gitignore").write_text("data/\n*.log\n!keep.log\n")
    expected = [".gitignore", "keep.log", "pkg/__init__.py", "pkg/train.py"]
    assert upload_files(src) == expected  # not a git repo: fnmatch of .gitignore
    subprocess.run(["git", "init", "-q", str(src)], check=True)
    assert upload_files(src) == expected  # git's own view agrees
    with make_transport(sshd, tmp_path / "run") as t:
        (tmp_path / "run" / "code" / "stale").mkdir(parents=True)
        t.upload(src)
        got = sorted(str(p.relative_to(tmp_path / "run" / "code")) for p in (tmp_path / "run" / "code").rglob("*")
                     if p.is_file())
        assert got == expected  # replaced, not merged: the stale dir is gone
        t.upload_limit_bytes = 20
        (src / "pkg" / "weights.pt").write_bytes(b"1" * 500)
        with pytest.raises(UploadTooLargeError, match=r"biggest: pkg/weights\.pt"):
            t.upload(src)


def test_detached_job_survives_session_and_is_signalled(sshd: SSHServer, tmp_path):  # noqa: F811
    root = tmp_path / "run"
    store = MemoryHostKeyStore()
    t = make_transport(sshd, root, store)
    t.write_file("code/job.py", JOB)
    pid = t.start_detached("job", "python3 job.py", env={"GREETING": "hi there"})
    assert t.start_detached("job", "python3 job.py") == pid  # already running: no second copy
    st = t.job_state("job")
    assert st.running and st.pid == pid and st.exit_code is None
    t.close()  # the controller goes away
    time.sleep(0.5)
    with make_transport(sshd, root, store) as t2:
        assert t2.job_state("job").running
        wait_for(lambda: "job started" in (root / "job.log").read_text(), 30, "the job to start")
        t2.signal("job", signal.SIGTERM)
        st = wait_for(lambda: (s := t2.job_state("job")).exit_code is not None and s, 30, "the job to end")
        assert st.exit_code == 3 and not st.running
        assert (root / "code" / "stopped").read_text() == "SIGTERM"
        with pytest.raises(ProcessLookupError):
            t2.signal("job", signal.SIGTERM)
        with pytest.raises(RuntimeError, match="no job"):
            t2.signal("nojob", signal.SIGTERM)


def test_reconnects_after_transport_closed_under_it(sshd: SSHServer, tmp_path):  # noqa: F811
    with make_transport(sshd, tmp_path / "run") as t:
        assert t.run("echo a").stdout == "a\n"
        assert t._conn is not None
        t._conn.transport.close()
        assert t.run("echo b").stdout == "b\n"


def test_reconnects_after_sshd_restart(sshd_fn: SSHServer, tmp_path, monkeypatch):  # noqa: F811
    with make_transport(sshd_fn, tmp_path / "run") as t:
        t.wait_ready(10)
        events = record_connects(monkeypatch, t)
        sshd_fn.stop()

        def restart_once_refused() -> None:
            # The server comes back only after the transport has tried it and been refused.
            wait_for(lambda: any(e.startswith("failed") for e in events), 60, "a failed attempt")
            events.append("sshd starting")
            sshd_fn.start()

        starter = threading.Thread(target=restart_once_refused, daemon=True)
        starter.start()
        assert t.run("echo back").stdout == "back\n"
        starter.join(60)
    # The command waited through refused connects for the server, then reconnected once and ran.
    assert events[0].startswith("failed: ") and events[-1] == "connected", events
    assert events.index("sshd starting") < events.index("connected") and events.count("connected") == 1


def test_changed_host_key_is_refused(sshd_fn: SSHServer, tmp_path, monkeypatch):  # noqa: F811
    store = MemoryHostKeyStore()
    with make_transport(sshd_fn, tmp_path / "run", store) as t:
        t.wait_ready(10)
    old = store.get("inst-1")
    sshd_fn.restart(new_host_key=True)
    refused = "failed: HostKeyChangedError"
    with make_transport(sshd_fn, tmp_path / "run", store) as t:
        events = record_connects(monkeypatch, t)
        with pytest.raises(HostKeyChangedError, match="host key of 127.0.0.1:.* changed"):
            t.wait_ready(30)
        # Refused at once: no attempt after the refusal (a retry would keep trying for the 30 s).
        assert events[-1] == refused and events.count(refused) == 1, events
        with pytest.raises(HostKeyChangedError):
            t.run("true")
        assert events[-1] == refused and events.count(refused) == 2, events
    assert "connected" not in events
    assert store.get("inst-1") == old  # the pin is never silently replaced


def test_unreachable_fails_within_bounded_wait(tmp_path, monkeypatch):
    dead = SSHEndpoint("127.0.0.1", free_port(), "root")
    silent = socket.socket()  # accepts connections, never says a word (a booting box behind a NAT)
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    mute = SSHEndpoint("127.0.0.1", silent.getsockname()[1], "root")
    kp = keys.ensure_keypair("test")
    try:
        for ep in (dead, mute):
            t = SSHTransport(ep, kp.private_path, str(tmp_path), "i", MemoryHostKeyStore(), connect_timeout=2)
            tries = record_probe_timeouts(monkeypatch, t)
            with pytest.raises(SSHUnreachableError, match=f"127.0.0.1:{ep.port} within 3s"):
                t.wait_ready(3)
            # Each attempt waits at most connect_timeout; the first gets all of it.
            assert tries and tries[0] == 2 and all(0 < x <= 2 for x in tries), tries
            if ep is dead:
                # Refused at once, so retried with backoff; its sleeps (0.25 s, doubling) alone
                # pass the 3 s budget by the fifth try.
                assert 2 <= len(tries) <= 5, tries
            else:
                # Every attempt blocks for its whole timeout (the server never speaks), and each is
                # cut to what is left of the budget: together they fit in it (+ the 0.2 s floor).
                assert sum(tries) <= 3 + 0.2 + 1e-6, tries
    finally:
        silent.close()


def test_ssh_override(monkeypatch):
    ep = SSHEndpoint("1.2.3.4", 22, "root")
    assert resolve_endpoint(ep) == ep
    monkeypatch.setenv("GPURUN_SSH_OVERRIDE", "127.0.0.1:2222")
    assert resolve_endpoint(ep) == SSHEndpoint("127.0.0.1", 2222, "root")
    monkeypatch.setenv("GPURUN_SSH_OVERRIDE", "127.0.0.1:2222:ubuntu")
    assert resolve_endpoint(ep).user == "ubuntu"
    monkeypatch.setenv("GPURUN_SSH_OVERRIDE", "nonsense")
    with pytest.raises(ValueError, match="host:port"):
        resolve_endpoint(ep)


def test_bootstrap_over_ssh(sshd: SSHServer, tmp_path):  # noqa: F811
    with make_transport(sshd, tmp_path / "run") as t:
        info = bootstrap(t, install=False)
    assert info.torch_version and info.gpu_count == 0 and not info.cuda_available
    report = (tmp_path / "run" / "out" / "bootstrap.txt").read_text()
    assert report.startswith(f"torch {info.torch_version} | cuda available: False | device: cpu")
    assert "nvidia-smi" in report


def test_trainer_command():
    assert trainer_command(0, ["--max-iters", "10"], root="/r") == (
        "python3 -m trainer.launch --nproc-per-node=1 --out-dir /r/out "
        "--max-iters 10")
    cmd = trainer_command(8, "--config c.yaml", python="/opt/conda/bin/python", out_dir="/x/out")
    assert cmd.startswith("/opt/conda/bin/python -m trainer.launch --nproc-per-node=8 ")
    assert cmd.endswith("--out-dir /x/out --config c.yaml")


def test_relative_root_resolves_under_home(sshd: SSHServer):  # noqa: F811
    kp = keys.run_key()
    sshd.authorize(kp.public_line)
    store = MemoryHostKeyStore()
    with SSHTransport(sshd.endpoint, kp.private_path, "gpurun-test-rel/run-1", "i", store) as t:
        assert t.root == "~/gpurun-test-rel/run-1"
        t.wait_ready(10)
        assert t.root == str(sshd.home / "gpurun-test-rel" / "run-1")
        t.write_file("x.txt", "x")
        assert t.run(f"cat {t.root}/x.txt").stdout == "x"
        t.run("rm -rf ~/gpurun-test-rel")


def test_host_key_pinned_in_the_ledger(sshd: SSHServer, tmp_path):  # noqa: F811
    ledger = Ledger()
    ledger.create_run("run-pin", "local", 1.0, {}, str(tmp_path))
    ledger.add_instance("run-pin", "local", "inst-pin", "running")
    kp = keys.run_key()
    sshd.authorize(kp.public_line)
    with SSHTransport(sshd.endpoint, kp.private_path, str(tmp_path / "r"), "inst-pin", LedgerHostKeys(ledger)) as t:
        t.wait_ready(10)
    assert ledger.host_key("inst-pin") == sshd.host_key
    with SSHTransport(sshd.endpoint, kp.private_path, str(tmp_path / "r"), "inst-pin", LedgerHostKeys(ledger)) as t:
        assert t.run("echo pinned").stdout == "pinned\n"  # the pin from the ledger is accepted


def test_a_job_that_ends_while_it_is_looked_at_is_ended_with_its_status(tmp_path: Path) -> None:
    # job_state's one command, run here by sh with a `kill` that lets the job end between the looks
    # (it writes its exit status, and is gone): the status is read after the liveness look, so seen.
    key = keys.ensure_keypair("test").private_path  # never used: nothing connects
    t = SSHTransport(SSHEndpoint("127.0.0.1", 1, "nobody"), key, str(tmp_path), "i", MemoryHostKeyStore())
    (tmp_path / "job.pid").write_text("4242\n")
    ends_now = f"kill() {{ echo 0 > {tmp_path}/job.exit; return 1; }}; "

    def run_here(command: str, timeout_s: float | None = None) -> CommandResult:
        res = subprocess.run(["sh", "-c", ends_now + command], capture_output=True, text=True, timeout=30)
        return CommandResult(res.returncode, res.stdout, res.stderr)

    t.run = run_here  # type: ignore[method-assign]
    state = t.job_state("job")
    assert not state.running and state.exit_code == 0 and state.pid == 4242
