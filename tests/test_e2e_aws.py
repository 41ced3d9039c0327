"""Issue 6 end to end: `gpurun` on AWS, through the real CLI and the real boto3 talking to moto's
server (tests/fixtures/moto_server.py); SSH goes to the loopback sshd via GPURUN_SSH_OVERRIDE."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from orchestrator.money.budgets_file import load_budgets, packaged_budgets_file
from orchestrator.state.ledger import Ledger
from providers.aws import PRICE_OVERRIDE_SOURCE, TAG_RUN_ID, ebs_usd_per_hour, elapsed_seconds
from tests.e2e_helpers import (
    E2E,
    ENDLESS_TRAIN,
    SHORT_TRAIN,
    assert_one_line_error,
    assert_trained_and_synced,
    e2e,  # noqa: F401  (fixture)
    event,
    ledger_instances,
    only_run,
    phases,
    proof_of,
    sshd,  # noqa: F401  (fixture)
)
from tests.fixtures import moto_consistency
from tests.fixtures.moto_server import MotoAWS, moto_aws, moto_server  # noqa: F401  (fixtures)
from tests.test_aws_billing import ce_answers, ce_day, ce_result
from tests.test_aws_capacity import spot_market

AWS_RULE = load_budgets(packaged_budgets_file()).billing_for("aws")  # per second, 60 s minimum


@pytest.fixture
def aws(e2e: E2E, moto_aws: MotoAWS) -> Iterator[Any]:  # noqa: F811
    """boto3's EC2 client on moto; the CLI reaches the "instance" (the sshd) through the override."""
    import boto3

    e2e.env["GPURUN_SSH_OVERRIDE"] = f"{e2e.sshd.host}:{e2e.sshd.port}:{e2e.sshd.user}"
    yield boto3.client("ec2", region_name=moto_aws.region)


def all_instances(ec2: Any) -> list[dict[str, Any]]:
    return [i for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]]


def gpurun_keys_and_groups(ec2: Any) -> tuple[list[str], list[str]]:
    keys = [k["KeyName"] for k in ec2.describe_key_pairs()["KeyPairs"] if k["KeyName"].startswith("gpurun-")]
    groups = [g["GroupName"] for g in ec2.describe_security_groups()["SecurityGroups"]
              if g["GroupName"].startswith("gpurun-")]
    return keys, groups


def launch(e2e: E2E, *extra: str, gpu: str = "A10G", max_usd: str = "3",  # noqa: F811
           budgets: Path | None = None, env: dict[str, str | None] | None = None,
           timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return e2e.gpurun("launch", "--provider", "aws", "--gpu", gpu, "--max-usd", max_usd, "--yes",
                      "--budgets", str(budgets or e2e.budgets("aws")), "--sync-interval", "3", *extra,
                      env=env, timeout=timeout)


def test_launch_trains_syncs_terminates_and_cleans_up(e2e: E2E, aws: Any, moto_aws: MotoAWS) -> None:  # noqa: F811
    res = launch(e2e, *SHORT_TRAIN)
    assert res.returncode == 0, res.stdout + res.stderr
    run = only_run()
    assert run.phase == "verified" and run.cost_usd is not None and run.cost_usd <= 3
    assert_trained_and_synced(run, finished=True)
    assert "stopping" in phases(run) and phases(run)[-1] == "verified"

    (iid,) = ledger_instances()
    (desc,) = all_instances(aws)
    assert desc["InstanceId"] == iid and desc["State"]["Name"] == "terminated"
    assert desc["InstanceType"].startswith("g5.")
    proof = proof_of(run)
    assert proof["verified"] is True and proof["instance_ids"] == [iid]
    (final,) = proof["final_describe"]
    assert final["state"] == "terminated" and final["raw"]["state_name"] == "terminated"
    # The tag query (live states, tag gpurun:run-id = the run) found nothing.
    assert proof["zero_match_listing"] == [] and proof["zero_match"] is True
    # The key pair and security group the run made are gone, and the proof says so.
    assert gpurun_keys_and_groups(aws) == ([], [])
    deleted = " ".join(proof["deleted_resources"])
    assert f"key-pair gpurun-{run.run_id}" in deleted and "security-group sg-" in deleted
    assert run.usd_per_hour is not None and AWS_RULE.cost(elapsed_seconds(desc), run.usd_per_hour) <= 3

    # Cost Explorer lags: nothing is asked at teardown (each request costs 0.01 USD), then a later
    # `gpurun cost --reconcile` fills the figure in, and asks again once the day's data has changed.
    assert run.billed_usd is None and run.billed_complete is False and "cost --reconcile" in (run.billed_source or "")
    today = datetime.now(timezone.utc).date()
    ce_answers(moto_aws, ce_result([ce_day(today, "0.0312", estimated=True)]))
    first = e2e.gpurun("cost", "--reconcile", env={"GPURUN_RECONCILE_EVERY_S": "0"})
    assert first.returncode == 0, first.stdout + first.stderr
    run = only_run()
    assert run.billed_usd == pytest.approx(0.0312) and run.billed_complete is False
    assert "AWS Cost Explorer" in (run.billed_source or "")
    ce_answers(moto_aws, ce_result([ce_day(today, "0.0335")]))
    e2e.gpurun("cost", "--reconcile", env={"GPURUN_RECONCILE_EVERY_S": "0"})
    assert only_run().billed_usd == pytest.approx(0.0335)  # the later, fuller figure replaced the first
    card = (Path(run.run_dir) / "EVIDENCE.md").read_text()
    assert "| provider's figure | $0.0335: AWS Cost Explorer" in card and "not final" in card


def test_price_that_makes_the_cap_bite_stops_and_terminates_under_the_cap(e2e: E2E,  # noqa: F811
                                                                          aws: Any) -> None:
    # 36 USD/h: 1 USD buys 99 s (the 60 s minimum fits); a 70 s reserve has the guard stop at ~29 s.
    # The watchdog's self-destruct is the e2e fixture's harmless marker command (GPURUN_SELF_DESTRUCT_CMD),
    # so a launch slowed by a busy machine may take its whole reserve: the timeout is only a hang guard.
    budgets = e2e.budgets("aws", reserve_s=70, min_runtime_s=20)
    # The loopback "instance" has no GPU: it runs the CPU smoke recipe, so the plan (and the egress it
    # reserves for the checkpoints it pulls) is told so rather than pricing the GPU default's.
    res = launch(e2e, "--recipe", "smoke", *ENDLESS_TRAIN, gpu="g5.xlarge", max_usd="1", budgets=budgets,
                 env={"GPURUN_AWS_PRICES": "g5.xlarge=36"}, timeout=180)
    assert res.returncode == 0, res.stdout + res.stderr
    assert PRICE_OVERRIDE_SOURCE in res.stdout  # the plan says the price is not a live one
    run = only_run()
    assert run.phase == "verified" and run.cost_usd is not None and run.cost_usd <= 1
    assert "deadline" in event(run, "stopping").payload["reason"]
    assert_trained_and_synced(run, finished=False)

    (desc,) = all_instances(aws)
    assert desc["InstanceType"] == "g5.xlarge" and desc["State"]["Name"] == "terminated"
    hourly = 36 + ebs_usd_per_hour(100)
    # moto's LaunchTime and its "User initiated (<time>)" termination time, per second, 60 s minimum.
    billed = AWS_RULE.billed_seconds(elapsed_seconds(desc))
    assert billed >= 60
    assert billed * hourly / 3600 <= 1.0, f"{billed} s at {hourly:.4f} USD/h"
    assert proof_of(run)["verified"] is True


def _orphan(ec2: Any, run_id: str) -> str:
    """An instance tagged gpurun that no run in the ledger owns (a crashed controller's leftover)."""
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    resp = ec2.run_instances(
        ImageId=image, InstanceType="g5.xlarge", MinCount=1, MaxCount=1,
        TagSpecifications=[{"ResourceType": "instance", "Tags": [
            {"Key": TAG_RUN_ID, "Value": run_id}, {"Key": "Name", "Value": f"gpurun-{run_id}"}]}],
    )
    return str(resp["Instances"][0]["InstanceId"])


def _state(ec2: Any, iid: str) -> str:
    return str(ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["State"]["Name"])


def test_sweep_finds_and_terminates_an_orphan(e2e: E2E, aws: Any) -> None:  # noqa: F811
    iid = _orphan(aws, "20250101-000000-dead")
    res = e2e.gpurun("sweep", "--provider", "aws", "--yes")
    assert res.returncode == 0, res.stdout + res.stderr
    row = next((ln for ln in res.stdout.splitlines() if iid in ln), None)
    assert row is not None, res.stdout
    assert "gpurun-20250101-000000-dead" in row and "running" in row
    # its price: the static g5.xlarge rate (moto has no Pricing API) + its 8 GB root volume + its public
    # IPv4 address (0.005 USD/h) ...
    assert f"{1.006 + ebs_usd_per_hour(8) + 0.005:.4f}" in row
    assert "cost so far" in res.stdout and " 0.0" in row  # ... and what it has cost so far
    assert f"{iid}: terminated (verified)" in res.stdout
    assert _state(aws, iid) == "terminated"
    # The sweep's record of the orphan: a verified ledger row with its proof in the chain, no money held.
    (swept,) = Ledger().list_runs()
    assert swept.run_id == f"sweep-{iid}" and swept.phase == "verified" and Ledger().hold(swept.run_id) is None
    assert [p["run_id"] for p in Ledger().proofs()] == [swept.run_id]


def test_sweep_asks_and_terminates_on_y(e2e: E2E, aws: Any) -> None:  # noqa: F811
    """Without --yes the sweep asks on the terminal; answering "y" terminates."""
    import pty

    iid = _orphan(aws, "20250101-000000-beef")
    master, slave = pty.openpty()
    env = {**os.environ, **e2e.env}
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli.main", "sweep", "--provider", "aws"],
                            cwd=e2e.tmp, env=env, stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    os.close(slave)
    try:
        os.write(master, b"y\n")
        out, _ = proc.communicate(timeout=120)
    finally:
        os.close(master)
    assert proc.returncode == 0, out
    assert "Terminate these 1 instance(s)?" in out and f"{iid}: terminated (verified)" in out
    assert _state(aws, iid) == "terminated"


def test_sweep_answer_no_leaves_it_running(e2e: E2E, aws: Any) -> None:  # noqa: F811
    iid = _orphan(aws, "20250101-000000-cafe")
    res = e2e.gpurun("sweep", "--provider", "aws")  # no terminal to ask on, no --yes: refuse
    assert res.returncode != 0 and "--yes" in res.stderr
    assert _state(aws, iid) == "running"


@pytest.mark.parametrize(
    ("extra", "env", "needles"),
    [
        pytest.param([], {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None}, ["AWS credentials"],
                     id="missing-credentials"),
        pytest.param(["--gpu", "NOPE9000"], {}, ["AWS has no instance type with GPU", "NOPE9000"], id="unknown-gpu"),
        pytest.param(["--gpu", "g9.mega"], {}, ["g9.mega"], id="unknown-instance-type"),
        pytest.param(["--image", "ami-0123456789abcdef0"], {}, ["AMI", "ami-0123456789abcdef0", "does not exist"],
                     id="missing-ami"),
    ],
)
def test_bad_launch_is_one_line_and_creates_nothing(e2e: E2E, aws: Any, extra: list[str],  # noqa: F811
                                                    env: dict[str, str | None], needles: list[str]) -> None:
    res = e2e.gpurun("launch", "--provider", "aws", "--max-usd", "3", "--yes", *(extra or ["--gpu", "A10G"]),
                     env=env)
    assert_one_line_error(res, *needles)
    assert all_instances(aws) == []
    assert gpurun_keys_and_groups(aws) == ([], [])
    assert ledger_instances() == [] and Ledger().list_runs() == []



def test_the_plan_shows_storage_public_ipv4_and_egress_lines(e2e: E2E, aws: Any) -> None:  # noqa: F811
    """What EC2 bills beside the instance (the region's gp3 volume, the public IPv4 address, data
    transfer out) is in the plan the user confirms, and the budget is what is left of the cap."""
    res = e2e.gpurun("launch", "--provider", "aws", "--gpu", "A10G", "--max-usd", "3", "--dry-run",
                     "--budgets", str(e2e.budgets("aws")))
    assert res.returncode == 0, res.stdout + res.stderr
    plan = " ".join(res.stdout.split())  # the table wraps long rows
    assert "gp3 storage" in plan and "public IPv4 0.0050 USD/h" in plan, plan
    assert "egress" in plan and "USD/GB" in plan and "reserved out of the budget" in plan, plan
    assert "reserved for egress" in plan, plan
    assert all_instances(aws) == []  # a plan creates nothing


# ------------------------------------------- EC2's eventual consistency (tests/fixtures/moto_consistency.py)


def _terminate_requests(run: Any) -> list[dict[str, Any]]:
    from orchestrator.state.events import EventKind

    return [e.payload for e in Ledger().events(run.run_id) if e.phase == EventKind.TERMINATE_REQUEST.value]


def test_an_instance_ec2_does_not_know_yet_boots_once_and_trains(e2e: E2E, aws: Any,  # noqa: F811
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Right after RunInstances, EC2 answers InvalidInstanceID.NotFound for the new instance (AWS's
    eventual-consistency page): that is "not known yet", not "gone". The boot waits for it: one
    attempt, one instance (before: the boot failed, the running instance was "verified gone" on
    NotFound answers and an empty tag listing, and a second attempt was made beside it)."""
    lag = moto_consistency.install(monkeypatch, after_create=4)
    res = launch(e2e, *SHORT_TRAIN)
    assert res.returncode == 0, res.stdout + res.stderr
    run = only_run()
    assert run.phase == "verified" and run.cost_usd is not None and run.cost_usd <= 3
    assert_trained_and_synced(run, finished=True)
    # Exactly one instance was ever created, and it is the run's, terminated and verified.
    (iid,) = lag.created
    assert ledger_instances() == [iid] and [d["InstanceId"] for d in all_instances(aws)] == [iid]
    assert _state(aws, iid) == "terminated"
    # The order: NotFound answers first (all four of them), then EC2 knew it.
    # One attempt: created and booted once, no boot failure, nothing terminated before training.
    assert phases(run).count("creating") == 1 and phases(run).count("booting") == 1
    events = [(op, ok) for op, i, ok in lag.events if i == iid]
    # The order: NotFound answers first (all four of them), then EC2 knew it; the only terminate
    # requests come after it was seen (at the run's end).
    assert [ok for _, ok in events[:4]] == ["NotFound"] * 4 and events[4] == ("describe", "ok")
    assert all(op == "describe" for op, _ in events[:5])
    proof = proof_of(run)
    assert proof["verified"] is True and proof["instance_ids"] == [iid]
    assert proof["final_describe"][0]["state"] == "terminated"


def test_a_terminate_ec2_answers_not_found_is_asked_again_until_terminated(
        e2e: E2E, aws: Any, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """TerminateInstances answers InvalidInstanceID.NotFound while the instance still runs ("this does
    not mean that the instance was or will be terminated"), and the describes and the tag listing
    don't show it meanwhile. The teardown asks again until EC2 terminates it, and only then verifies
    (before: the NotFound was taken as already gone and the run "verified" with its instance running)."""
    lag = moto_consistency.install(monkeypatch, after_terminate=3)
    res = launch(e2e, *SHORT_TRAIN)
    assert res.returncode == 0, res.stdout + res.stderr
    run = only_run()
    assert run.phase == "verified" and run.cost_usd is not None and run.cost_usd <= 3
    (iid,) = lag.created
    assert _state(aws, iid) == "terminated"
    terminates = [ok for op, i, ok in lag.events if op == "terminate" and i == iid]
    # NotFound three times (the instance ran on), then a terminate EC2 took.
    assert terminates[:3] == ["NotFound"] * 3 and terminates[3] == "ok"
    requests = _terminate_requests(run)
    assert requests and requests[0]["response"]["already_gone"] is False
    assert requests[0]["response"]["not_known_yet"] is True
    assert any((r.get("response") or {}).get("TerminatingInstances") for r in requests[1:])
    proof = proof_of(run)
    assert proof["verified"] is True and proof["final_describe"][0]["state"] == "terminated"


def test_a_spot_price_refusal_goes_on_to_the_next_offer(e2e: E2E, aws: Any,  # noqa: F811
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """EC2 refuses a spot request whose price is too low (SpotMaxPriceTooLow): no capacity for that
    offer, so the plan's next one is tried (before: the launch ended on the first refusal). No
    MaxPrice is ever sent: EC2's own ceiling is the on-demand price, gpurun's cap is the guard's."""
    dear = {t: 50.0 for t in ("g5.16xlarge", "g5.2xlarge", "g5.4xlarge", "g5.8xlarge")}  # all but g5.xlarge
    sent = spot_market(monkeypatch, dear)
    res = launch(e2e, "--spot", *SHORT_TRAIN)
    assert res.returncode == 0, res.stdout + res.stderr
    run = only_run()
    assert run.phase == "verified" and run.cost_usd is not None and run.cost_usd <= 3
    assert_trained_and_synced(run, finished=True)
    (desc,) = all_instances(aws)  # the refused offers made nothing
    assert desc["InstanceType"] == "g5.xlarge" and desc["State"]["Name"] == "terminated"
    assert len(sent) >= 2 and set(sent) == {None}  # tried more than one offer; never a MaxPrice
    assert proof_of(run)["verified"] is True
