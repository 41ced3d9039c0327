"""Issue 7 end to end: `gpurun` on DataCrunch (Verda), through the real CLI and the real `verda` SDK
talking to the REST fake (tests/fakes/datacrunch_api.py); SSH goes to the loopback sshd."""

from __future__ import annotations

import re
import signal
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.state.ledger import Ledger
from providers.base import BillingRule
from tests.e2e_helpers import (
    E2E,
    SHORT_TRAIN,
    assert_one_line_error,
    assert_trained_and_synced,
    e2e,  # noqa: F401  (fixture)
    event_names,
    ledger_instances,
    only_run,
    phases,
    point_at_datacrunch_fake,
    proof_of,
    sshd,  # noqa: F401  (fixture)
    wait_for,
)
from tests.fakes.datacrunch_api import PROVISIONING_REFUSAL, FakeDataCrunchAPI


@pytest.fixture
def fake(e2e: E2E) -> Iterator[FakeDataCrunchAPI]:  # noqa: F811
    # The meter bills like budgets.yaml's conservative rule for DataCrunch: whole 10 minutes.
    api = FakeDataCrunchAPI(billing=BillingRule(600, 0, "budgets.yaml default"), ip=e2e.sshd.host,
                            ordered_s=0.3, provisioning_s=1.0).start()
    point_at_datacrunch_fake(e2e, api)
    try:
        yield api
    finally:
        api.stop()


def launch_args(e2e: E2E, *extra: str) -> list[str]:  # noqa: F811
    return ["launch", "--provider", "datacrunch", "--max-usd", "3", "--yes",
            "--budgets", str(e2e.budgets("datacrunch")), "--sync-interval", "3", *SHORT_TRAIN, *extra]


def deletes(fake: FakeDataCrunchAPI) -> list[dict[str, object]]:
    return [r for r in fake.calls("PUT", "/instances") if r["action"] == "delete"]


def test_launch_trains_syncs_deletes_verifies_and_cleans_up(e2e: E2E,  # noqa: F811
                                                            fake: FakeDataCrunchAPI) -> None:
    res = e2e.gpurun(*launch_args(e2e))
    assert res.returncode == 0, res.stdout + res.stderr
    run = only_run()
    assert run.phase == "verified" and run.cost_usd is not None and run.cost_usd <= 3
    assert_trained_and_synced(run, finished=True)
    assert "stopping" in phases(run)

    (iid,) = ledger_instances()
    assert fake.status_of(iid) == "discontinued"
    assert fake.meter(iid)["running"] is False and fake.total_usd() <= 3
    assert [r["status"] for r in deletes(fake)] == [202]  # one delete, accepted
    proof = proof_of(run)
    assert proof["verified"] is True and proof["instance_ids"] == [iid]
    (final,) = proof["final_describe"]
    assert final["state"] == "terminated" and final["raw"]["status"] == "discontinued"
    assert proof["zero_match_listing"] == []  # absent from GET /instances
    # The run's SSH key (and any startup script) are deleted, and the proof lists them.
    assert fake.ssh_keys == {} and fake.scripts == {}
    assert any(d.startswith("ssh_key:") for d in proof["deleted_resources"]), proof["deleted_resources"]
    # The self-destruct credential went where the test said, 0600, and nowhere near the real /root.
    cred = Path(e2e.env["DATACRUNCH_CREDENTIALS_PATH"])
    assert cred.exists() and stat.S_IMODE(cred.stat().st_mode) == 0o600
    assert (cred.parent / "datacrunch_self_destruct.sh").is_file()  # the shipped self-destruct, beside it
    assert fake.client_secret not in (Path(run.run_dir) / "shutdown_proof.json").read_text()


def test_teardown_while_provisioning_deletes_once_it_can(e2e: E2E, fake: FakeDataCrunchAPI) -> None:  # noqa: F811
    fake.provisioning_s = 3600.0  # held in provisioning until the test lets go
    launch = e2e.popen(*launch_args(e2e))
    down: subprocess.Popen[str] | None = None
    try:
        wait_for(lambda: ledger_instances() and Ledger().list_runs()[0].phase == "booting"
                 and fake.status_of(ledger_instances()[0]) == "provisioning", 60,
                 "the launch to create the instance and wait for it to boot")
        run = only_run()
        (iid,) = ledger_instances()
        down = e2e.popen("teardown", run.run_id)
        # The delete is refused while provisioning ("Can't discontinue a provisioning instance") ...
        wait_for(lambda: any(r["status"] == 400 for r in deletes(fake)), 60, "a refused delete")
        assert fake.status_of(iid) == "provisioning"
        fake.provisioning_s = 0.0  # ... until the instance is up
        out, _ = down.communicate(timeout=90)
        assert down.returncode == 0, out
    finally:
        for proc in (launch, down):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=30)
    assert launch.returncode == -signal.SIGKILL  # teardown took the run over from the launch
    run = Ledger().resolve_run(run.run_id)
    assert run.phase == "verified"
    assert fake.status_of(iid) == "discontinued"
    statuses = [r["status"] for r in deletes(fake)]
    assert statuses[0] == 400 and 202 in statuses, statuses
    proof = proof_of(run)
    errors = [r.get("error") or "" for r in proof["terminate_requests"]]
    assert any(PROVISIONING_REFUSAL in e for e in errors), errors
    assert proof["final_describe"][0]["raw"]["status"] == "discontinued" and proof["zero_match_listing"] == []
    assert fake.total_usd() <= 3 and fake.meter(iid)["running"] is False


def test_silent_207_delete_is_caught_by_verification_and_retried(e2e: E2E,  # noqa: F811
                                                                 fake: FakeDataCrunchAPI) -> None:
    launch = e2e.popen(*launch_args(e2e))
    try:
        wait_for(lambda: fake.instances, 60, "the instance to be created")
        (iid,) = list(fake.instances)
        fake.fail_next_delete_silently(iid)  # the first delete answers 207 with a per-id error, does nothing
        out, _ = launch.communicate(timeout=120)
    finally:
        if launch.poll() is None:
            launch.send_signal(signal.SIGKILL)
            launch.wait(timeout=30)
    assert launch.returncode == 0, out
    run = only_run()
    assert run.phase == "verified"
    statuses = [r["status"] for r in deletes(fake)]
    assert statuses[0] == 207 and statuses[-1] == 202, statuses
    assert fake.instances[iid].delete_requests >= 2 and fake.status_of(iid) == "discontinued"
    proof = proof_of(run)
    first = proof["terminate_requests"][0]["response"]
    assert first["accepted"] is False and first["per_id_errors"], first
    assert proof["final_describe"][0]["raw"]["status"] == "discontinued"
    assert fake.total_usd() <= 3


def test_launch_whose_create_answers_json_and_order_waits_pending_trains_and_deletes(
        e2e: E2E, fake: FakeDataCrunchAPI) -> None:  # noqa: F811
    # The Go SDK's "sometimes JSON" create answer, and an order that waits for capacity before provisioning.
    fake.create_answer = "json"
    fake.pending_s = 1.0
    res = e2e.gpurun(*launch_args(e2e))
    assert res.returncode == 0, res.stdout + res.stderr
    run = only_run()
    assert run.phase == "verified" and run.cost_usd is not None and run.cost_usd <= 3
    assert_trained_and_synced(run, finished=True)
    (iid,) = ledger_instances()
    assert iid in fake.instances and len(fake.calls("POST", "/instances")) == 1  # the JSON id was read
    assert fake.status_of(iid) == "discontinued" and fake.meter(iid)["running"] is False
    assert [r["status"] for r in deletes(fake)] == [202]
    assert fake.billed_volumes() == []  # the OS volume went with it
    # The plan checked the image against the type and sent one the type takes.
    itype = fake.instances[iid].body["instance_type"]
    supported = next(t["supported_os"] for t in fake.instance_types if t["instance_type"] == itype)
    assert fake.instances[iid].body["image"] in supported
    proof = proof_of(run)
    assert proof["verified"] is True and proof["zero_match_listing"] == []


def test_no_capacity_order_fails_in_one_line_quickly_with_nothing_billing(
        e2e: E2E, fake: FakeDataCrunchAPI) -> None:  # noqa: F811
    fake.pending_s = 0.3
    fake.no_capacity_where = set(fake.availability)  # every location: each order ends in no_capacity
    res = e2e.gpurun(*launch_args(e2e), timeout=240)
    assert_one_line_error(res, "capacity")
    run = only_run()
    assert run.phase == "verified"  # every attempt deleted and verified gone
    assert fake.instances and all(fake.status_of(i) == "discontinued" for i in fake.instances)
    assert all(fake.meter(i)["running"] is False for i in fake.instances)
    assert fake.billed_volumes() == [] and fake.total_usd() <= 3
    assert "job_started" not in event_names(run)  # it never trained: it failed at boot, not at the boot timeout



def _first_location(e2e: E2E, args: list[str]) -> str:  # noqa: F811
    """Where the plan sends the first create, from `launch --dry-run`."""
    res = e2e.gpurun(*args, "--dry-run")
    assert res.returncode == 0, res.stdout + res.stderr
    where = re.search(r"provider\W+datacrunch \(([A-Z0-9-]+)\)", res.stdout)
    assert where, res.stdout
    return where.group(1)


def test_create_refused_503_not_enough_resources_lands_in_the_next_location(
        e2e: E2E, fake: FakeDataCrunchAPI) -> None:  # noqa: F811
    # The API answers "no capacity" as HTTP 503 "Not enough resources to deploy ..." (verda-cli issue 4):
    # that is this offer refused, not the API down, so the next location is tried at once.
    args = launch_args(e2e, "--gpu", "A100")
    first = _first_location(e2e, args)
    other = next(loc for loc in fake.availability if loc != first and "1A100.22V" in fake.availability[loc])
    fake.refuse_create_where = {f"1A100.22V@{first}"}  # in stock by /instance-availability, refused at the POST
    res = e2e.gpurun(*args, timeout=240)
    assert res.returncode == 0, res.stdout + res.stderr
    run = only_run()
    assert run.phase == "verified" and run.cost_usd is not None and run.cost_usd <= 3
    assert_trained_and_synced(run, finished=True)
    posts = [c for c in fake.requests if c["method"] == "POST" and c["path"] == "/instances"]
    assert [c["status"] for c in posts] == [503, 202]  # the refusal was not retried where it was refused
    assert [b["location_code"] for b in fake.creates] == [first, other]
    (iid,) = list(fake.instances)
    assert fake.instances[iid].body["location"] == other and ledger_instances() == [iid]
    assert fake.status_of(iid) == "discontinued" and fake.total_usd() <= 3 and fake.billed_volumes() == []
    assert "Retrying" not in res.stderr + res.stdout


def test_create_503_that_lands_is_found_by_hostname_never_created_twice(
        e2e: E2E, fake: FakeDataCrunchAPI) -> None:  # noqa: F811
    fake.lost_create_answers = 1  # the order lands, its answer is a gateway's 503 (no capacity words)
    res = e2e.gpurun(*launch_args(e2e), timeout=240)
    assert res.returncode == 0, res.stdout + res.stderr
    run = only_run()
    assert run.phase == "verified" and run.cost_usd is not None and run.cost_usd <= 3
    posts = [c for c in fake.requests if c["method"] == "POST" and c["path"] == "/instances"]
    assert [c["status"] for c in posts] == [503]  # retried: it looked by hostname, found it, sent no second
    (iid,) = list(fake.instances)
    assert ledger_instances() == [iid] and fake.status_of(iid) == "discontinued"
    # The look by hostname came after the 503 and before anything else was created.
    looks = [i for i, c in enumerate(fake.requests) if c["method"] == "GET" and c["path"] == "/instances"]
    assert any(i > fake.requests.index(posts[0]) for i in looks)
    assert fake.total_usd() <= 3 and "Retrying" not in res.stderr + res.stdout


def test_create_503_that_never_lands_is_retried_then_one_line_saying_what_the_api_said(
        e2e: E2E, fake: FakeDataCrunchAPI) -> None:  # noqa: F811
    fake.fail_next(1000, 503, method="POST", path_prefix="/instances")  # a 503 with no capacity words, always
    res = e2e.gpurun(*launch_args(e2e), timeout=240)
    line = assert_one_line_error(res, "HTTP 503", "injected failure")  # what the API said, once
    assert "Retrying" not in res.stderr + res.stdout and "did not answer" not in line
    posts = [c for c in fake.requests if c["method"] == "POST" and c["path"] == "/instances"]
    assert len(posts) > 1 and {c["status"] for c in posts} == {503}  # a transient failure: retried
    assert not fake.instances and fake.total_usd() == 0
