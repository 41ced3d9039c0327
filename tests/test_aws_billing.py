"""AWS reconciliation and audit (issue 15): Cost Explorer's figure for a run, and everything in the
region that bills now. The real boto3 against moto's server (tests/fixtures/moto_server.py).

How Cost Explorer answers are given to the server (usable from an end-to-end test, also one whose
CLI runs in a subprocess against the same ThreadedMotoServer):
- `ce_answers(moto_aws, *results)`: moto's own API, POST /moto-api/static/ce/cost-and-usage-results
  (moto/ce/models.py `get_cost_and_usage`: the first request takes the first queued result, and the
  same request body gets the same result again; another body takes the next one). Each result is a
  real GetCostAndUsage output: `ce_result(days)` builds one from `ce_day(...)` rows. `forget=True`
  (default) first drops the answers moto remembered for earlier bodies, so a later
  `cost --reconcile` asking the same question gets the new, final answer (AWS's late data).
- `deny_cost_explorer(monkeypatch)`: the server answers GetCostAndUsage with the AccessDeniedException
  IAM gives a caller without ce:GetCostAndUsage (moto's CE does no IAM checks).
- `cost_allocation_tag_status(monkeypatch, status)`: the server answers ListCostAllocationTags (which
  moto lacks) with the run tag's status, "Active" / "Inactive", or None for a key Billing never saw.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from providers.aws import TAG_RUN_ID, AWSProvider, billing, inventory
from providers.aws.catalog import STATIC_CATALOGUE
from providers.aws.instance import TAG_PRICE
from providers.base import InstanceSpec
from providers.common import HOURS_PER_MONTH
from tests.fixtures.moto_server import MotoAWS, moto_aws, moto_server  # noqa: F401  (fixtures)
from tests.offer_helpers import pick_offer

DAY = 86400.0

# ------------------------------------------------------------------------ Cost Explorer answers


def ce_day(day: date, usd: float | str, *, estimated: bool = False) -> dict[str, Any]:
    """One ResultByTime of a DAILY, ungrouped GetCostAndUsage answer (API_ResultByTime.html: TimePeriod,
    Total (metric -> MetricValue {Amount: string, Unit}), Groups, Estimated)."""
    return {
        "TimePeriod": {"Start": day.isoformat(), "End": (day + timedelta(days=1)).isoformat()},
        "Total": {"UnblendedCost": {"Amount": str(usd), "Unit": "USD"}},
        "Groups": [], "Estimated": estimated,
    }


def ce_result(days: list[dict[str, Any]], next_page: str | None = None) -> dict[str, Any]:
    """A whole GetCostAndUsage output (GetCostAndUsageResponse: ResultsByTime,
    DimensionValueAttributes, NextPageToken when more pages follow)."""
    out: dict[str, Any] = {"ResultsByTime": days, "DimensionValueAttributes": []}
    if next_page:
        out["NextPageToken"] = next_page
    return out


def ce_answers(moto: MotoAWS, *results: dict[str, Any], forget: bool = True) -> None:
    """Queue GetCostAndUsage answers in moto's server (see the module docstring)."""
    if forget:
        from moto.ce.models import ce_backends
        from moto.core import DEFAULT_ACCOUNT_ID

        for backend in ce_backends[DEFAULT_ACCOUNT_ID].values():
            backend.cost_usage_results.clear()
    req = urllib.request.Request(
        f"{moto.endpoint}/moto-api/static/ce/cost-and-usage-results", method="POST",
        data=json.dumps({"results": list(results)}).encode(), headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 201


def ce_requests() -> list[dict[str, Any]]:
    """The GetCostAndUsage request bodies the server answered (moto keys its answers by them)."""
    from moto.ce.models import ce_backends
    from moto.core import DEFAULT_ACCOUNT_ID

    return [json.loads(body) for b in ce_backends[DEFAULT_ACCOUNT_ID].values() for body in b.cost_usage_results]


def deny_cost_explorer(monkeypatch: pytest.MonkeyPatch) -> None:
    """GetCostAndUsage refused as IAM refuses it: AccessDeniedException, "User: <arn> is not authorized
    to perform: ce:GetCostAndUsage on resource: ..." (the IAM message format,
    https://docs.aws.amazon.com/IAM/latest/UserGuide/troubleshoot_access-denied.html)."""
    from moto.ce.models import CostExplorerBackend
    from moto.core.exceptions import JsonRESTError

    def refuse(self: Any, body: str) -> Any:
        raise JsonRESTError(
            "AccessDeniedException",
            "User: arn:aws:iam::123456789012:user/gpurun is not authorized to perform: ce:GetCostAndUsage "
            "on resource: arn:aws:ce:us-east-1:123456789012:/GetCostAndUsage because no identity-based "
            "policy allows the ce:GetCostAndUsage action",
        )

    monkeypatch.setattr(CostExplorerBackend, "get_cost_and_usage", refuse)


def cost_allocation_tag_status(monkeypatch: pytest.MonkeyPatch, status: str | None) -> None:
    """ListCostAllocationTags answered by the server (moto has no such action): the run tag with
    `status` (API_CostAllocationTag.html: TagKey, Type UserDefined, Status Active | Inactive), or no
    entry at all (a key appears only after Billing has seen it on a resource)."""
    from moto.ce.responses import CostExplorerResponse

    def list_cost_allocation_tags(self: Any) -> str:
        tags = [] if status is None else [{
            "TagKey": TAG_RUN_ID, "Type": "UserDefined", "Status": status,
            "LastUpdatedDate": "2026-11-01T00:00:00Z",
        }]
        return json.dumps({"CostAllocationTags": tags})

    monkeypatch.setattr(CostExplorerResponse, "list_cost_allocation_tags", list_cost_allocation_tags,
                        raising=False)


# ------------------------------------------------------------------------ helpers


def provider(**options: Any) -> AWSProvider:
    options.setdefault("price_lookup", lambda t, r: None)  # the static table
    return AWSProvider(**options)


def days_ago(n: float) -> float:
    return time.time() - n * DAY


def utc(epoch: float) -> date:
    return billing.utc_day(epoch)


@pytest.fixture
def ec2(moto_aws: MotoAWS) -> Any:  # noqa: F811
    import boto3

    return boto3.client("ec2", region_name=moto_aws.region)


@pytest.fixture
def pubkey(tmp_path: Path) -> str:
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "gpurun-test", "-f", str(key)], check=True)
    return (tmp_path / "id_ed25519.pub").read_text().strip()


def test_the_tag_keys_agree_with_instance_py() -> None:
    assert billing.TAG_RUN_ID == inventory.TAG_RUN_ID == TAG_RUN_ID
    assert inventory.TAG_PRICE == TAG_PRICE


# ------------------------------------------------------------------------ billed_cost


def test_billed_cost_sums_the_days_cost_explorer_reports_for_the_run_tag(moto_aws: MotoAWS) -> None:  # noqa: F811
    start, end = days_ago(3.2), days_ago(3.0)
    ce_answers(moto_aws, ce_result([ce_day(utc(start), "1.2345678901")]))
    got = provider().billed_cost("run-abc", ["i-0123"], start, end)
    assert got.usd == pytest.approx(1.234568)
    assert got.complete is True
    assert "Cost Explorer" in got.source and "UnblendedCost" in got.source and "run-abc" in got.source
    assert got.details["rows"][0]["usd"] == pytest.approx(1.2345678901)
    # The question that went over the wire: DAILY UnblendedCost, filtered by the run's tag, UTC days
    # with CE's exclusive End.
    (request,) = ce_requests()
    assert request == {
        "TimePeriod": {"Start": utc(start).isoformat(), "End": (utc(end) + timedelta(days=1)).isoformat()},
        "Granularity": "DAILY", "Metrics": ["UnblendedCost"],
        "Filter": {"Tags": {"Key": TAG_RUN_ID, "Values": ["run-abc"], "MatchOptions": ["EQUALS"]}},
    }


def test_billed_cost_reads_every_page(moto_aws: MotoAWS) -> None:  # noqa: F811
    start, end = days_ago(4), days_ago(3)
    ce_answers(moto_aws, ce_result([ce_day(utc(start), "2.50")], next_page="page-2"),
               ce_result([ce_day(utc(end), "0.75")]))
    got = provider().billed_cost("run-abc", [], start, end)
    assert got.usd == pytest.approx(3.25)
    assert got.details["requests"] == 2


def test_an_estimated_day_leaves_the_figure_incomplete_until_a_later_reconcile(moto_aws: MotoAWS) -> None:  # noqa: F811
    start, end = days_ago(2.5), days_ago(2.4)
    ce_answers(moto_aws, ce_result([ce_day(utc(start), "0.90", estimated=True)]))
    first = provider().billed_cost("run-late", [], start, end)
    assert first.usd == pytest.approx(0.90)
    assert first.complete is False and "estimated" in first.source
    # AWS finalises the day: the same question now gets the final figure.
    ce_answers(moto_aws, ce_result([ce_day(utc(start), "1.01")]))
    later = provider().billed_cost("run-late", [], start, end)
    assert later.usd == pytest.approx(1.01)
    assert later.complete is True


def test_a_run_that_ended_within_a_day_is_incomplete_even_when_not_estimated(moto_aws: MotoAWS) -> None:  # noqa: F811
    start, end = time.time() - 7200, time.time() - 3600
    ce_answers(moto_aws, ce_result([ce_day(utc(start), "0.40")]))
    got = provider().billed_cost("run-fresh", [], start, end)
    assert got.usd == pytest.approx(0.40) and got.complete is False
    assert "24 h" in got.source


def test_no_data_yet_for_a_fresh_run_is_no_figure_and_asks_again(moto_aws: MotoAWS) -> None:  # noqa: F811
    start, end = time.time() - 7200, time.time() - 3600
    got = provider().billed_cost("run-fresh", [], start, end)  # nothing queued: moto answers no rows
    assert got.usd is None and got.complete is False
    assert "lags" in got.source and "\n" not in got.source


def test_access_denied_is_no_figure_naming_the_missing_permission(
    moto_aws: MotoAWS, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
) -> None:
    deny_cost_explorer(monkeypatch)
    got = provider().billed_cost("run-abc", [], days_ago(3), days_ago(2))
    assert got.usd is None
    assert "ce:GetCostAndUsage" in got.source and "AccessDeniedException" in got.source
    assert "\n" not in got.source
    assert got.complete is False  # once the permission is granted, a later reconcile gets the figure


@pytest.mark.parametrize("status", ["Inactive", None])
def test_a_tag_not_activated_for_cost_allocation_says_so(
    moto_aws: MotoAWS, monkeypatch: pytest.MonkeyPatch, status: str | None,  # noqa: F811
) -> None:
    # CE filters by a key it does not allocate by as if nothing carried it: zero rows (or zeros).
    cost_allocation_tag_status(monkeypatch, status)
    start, end = days_ago(5), days_ago(4.9)
    ce_answers(moto_aws, ce_result([ce_day(utc(start), "0")]))
    got = provider().billed_cost("run-untagged", [], start, end)
    assert got.usd is None
    assert "not activated as a cost allocation tag" in got.source and TAG_RUN_ID in got.source
    assert got.details["tag_status"] == (status or "absent")


def test_an_activated_tag_with_zero_cost_is_a_zero_figure(
    moto_aws: MotoAWS, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
) -> None:
    cost_allocation_tag_status(monkeypatch, "Active")
    start, end = days_ago(5), days_ago(4.9)
    ce_answers(moto_aws, ce_result([ce_day(utc(start), "0")]))
    got = provider().billed_cost("run-free", [], start, end)
    assert got.usd == 0.0 and got.complete is True


def test_tag_status_unreadable_still_points_at_activation(moto_aws: MotoAWS) -> None:  # noqa: F811
    # moto itself has no ListCostAllocationTags: the status is unknown, the hint is the same.
    got = provider().billed_cost("run-untagged", [], days_ago(5), days_ago(4.9))
    assert got.usd is None and "not activated" in got.source
    assert got.details["tag_status"].startswith("unknown")


# ------------------------------------------------------------------------ inventory


def money(usd: float) -> Any:
    return pytest.approx(usd, abs=1e-6)  # Billable rates are rounded to 6 decimals


def _run(ec2: Any, itype: str, *, ami: str, tags: dict[str, str] | None = None, gb: int = 20,
         vtype: str = "gp3") -> str:
    kwargs: dict[str, Any] = {
        "ImageId": ami, "InstanceType": itype, "MinCount": 1, "MaxCount": 1,
        "BlockDeviceMappings": [{"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": gb, "VolumeType": vtype,
                                                                  "DeleteOnTermination": True}}],
    }
    if tags:
        kwargs["TagSpecifications"] = [{"ResourceType": "instance",
                                        "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}]
    return str(ec2.run_instances(**kwargs)["Instances"][0]["InstanceId"])


def _describe(ec2: Any, instance_id: str) -> dict[str, Any]:
    return ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]


def _ebs_per_hour(ec2: Any, instance_id: str) -> float:
    ids = [m["Ebs"]["VolumeId"] for m in _describe(ec2, instance_id)["BlockDeviceMappings"]]
    return sum(inventory.volume_usd_per_hour(v) for v in ec2.describe_volumes(VolumeIds=ids)["Volumes"])


def _ipv4(ec2: Any, instance_id: str) -> float:
    return inventory.PUBLIC_IPV4_USD_PER_HOUR if _describe(ec2, instance_id).get("PublicIpAddress") else 0.0


def test_inventory_lists_gpurun_and_other_instances_stopped_ones_and_what_nobody_holds(
    moto_aws: MotoAWS, ec2: Any, pubkey: str,  # noqa: F811
) -> None:
    p = provider()
    ours = p.create(InstanceSpec(run_id="run-orphan", offer=pick_offer(p.offers(gpu="A10G"), "A10G"),
                                 ssh_public_key=pubkey, owner="tester"))
    other = _run(ec2, "g4dn.xlarge", ami=moto_aws.ami_id, tags={"Name": "someone-else"})
    stopped = _run(ec2, "g5.xlarge", ami=moto_aws.ami_id, gb=200, vtype="gp2")
    ec2.stop_instances(InstanceIds=[stopped])
    gone = _run(ec2, "g5.xlarge", ami=moto_aws.ami_id)
    ec2.terminate_instances(InstanceIds=[gone])
    zone = _describe(ec2, other)["Placement"]["AvailabilityZone"]
    detached = ec2.create_volume(
        AvailabilityZone=zone, Size=50, VolumeType="gp3",
        TagSpecifications=[{"ResourceType": "volume", "Tags": [{"Key": TAG_RUN_ID, "Value": "run-old"}]}],
    )["VolumeId"]
    address = ec2.allocate_address(Domain="vpc")["AllocationId"]

    found = {b.id: b for b in p.inventory()}

    assert gone not in found  # terminated bills nothing
    mine = found[ours.id]
    assert (mine.kind, mine.run_id, mine.state, mine.provider) == ("instance", "run-orphan", "running", "aws")
    assert mine.usd_per_hour == money(
        STATIC_CATALOGUE["g5.xlarge"][3] + _ebs_per_hour(ec2, ours.id) + _ipv4(ec2, ours.id))
    assert mine.created_at and "running" in mine.note

    theirs = found[other]
    assert theirs.run_id is None and theirs.name == "someone-else" and theirs.state == "running"
    assert theirs.usd_per_hour == money(
        STATIC_CATALOGUE["g4dn.xlarge"][3] + 20 * 0.08 / HOURS_PER_MONTH + _ipv4(ec2, other))

    halted = found[stopped]
    assert halted.state == "stopped" and halted.run_id is None
    # Only its 200 GB gp2 root volume (and a public IPv4 if it kept one) bills.
    assert halted.usd_per_hour == money(200 * 0.10 / HOURS_PER_MONTH + _ipv4(ec2, stopped))
    assert "stopped" in halted.note and "EBS" in halted.note and "no compute" in halted.note
    assert halted.raw["compute_usd_per_hour"] == 0.0

    vol = found[detached]
    assert (vol.kind, vol.state, vol.run_id) == ("volume", "available", "run-old")
    assert vol.usd_per_hour == money(50 * 0.08 / HOURS_PER_MONTH)
    assert "detached" in vol.note

    eip = found[address]
    assert (eip.kind, eip.usd_per_hour) == ("address", inventory.PUBLIC_IPV4_USD_PER_HOUR)
    # The root volumes attached to instances are priced with them, not listed again.
    assert {b.kind for b in found.values()} == {"instance", "volume", "address"}
    assert [b.id for b in found.values() if b.kind == "volume"] == [detached]
    # No credential (moto's fake key is "testing") in anything the audit may print or store.
    assert "testing" not in json.dumps([b.to_dict() for b in found.values()])


def test_an_instance_without_a_known_price_is_listed_with_none(moto_aws: MotoAWS, ec2: Any) -> None:  # noqa: F811
    unknown = _run(ec2, "t3.micro", ami=moto_aws.ami_id)
    (item,) = [b for b in provider().inventory() if b.id == unknown]
    assert item.usd_per_hour is None and "unknown" in item.note


def test_a_live_price_lookup_prices_any_type(moto_aws: MotoAWS, ec2: Any) -> None:  # noqa: F811
    small = _run(ec2, "t3.micro", ami=moto_aws.ami_id, gb=8)
    (item,) = [b for b in provider(price_lookup=lambda t, r: 0.0104).inventory() if b.id == small]
    assert item.usd_per_hour == money(0.0104 + 8 * 0.08 / HOURS_PER_MONTH + _ipv4(ec2, small))
    assert item.raw["price_source"] == "on-demand live"


def test_volume_prices_follow_the_ebs_price_list() -> None:
    assert inventory.volume_usd_per_hour({"VolumeType": "gp2", "Size": 730}) == money(0.10)
    assert inventory.volume_usd_per_hour({"VolumeType": "gp3", "Size": 730, "Iops": 3000,
                                          "Throughput": 125}) == money(0.08)
    # gp3 performance above the free 3,000 IOPS / 125 MB/s bills on top.
    assert inventory.volume_usd_per_hour({"VolumeType": "gp3", "Size": 0, "Iops": 3730,
                                          "Throughput": 125}) == money(730 * 0.005 / 730)
    assert inventory.volume_usd_per_hour({"VolumeType": "io2", "Size": 730, "Iops": 730}) == money(
        0.125 + 0.065)
