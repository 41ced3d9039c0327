"""The run's artifacts as the card shows them: the checkpoint (re-hashed), the sample, the shutdown
proof, and the tail of job.log."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from orchestrator.proof.reading import num, read_json, read_text, rel_path
from orchestrator.proof.shutdown import iso, sha256_bytes
from trainer.manifest import sha256_file

SAMPLE_LINES = 40
JOB_LOG_TAIL = 20
_CKPT_LINE_RE = re.compile(
    r"^\s*(?:\[[^\]]*\]\s*)?checkpoint:\s*(?P<file>\S+)\s+sha256\s+(?P<sha>[0-9a-f]{64})"
)
_ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def checkpoint_section(out: Path, log_lines: list[str]) -> dict[str, Any]:
    """The latest checkpoint MANIFEST.json names, re-hashed here; the log's own checkpoint line."""
    ckdir = out / "checkpoints"
    manifest, problem = read_json(ckdir / "MANIFEST.json")
    section: dict[str, Any] = {
        "status": "missing",
        "manifest": "present" if isinstance(manifest, dict) else "missing",
        "problem": problem,
        "file": None,
        "path": None,
        "bytes": None,
        "sha256": None,
        "manifest_sha256": None,
        "manifest_bytes": None,
        "step": None,
        "matches_manifest": None,
        "log_line": None,
        "manifest_entries": 0,
        "home": [],  # every checkpoint / weights-only export the manifest lists that is here
    }
    logged = [ln.strip() for ln in log_lines if _CKPT_LINE_RE.match(ln)]
    section["log_line"] = logged[-1] if logged else None
    if not isinstance(manifest, dict):
        stray = sorted(p.name for p in ckdir.glob("*.pt")) if ckdir.is_dir() else []
        if stray:
            section["problem"] = (problem or "MANIFEST.json is missing") + (
                f"; unverified checkpoint files: {', '.join(stray)}"
            )
        return section
    entries = [e for e in manifest.get("checkpoints") or [] if isinstance(e, dict)]
    section["manifest_entries"] = len(entries)
    section["home"] = home_files(ckdir, entries, manifest.get("exports") or [])
    latest = manifest.get("latest") or (entries[-1].get("file") if entries else None)
    if not latest:
        section["problem"] = "MANIFEST.json names no checkpoint"
        return section
    entry = next((e for e in reversed(entries) if e.get("file") == latest), {})
    section.update(
        file=str(latest),
        manifest_sha256=entry.get("sha256"),
        manifest_bytes=entry.get("bytes"),
        step=entry.get("step"),
    )
    _rehash(section, ckdir, str(latest), entry)
    return section


def home_files(ckdir: Path, entries: list[Any], exports: list[Any]) -> list[dict[str, Any]]:
    """What made it home: each listed checkpoint and weights-only export present here, oldest first."""
    found = []
    for kind, listed in (("checkpoint", entries), ("weights", exports)):
        for e in listed:
            name = str(e.get("file", "")) if isinstance(e, dict) else ""
            if name and "/" not in name and (ckdir / name).is_file():
                found.append({"file": name, "kind": kind, "step": e.get("step"), "bytes": (ckdir / name).stat().st_size})
    return found


def _rehash(section: dict[str, Any], ckdir: Path, latest: str, entry: dict[str, Any]) -> None:
    """Hash the manifest's latest checkpoint here and say whether it matches its entry (in `section`)."""
    path = (ckdir / latest).resolve()
    # The manifest came from the instance: never let it point the hash (or the card) outside the run.
    if ckdir.resolve() not in path.parents:
        section["problem"] = f"MANIFEST.json points outside checkpoints/: {latest!r}"
        return
    section["path"] = f"out/checkpoints/{path.name}"
    if not path.is_file():
        section["problem"] = f"{section['path']} is listed in MANIFEST.json but was not synced"
        return
    section["bytes"] = path.stat().st_size
    section["sha256"] = sha256_file(path)
    ok = section["sha256"] == entry.get("sha256") and (
        entry.get("bytes") is None or int(entry["bytes"]) == section["bytes"]
    )
    section["matches_manifest"] = ok
    section["status"] = "verified" if ok else "mismatch"
    if not entry:
        section["problem"] = f"MANIFEST.json has no entry for its latest file {latest}"
    elif not ok:
        section["problem"] = (
            f"{section['path']} does not match MANIFEST.json (sha256 {section['sha256']} "
            f"vs {entry.get('sha256')}, {section['bytes']} vs {entry.get('bytes')} bytes)"
        )


def sample_section(out: Path) -> dict[str, Any]:
    text = read_text(out / "sample.txt")
    if text is None:
        return {"status": "missing", "lines": [], "total_lines": 0, "truncated": False}
    lines = text.splitlines()
    return {
        "status": "present" if text.strip() else "empty",
        "lines": lines[:SAMPLE_LINES],
        "total_lines": len(lines),
        "truncated": len(lines) > SAMPLE_LINES,
    }


def proof_section(proof_path: Path | None, run_dir: Path) -> dict[str, Any]:
    section: dict[str, Any] = {"status": "missing", "path": None, "sha256": None, "verified": None}
    if proof_path is None:
        return section
    proof_path = Path(proof_path)
    section["path"] = rel_path(proof_path, run_dir)
    try:
        data = proof_path.read_bytes()
    except OSError:
        return section
    section["sha256"] = sha256_bytes(data)
    try:
        proof = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        section.update(status="unreadable", problem=f"not valid JSON: {e}")
        return section
    if not isinstance(proof, dict):
        section.update(status="unreadable", problem="not a JSON object")
        return section
    describe = [d for d in proof.get("final_describe") or [] if isinstance(d, dict)]
    section.update(
        status="present",
        schema_version=proof.get("schema_version"),
        run_id=proof.get("run_id"),
        verified=proof.get("verified") is True,
        verified_at=iso(num(proof.get("verified_at"))),
        instance_ids=proof.get("instance_ids") or [],
        instance_states={str(d.get("id", i)): d.get("state") for i, d in enumerate(describe)},
        zero_match=not (proof.get("zero_match_listing") or []),
        terminate_requests=len(proof.get("terminate_requests") or []),
        deleted_resources=proof.get("deleted_resources") or [],
        prev_sha256=proof.get("prev_sha256"),
        contradictions=proof.get("contradictions") or [],
        estimated_cost_usd=(proof.get("cost") or {}).get("estimated_usd"),
        attempts=[{k: a.get(k) for k in ("attempt", "offer", "instance_id", "reason", "cost_usd")}
                  for a in proof.get("attempts") or [] if isinstance(a, dict)],
        egress=(proof.get("billing") or {}).get("egress") if isinstance(proof.get("billing"), dict) else None,
        cleanup_failures=[{k: f.get(k) for k in ("error", "left", "bills", "remove")}
                          for f in proof.get("cleanup_failures") or [] if isinstance(f, dict)],
    )
    return section


def job_log_section(run_dir: Path) -> dict[str, Any]:
    text = read_text(run_dir / "job.log")
    if text is None:
        return {"status": "missing", "tail": [], "traceback": False}
    # job.log is the job's terminal output: drop progress-bar escapes and redraws before quoting it
    lines = [ln for ln in _ANSI_RE.sub("", text).splitlines() if ln.strip()]
    return {
        "status": "present",
        "tail": lines[-JOB_LOG_TAIL:],
        "traceback": "Traceback (most recent call last)" in text,
    }


