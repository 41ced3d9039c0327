"""A provider cleanup that raises after the instances were verified gone: the proof is still written,
with the failure in it; the card says so; `gpurun audit` lists it, and `gpurun audit --cleanup`
finishes it (docs/EVIDENCE.md, "Cleanup failures")."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator.cli.main import main
from orchestrator.money.audit import leftovers
from orchestrator.plan.launch import make_plan
from orchestrator.plan.options import LaunchOptions
from orchestrator.run.controller import Controller
from orchestrator.state.endings import Exit
from orchestrator.state.ledger import Ledger
from providers.base import Provider, ProviderError
from providers.local import LocalProvider


def _refuse(self: LocalProvider, run_id: str) -> list[str]:
    raise ProviderError(f"DependencyViolation: security group gpurun-{run_id} is still in use")


def test_a_cleanup_that_raises_leaves_the_proof_the_card_line_and_the_audit_row(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = Ledger()
    controller = Controller.create(ledger, make_plan(LaunchOptions(provider="local", max_usd=0.02, usd_per_hour=1.2,
                                                                   runs_dir=str(tmp_path))))
    rid = controller.run.run_id
    for phase in ("creating", "booting", "failed_booting"):
        ledger.set_phase(rid, phase, error="no capacity" if phase.startswith("failed") else None)
    controller.refresh()
    monkeypatch.setattr(LocalProvider, "cleanup", _refuse)
    controller._fail(RuntimeError("the boot failed"))

    # Verified, proved and settled all the same; the failure is an event between the two phases.
    run = ledger.get_run(rid)
    assert run is not None and run.phase == "verified" and run.settled
    kinds = [e.phase for e in ledger.events(rid)]
    assert kinds.index("terminating") < kinds.index("cleanup_failed") < kinds.index("verified")
    proof_path = tmp_path / rid / "shutdown_proof.json"
    proof = json.loads(proof_path.read_text())
    assert proof["verified"] is True and proof["deleted_resources"] == []
    assert [r["sha256"] for r in ledger.proofs(rid)]  # chained in the ledger as any proof
    (failure,) = proof["cleanup_failures"]
    assert failure["error"] == f"ProviderError: DependencyViolation: security group gpurun-{rid} is still in use"
    assert "security groups" in failure["left"] and "detached volume bills" in failure["bills"]
    assert failure["remove"] == "gpurun audit --cleanup --provider local"

    card = (tmp_path / rid / "EVIDENCE.md").read_text()
    assert "Left behind (the instances are verified gone; this may still bill):" in card
    assert "- cleanup failed after the verification: ProviderError: DependencyViolation" in card
    assert "remove it: `gpurun audit --cleanup --provider local`" in card
    ev = json.loads((tmp_path / rid / "evidence.json").read_text())
    assert ev["shutdown_proof"]["verified"] is True and len(ev["verdict"]["left_behind"]) == 1

    # `gpurun audit` lists it and exits 7 (something may bill that no open run owns).
    runner = CliRunner()
    listed = runner.invoke(main, ["audit", "--provider", "local"], env={"COLUMNS": "250"})
    assert listed.exit_code == Exit.UNOWNED_BILLING, listed.output
    assert f"cleanup not finished: run {rid} (local), its instances verified gone: ProviderError: Dependency" in listed.output
    assert "remove it: `gpurun audit --cleanup --provider local`" in listed.output
    assert "1 run(s) whose cleanup did not finish" in " ".join(listed.output.split())
    assert [left.run_id for left in leftovers(ledger)] == [rid]

    # A cleanup that still fails keeps it listed; one that goes through clears it.
    again = runner.invoke(main, ["audit", "--provider", "local", "--cleanup"], env={"COLUMNS": "250"})
    assert again.exit_code == Exit.UNOWNED_BILLING and "cleanup failed again" in again.output
    monkeypatch.setattr(LocalProvider, "cleanup", Provider.cleanup)  # the cleanup goes through now
    done = runner.invoke(main, ["audit", "--provider", "local", "--cleanup"], env={"COLUMNS": "250"})
    assert done.exit_code == 0, done.output
    assert f"run {rid}: cleaned up" in done.output and leftovers(ledger) == []
    assert [e.phase for e in ledger.events(rid)][-1] == "cleanup_done"
