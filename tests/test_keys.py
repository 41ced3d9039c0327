"""The run's SSH key pair: generated once, private 0600 in a 0700 dir, usable by paramiko and OpenSSH."""

from __future__ import annotations

import stat
import subprocess

import pytest

from orchestrator.transport import keys
from tests.fixtures.sshd import SSHServer, sshd  # noqa: F401


def test_generated_once_with_safe_modes(gpurun_home):
    kp = keys.ensure_keypair("run-abc")
    assert kp.private_path == gpurun_home / "keys" / "run-abc"
    assert stat.S_IMODE(kp.private_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(kp.private_path.parent.stat().st_mode) == 0o700
    assert kp.public_line.startswith("ssh-ed25519 AAAA") and kp.public_line.endswith(" gpurun-run-abc")
    assert kp.public_path.read_text().strip() == kp.public_line
    before = kp.private_path.read_bytes()
    again = keys.ensure_keypair("run-abc")
    assert again.private_path.read_bytes() == before and again.public_line == kp.public_line
    assert kp.load().get_name() == "ssh-ed25519"
    # OpenSSH agrees with the public line we derive
    derived = subprocess.run(["ssh-keygen", "-y", "-f", str(kp.private_path)], capture_output=True, text=True,
                             check=True).stdout.split()[:2]
    assert derived == kp.public_line.split()[:2]


def test_bad_name():
    with pytest.raises(ValueError, match="bad key name"):
        keys.ensure_keypair("../etc")


def test_unreadable_key_is_a_clear_error(tmp_path):
    p = tmp_path / "junk"
    p.write_text("not a key")
    with pytest.raises(ValueError, match="cannot load SSH private key"):
        keys.load_private_key(p)


def test_key_logs_into_real_sshd(sshd: SSHServer):  # noqa: F811
    kp = keys.ensure_keypair("login")
    sshd.authorize(kp.public_line)
    out = subprocess.run(["ssh", "-F", "/dev/null", "-i", str(kp.private_path), "-p", str(sshd.port),
                          "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                          "-o", "LogLevel=ERROR", f"{sshd.user}@{sshd.host}", "echo ok"],
                         capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "ok", out.stderr
