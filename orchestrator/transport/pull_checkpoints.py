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


DEFAULT_KEEP = 2  # checkpoints kept at home when the instance's manifest does not say (trainer keep_checkpoints)


class SyncError(Exception):
    """A sync failed for good (after retries); the message says why."""


class PullDeadline(SyncError):
    """The pull's own deadline came with it unfinished (never retried: the time is up)."""


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


def latest_of(manifest_bytes: bytes | None) -> str | None:
    """The checkpoint the instance's manifest names as its newest (None: none yet)."""
    latest = parse_manifest(manifest_bytes).get("latest")
    return str(latest) if latest else None  # an unsafe name is never pulled: never "home"


def keep_of(manifest_bytes: bytes | None) -> int | None:
    keep = parse_manifest(manifest_bytes).get("keep")
    return int(keep) if isinstance(keep, int) and keep > 0 else None


def export_entries(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The weights-only exports the manifest lists ("exports": same entry shape as a checkpoint)."""
    exports = manifest.get("exports", [])
    return [e for e in exports if isinstance(e, dict) and SAFE_NAME.match(str(e.get("file", "")))] \
        if isinstance(exports, list) else []


def wanted_files(manifest: dict[str, Any]) -> list[str]:
    """What a pull moves, in order: the weights-only exports first (a usable model even when the
    link runs out of time), then the newest checkpoint only: older ones the instance still keeps
    are not worth the link's time once a newer one exists."""
    listed = listed_files(manifest)
    latest = str(manifest.get("latest") or "")
    newest = [latest] if latest in listed else listed[-1:]
    return [str(e["file"]) for e in export_entries(manifest)] + newest


def verify_checkpoints(local_dir: Path, manifest_bytes: bytes | None) -> tuple[list[str], list[str]]:
    """Check every listed checkpoint against its SHA-256; delete mismatches; write the local manifest."""
    manifest = parse_manifest(manifest_bytes)
    ckpt = local_dir / CKPT
    cache_path = local_dir / STAGING / "verified.json"
    cache: dict[str, list[Any]] = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    verified: list[str] = []
    rejected: list[str] = []
    good_entries = []
    wanted = set(wanted_files(manifest))
    exports = export_entries(manifest)
    for entry in [*manifest.get("checkpoints", []), *exports]:
        name = str(entry.get("file", ""))
        if not SAFE_NAME.match(name):
            rejected.append(name)
            continue
        p = ckpt / name
        if not p.is_file():
            if name in wanted:  # an older one the pull left on the instance is not missing
                rejected.append(name)
            continue
        if _hash_ok(p, entry, cache):
            verified.append(name)
            if entry not in exports:
                good_entries.append(entry)
        else:
            log.warning("checkpoint %s failed its SHA-256 check; deleting it to pull it again", name)
            p.unlink()
            cache.pop(name, None)
            rejected.append(name)
    cache_path.write_text(json.dumps(cache))
    if manifest_bytes is not None:
        good_exports = [e for e in exports if e.get("file") in verified]
        write_local_manifest(ckpt, manifest, manifest_bytes, good_entries, good_exports,
                             keep_of(manifest_bytes) or DEFAULT_KEEP)
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
                         exports: list[dict[str, Any]], keep: int) -> None:
    """Local MANIFEST.json = what verified here, plus older local entries the instance has rotated
    away, the newest `keep` of them (the files of the rest are deleted: home keeps what the
    instance keeps); "exports" names the weights-only files that verified."""
    local_path = ckpt / "MANIFEST.json"
    old: list[dict[str, Any]] = []
    if local_path.exists():
        try:
            old = json.loads(local_path.read_text()).get("checkpoints", [])
        except ValueError:
            old = []
    names = {e.get("file") for e in good}
    kept = [e for e in old if e.get("file") not in names and (ckpt / str(e.get("file"))).is_file()]
    entries = sorted(kept + good, key=lambda e: (e.get("step") or 0))
    for dropped in entries[:-keep]:
        (ckpt / str(dropped.get("file"))).unlink(missing_ok=True)
    entries = entries[-keep:]
    files = {e.get("file") for e in entries}
    latest = remote.get("latest") if remote.get("latest") in files else (entries[-1]["file"] if entries else None)
    if entries == remote.get("checkpoints", []) and exports == export_entries(remote):
        data = raw  # byte-identical to the instance's manifest: everything it lists is here
    else:
        data = (json.dumps({**remote, "latest": latest, "checkpoints": entries, "exports": exports}, indent=1)
                + "\n").encode()
    ckpt.mkdir(parents=True, exist_ok=True)
    tmp = ckpt / ".MANIFEST.json.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, local_path)
