"""A pull's checkpoint verification: the instance's MANIFEST.json, each listed file's SHA-256, the local manifest.

Also what every pull pass shares (the staging directory, `SyncError`, `Moved`). The passes that
move the files are transport/pull_rsync.py and transport/pull_tree.py; transport/pull.py drives them.
Only files listed in `out/checkpoints/MANIFEST.json` are complete checkpoints: each is checked
against its SHA-256, a mismatch is deleted (to be pulled again), and the local MANIFEST.json lists
what verified here.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.manifest import sha256_file

log = logging.getLogger(__name__)

STAGING = ".gpurun-sync"  # under the local run dir: the fetched remote manifest + hash cache
CKPT = "out/checkpoints"
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # no paths, no rsync wildcards


class SyncError(Exception):
    """A sync failed for good (after retries); the message says why."""


@dataclass
class Moved:
    """What one pass transferred."""

    files: int = 0
    bytes: int = 0


def parse_manifest(data: bytes | None) -> dict[str, Any]:
    if not data:
        return {"latest": None, "checkpoints": []}
    try:
        m = json.loads(data)
        if not isinstance(m, dict) or not isinstance(m.get("checkpoints", []), list):
            raise ValueError("not a manifest")
        return m
    except ValueError as e:
        raise SyncError(f"remote {CKPT}/MANIFEST.json is not valid JSON ({e})") from e


def listed_files(manifest: dict[str, Any]) -> list[str]:
    return [str(c.get("file")) for c in manifest.get("checkpoints", []) if SAFE_NAME.match(str(c.get("file", "")))]


def verify_checkpoints(local_dir: Path, manifest_bytes: bytes | None) -> tuple[list[str], list[str]]:
    """Check every listed checkpoint against its SHA-256; delete mismatches; write the local manifest."""
    manifest = parse_manifest(manifest_bytes)
    ckpt = local_dir / CKPT
    cache_path = local_dir / STAGING / "verified.json"
    cache: dict[str, list[Any]] = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    verified: list[str] = []
    rejected: list[str] = []
    good_entries = []
    for entry in manifest.get("checkpoints", []):
        name = str(entry.get("file", ""))
        if not SAFE_NAME.match(name):
            rejected.append(name)
            continue
        p = ckpt / name
        if not p.is_file():
            rejected.append(name)
            continue
        if _hash_ok(p, entry, cache):
            verified.append(name)
            good_entries.append(entry)
        else:
            log.warning("checkpoint %s failed its SHA-256 check; deleting it to pull it again", name)
            p.unlink()
            cache.pop(name, None)
            rejected.append(name)
    cache_path.write_text(json.dumps(cache))
    if manifest_bytes is not None:
        write_local_manifest(ckpt, manifest, manifest_bytes, good_entries, rejected)
    return verified, rejected


def _hash_ok(path: Path, entry: dict[str, Any], cache: dict[str, list[Any]]) -> bool:
    """The file matches its manifest SHA-256 (a file hashed before and untouched since is not rehashed)."""
    st = path.stat()
    sig = [entry.get("sha256"), st.st_size, st.st_mtime_ns]
    if cache.get(path.name) == sig:  # hashed before and untouched since: skip rehashing big files
        return True
    ok = sha256_file(path) == entry.get("sha256")
    if ok:
        cache[path.name] = sig
    return ok


def write_local_manifest(ckpt: Path, remote: dict[str, Any], raw: bytes, good: list[dict[str, Any]],
                         rejected: list[str]) -> None:
    """Local MANIFEST.json = what verified here, plus older local entries the instance has rotated away."""
    local_path = ckpt / "MANIFEST.json"
    old: list[dict[str, Any]] = []
    if local_path.exists():
        try:
            old = json.loads(local_path.read_text()).get("checkpoints", [])
        except ValueError:
            old = []
    names = {e.get("file") for e in remote.get("checkpoints", [])}
    kept = [e for e in old if e.get("file") not in names and (ckpt / str(e.get("file"))).is_file()]
    if not rejected and not kept:
        data = raw  # byte-identical to the instance's manifest
    else:
        entries = sorted(kept + good, key=lambda e: (e.get("step") or 0))
        files = {e.get("file") for e in entries}
        latest = remote.get("latest") if remote.get("latest") in files else (entries[-1]["file"] if entries else None)
        data = (json.dumps({**remote, "latest": latest, "checkpoints": entries}, indent=1) + "\n").encode()
    ckpt.mkdir(parents=True, exist_ok=True)
    tmp = ckpt / ".MANIFEST.json.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, local_path)
