"""The one upload rule (orchestrator/transport/upload.py): what it ships, and that both transports ship exactly that."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.state.ledger import Ledger
from orchestrator.transport import keys
from orchestrator.transport.hostkeys import MemoryHostKeyStore
from orchestrator.transport.local import LocalTransport
from orchestrator.transport.ssh import SSHTransport
from orchestrator.transport.upload import excluded, upload_files
from providers.local import LocalProvider
from tests.fixtures.sshd import SSHServer, sshd  # noqa: F401
from tests.test_launch_local import gpurun

SECRETS = [".env", ".env.local", "ID_RSA", "id_rsa", "id_rsa.pub", "id_ed25519", "id_ecdsa", "tls/server.pem",
           "tls/server.key", "deploy.p12", ".ssh/config", "conf/.aws/credentials", ".netrc", "pkg/.env"]
JUNK = [".git/config", "pkg/__pycache__/m.cpython-311.pyc", "pkg/m.pyc", ".venv/bin/python", "x.egg-info/PKG-INFO",
        "runs/20260101-000000-aaaa/plan.json", "out/checkpoints/ckpt-000001.pt"]
KEPT = ["README.md", "environment.yml", "keys.py", "pkg/__init__.py", "pkg/out/report.py", "pkg/runs.py", "train.py"]


def make_workdir(d: Path) -> Path:
    for rel in SECRETS + JUNK + KEPT:
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_text(f"contents of {rel}\n")
    (d / "linked.txt").symlink_to("train.py")  # a link stays a link
    return d


def shipped(root: Path) -> dict[str, str]:
    """Every entry under root: file contents, or '-> target' for a link."""
    return {str(p.relative_to(root)): f"-> {p.readlink()}" if p.is_symlink() else p.read_text()
            for p in sorted(root.rglob("*")) if p.is_symlink() or p.is_file()}


def test_the_rule_refuses_secrets_caches_and_gpurun_outputs(tmp_path: Path) -> None:
    src = make_workdir(tmp_path / "work")
    expected = sorted([*KEPT, "linked.txt"])
    assert upload_files(src) == expected
    for rel in SECRETS + JUNK:
        assert excluded(rel), rel
    # In a git repo the same (its real .git replacing the fake one), even for secrets committed by force.
    shutil.rmtree(src / ".git")
    subprocess.run(["git", "init", "-q", str(src)], check=True)
    subprocess.run(["git", "-C", str(src), "add", "-f", ".env", "id_rsa", "tls/server.pem", "train.py"], check=True)
    assert upload_files(src) == expected


def test_both_transports_ship_the_same_files(sshd: SSHServer, tmp_path: Path) -> None:  # noqa: F811
    src = make_workdir(tmp_path / "work")
    local = LocalTransport(tmp_path / "sandbox")
    local.wait_ready(5)
    (tmp_path / "sandbox" / "code" / "stale.txt").parent.mkdir(parents=True)
    (tmp_path / "sandbox" / "code" / "stale.txt").write_text("from an earlier upload")
    local.upload(src)
    kp = keys.ensure_keypair("test")
    sshd.authorize(kp.public_line)
    with SSHTransport(sshd.endpoint, kp.private_path, str(tmp_path / "remote"), "inst-up", MemoryHostKeyStore()) as ssh:
        ssh.upload(src)
    over_ssh, in_sandbox = shipped(tmp_path / "remote" / "code"), shipped(tmp_path / "sandbox" / "code")
    assert in_sandbox == over_ssh
    assert sorted(in_sandbox) == upload_files(src)  # replaced, not merged: stale.txt is gone
    assert in_sandbox["linked.txt"] == "-> train.py"


@pytest.mark.timeout(240)
def test_local_launch_never_puts_secrets_in_the_sandbox(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / ".env").write_text("RUNPOD_API_KEY=rpa_not_for_the_instance\n")
    (work / "id_rsa").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nnot for the instance\n")
    (work / "train.py").write_text("print('hello from the workdir')\n")
    # The job itself reports what it can see in its cwd (the uploaded code/), into out/ (synced home).
    probe = ("import json, os; os.makedirs('../out', exist_ok=True); "
             "json.dump(sorted(os.listdir('.')), open('../out/seen.json', 'w')); exec(open('train.py').read())")
    res = gpurun("launch", "--provider", "local", "--max-usd", "0.02", "--usd-per-hour", "1.2", "--yes",
                 "--workdir", str(work), "--runs-dir", str(tmp_path / "runs"), "--", sys.executable, "-c", probe,
                 cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    ledger = Ledger()
    (run,) = ledger.list_runs()
    assert run.phase == "verified"
    (row,) = ledger.instances(run.run_id)
    sandbox = Path(LocalProvider().get(row.instance_id).raw["sandbox"])
    assert sandbox == Path(row.info["sandbox"]) and sandbox.is_dir()
    code = sandbox / "code"
    assert sorted(p.name for p in code.iterdir()) == ["train.py"]
    assert not [p for p in sandbox.rglob("*") if p.name in (".env", "id_rsa")]
    assert json.loads((Path(run.run_dir) / "out" / "seen.json").read_text()) == ["train.py"]
    assert "hello from the workdir" in (sandbox / "job.log").read_text()
