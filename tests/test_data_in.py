"""Data in (`--data-from DIR`, any size): sent with resumable rsync and verified by SHA-256 on the
instance (orchestrator/transport/push_data.py); sized and timed against the budget at plan time,
a data set the budget cannot move refused before anything is rented (orchestrator/plan/data_in.py)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from orchestrator.plan.data_in import ASSUMED_UPLOAD_BPS, measured_rate
from orchestrator.state.events import EventKind
from orchestrator.state.ledger import Ledger
from orchestrator.transport import keys
from orchestrator.transport.hostkeys import MemoryHostKeyStore
from orchestrator.transport.push_data import DataSendError
from orchestrator.transport.ssh import SSHTransport
from tests.fixtures.sshd import SSHServer, sshd  # noqa: F401
from tests.test_launch_validation import assert_refused
from tests.test_recipes import gpurun

MB = 1_000_000


def data_set(root: Path) -> dict[str, str]:
    """200 MB: a sparse 150 MB shard, 50 MB of random bytes, and a small text file in a subfolder."""
    root.mkdir()
    with open(root / "shard-000.bin", "wb") as f:
        f.truncate(150 * MB)
    (root / "shard-001.bin").write_bytes(os.urandom(50 * MB))
    (root / "meta").mkdir()
    (root / "meta" / "input.txt").write_text("First Citizen:\n" * 100)
    return {rel: hashlib.sha256((root / rel).read_bytes()).hexdigest()
            for rel in ("shard-000.bin", "shard-001.bin", "meta/input.txt")}


def test_200_mb_goes_up_resumes_what_is_missing_and_is_verified_on_the_instance(sshd: SSHServer,  # noqa: F811
                                                                                 tmp_path: Path) -> None:
    src, remote, home = tmp_path / "data", tmp_path / "instance", tmp_path / "run"
    remote.mkdir()
    home.mkdir()
    hashes = data_set(src)
    kp = keys.ensure_keypair("test")
    sshd.authorize(kp.public_line)
    with SSHTransport(sshd.endpoint, kp.private_path, str(remote), "inst", MemoryHostKeyStore()) as t:
        t.wait_ready(10)
        sent = t.send_data(src, "data-src", home)
        assert sent.files == 3 and sent.total_bytes > 200 * MB and sent.bytes >= sent.total_bytes
        for rel, sha in hashes.items():
            assert hashlib.sha256((remote / "data-src" / rel).read_bytes()).hexdigest() == sha, rel
        # A send cut short leaves a file missing: the next send moves only that, not the 200 MB again.
        (remote / "data-src" / "shard-001.bin").unlink()
        again = t.send_data(src, "data-src", home)
        assert 50 * MB <= again.bytes < 51 * MB
        # A file damaged on the instance that rsync's quick check (size + time) passes is caught by the hash.
        damaged = remote / "data-src" / "shard-001.bin"
        stat = damaged.stat()
        with open(damaged, "r+b") as f:
            f.seek(1234)
            byte = f.read(1)[0]
            f.seek(1234)  # the read moved on: write over the byte read, never over one that may already match
            f.write(bytes([byte ^ 0xFF]))
        os.utime(damaged, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        with pytest.raises(DataSendError, match="shard-001.bin"):
            t.send_data(src, "data-src", home)


def test_a_data_set_the_budget_cannot_move_is_refused_with_the_numbers(tmp_path: Path) -> None:
    src = tmp_path / "tinyshakespeare"
    src.mkdir()
    with open(src / "input.txt", "wb") as f:
        f.truncate(200 * MB)
    # 200 MB at 1 Mbit/s is ~2000 s to send; 0.02 USD at 1.2 USD/h buys 60 s.
    line = assert_refused(gpurun("launch", "--provider", "local", "--recipe", "shakespeare-char", "--data-from",
                                 str(src), "--upload-mbps", "1", "--max-usd", "0.02", "--usd-per-hour", "1.2",
                                 "--yes", cwd=tmp_path),
                          "--data-from", "200.0 MB at 1.0 Mbit/s (--upload-mbps)", "raise --max-usd", "nothing was rented")
    assert "~2000 s to send" in line
    # At a rate that carries it, the plan shows the send's size and time.
    shown = gpurun("launch", "--provider", "local", "--recipe", "shakespeare-char", "--data-from", str(src),
                   "--upload-mbps", "1000", "--max-usd", "0.02", "--usd-per-hour", "1.2", "--dry-run", cwd=tmp_path)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    out = " ".join(shown.stdout.split())
    assert "200.0 MB in 1 files" in out and "~2 s at 1000.0 Mbit/s (--upload-mbps)" in out


def test_the_upload_rate_is_what_earlier_sends_measured() -> None:
    ledger = Ledger()
    assert measured_rate(ledger) is None  # nothing sent yet: the plan assumes ASSUMED_UPLOAD_BPS
    assert ASSUMED_UPLOAD_BPS == 2.5e6
    ledger.create_run("r1", "local", 1.0, {}, "/tmp/r1")
    ledger.record_event("r1", EventKind.DATA_SENT, bytes=40 * MB, seconds=10.0)
    ledger.record_event("r1", EventKind.DATA_SENT, bytes=1000, seconds=5.0)  # too small to say
    ledger.create_run("r2", "local", 1.0, {}, "/tmp/r2")
    ledger.record_event("r2", EventKind.DATA_SENT, bytes=20 * MB, seconds=20.0)
    assert measured_rate(ledger) == (60 * MB / 30.0, 2)
