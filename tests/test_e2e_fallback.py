"""Offer fallback end to end: the real CLI and the providers' real SDKs against the API fakes, SSH to
the loopback sshd. An offer whose order never gets capacity is deleted and verified gone before
the next offer is created; the run trains on the next one, inside one cap, with every attempt in
the ledger and the proof. (The controller's paths one by one: tests/test_fallback.py.)"""

from __future__ import annotations

import re

from orchestrator.plan.record import RunRecord
from orchestrator.state.ledger import Ledger
from tests.e2e_helpers import (
    E2E,
    SHORT_TRAIN,
    assert_trained_and_synced,
    e2e,  # noqa: F401  (fixture)
    only_run,
    proof_of,
    sshd,  # noqa: F401  (fixture)
)
from tests.fakes.datacrunch_api import FakeDataCrunchAPI
from tests.test_e2e_datacrunch import fake  # noqa: F401  (fixture: the API fake, its e2e environment)


def planned_location(e2e: E2E, args: list[str]) -> tuple[str, str]:  # noqa: F811
    """The plan's chosen location and its fallback row, from `launch --dry-run`."""
    res = e2e.gpurun(*args, "--dry-run")
    assert res.returncode == 0, res.stdout + res.stderr
    where = re.search(r"provider\W+datacrunch \(([A-Z0-9-]+)\)", res.stdout)
    fallback = re.search(r"fallback\W+(.*?)\s*│", res.stdout)
    assert where and fallback, res.stdout
    return where.group(1), fallback.group(1)


def test_datacrunch_order_without_capacity_is_deleted_and_the_next_location_trains(
        e2e: E2E, fake: FakeDataCrunchAPI) -> None:  # noqa: F811
    args = ["launch", "--provider", "datacrunch", "--gpu", "A100", "--max-usd", "3", "--yes",
            "--budgets", str(e2e.budgets("datacrunch")), "--sync-interval", "3", *SHORT_TRAIN]
    first, fallback = planned_location(e2e, args)
    other = next(loc for loc in fake.availability if loc != first and "1A100.22V" in fake.availability[loc])
    assert f"1A100.22V, {other}" in fallback  # the plan shows where it goes next
    fake.pending_s = 0.3
    fake.no_capacity_where = {f"1A100.22V@{first}"}  # stock said yes; the order never gets capacity

    res = e2e.gpurun(*args, timeout=240)
    assert res.returncode == 0, res.stdout + res.stderr
    run = only_run()
    assert run.phase == "verified" and run.cost_usd is not None and run.cost_usd <= 3
    assert_trained_and_synced(run, finished=True)

    (attempt,) = RunRecord.of_run(run).attempts
    assert attempt["region"] == first and "no_capacity" in attempt["reason"]
    failed_id = attempt["instance_id"]
    rows = Ledger().instances(run.run_id)
    assert [r.instance_id for r in rows][0] == failed_id and len(rows) == 2
    # The failed order was deleted, and seen gone, before the second create was sent.
    calls = fake.requests  # every call in the order the API got them
    creates = [i for i, c in enumerate(calls) if c["method"] == "POST" and c["path"] == "/instances"]
    deletes = [i for i, c in enumerate(calls) if c["method"] == "PUT" and c["action"] == "delete"]
    assert len(creates) == 2 and deletes and deletes[0] < creates[1]  # only the failed order existed then
    assert all(fake.status_of(i) == "discontinued" for i in fake.instances)
    assert fake.billed_volumes() == [] and fake.total_usd() <= 3
    proof = proof_of(run)
    assert proof["verified"] is True and set(proof["instance_ids"]) == {r.instance_id for r in rows}
    assert [a["instance_id"] for a in proof["attempts"]] == [failed_id]
    assert proof["cost"]["estimated_usd"] <= 3
