"""shutdown_proof.json: what teardown asked for, what the provider answered, and what it lists now.

A proof is canonical JSON (sorted keys, indent 2, UTF-8, trailing newline), redacted, written
atomically. The ledger stores each proof's SHA-256 (of the exact file bytes) and the SHA-256 of the
proof recorded before it; the proof itself carries that previous hash too. Together they form a
hash chain: editing any proof file later, or any ledger row, shows up in :func:`verify_proof_chain`.
See docs/EVIDENCE.md for the format.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from orchestrator.redact import redact
from trainer.manifest import atomic_write_bytes, sha256_file

SCHEMA = "gpurun.shutdown_proof"
SCHEMA_VERSION = 1
PROOF_FILENAME = "shutdown_proof.json"
# States after which a provider no longer bills (providers/base.py GONE_STATES; kept literal so the
# proof stays importable without the providers package).
GONE_STATES = ("terminated", "not_found")


@dataclass
class TerminateRequest:
    """One terminate call: when it was sent, what came back (raw), or the error it raised."""

    instance_id: str
    requested_at: float
    response: Any
    error: str | None = None
    responded_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "instance_id": self.instance_id,
            "requested_at": self.requested_at,
            "requested_at_iso": iso(self.requested_at),
            "responded_at": self.responded_at,
            "responded_at_iso": iso(self.responded_at),
            "response": jsonable(self.response),
            "error": self.error,
        }


def billing_ended_at(requests: list[TerminateRequest], ids: list[str], verified_at: float) -> float:
    """When the last of `ids` stopped billing (what a run's cost is counted to): its first terminate call the provider accepted
    (the verification only confirms it); one never accepted bills until the verification."""
    ends = []
    for iid in ids:
        accepted = [r.responded_at or r.requested_at for r in requests if r.instance_id == iid and r.error is None]
        ends.append(min(accepted) if accepted else verified_at)
    return min(verified_at, max(ends, default=verified_at))


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    try:
        return datetime.fromtimestamp(float(ts), tz=timezone.utc).isoformat(timespec="milliseconds")
    except (OverflowError, OSError, ValueError):
        return None


def jsonable(obj: Any) -> Any:
    """Convert to plain JSON types (dataclasses, paths, sets, bytes, NaN) so every proof serialises."""
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else str(obj)  # strict JSON has no NaN/Infinity
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted((jsonable(v) for v in obj), key=repr)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        if hasattr(obj, "to_dict"):
            return jsonable(obj.to_dict())
        return jsonable(dataclasses.asdict(obj))
    if isinstance(obj, bytes):
        return obj.decode("utf-8", errors="replace")
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return str(obj)


def canonical_json(obj: Any) -> bytes:
    """The one byte representation whose SHA-256 goes into the ledger."""
    text = json.dumps(jsonable(obj), sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False)
    return (text + "\n").encode("utf-8")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _instance_state(entry: Mapping[str, Any]) -> str | None:
    state = entry.get("state")
    return str(state) if state is not None else None


def _contradictions(run_id: str, describe: list[Any], listing: list[Any], verified: bool,
                    verified_at: float | None) -> list[str]:
    """What in the proof's own contents says the instances are not verified gone."""
    found: list[str] = []
    if listing:
        ids = ", ".join(str(d.get("id", "?")) for d in listing if isinstance(d, Mapping))
        found.append(f"the listing for run {run_id} still has {len(listing)} match(es): {ids}")
    for entry in describe:
        if isinstance(entry, Mapping):
            state = _instance_state(entry)
            if state is not None and state not in GONE_STATES:
                found.append(f"instance {entry.get('id', '?')} is described as {state!r}, not gone")
    if verified and verified_at is None:
        found.append("verified without a verification time")
    return found


def _final_states(describe: list[Any]) -> dict[str, str | None]:
    return {str(d.get("id", i)): _instance_state(d) for i, d in enumerate(describe) if isinstance(d, Mapping)}


def _cost(estimated_cost_usd: float | None, max_usd: float | None) -> dict[str, Any]:
    cost = None if estimated_cost_usd is None else float(estimated_cost_usd)
    cap = None if max_usd is None else float(max_usd)
    within = None if cost is None or cap is None else cost <= cap + 1e-9
    return {
        "estimated_usd": cost,
        "max_usd": cap,
        "within_cap": within,
        "headroom_usd": None if within is None or cap is None or cost is None else round(cap - cost, 6),
    }


def cleanup_failure(provider: str, tag: str, exc: BaseException, at: float) -> dict[str, Any]:
    """A cleanup call that raised after the instances were verified gone: what may be left, what it
    bills, and the command that removes it (the proof, the card and `gpurun audit` show it)."""
    return {
        "tag": tag,
        "error": f"{type(exc).__name__}: {exc}",
        "at": at,
        "left": (f"whatever {provider}'s cleanup had not yet deleted for run {tag}: the resources made for the run"
                 f" besides its instances (SSH key pairs, security groups, placement groups, startup scripts,"
                 f" detached volumes), tagged or named gpurun-{tag}"),
        "bills": ("a detached volume bills for its storage until it is deleted (`gpurun audit` lists it with its"
                  " USD/h); key pairs, security and placement groups and startup scripts bill nothing"),
        "remove": f"gpurun audit --cleanup --provider {provider}",
    }


def build_proof(
    *,
    run_id: str,
    provider: str,
    instance_ids: list[str],
    terminate_requests: list[TerminateRequest],
    final_describe: list[dict],
    zero_match_listing: list[dict],
    deleted_resources: list[str],
    estimated_cost_usd: float | None,
    max_usd: float | None,
    billing: dict,
    verified: bool,
    prev_sha256: str | None,
    started_at: float | None,
    verified_at: float | None,
    notes: list[str] | None = None,
    attempts: list[dict] | None = None,
    cleanup_failures: list[dict] | None = None,
) -> dict:
    """Assemble the proof dict (redacted). ``verified`` is what the caller saw, but the proof never
    claims more than its own contents show: with a non-empty zero-match listing or a described
    instance that is not gone, ``verified`` is recorded as false and ``contradictions`` says why.
    Callers should take ``proof["verified"]`` as the outcome."""
    if not run_id or not provider:
        raise ValueError(f"build_proof: {'run_id' if not run_id else 'provider'} is empty")
    describe, listing = [jsonable(d) for d in final_describe], [jsonable(d) for d in zero_match_listing]
    contradictions = _contradictions(run_id, describe, listing, verified, verified_at)
    claimed = bool(verified)
    verified = claimed and not contradictions
    proof: dict[str, Any] = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "provider": provider,
        "instance_ids": [str(i) for i in instance_ids],
        "started_at": started_at,
        "started_at_iso": iso(started_at),
        "terminate_requests": [jsonable(r) for r in terminate_requests],
        "final_describe": describe,
        "final_states": _final_states(describe),
        "zero_match_listing": listing,
        "zero_match": not listing,
        "deleted_resources": [str(r) for r in deleted_resources],
        "cost": _cost(estimated_cost_usd, max_usd),
        "billing": jsonable(billing or {}),
        "verified": verified,
        "verified_claimed": claimed,
        "contradictions": contradictions,
        "checked_at": verified_at,  # when the caller last looked, verified or not
        "verified_at": verified_at if verified else None,
        "verified_at_iso": iso(verified_at) if verified else None,
        "prev_sha256": prev_sha256,
        "notes": list(notes or []),
        # Offer fallback: each failed boot, verified gone before the next offer was tried; and each
        # cleanup call that raised after the verification (`cleanup_failure`): the proof stays verified.
        "attempts": [jsonable(a) for a in attempts or []],
        "cleanup_failures": [jsonable(f) for f in cleanup_failures or []],
    }
    return redact(proof)


def write_proof(run_dir: Path, proof: dict) -> tuple[Path, str]:
    """Write ``run_dir/shutdown_proof.json`` atomically; return (path, sha256 of the exact bytes).

    A proof that a ledger row may already point to is never lost: when a different proof is already
    there (a teardown retried), it is first kept as ``shutdown_proof.<sha256[:16]>.json``, which
    :func:`verify_proof_chain` finds by the recorded hash."""
    run_dir = Path(run_dir)
    path = run_dir / PROOF_FILENAME
    data = canonical_json(redact(proof))
    digest = sha256_bytes(data)
    if path.exists():
        old = path.read_bytes()
        old_digest = sha256_bytes(old)
        if old_digest != digest:
            archive = archived_path(path, old_digest)
            if not archive.exists():
                atomic_write_bytes(archive, old)
    atomic_write_bytes(path, data)
    return path, digest


def archived_path(path: Path, sha256: str) -> Path:
    return Path(path).with_name(f"{Path(path).stem}.{sha256[:16]}.json")


def _row_get(row: Any, key: str) -> Any:
    try:
        return row[key]
    except (KeyError, IndexError, TypeError):
        return getattr(row, key, None)


def _recorded_bytes(label: str, path: Path, recorded: str) -> tuple[bytes | None, str | None]:
    """The proof's bytes, from the file or its archived copy, when one hashes to `recorded`; else why not."""
    for candidate in (path, archived_path(path, str(recorded))):
        try:
            blob = candidate.read_bytes()
        except OSError:
            continue
        if sha256_bytes(blob) == recorded:
            return blob, None
    if not path.exists():
        return None, f"{label}: proof file is missing: {path}"
    try:
        actual = sha256_file(path)
    except OSError as e:
        return None, f"{label}: cannot read {path}: {e}"
    return None, (f"{label}: {path} was modified after it was recorded "
                  f"(ledger sha256 {recorded}, file sha256 {actual})")


def _content_problems(label: str, path: Path, data: bytes, run_id: Any, row_prev: str | None) -> list[str]:
    """What the proof file itself contradicts in its ledger row (run, chain link, format)."""
    try:
        content = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return [f"{label}: {path} is not valid JSON: {e}"]
    if not isinstance(content, dict) or content.get("schema") != SCHEMA:
        return [f"{label}: {path} is not a {SCHEMA} document"]
    problems: list[str] = []
    if content.get("run_id") != run_id:
        problems.append(f"{label}: {path} is the proof of run {content.get('run_id')}")
    if (content.get("prev_sha256") or None) != row_prev:
        problems.append(
            f"{label}: the file links to {content.get('prev_sha256') or 'nothing'} "
            f"but the ledger row says {row_prev or 'nothing'}"
        )
    return problems


def verify_proof_chain(proofs: Sequence[Mapping[str, Any]], *, base_dir: Path | None = None) -> list[str]:
    """Check ledger proof rows (oldest first: run_id, sha256, path, prev_sha256) against the files.

    For each row: the file exists and hashes to the recorded sha256 (else it was edited, replaced or
    removed), it parses, names the same run, and carries the same prev_sha256 as the row; and each
    row links to the row before it (the first links to nothing). Returns problems; empty = intact."""
    problems: list[str] = []
    prev: str | None = None
    for n, row in enumerate(proofs, start=1):
        run_id = _row_get(row, "run_id")
        recorded = _row_get(row, "sha256")
        raw_path = _row_get(row, "path")
        row_prev = _row_get(row, "prev_sha256") or None
        label = f"proof #{n} (run {run_id})"
        if not recorded or not raw_path:
            problems.append(f"{label}: ledger row lacks sha256 or path")
            prev = recorded or prev
            continue
        if row_prev != prev:
            want = prev or "nothing (first proof)"
            problems.append(
                f"{label}: ledger row links to {row_prev or 'nothing'} but the previous proof is {want}"
            )
        path = Path(raw_path)
        if not path.is_absolute() and base_dir is not None:
            path = Path(base_dir) / path
        data, problem = _recorded_bytes(label, path, recorded)
        if data is None:
            problems.append(str(problem))
        else:
            problems += _content_problems(label, path, data, run_id, row_prev)
        prev = recorded
    return problems
