"""pull_outputs against a real sshd and real rsync: pinned host key, manifests, drops, SFTP fallback."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from pathlib import Path

import paramiko
import pytest

from orchestrator.transport import keys
from orchestrator.transport import pull as sync
from orchestrator.transport.hostkeys import MemoryHostKeyStore
from orchestrator.transport.openssh import HostKeyChangedError, SSHOptions
from orchestrator.transport.pull import Syncer, SyncError, pull_outputs
from orchestrator.transport.ssh import SSHTransport
from tests.fixtures.sshd import SSHServer, sshd, sshd_fn  # noqa: F401


def make_run(root: Path, ckpt_bytes: int = 200_000) -> dict[str, str]:
    """An instance-side run root as the trainer leaves it mid-run."""
    ck = root / "out" / "checkpoints"
    ck.mkdir(parents=True)
    (root / "code").mkdir()
    (root / "code" / "train.py").write_text("code is not pulled\n")
    (root / "out" / "train.log").write_text("step 0050 | loss 3.1\n")
    (root / "out" / "metrics.jsonl").write_text('{"type":"step","step":50}\n')
    (root / "job.log").write_text("job output\n")
    (root / "watchdog.log").write_text("armed\n")
    (root / "job.pid").write_text("123\n")
    data = os.urandom(ckpt_bytes)
    (ck / "ckpt-000100.pt").write_bytes(data)
    (ck / "ckpt-000200.pt").write_bytes(b"being written, not in the manifest")
    (ck / ".ckpt-000300.pt.tmp").write_bytes(b"temp")
    sha = hashlib.sha256(data).hexdigest()
    write_manifest(ck, [("ckpt-000100.pt", 100, sha, len(data))])
    return {"ckpt-000100.pt": sha}


def write_manifest(ck: Path, entries: list[tuple[str, int, str, int]]) -> None:
    m = {"latest": entries[-1][0],
         "checkpoints": [{"file": f, "step": s, "sha256": h, "bytes": n, "time": 1.0} for f, s, h, n in entries]}
    (ck / "MANIFEST.json").write_text(json.dumps(m))


def connected(srv: SSHServer, root: Path, store: MemoryHostKeyStore | None = None) -> SSHTransport:
    kp = keys.ensure_keypair("test")
    srv.authorize(kp.public_line)
    t = SSHTransport(srv.endpoint, kp.private_path, str(root), "inst", store or MemoryHostKeyStore())
    t.wait_ready(10)
    return t


def ssh_opts(srv: SSHServer, root: Path) -> SSHOptions:
    with connected(srv, root) as t:
        return t.ssh_options()


def local_files(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file() and ".gpurun-sync" not in p.parts)


EXPECTED = ["job.log", "out/checkpoints/MANIFEST.json", "out/checkpoints/ckpt-000100.pt", "out/metrics.jsonl",
            "out/train.log", "watchdog.log"]


def test_rsync_pull_then_only_changes(sshd: SSHServer, tmp_path):  # noqa: F811
    root, home = tmp_path / "inst", tmp_path / "home"
    hashes = make_run(root)
    opts = ssh_opts(sshd, root)
    r1 = pull_outputs(str(root), home, opts)
    assert r1.method == "rsync" and r1.checkpoints_verified == ["ckpt-000100.pt"] and not r1.checkpoints_rejected
    assert local_files(home) == EXPECTED
    assert hashlib.sha256((home / "out/checkpoints/ckpt-000100.pt").read_bytes()).hexdigest() == hashes["ckpt-000100.pt"]
    assert (home / "out/checkpoints/MANIFEST.json").read_bytes() == (root / "out/checkpoints/MANIFEST.json").read_bytes()
    assert r1.bytes >= 200_000 and r1.files == 6
    with open(root / "out" / "train.log", "a") as f:
        f.write("step 0100 | loss 2.9\n")
    r2 = pull_outputs(str(root), home, opts)
    assert (r2.files, r2.bytes) == (1, (root / "out" / "train.log").stat().st_size)  # the checkpoint did not move
    assert (home / "out" / "train.log").read_text().endswith("loss 2.9\n")
    r3 = pull_outputs(str(root), home, opts)
    assert (r3.files, r3.bytes) == (0, 0)


def test_local_mismatch_is_pulled_again(sshd: SSHServer, tmp_path):  # noqa: F811
    root, home = tmp_path / "inst", tmp_path / "home"
    hashes = make_run(root)
    opts = ssh_opts(sshd, root)
    pull_outputs(str(root), home, opts)
    # Corrupt the local copy so that rsync's size+mtime check cannot see it: only the hash can.
    local = home / "out/checkpoints/ckpt-000100.pt"
    st = local.stat()
    local.write_bytes(b"\0" * st.st_size)
    os.utime(local, ns=(st.st_atime_ns, st.st_mtime_ns))
    (home / ".gpurun-sync" / "verified.json").unlink()
    r = pull_outputs(str(root), home, opts)
    assert r.checkpoints_verified == ["ckpt-000100.pt"] and not r.checkpoints_rejected
    assert hashlib.sha256(local.read_bytes()).hexdigest() == hashes["ckpt-000100.pt"]


def test_bad_remote_checkpoint_is_rejected(sshd: SSHServer, tmp_path):  # noqa: F811
    root, home = tmp_path / "inst", tmp_path / "home"
    make_run(root)
    ck = root / "out" / "checkpoints"
    good = json.loads((ck / "MANIFEST.json").read_text())["checkpoints"][0]
    opts = ssh_opts(sshd, root)
    assert pull_outputs(str(root), home, opts).checkpoints_verified == ["ckpt-000100.pt"]  # a periodic pull
    write_manifest(ck, [("ckpt-000100.pt", 100, good["sha256"], good["bytes"]),
                        ("ckpt-000200.pt", 200, "0" * 64, 10), ("../../etc/passwd", 300, "0" * 64, 1)])
    r = pull_outputs(str(root), home, opts, attempts=2)
    # Only the newest is pulled; it fails its hash and is rejected; the one already home stays.
    assert r.checkpoints_verified == ["ckpt-000100.pt"] and not r.latest_home
    assert sorted(r.checkpoints_rejected) == ["../../etc/passwd", "ckpt-000200.pt"]
    assert not (home / "out/checkpoints/ckpt-000200.pt").exists()
    local = json.loads((home / "out/checkpoints/MANIFEST.json").read_text())
    assert [c["file"] for c in local["checkpoints"]] == ["ckpt-000100.pt"] and local["latest"] == "ckpt-000100.pt"


def test_drop_mid_sync_is_retried_and_checkpoint_arrives_whole(sshd_fn: SSHServer, tmp_path, caplog):  # noqa: F811
    root, home = tmp_path / "inst", tmp_path / "home"
    hashes = make_run(root, ckpt_bytes=3_000_000)
    opts = ssh_opts(sshd_fn, root)

    def drop() -> None:
        time.sleep(0.8)  # mid-transfer: 3 MB at 1.5 MB/s takes 2 s
        sshd_fn.stop()
        time.sleep(1.0)
        sshd_fn.start()

    th = threading.Thread(target=drop)
    th.start()
    with caplog.at_level(logging.WARNING, logger="orchestrator.transport.pull"):
        r = pull_outputs(str(root), home, opts, extra_rsync_args=["--bwlimit=1500"])
    th.join()
    assert any("retrying" in m for m in caplog.messages), "the drop did not happen mid-sync"
    assert r.checkpoints_verified == ["ckpt-000100.pt"]
    got = hashlib.sha256((home / "out/checkpoints/ckpt-000100.pt").read_bytes()).hexdigest()
    assert got == hashes["ckpt-000100.pt"]


def test_changed_host_key_refused_by_rsync_and_sftp(sshd_fn: SSHServer, tmp_path):  # noqa: F811
    root, home = tmp_path / "inst", tmp_path / "home"
    make_run(root)
    store = MemoryHostKeyStore()
    with connected(sshd_fn, root, store) as t:
        opts = t.ssh_options()
    sshd_fn.restart(new_host_key=True)
    with SSHTransport(sshd_fn.endpoint, opts.key_path, str(root), "inst", store) as t:  # the old pin
        for method in ("rsync", "sftp"):
            with pytest.raises(HostKeyChangedError, match="host key of 127.0.0.1"):
                pull_outputs(str(root), home, opts, open_sftp=t.open_sftp, method=method)
    assert not (home / "out").exists()


def test_sftp_forced_and_detected(sshd: SSHServer, tmp_path):  # noqa: F811
    root = tmp_path / "inst"
    hashes = make_run(root)
    t = connected(sshd, root)
    opts, o = t.ssh_options(), t.open_sftp
    forced = pull_outputs(str(root), tmp_path / "a", opts, open_sftp=o, method="sftp")
    no_remote = pull_outputs(str(root), tmp_path / "b", opts, open_sftp=o, remote_rsync="/nonexistent/rsync")
    no_local = pull_outputs(str(root), tmp_path / "c", opts, open_sftp=o, rsync_bin="rsync-is-not-installed")
    for res, d in ((forced, "a"), (no_remote, "b"), (no_local, "c")):
        assert res.method == "sftp" and res.checkpoints_verified == ["ckpt-000100.pt"], d
        assert local_files(tmp_path / d) == EXPECTED
        got = hashlib.sha256((tmp_path / d / "out/checkpoints/ckpt-000100.pt").read_bytes()).hexdigest()
        assert got == hashes["ckpt-000100.pt"]
    again = pull_outputs(str(root), tmp_path / "a", opts, open_sftp=o, method="sftp")
    assert (again.files, again.bytes) == (0, 0)  # same size + mtime: nothing moves
    t.close()
    with pytest.raises(SyncError, match="not installed"):
        pull_outputs(str(root), tmp_path / "d", opts, method="rsync", rsync_bin="rsync-is-not-installed")
    with pytest.raises(SyncError, match="transport's connection"):
        pull_outputs(str(root), tmp_path / "e", opts, method="sftp")  # SFTP never dials on its own


def test_sftp_fallback_reuses_the_transports_connection(sshd: SSHServer, tmp_path, monkeypatch):  # noqa: F811
    root, home = tmp_path / "inst", tmp_path / "home"
    hashes = make_run(root)
    handshakes: list[str] = []
    start_client = paramiko.Transport.start_client

    def counted(self: paramiko.Transport, *a: object, **kw: object) -> None:
        handshakes.append("ssh")
        start_client(self, *a, **kw)

    monkeypatch.setattr(paramiko.Transport, "start_client", counted)
    # No rsync on this machine: the transport's pull falls back to SFTP.
    which = sync.shutil.which
    monkeypatch.setattr(sync.shutil, "which", lambda name: None if name == "rsync" else which(name))
    with connected(sshd, root) as t:
        assert handshakes == ["ssh"]
        r = t.pull(home)
        assert t.run("echo still-open").stdout == "still-open\n"  # the sync closed its session only
    assert r.method == "sftp" and r.checkpoints_verified == ["ckpt-000100.pt"]
    assert hashlib.sha256((home / "out/checkpoints/ckpt-000100.pt").read_bytes()).hexdigest() == hashes["ckpt-000100.pt"]
    assert handshakes == ["ssh"]  # one SSH connection for the commands and the sync


def test_local_source_rsync_and_copy(tmp_path):
    root = tmp_path / "sandbox"
    make_run(root)
    for method, d in (("auto", "a"), ("copy", "b")):
        r = pull_outputs(str(root), tmp_path / d, None, method=method)
        assert r.method == ("rsync" if method == "auto" else "copy")
        assert local_files(tmp_path / d) == EXPECTED and r.checkpoints_verified == ["ckpt-000100.pt"]


def test_syncer_runs_periodically(tmp_path):
    root = tmp_path / "sandbox"
    make_run(root)
    s = Syncer(lambda: pull_outputs(str(root), tmp_path / "home"), interval_s=0.1).start()
    deadline = time.monotonic() + 10
    while s.count < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    (root / "out" / "sample.txt").write_text("to be or not\n")
    final = s.stop(final=True)
    assert s.count >= 3 and final is not None and s.last_result is final and s.last_error is None
    assert (tmp_path / "home" / "out" / "sample.txt").read_text() == "to be or not\n"
