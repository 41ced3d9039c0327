"""trainer/manifest.py: torch-free verification of pulled checkpoints."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.trainer.helpers import REPO, env
from trainer import manifest


def _ckpt(d: Path, step: int, payload: bytes) -> str:
    path = d / f"ckpt-{step:06d}.pt"
    manifest.atomic_write_bytes(path, payload)
    dropped = manifest.add_checkpoint(d, manifest.new_entry(path, step), keep=3)
    manifest.remove_files(d, dropped)
    return path.name


def test_sha256_and_atomic_write(tmp_path: Path) -> None:
    manifest.atomic_write_bytes(tmp_path / "a.bin", b"hello")
    assert (tmp_path / "a.bin").read_bytes() == b"hello"
    assert manifest.sha256_file(tmp_path / "a.bin") == hashlib.sha256(b"hello").hexdigest()
    assert not list(tmp_path.glob("*.tmp"))  # no temp file left behind


def test_failed_atomic_write_leaves_old_file(tmp_path: Path) -> None:
    target = tmp_path / "x.json"
    manifest.atomic_write_json(target, {"v": 1})

    def broken(f: object) -> None:
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        manifest.atomic_write(target, broken)  # type: ignore[arg-type]
    assert json.loads(target.read_text()) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


def test_manifest_keeps_last_and_verifies(tmp_path: Path) -> None:
    for step in (10, 20, 30, 40):
        _ckpt(tmp_path, step, bytes([step]) * 1000)
    m = manifest.read_manifest(tmp_path)
    assert m["latest"] == "ckpt-000040.pt"
    assert [c["step"] for c in m["checkpoints"]] == [20, 30, 40]
    assert not (tmp_path / "ckpt-000010.pt").exists()  # pruned after the manifest dropped it
    assert manifest.verify_checkpoints(tmp_path) == (["ckpt-000020.pt", "ckpt-000030.pt", "ckpt-000040.pt"], [])


def test_corrupt_truncated_and_missing_are_reported(tmp_path: Path) -> None:
    for step in (10, 20, 30):
        _ckpt(tmp_path, step, bytes(range(256)) * 40)
    data = bytearray((tmp_path / "ckpt-000030.pt").read_bytes())
    data[5000] ^= 0xFF  # same size, one flipped byte
    (tmp_path / "ckpt-000030.pt").write_bytes(bytes(data))
    with open(tmp_path / "ckpt-000020.pt", "r+b") as f:
        f.truncate(100)
    ok, bad = manifest.verify_checkpoints(tmp_path)
    assert ok == ["ckpt-000010.pt"]
    assert bad == ["ckpt-000020.pt", "ckpt-000030.pt"]
    _, problems = manifest.checkpoint_problems(tmp_path)
    assert "truncated" in problems["ckpt-000020.pt"] and "sha256" in problems["ckpt-000030.pt"]
    entry, _ = manifest.latest_valid(tmp_path)
    assert entry is not None and entry.step == 10
    (tmp_path / "ckpt-000010.pt").unlink()
    assert manifest.verify_checkpoints(tmp_path) == ([], ["ckpt-000010.pt", "ckpt-000020.pt", "ckpt-000030.pt"])


def test_no_manifest_and_bad_manifest(tmp_path: Path) -> None:
    assert manifest.verify_checkpoints(tmp_path) == ([], [])
    (tmp_path / manifest.MANIFEST_NAME).write_text("{not json")
    with pytest.raises(manifest.ManifestError, match="unreadable manifest"):
        manifest.verify_checkpoints(tmp_path)


def test_manifest_is_torch_free() -> None:
    code = "import sys, trainer.manifest; assert 'torch' not in sys.modules and 'numpy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env(), check=True, timeout=60)
