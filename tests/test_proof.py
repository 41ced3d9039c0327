"""shutdown_proof.json: content, canonical bytes, atomic write, and the hash chain over the ledger."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from orchestrator.proof.shutdown import (
    PROOF_FILENAME,
    SCHEMA_VERSION,
    TerminateRequest,
    build_proof,
    verify_proof_chain,
    write_proof,
)
from orchestrator.redact import clear_secrets, register_secret

T0 = 1_760_000_000.0


def make_proof(run_id: str = "run-abc", prev: str | None = None, **over: Any) -> dict:
    args: dict[str, Any] = dict(
        run_id=run_id,
        provider="runpod",
        instance_ids=["pod-1"],
        terminate_requests=[
            TerminateRequest("pod-1", T0 + 100.0, {"data": {"podTerminate": None}}, responded_at=T0 + 100.4),
            TerminateRequest("pod-1", T0 + 103.0, None, error="pod not found to terminate"),
        ],
        final_describe=[{"id": "pod-1", "provider": "runpod", "state": "not_found", "raw": {}}],
        zero_match_listing=[],
        deleted_resources=["sshkey:gpurun-run-abc"],
        estimated_cost_usd=0.0412,
        max_usd=3.0,
        billing={"increment_s": 1, "minimum_s": 0, "usd_per_hour": 0.69, "source": "runpod docs"},
        verified=True,
        prev_sha256=prev,
        started_at=T0,
        verified_at=T0 + 104.0,
    )
    args.update(over)
    return build_proof(**args)


def test_proof_holds_every_required_field() -> None:
    p = make_proof(notes=["second terminate answered not found: already gone"])
    assert p["schema"] == "gpurun.shutdown_proof" and p["schema_version"] == SCHEMA_VERSION
    assert (p["run_id"], p["provider"], p["instance_ids"]) == ("run-abc", "runpod", ["pod-1"])
    req = p["terminate_requests"]
    assert [r["requested_at"] for r in req] == [T0 + 100.0, T0 + 103.0]
    assert req[0]["response"] == {"data": {"podTerminate": None}} and req[0]["requested_at_iso"].startswith(
        "2025-"
    )
    assert req[1]["error"] == "pod not found to terminate"
    assert p["final_describe"][0]["state"] == "not_found" and p["final_states"] == {"pod-1": "not_found"}
    assert p["zero_match_listing"] == [] and p["zero_match"] is True
    assert p["deleted_resources"] == ["sshkey:gpurun-run-abc"]
    assert p["cost"] == {"estimated_usd": 0.0412, "max_usd": 3.0, "within_cap": True, "headroom_usd": 2.9588}
    assert p["billing"]["usd_per_hour"] == 0.69
    assert p["verified"] is True and p["verified_at"] == T0 + 104.0 and p["contradictions"] == []
    assert p["prev_sha256"] is None and p["started_at"] == T0
    assert p["notes"] == ["second terminate answered not found: already gone"]


def test_unverified_proof_is_recorded_as_such() -> None:
    p = make_proof(verified=False, final_describe=[{"id": "pod-1", "state": "running"}])
    assert p["verified"] is False and p["verified_at"] is None and p["checked_at"] == T0 + 104.0


@pytest.mark.parametrize(
    "over",
    [
        {"zero_match_listing": [{"id": "pod-2", "name": "gpurun-run-abc", "state": "running"}]},
        {"final_describe": [{"id": "pod-1", "state": "stopped"}]},  # stopped still bills for its volume
        {"verified_at": None},
    ],
)
def test_claimed_verification_that_the_contents_contradict_is_not_recorded_as_verified(over: dict) -> None:
    p = make_proof(**over)
    assert p["verified"] is False and p["verified_claimed"] is True
    assert p["contradictions"]


def test_over_cap_cost_is_visible() -> None:
    p = make_proof(estimated_cost_usd=3.5, max_usd=3.0)
    assert p["cost"]["within_cap"] is False and p["cost"]["headroom_usd"] == -0.5


def test_secrets_in_provider_responses_are_redacted_in_the_file(tmp_path: Path) -> None:
    register_secret("super-secret-runpod-key-123")
    try:
        p = make_proof(
            final_describe=[
                {"id": "pod-1", "state": "terminated", "raw": {"env": {"RUNPOD_API_KEY": "another-key-456"}}}
            ],
            terminate_requests=[TerminateRequest("pod-1", T0, {"echo": "key super-secret-runpod-key-123"})],
        )
        path, _ = write_proof(tmp_path, p)
    finally:
        clear_secrets()
    text = path.read_text()
    assert "super-secret-runpod-key-123" not in text and "another-key-456" not in text
    assert '"RUNPOD_API_KEY": "***"' in text


def test_write_is_canonical_and_hash_is_of_the_exact_bytes(tmp_path: Path) -> None:
    p = make_proof()
    path, sha = write_proof(tmp_path, p)
    assert path == tmp_path / PROOF_FILENAME
    data = path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == sha
    assert (
        data == (json.dumps(json.loads(data), sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()
    )
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]  # no temp file left behind
    # the same proof written again gives the same bytes and hash
    assert write_proof(tmp_path, p) == (path, sha)


def test_non_json_values_do_not_break_the_write(tmp_path: Path) -> None:
    p = make_proof(
        billing={"rate": float("nan"), "path": tmp_path, "tags": {"b", "a"}}, estimated_cost_usd=0.1
    )
    path, sha = write_proof(tmp_path, p)
    loaded = json.loads(path.read_text())
    assert loaded["billing"] == {"rate": "nan", "path": str(tmp_path), "tags": ["a", "b"]}


def _chain(tmp_path: Path, n: int) -> list[dict]:
    rows: list[dict] = []
    prev = None
    for i in range(n):
        run_dir = tmp_path / f"run-{i}"
        path, sha = write_proof(run_dir, make_proof(run_id=f"run-{i}", prev=prev))
        rows.append({"run_id": f"run-{i}", "sha256": sha, "path": str(path), "prev_sha256": prev})
        prev = sha
    return rows


def test_intact_chain_has_no_problems(tmp_path: Path) -> None:
    rows = _chain(tmp_path, 3)
    assert verify_proof_chain(rows) == []
    assert verify_proof_chain([]) == []


def test_a_later_edit_of_a_proof_file_is_detected(tmp_path: Path) -> None:
    rows = _chain(tmp_path, 3)
    path = Path(rows[1]["path"])
    doc = json.loads(path.read_text())
    doc["verified"] = True
    doc["cost"]["estimated_usd"] = 0.01  # someone "fixes" the spend after the fact
    path.write_text(json.dumps(doc, sort_keys=True, indent=2) + "\n")
    problems = verify_proof_chain(rows)
    assert len(problems) == 1
    assert "run-1" in problems[0] and "modified" in problems[0]


def test_a_whitespace_only_edit_is_detected(tmp_path: Path) -> None:
    rows = _chain(tmp_path, 2)
    path = Path(rows[0]["path"])
    path.write_bytes(path.read_bytes() + b"\n")
    assert any("run-0" in p and "modified" in p for p in verify_proof_chain(rows))


def test_missing_file_broken_link_and_forged_ledger_row(tmp_path: Path) -> None:
    rows = _chain(tmp_path, 3)
    Path(rows[0]["path"]).unlink()
    assert any("missing" in p for p in verify_proof_chain(rows))

    rows = _chain(tmp_path / "b", 3)
    del rows[1]  # a proof row removed from the ledger: the next one no longer links to its predecessor
    assert any("run-2" in p and "previous proof" in p for p in verify_proof_chain(rows))

    rows = _chain(tmp_path / "c", 3)
    rows[2]["prev_sha256"] = "0" * 64  # ledger row edited: disagrees with its predecessor and its file
    problems = verify_proof_chain(rows)
    assert any("ledger row links to" in p for p in problems)
    assert any("the file links to" in p for p in problems)


def test_a_file_swapped_between_runs_is_detected(tmp_path: Path) -> None:
    rows = _chain(tmp_path, 2)
    rows[1]["run_id"] = "run-other"
    assert any("is the proof of run run-1" in p for p in verify_proof_chain(rows))


def test_rewritten_proof_keeps_the_recorded_one(tmp_path: Path) -> None:
    # teardown retried: a first, unverified proof is recorded, then a verified one is written over it
    first_path, first_sha = write_proof(tmp_path, make_proof(verified=False))
    rows = [{"run_id": "run-abc", "sha256": first_sha, "path": str(first_path), "prev_sha256": None}]
    second_path, second_sha = write_proof(tmp_path, make_proof(prev=first_sha))
    rows.append(
        {"run_id": "run-abc", "sha256": second_sha, "path": str(second_path), "prev_sha256": first_sha}
    )
    assert second_path == first_path and first_sha != second_sha
    assert verify_proof_chain(rows) == []
    # the archived copy is protected by the hash too
    archived = tmp_path / f"shutdown_proof.{first_sha[:16]}.json"
    archived.write_text(archived.read_text().replace('"verified": false', '"verified": true'))
    assert any("run-abc" in p for p in verify_proof_chain(rows))


def test_relative_paths_resolve_against_base_dir(tmp_path: Path) -> None:
    rows = _chain(tmp_path, 2)
    for r in rows:
        r["path"] = str(Path(r["path"]).relative_to(tmp_path))
    assert verify_proof_chain(rows, base_dir=tmp_path) == []


def test_build_rejects_empty_identity() -> None:
    with pytest.raises(ValueError, match="run_id"):
        make_proof(run_id="")
