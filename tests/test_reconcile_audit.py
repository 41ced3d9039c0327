"""Reconciliation (the provider's own figure beside our estimate) and the audit of everything
billing, on the controller's side: the ledger, the flags, the classification. The providers'
billing and inventory calls against their API fakes are in tests/test_<provider>_billing.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from orchestrator.money.audit import FOREIGN, OPEN_RUN, ORPHAN, audit
from orchestrator.money.reconcile import Reconciliation, pending, reconcile
from orchestrator.plan.launch import make_plan
from orchestrator.plan.options import LaunchOptions
from orchestrator.run.controller import Controller
from orchestrator.state.ledger import Ledger
from orchestrator.state.rows import Run
from providers.base import Billable, BilledCost, ProviderError
from providers.local import LocalProvider


class Billing(LocalProvider):
    """The local provider with a billing API that answers what the test says."""

    def __init__(self, answer: BilledCost | Exception, items: list[Billable] | None = None) -> None:
        super().__init__(usd_per_hour=3.6)
        self.answer, self.items, self.asked = answer, items or [], []

    def billed_cost(self, run_id: str, instance_ids: list[str], start: float, end: float) -> BilledCost:
        self.asked.append((run_id, list(instance_ids), start, end))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer

    def inventory(self) -> list[Billable]:
        return self.items


def finished_run(tmp_path: Path) -> Run:
    workdir = tmp_path / "job"
    workdir.mkdir()
    plan = make_plan(LaunchOptions(provider="local", max_usd=0.05, usd_per_hour=3.6, runs_dir=str(tmp_path / "runs"),
                                   workdir=str(workdir), command=["python3", "-c", "print('done')"]))
    ctl = Controller.create(Ledger(), plan)
    ctl.launch(attach=True)
    run = ctl.refresh()
    assert run.phase == "verified" and run.cost_usd is not None
    return run


def test_the_providers_figure_is_stored_beside_the_estimate(tmp_path: Path) -> None:
    run = finished_run(tmp_path)
    provider = Billing(BilledCost(run.cost_usd, "test billing API", complete=True, details={"rows": 1}))
    result = reconcile(Ledger(), run, provider)
    again = Ledger().get_run(run.run_id)
    assert again is not None and again.billed_usd == pytest.approx(run.cost_usd)
    assert again.billed_source == "test billing API" and again.billed_complete is True
    assert again.reconciled_at is not None and result.flag == ""
    # The window asked covers the whole run, from before its create to after its verification.
    (_, ids, start, end) = provider.asked[0]
    assert ids == [f"local-{run.run_id}"] and start < run.created_at and end > run.updated_at
    # The teardown asked the local provider first (it has no billing API), then the test's one answered.
    sources = [e.payload["source"] for e in Ledger().events(run.run_id) if e.phase == "reconciled"]
    assert sources == ["gpurun local meter (per second from create to terminate)", "test billing API"]
    assert pending(Ledger()) == []


def test_a_difference_over_one_percent_is_flagged_and_over_the_cap_loudly(tmp_path: Path) -> None:
    base = dict(run_id="r", estimate_usd=1.00, source="s", complete=True, max_usd=3.0)
    assert Reconciliation(billed_usd=1.009, **base).flag == ""
    assert "+5.0 %" in Reconciliation(billed_usd=1.05, **base).flag
    assert "-2.0 %" in Reconciliation(billed_usd=0.98, **base).flag
    assert Reconciliation(billed_usd=3.5, **base).flag.startswith("OVER THE CAP")
    assert Reconciliation(billed_usd=None, **base).flag == ""  # nothing to compare yet


def test_a_late_or_failing_billing_api_leaves_the_run_to_reconcile_later(tmp_path: Path) -> None:
    run = finished_run(tmp_path)
    late = reconcile(Ledger(), run, Billing(BilledCost(None, "Cost Explorer: no rows yet", complete=False)))
    assert late.billed_usd is None and not late.complete
    assert pending(Ledger()) == []  # just asked: not again within the hour (each AWS request costs)
    assert [r.run_id for r in pending(Ledger(), every_s=0)] == [run.run_id]
    failing = reconcile(Ledger(), run, Billing(ProviderError("billing API 503")))
    assert failing.source.startswith("asking failed: billing API 503") and not failing.complete
    final = reconcile(Ledger(), run, Billing(BilledCost(run.cost_usd * 1.1, "later", complete=True)))
    assert final.complete and "+10.0 %" in final.flag and pending(Ledger()) == []


def item(iid: str, run_id: str | None, **kw: Any) -> Billable:
    return Billable(kind=kw.pop("kind", "instance"), id=iid, provider="local", run_id=run_id, usd_per_hour=1.0, **kw)


def test_the_audit_marks_open_runs_orphans_and_what_is_not_gpurun(tmp_path: Path) -> None:
    ledger = Ledger()
    open_run = ledger.create_run("open-run", "local", 1.0, {}, str(tmp_path / "open"))
    done = finished_run(tmp_path)
    provider = Billing(BilledCost(None, "n/a"), items=[
        item("i-open", open_run.run_id), item(f"local-{done.run_id}", done.run_id),
        item("i-unknown-run", "gone-long-ago"), item("vol-1", None, kind="volume", state="available"),
    ])
    result = audit(ledger, [provider])
    owners = {r.item.id: r.owner for r in result.rows}
    assert owners == {"i-open": OPEN_RUN, f"local-{done.run_id}": ORPHAN, "i-unknown-run": ORPHAN, "vol-1": FOREIGN}
    assert {r.item.id for r in result.unowned} == {f"local-{done.run_id}", "i-unknown-run", "vol-1"}
    assert "gpurun sweep --provider local" in next(r.action for r in result.rows if r.owner == ORPHAN)
    assert result.usd_per_hour == 4.0


def test_a_provider_without_credentials_is_skipped_with_why(tmp_path: Path) -> None:
    class NoKey(Billing):
        def check_credentials(self) -> None:
            raise ProviderError("no API key: set TEST_KEY")

    result = audit(Ledger(), [NoKey(BilledCost(None, "n/a"), items=[item("i-1", None)])])
    assert result.rows == [] and result.skipped == [("local", "no API key: set TEST_KEY")]
