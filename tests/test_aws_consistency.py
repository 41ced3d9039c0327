"""AWS's real-API behaviours at the provider: EC2's eventual consistency around create and terminate
(tests/fixtures/moto_consistency.py answers NotFound the way AWS documents), and what an offer bills
per hour besides compute (the region's gp3, the public IPv4 address) and per GB out (egress).

The real boto3 against moto's server. Time is the provider's own clock (`Sightings.clock`), moved by
the test: nothing here waits on the wall clock.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from providers.aws import AWSProvider
from providers.aws.consistency import WINDOW_S
from providers.aws.rates import EGRESS_USD_PER_GB_BY_REGION, GP3_USD_PER_GB_MONTH_BY_REGION, RATES_DATE
from providers.base import NOT_FOUND, PENDING, STOPPING, TERMINATED, InstanceSpec
from tests.fixtures import moto_consistency
from tests.fixtures.moto_server import MotoAWS, moto_aws, moto_server  # noqa: F401  (fixtures)
from tests.offer_helpers import pick_offer


@pytest.fixture
def pubkey(tmp_path: Path) -> str:
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "gpurun-test", "-f", str(key)], check=True)
    return (tmp_path / "id_ed25519.pub").read_text().strip()


class Clock:
    """The provider's monotonic clock and its sleep: a sleep moves the clock, nothing waits."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def provider_on(clock: Clock, **options: Any) -> AWSProvider:
    p = AWSProvider(price_lookup=lambda t, r: None, **options)
    p.sightings.clock, p.sightings.sleep = clock, clock.sleep
    return p


def create(p: AWSProvider, run_id: str, pubkey: str) -> str:
    offer = pick_offer(p.offers(gpu="A10G"), "A10G")
    return p.create(InstanceSpec(run_id=run_id, offer=offer, ssh_public_key=pubkey, owner="tester")).id


# ---------------------------------------------------------------- 1. eventual consistency


def test_not_found_right_after_create_is_pending_until_the_window_ends(moto_aws: MotoAWS, pubkey: str,  # noqa: F811
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    p = provider_on(clock)
    lag = moto_consistency.install(monkeypatch, after_create=100)  # EC2 never catches up here
    iid = create(p, "aws-lagcreate", pubkey)
    got = p.get(iid)
    # Asked again with backoff inside the call (1 s, 2 s), then: not known yet, not gone.
    assert clock.slept == [1.0, 2.0] and [op for op, _, _ in lag.events] == ["describe"] * 3
    assert got.state == PENDING and not got.gone and "not known yet" in got.raw["not_known_yet"]
    assert got.ssh is None and got.boot_failure == "" and got.preempted == ""
    clock.now += WINDOW_S  # NotFound all through the window: now it means what it says
    assert p.get(iid).state == NOT_FOUND and p.get(iid).gone


def test_another_process_told_of_the_create_by_the_ledger_reads_not_found_as_not_known_yet(
        moto_aws: MotoAWS, pubkey: str, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """`gpurun teardown` (or a detached guard) in a fresh process, seconds after the create: its provider
    object never saw the create; the ledger's row tells it when (orchestrator/run/teardown.py)."""
    import time as wall

    lag = moto_consistency.install(monkeypatch, after_create=100)
    iid = create(provider_on(Clock()), "aws-otherproc", pubkey)
    clock = Clock()
    fresh = provider_on(clock)
    fresh.recall_created(iid, wall.time() - 5)  # the ledger's instance row: created 5 s ago
    got = fresh.get(iid)
    assert not got.gone and got.state == PENDING and "not known yet" in got.raw["not_known_yet"]
    assert [op for op, _, _ in lag.events].count("describe") == 3
    never_told = provider_on(Clock()).get(iid)
    assert never_told.gone  # without the ledger's word the NotFound would read as gone


def test_a_not_found_for_an_instance_this_provider_never_made_is_not_found(moto_aws: MotoAWS) -> None:  # noqa: F811
    clock = Clock()
    p = provider_on(clock)
    got = p.get("i-0123456789abcdef0")
    assert got.state == NOT_FOUND and clock.slept == []  # no window, no waiting


def test_a_terminate_answered_not_found_after_create_is_not_already_gone(moto_aws: MotoAWS, pubkey: str,  # noqa: F811
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    p = provider_on(clock)
    lag = moto_consistency.install(monkeypatch, after_create=3)
    iid = create(p, "aws-lagterm", pubkey)
    resp = p.terminate(iid)
    # Three NotFound answers (the instance runs on), each asked again with backoff inside the call.
    assert [(op, ok) for op, _, ok in lag.events] == [("terminate", "NotFound")] * 3
    assert resp["already_gone"] is False and resp["not_known_yet"] is True
    assert resp["error"]["code"] == "InvalidInstanceID.NotFound"
    got = p.get(iid)  # EC2 knows it now: it runs, so the teardown asks again
    assert got.state not in (TERMINATED, NOT_FOUND) and not got.gone
    again = p.terminate(iid)
    assert again["already_gone"] is False and again["TerminatingInstances"][0]["InstanceId"] == iid
    assert p.get(iid).state == TERMINATED


def test_not_found_after_our_terminate_is_stopping_until_the_window_ends(moto_aws: MotoAWS, pubkey: str,  # noqa: F811
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    p = provider_on(clock)
    iid = create(p, "aws-lagafter", pubkey)
    clock.now += WINDOW_S + 1  # long after the create: only the terminate's window counts
    p.terminate(iid)
    from tests.fixtures.moto_consistency import Lag  # noqa: F401  (the layer's model, for the reader)

    lag = moto_consistency.install(monkeypatch)
    lag.unknown[iid] = 100  # from here EC2 answers NotFound for it
    got = p.get(iid)
    assert got.state == STOPPING and not got.gone and "after the terminate" in got.raw["not_known_yet"]
    clock.now += WINDOW_S
    assert p.get(iid).gone


def test_a_not_found_terminate_long_after_create_is_already_gone(moto_aws: MotoAWS) -> None:  # noqa: F811
    clock = Clock()
    p = provider_on(clock)
    resp = p.terminate("i-0123456789abcdef0")  # an instance EC2 no longer lists
    assert resp["already_gone"] is True and resp["not_known_yet"] is False and clock.slept == []
    assert p.get("i-0123456789abcdef0").state == NOT_FOUND


# ------------------------------------------------- 6 and 7. what an offer bills besides compute


@pytest.mark.parametrize("region", ["us-east-1", "eu-central-1", "sa-east-1"])
def test_offers_carry_the_regions_gp3_public_ipv4_and_egress(moto_aws: MotoAWS, region: str) -> None:  # noqa: F811
    offer = pick_offer(AWSProvider(region=region, price_lookup=lambda t, r: 1.0).offers(gpu="A10G"), "A10G")
    gp3 = 100 * GP3_USD_PER_GB_MONTH_BY_REGION[region] / 730
    assert offer.extra_usd_per_hour == pytest.approx(gp3 + 0.005, abs=1e-6)
    lines = dict(offer.details["price_lines"])
    assert lines == {"compute": offer.usd_per_hour, "gp3 storage 100 GB": pytest.approx(gp3, abs=1e-6),
                     "public IPv4": 0.005}
    assert sum(lines.values()) == pytest.approx(offer.total_usd_per_hour, abs=1e-6)
    assert offer.egress_usd_per_gb == EGRESS_USD_PER_GB_BY_REGION[region]
    assert f"static table ({RATES_DATE})" in offer.egress_source and "100 GB free" in offer.egress_source
    assert "aws.amazon.com/ebs/pricing" in offer.details["ebs"] and "vpc/pricing" in offer.details["public_ipv4"]


def test_gp3_is_dearer_outside_us_east_1() -> None:
    from providers.aws.rates import egress_usd_per_gb, gp3_usd_per_gb_month

    assert gp3_usd_per_gb_month("eu-central-1")[0] > gp3_usd_per_gb_month("us-east-1")[0] == 0.08
    # A region the tables lack: the dearest figure, flagged as an upper bound.
    usd, source = gp3_usd_per_gb_month("il-central-1")
    assert usd == max(GP3_USD_PER_GB_MONTH_BY_REGION.values()) and "upper bound" in source
    usd, source = egress_usd_per_gb("il-central-1")
    assert usd == max(EGRESS_USD_PER_GB_BY_REGION.values()) and "upper bound" in source


def test_the_planned_price_tagged_at_create_carries_ipv4_and_the_regions_gp3(moto_aws: MotoAWS,  # noqa: F811
                                                                           pubkey: str) -> None:
    import boto3

    # moto publishes no DLAMI parameter there: one of its Ubuntu AMIs of that region, as the user's.
    images = boto3.client("ec2", region_name="eu-central-1").describe_images(
        Filters=[{"Name": "name", "Values": ["ubuntu/images/*"]}, {"Name": "architecture", "Values": ["x86_64"]}]
    )["Images"]
    p = AWSProvider(region="eu-central-1", price_lookup=lambda t, r: 1.0, image=images[0]["ImageId"])
    offer = pick_offer(p.offers(gpu="A10G"), "A10G")
    inst = p.create(InstanceSpec(run_id="aws-tagprice", offer=offer, ssh_public_key=pubkey, owner="tester"))
    assert inst.usd_per_hour == pytest.approx(offer.total_usd_per_hour, abs=1e-6)
    assert p.list_run("aws-tagprice")[0].usd_per_hour == pytest.approx(offer.total_usd_per_hour, abs=1e-6)


def test_node_1_finds_node_0s_subnet_before_the_listing_shows_node_0(moto_aws: MotoAWS, pubkey: str,  # noqa: F811
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from dataclasses import replace

    p = provider_on(Clock())
    moto_consistency.install(monkeypatch, after_create=100)  # the tag listing leaves node 0 out
    offer = pick_offer(p.offers(gpu="A10G"), "A10G")
    spec = InstanceSpec(run_id="aws-lagnodes", offer=offer, ssh_public_key=pubkey, owner="tester", nodes=2)
    node0 = p.create(spec)
    node1 = p.create(replace(spec, node_rank=1))
    assert node1.id != node0.id and node1.raw["subnet_id"] == node0.raw["subnet_id"] != ""
