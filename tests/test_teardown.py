"""orchestrator.run.teardown.end: request -> verify -> record, against a provider that lies, refuses or races."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator.plan.launch import make_plan
from orchestrator.plan.options import LaunchOptions
from orchestrator.run import teardown as td
from orchestrator.run.controller import Controller
from orchestrator.state.ledger import Ledger
from orchestrator.state.phases import is_phase
from providers.base import Instance, Offer, Provider, ProviderError


class StubProvider(Provider):
    """The Provider interface over a dict of states. `lies` terminate calls answer and do nothing
    (docs/DESIGN.md, "Verified teardown": "a 200 from a terminate call proves nothing"); `refusals` raise first, like DataCrunch's
    "Can't discontinue a provisioning instance"; `late_listing` makes the listing after the checks
    show the instance again (a provider whose answers disagree)."""

    name = "stub"

    def __init__(self, states: dict[str, str], run_id: str, lies: int = 0, refusals: int = 0,
                 never: bool = False, late_listing: bool = False) -> None:
        self.states = dict(states)
        self.run_id = run_id
        self.lies, self.refusals, self.never, self.late_listing = lies, refusals, never, late_listing
        self.terminate_calls: list[str] = []
        self.cleaned: list[str] = []
        self.listings = 0
        self.verified_listing = False

    def offers(self, gpu: str | None = None, count: int = 1, spot: bool = False) -> list[Offer]:
        return []

    def create(self, spec: Any) -> Instance:
        raise NotImplementedError

    def get(self, instance_id: str) -> Instance:
        return Instance(id=instance_id, provider=self.name, state=self.states.get(instance_id, "not_found"),
                        run_id=self.run_id)

    def terminate(self, instance_id: str) -> dict[str, Any]:
        self.terminate_calls.append(instance_id)
        if self.refusals:
            self.refusals -= 1
            raise ProviderError("Can't discontinue a provisioning instance")
        if self.lies or self.never:
            self.lies = max(0, self.lies - 1)
            return {"status": 200}
        self.states[instance_id] = "terminated"
        return {"status": 200, "id": instance_id}

    def list_owned(self) -> list[Instance]:
        live = [self.get(i) for i, s in self.states.items() if s not in ("terminated", "not_found")]
        if self.late_listing and all(s == "terminated" for s in self.states.values()):
            self.listings += 1
            if self.listings > 1:  # the zero-match check passed once; the proof's own listing disagrees
                return [Instance(id="ghost", provider=self.name, state="running", run_id=self.run_id)]
        return live

    def self_destruct_command(self, instance: Instance) -> str:
        return "true"

    def cleanup(self, run_id: str) -> list[str]:
        self.cleaned.append(run_id)
        return [f"key:gpurun-{run_id}"]


RID = "20250101-000000-abcd"


def setup_run(ledger: Ledger, tmp_path: Path, instances: list[str]) -> None:
    ledger.create_run(RID, "stub", 1.0, {}, str(tmp_path / RID))
    ledger.add_hold(RID, "stub", 1.0)
    for iid in instances:
        ledger.add_instance(RID, "stub", iid, "running")
    ledger.set_phase(RID, "creating")


def target(ledger: Ledger, provider: StubProvider, tmp_path: Path, evidence: list[Any] | None = None) -> td.Target:
    def write_evidence(path: Path, cost: float | None, runtime: float | None) -> None:
        assert evidence is not None
        evidence.append((path, cost, runtime))

    return td.Target(
        ledger=ledger, provider=provider, run_id=RID, tag=RID, proof_dir=tmp_path / RID,
        record_phase=lambda phase, **payload: ledger.set_phase(RID, phase, **payload),
        max_usd=1.0, started_at=time.time() - 100.0, cost_at=lambda s: round(s, 0) * 0.001,
        billing={"usd_per_hour": 3.6}, evidence=write_evidence if evidence is not None else None,
    )


def phases(ledger: Ledger) -> list[str]:
    return [e.phase for e in ledger.events(RID) if is_phase(e.phase)]


def test_a_lying_terminate_is_asked_again_then_recorded(tmp_path: Path) -> None:
    ledger = Ledger()
    setup_run(ledger, tmp_path, ["i-1"])
    provider = StubProvider({"i-1": "running", "i-2": "running"}, RID, lies=2)  # i-2: an in-flight create
    evidence: list[Any] = []
    ended = td.end(target(ledger, provider, tmp_path, evidence), timeout_s=60)

    assert ended.instance_ids == ["i-1", "i-2"]  # the tag found the instance the ledger did not know
    assert [i.instance_id for i in ledger.instances(RID)] == ["i-1", "i-2"]
    assert provider.terminate_calls.count("i-1") >= 2  # the first answer was a lie: asked again
    assert provider.cleaned == [RID]
    proof = json.loads(ended.proof_path.read_text())
    assert proof["verified"] is True and proof["deleted_resources"] == [f"key:gpurun-{RID}"]
    assert len(proof["terminate_requests"]) == len(provider.terminate_calls)
    assert all(r["responded_at"] >= r["requested_at"] for r in proof["terminate_requests"])
    assert [r["sha256"] for r in ledger.proofs(RID)] == [ended.proof_sha256]
    # Settled at the proof's cost, the phase verified, then the evidence card.
    assert ledger.hold(RID)["settled_usd"] == pytest.approx(proof["cost"]["estimated_usd"])  # type: ignore[index]
    assert ended.cost_usd == proof["cost"]["estimated_usd"]
    assert phases(ledger)[-2:] == ["terminating", "verified"]
    assert evidence == [(ended.proof_path, ended.cost_usd, ended.runtime_s)]
    assert ledger.get_run(RID).cost_usd == ended.cost_usd  # type: ignore[union-attr]


def test_a_refusal_is_recorded_and_retried(tmp_path: Path) -> None:
    ledger = Ledger()
    setup_run(ledger, tmp_path, ["i-1"])
    provider = StubProvider({"i-1": "pending"}, RID, refusals=1)
    ended = td.end(target(ledger, provider, tmp_path), timeout_s=60)
    proof = json.loads(ended.proof_path.read_text())
    assert proof["terminate_requests"][0]["error"] == "Can't discontinue a provisioning instance"
    assert proof["terminate_requests"][-1]["error"] is None and proof["verified"] is True
    errors = [e.payload["error"] for e in ledger.events(RID) if e.phase == "terminate_request"]
    assert errors[0] and errors[-1] is None


def test_never_gone_is_never_verified(tmp_path: Path) -> None:
    ledger = Ledger()
    setup_run(ledger, tmp_path, ["i-1"])
    provider = StubProvider({"i-1": "running"}, RID, never=True)
    with pytest.raises(td.VerifyFailed, match=f"run {RID}: i-1 still not terminated.*gpurun teardown {RID}"):
        td.end(target(ledger, provider, tmp_path, []), timeout_s=1)
    run = ledger.get_run(RID)
    assert run is not None and run.phase == "failed_terminating" and run.open
    assert ledger.proofs() == [] and not (tmp_path / RID / "shutdown_proof.json").exists()
    assert ledger.hold(RID)["settled_at"] is None  # type: ignore[index]  # the hold stays: it may still bill
    # A retried teardown goes failed_terminating -> terminating again, and through to verified.
    provider.never = False
    td.end(target(ledger, provider, tmp_path), timeout_s=60)
    assert phases(ledger)[-4:] == ["terminating", "failed_terminating", "terminating", "verified"]


def test_the_proofs_own_reading_wins(tmp_path: Path) -> None:
    ledger = Ledger()
    setup_run(ledger, tmp_path, ["i-1"])
    provider = StubProvider({"i-1": "running"}, RID, late_listing=True)
    with pytest.raises(td.VerifyFailed, match="termination not verified"):
        td.end(target(ledger, provider, tmp_path), timeout_s=60)
    run = ledger.get_run(RID)
    assert run is not None and run.phase == "failed_terminating" and "ghost" in (run.error or "")
    assert ledger.proofs() == [] and not (tmp_path / RID / "shutdown_proof.json").exists()
    assert ledger.hold(RID)["settled_at"] is None  # type: ignore[index]


def test_controller_teardown_and_a_second_failure_go_through_end(tmp_path: Path) -> None:
    """Controller.teardown is a thin call of end(); _fail of a run already failed keeps its phase (no
    failed_X -> failed_X) and still tears down, proves, settles and writes the card."""
    ledger = Ledger()
    plan = make_plan(LaunchOptions(provider="local", max_usd=0.02, usd_per_hour=1.2, runs_dir=str(tmp_path)))
    controller = Controller.create(ledger, plan)
    rid = controller.run.run_id
    for phase in ("creating", "booting", "failed_booting"):
        ledger.set_phase(rid, phase, error="no capacity" if phase.startswith("failed") else None)
    controller.refresh()
    controller._fail(RuntimeError("the fallback failed too"))

    run = ledger.get_run(rid)
    assert run is not None and run.phase == "verified" and run.settled
    # (the card asks the provider for its own figure after verified: `reconciled` comes last)
    kinds = [e.phase for e in ledger.events(rid) if e.phase != "reconciled"]
    assert kinds[-3:] == ["error", "terminating", "verified"] and kinds.count("failed_booting") == 1
    assert run.error == "RuntimeError: the fallback failed too"
    (row,) = ledger.proofs(rid)
    assert Path(row["path"]) == tmp_path / rid / "shutdown_proof.json"
    assert (tmp_path / rid / "EVIDENCE.md").is_file()
