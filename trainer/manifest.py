"""Checkpoint manifest: atomic writes and SHA-256 verification. Torch-free (the controller imports it).

Layout (trainer/contract.py; docs/ARCHITECTURE.md, "Trainer contract"): `checkpoints/MANIFEST.json` is
`{"latest": "ckpt-000100.pt", "checkpoints": [{"file", "step", "sha256", "bytes", "time"}]}` and only
the files it lists are complete. A checkpoint whose size or hash disagrees with its entry is corrupt.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from trainer import contract

MANIFEST_NAME = contract.MANIFEST
_CHUNK = 1 << 20


class ManifestError(Exception):
    """The manifest is missing, unreadable or malformed."""


@dataclass
class CheckpointEntry:
    file: str
    step: int
    sha256: str
    bytes: int
    time: float


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_dir(path: str | os.PathLike[str]) -> None:
    # The rename is only durable once the directory entry is on disk.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike[str], writer: Callable[[IO[bytes]], None]) -> None:
    """Call writer(f) on a temp file beside `path`, fsync it, then rename it over `path`."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; outputs should read like any file
        with os.fdopen(fd, "wb") as f:
            writer(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(target.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1) + "\n").encode())


def read_manifest(ckpt_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed manifest; `{"latest": None, "checkpoints": []}` when there is none yet."""
    path = Path(ckpt_dir) / MANIFEST_NAME
    if not path.exists():
        return {contract.MANIFEST_LATEST: None, contract.MANIFEST_ENTRIES: []}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ManifestError(f"{path}: unreadable manifest ({e})") from e
    if not isinstance(data, dict) or not isinstance(data.get(contract.MANIFEST_ENTRIES), list):
        raise ManifestError(f"{path}: not a checkpoint manifest (no 'checkpoints' list)")
    return data


def manifest_entries(ckpt_dir: str | os.PathLike[str]) -> list[CheckpointEntry]:
    entries = []
    for raw in read_manifest(ckpt_dir)[contract.MANIFEST_ENTRIES]:
        try:
            entries.append(
                CheckpointEntry(
                    file=str(raw["file"]), step=int(raw["step"]), sha256=str(raw["sha256"]),
                    bytes=int(raw["bytes"]), time=float(raw["time"]),
                )
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ManifestError(f"{ckpt_dir}/{MANIFEST_NAME}: bad entry {raw!r} ({e})") from e
    return sorted(entries, key=lambda e: e.step)


def check_entry(ckpt_dir: str | os.PathLike[str], entry: CheckpointEntry) -> str | None:
    """None when the file matches its entry, else the reason it does not."""
    if os.path.basename(entry.file) != entry.file:
        return "file name escapes the checkpoint directory"
    path = Path(ckpt_dir) / entry.file
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if size != entry.bytes:
        return f"truncated or resized: {size} bytes, manifest says {entry.bytes}"
    if sha256_file(path) != entry.sha256:
        return "sha256 mismatch (corrupted)"
    return None


def checkpoint_problems(ckpt_dir: str | os.PathLike[str]) -> tuple[list[CheckpointEntry], dict[str, str]]:
    """(entries that verify, {file: reason} for those that do not)."""
    good: list[CheckpointEntry] = []
    bad: dict[str, str] = {}
    for entry in manifest_entries(ckpt_dir):
        reason = check_entry(ckpt_dir, entry)
        if reason is None:
            good.append(entry)
        else:
            bad[entry.file] = reason
    return good, bad


def verify_checkpoints(ckpt_dir: str | os.PathLike[str]) -> tuple[list[str], list[str]]:
    """(files that match the manifest, files that are corrupt, truncated or missing), oldest first.

    A malformed manifest raises ManifestError. Files not listed in the manifest are neither: they may
    be a checkpoint still being written or one being pruned.
    """
    good, bad = checkpoint_problems(ckpt_dir)
    return [e.file for e in good], sorted(bad)


def latest_valid(ckpt_dir: str | os.PathLike[str]) -> tuple[CheckpointEntry | None, dict[str, str]]:
    """The newest checkpoint that verifies, plus the problems found on the way to it."""
    good, bad = checkpoint_problems(ckpt_dir)
    return (good[-1] if good else None), bad


def add_checkpoint(
    ckpt_dir: str | os.PathLike[str], entry: CheckpointEntry, keep: int
) -> list[str]:
    """Record `entry` as the latest, keep the newest `keep`, rewrite the manifest atomically.

    Returns the files dropped from the manifest; the caller deletes them after this returns, so a
    sync never sees a manifest naming a file that is already gone.
    """
    old = [e for e in manifest_entries(ckpt_dir) if e.file != entry.file and e.step < entry.step]
    entries = old + [entry]
    kept = entries[-keep:] if keep > 0 else entries
    dropped = [e.file for e in entries if e not in kept]
    exports = read_manifest(ckpt_dir).get(contract.MANIFEST_EXPORTS) or []
    atomic_write_json(
        Path(ckpt_dir) / MANIFEST_NAME,
        {contract.MANIFEST_LATEST: entry.file, contract.MANIFEST_ENTRIES: [asdict(e) for e in kept],
         contract.MANIFEST_KEEP: keep, contract.MANIFEST_EXPORTS: exports},
    )
    return dropped


def set_export(ckpt_dir: str | os.PathLike[str], entry: CheckpointEntry) -> list[str]:
    """Record `entry` as the weights-only export (one at a time: the final step's); returns the
    files of the exports it replaces, for the caller to delete after this returns."""
    manifest = read_manifest(ckpt_dir)
    old = [str(e.get("file")) for e in manifest.get(contract.MANIFEST_EXPORTS) or [] if isinstance(e, dict)]
    atomic_write_json(Path(ckpt_dir) / MANIFEST_NAME, {**manifest, contract.MANIFEST_EXPORTS: [asdict(entry)]})
    return [f for f in old if f != entry.file]


def new_entry(path: str | os.PathLike[str], step: int, sha256: str | None = None) -> CheckpointEntry:
    p = Path(path)
    return CheckpointEntry(
        file=p.name, step=step, sha256=sha256 or sha256_file(p), bytes=p.stat().st_size, time=time.time()
    )


def remove_files(ckpt_dir: str | os.PathLike[str], files: Iterable[str]) -> None:
    for name in files:
        try:
            (Path(ckpt_dir) / name).unlink()
        except FileNotFoundError:
            pass
