"""One run's page: its line, the phase timeline, the sync history, the attempts and what each cost,
the shutdown proof with the ledger's proof chain checked, and the evidence card.

Every figure comes from where the CLI takes it: the ledger's `timings` (`gpurun status --timings`),
its events, the launch record's attempts (run.attempts), `verify_proof_chain` (`gpurun evidence
--check-chain`) and the EVIDENCE.md the run's teardown wrote. The page never writes: a card that is
not there yet says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.plan.record import RunRecord, is_orphan
from orchestrator.proof.reading import num, read_json
from orchestrator.proof.shutdown import PROOF_FILENAME, sha256_bytes, verify_proof_chain
from orchestrator.run.attempts import attempts_usd
from orchestrator.state import phases
from orchestrator.state.ledger import Ledger
from orchestrator.state.rows import Run

EVENTS_SHOWN = 200  # the newest; a long run's periodic syncs would make the page endless


@dataclass(frozen=True)
class Segment:
    phase: str
    start: float
    seconds: float
    failed: bool


@dataclass(frozen=True)
class Attempt:
    label: str  # "1 (boot)", "current"
    offer: str
    instance_id: str
    reason: str
    cost_usd: float | None


def timeline(ledger: Ledger, run: Run) -> list[Segment]:
    return [Segment(phase, start, seconds, phases.Phase(phase).is_failed())
            for phase, start, seconds in ledger.timings(run.run_id)]


def attempts(run: Run, spent: float) -> tuple[list[Attempt], float]:
    """Every earlier attempt (a failed boot, a preempted instance) with its cost, then the current
    one with the rest of what the run spent; and what the earlier ones cost together."""
    if is_orphan(run):
        return [], 0.0
    record = RunRecord.of_run(run)
    out = [Attempt(f"{a.get('attempt', i + 1)} ({a.get('cause', 'boot')})", str(a.get("offer") or "-"),
                   str(a.get("instance_id") or "-"), str(a.get("reason") or ""), num(a.get("cost_usd")))
           for i, a in enumerate(record.attempts)]
    earlier = attempts_usd(record.attempts)
    offer = record.offer
    out.append(Attempt("current" if run.open else "last", f"{offer.gpu} x{offer.gpu_count} {offer.instance_type}"
                       f" {offer.total_usd_per_hour:.4f} USD/h", "-", "", max(0.0, spent - earlier)))
    return out, earlier


def proof(ledger: Ledger, run: Run) -> dict[str, Any]:
    """The run's shutdown proof file, its ledger rows, and the whole chain checked."""
    chain = ledger.proofs()
    problems = verify_proof_chain(chain)
    path = Path(run.run_dir) / PROOF_FILENAME
    content, problem = read_json(path) if run.run_dir else (None, None)
    sha = None
    if run.run_dir and path.is_file():
        sha = sha256_bytes(path.read_bytes())
    doc = content if isinstance(content, dict) else {}
    return {
        "present": bool(doc), "problem": problem, "sha256": sha,
        "verified": doc.get("verified") is True, "verified_at_iso": doc.get("verified_at_iso"),
        "instance_ids": doc.get("instance_ids") or [], "final_states": doc.get("final_states") or {},
        "zero_match": doc.get("zero_match"), "contradictions": doc.get("contradictions") or [],
        "terminate_requests": len(doc.get("terminate_requests") or []),
        "prev_sha256": doc.get("prev_sha256"),
        "rows": [r for r in chain if r["run_id"] == run.run_id],
        "recorded": any(r["run_id"] == run.run_id and r["sha256"] == sha for r in chain),
        "chain_len": len(chain), "chain_ok": not problems, "chain_problems": problems,
    }


def events(ledger: Ledger, run: Run) -> list[dict[str, Any]]:
    """The newest events, each with its payload as one line (the ledger stored it redacted)."""
    shown = []
    for e in ledger.events(run.run_id)[-EVENTS_SHOWN:]:
        payload = ", ".join(f"{k}={v}" for k, v in sorted(e.payload.items()))
        shown.append({"time": e.time, "kind": e.phase, "phase": phases.is_phase(e.phase), "payload": payload[:400]})
    return shown


def evidence_markdown(run: Run) -> str | None:
    if not run.run_dir:  # never a file of the server's own working directory
        return None
    path = Path(run.run_dir) / "EVIDENCE.md"
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
