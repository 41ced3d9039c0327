"""AWS on a new account's first day (issue 13): images the type cannot boot, the dated static
prices, the G/P vCPU quota at plan time, capacity refusals zone by zone, and launches EC2 ends
before they boot. The real boto3 against moto's server (tests/fixtures/moto_server.py); what moto
does not do (refuse for capacity, serve EC2 quotas) is injected as the real API answers it.
"""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from providers.aws import AWSProvider
from providers.aws.catalog import DLAMI_FAMILIES, STATIC_CATALOGUE, static_price
from providers.base import (
    TERMINATED,
    CredentialsError,
    InstanceSpec,
    NoCapacityError,
    Offer,
    ProviderError,
)
from tests.fixtures.moto_server import MotoAWS, moto_aws, moto_server  # noqa: F401  (fixtures)
from tests.offer_helpers import pick_offer

# ------------------------------------------------------------------------------------ helpers


@pytest.fixture
def pubkey(tmp_path: Path) -> str:
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "gpurun-test", "-f", str(key)], check=True)
    return (tmp_path / "id_ed25519.pub").read_text().strip()


@pytest.fixture
def ec2(moto_aws: MotoAWS) -> Any:  # noqa: F811
    import boto3

    return boto3.client("ec2", region_name=moto_aws.region)


def every_type_priced(instance_type: str, region: str) -> float:
    """A Pricing API that prices every type (the live path): what is offered is then the image's call."""
    return 1.0


def provider(**options: Any) -> AWSProvider:
    options.setdefault("price_lookup", lambda t, r: None)  # the static table
    return AWSProvider(**options)


def spec_for(p: AWSProvider, run_id: str, pubkey: str, gpu: str = "A10G", spot: bool = False) -> InstanceSpec:
    return InstanceSpec(run_id=run_id, offer=pick_offer(p.offers(gpu=gpu, spot=spot), gpu),
                        ssh_public_key=pubkey, owner="tester")


def leftovers(ec2: Any) -> dict[str, list[str]]:
    live = [i["InstanceId"] for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]
            if i["State"]["Name"] != "terminated"]
    keys = [k["KeyName"] for k in ec2.describe_key_pairs()["KeyPairs"] if k["KeyName"].startswith("gpurun-")]
    groups = [g["GroupName"] for g in ec2.describe_security_groups()["SecurityGroups"]
              if g["GroupName"].startswith("gpurun-")]
    return {"instances": live, "keys": keys, "groups": groups}


NOTHING: dict[str, list[str]] = {"instances": [], "keys": [], "groups": []}


def one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(exc.value)
    assert text and "\n" not in text, text
    return text


class _Http:
    def __init__(self, status: int) -> None:
        self.status_code = status


def answer(client: Any, event: str, reply: Callable[[dict[str, Any]], tuple[int, dict[str, Any]] | None]) -> list[dict]:
    """Answer `event` (botocore's `before-call.<service>.<Operation>`) with reply(params): a
    (status, parsed body) pair is what botocore then treats as the service's answer (>= 300 raises
    the ClientError it would raise for the real one); None lets the call go on to moto."""
    calls: list[dict[str, Any]] = []

    def hook(params: dict[str, Any], **_: Any) -> Any:
        # The serialized request: EC2's query protocol is a dict, Service Quotas' JSON protocol bytes.
        body = params.get("body") or {}
        body = json.loads(body) if isinstance(body, (bytes, str)) and body else dict(body or {})
        calls.append(body)
        got = reply(body)
        if got is None:
            return None
        status, body = got
        return _Http(status), {**body, "ResponseMetadata": {"HTTPStatusCode": status}}

    client.meta.events.register(event, hook)
    return calls


def error(code: str, message: str, status: int = 400) -> tuple[int, dict[str, Any]]:
    return status, {"Error": {"Code": code, "Message": message}}


def capacity_message(instance_type: str, zone: str) -> str:
    # The text EC2 answers (AWS docs, "Insufficient instance capacity":
    # https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/troubleshooting-launch.html#troubleshooting-launch-capacity)
    return (f"We currently do not have sufficient {instance_type} capacity in the Availability Zone you "
            f"requested ({zone}). Our system will be working on provisioning additional capacity.")


def refuse_run_instances(monkeypatch: pytest.MonkeyPatch, zones: set[str] | None,
                         code: str = "InsufficientInstanceCapacity") -> list[str]:
    """Make moto's server refuse RunInstances in `zones` (None: every zone) with the real EC2 error.

    moto never refuses for capacity. ThreadedMotoServer runs in this process, so the refusal goes
    into its EC2 backend and leaves the server as an EC2 error response (the real wire answer): it
    reaches any boto3, also the CLI's in a subprocess (an end-to-end fallback test can use it).
    Returns the zone of every RunInstances the server saw, in order.
    """
    from moto.ec2.exceptions import EC2ClientError
    from moto.ec2.models.instances import InstanceBackend

    real = InstanceBackend.run_instances
    seen: list[str] = []

    def run_instances(self: Any, image_id: str, count: int, user_data: Any, security_group_names: Any,
                      **kwargs: Any) -> Any:
        subnet = kwargs.get("subnet_id") or next(
            (n.get("SubnetId") for n in kwargs.get("nics") or [] if n.get("SubnetId")), None)
        # moto's own placement: the subnet's zone, else Placement, else "<region>a" (Instance.__init__).
        zone = (self.get_subnet(subnet).availability_zone if subnet
                else kwargs.get("placement") or f"{self.region_name}a")
        seen.append(zone)
        if zones is None or zone in zones:
            itype = kwargs.get("instance_type", "")
            message = capacity_message(itype, zone) if code != "Unsupported" else (
                f"Your requested instance type ({itype}) is not supported in your requested Availability "
                f"Zone ({zone}). Please retry your request by not specifying an Availability Zone.")
            raise EC2ClientError(code, message)
        return real(self, image_id, count, user_data, security_group_names, **kwargs)

    monkeypatch.setattr(InstanceBackend, "run_instances", run_instances)
    return seen


def set_state_reason(instance_id: str, region: str, state: str, code: str, message: str) -> None:
    """Put an EC2 state and StateReason on a moto instance (moto never ends a launch by itself)."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ec2.models import ec2_backends
    from moto.ec2.models.instances import StateReason

    inst = ec2_backends[DEFAULT_ACCOUNT_ID][region].get_instance(instance_id)
    inst._state.name = state
    inst._state.code = {"shutting-down": 32, "terminated": 48}[state]
    inst.state_reason = StateReason(message, code)


# ------------------------------------------------------------------- 1. what the image boots


def test_offers_leave_out_the_types_the_default_dlami_does_not_support(moto_aws: MotoAWS) -> None:  # noqa: F811
    # moto's us-east-1 offers p3dn (V100), g7e (RTX PRO 6000) and p6-b300: the DLAMI's release notes don't.
    offered = {o.instance_type.split(".")[0] for o in AWSProvider(price_lookup=every_type_priced).offers()}
    assert offered and offered <= set(DLAMI_FAMILIES)
    assert not offered & {"p3", "p3dn", "g7e", "p6-b300"}
    with pytest.raises(ProviderError) as err:
        provider().offers(gpu="V100", count=8)
    assert "V100" in one_line(err)


def test_a_users_own_image_gets_every_gpu_type(moto_aws: MotoAWS) -> None:  # noqa: F811
    p = AWSProvider(price_lookup=every_type_priced, image=moto_aws.ami_id)
    families = {o.instance_type.split(".")[0] for o in p.offers()}
    # Their support is the user's to know. (moto describes p3dn without GpuInfo, so it is no GPU type here.)
    assert "g7e" in families and not families <= set(DLAMI_FAMILIES)


def test_plan_and_create_refuse_an_unsupported_type_before_anything_is_made(
    moto_aws: MotoAWS, ec2: Any, pubkey: str  # noqa: F811
) -> None:
    offer = Offer(provider="aws", gpu="RTX PRO Server 6000", gpu_count=1, instance_type="g7e.2xlarge",
                  usd_per_hour=3.0, details={"vcpus": 8})
    p = provider()
    with pytest.raises(ProviderError) as err:
        p.check_launchable(offer)
    assert "g7e" in one_line(err) and "image=" in str(err.value) and "dlami" in str(err.value)
    with pytest.raises(ProviderError) as err:
        p.create(InstanceSpec(run_id="aws-g7e", offer=offer, ssh_public_key=pubkey))
    assert "g7e" in one_line(err)
    assert leftovers(ec2) == NOTHING
    provider(image=moto_aws.ami_id).check_launchable(offer)  # the user's AMI: not ours to refuse


# ------------------------------------------------------------------------ 2. static prices


def test_every_static_row_is_dated_sourced_and_bootable() -> None:
    for itype, (_, gpus, _, usd, (date, url)) in STATIC_CATALOGUE.items():
        assert itype.split(".")[0] in DLAMI_FAMILIES, itype
        assert gpus >= 1 and usd > 0 and url.startswith("https://") and len(date) == 10, itype
    # After AWS's June 2025 cut, from the dated catalog row, not the old price.
    assert static_price("p5.48xlarge", "us-east-1") == (55.04, "static table (2026-12-01)")
    assert static_price("p6-b200.48xlarge", "us-east-1") == (113.9328, "static table (2026-12-01)")
    assert static_price("p3dn.24xlarge", "us-east-1") is None  # no AMI of ours boots it


def test_a_static_price_says_the_date_of_its_own_row(moto_aws: MotoAWS) -> None:  # noqa: F811
    p = provider()
    [h100] = p.offers(gpu="H100", count=1)
    assert h100.instance_type == "p5.4xlarge" and h100.usd_per_hour == pytest.approx(6.88)
    assert h100.price_source == "static table (2026-12-01)"
    [b200] = p.offers(gpu="B200", count=8)
    assert b200.instance_type == "p6-b200.48xlarge" and b200.price_source == "static table (2026-12-01)"


# ----------------------------------------------------------------------- 3. vCPU quotas


def quota_answer(values: dict[str, float]) -> Callable[[dict[str, Any]], tuple[int, dict[str, Any]]]:
    # GetServiceQuota's output shape (botocore data/service-quotas/2019-06-24/service-2.json, Quota).
    def reply(params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        code = params["QuotaCode"]
        return 200, {"Quota": {"ServiceCode": "ec2", "QuotaCode": code, "Value": values[code], "Unit": "None",
                               "Adjustable": True, "GlobalQuota": False}}
    return reply


def quotas_client(p: AWSProvider) -> Any:
    return p.api.client("service-quotas", fast=True)


def g5_offer(p: AWSProvider, itype: str = "g5.xlarge", spot: bool = False) -> Offer:
    return next(o for o in p.offers(gpu="A10G", spot=spot) if o.instance_type == itype)


def test_moto_has_no_ec2_quotas_and_the_plan_goes_on_quietly(
    moto_aws: MotoAWS, caplog: pytest.LogCaptureFixture  # noqa: F811
) -> None:
    # moto's service-quotas serves only ServiceCode vpc (moto/servicequotas/models.py): an EC2 code
    # answers NoSuchResourceException, as the real API does for a code the region lacks.
    p = provider()
    with caplog.at_level(logging.INFO, logger="gpurun.providers.aws"):
        p.check_launchable(g5_offer(p))
    assert "L-DB2E81BA not checked" in caplog.text and "NoSuchResourceException" in caplog.text


def test_no_permission_to_read_quotas_skips_the_check(moto_aws: MotoAWS) -> None:  # noqa: F811
    p = provider()
    calls = answer(quotas_client(p), "before-call.service-quotas.GetServiceQuota",
                   lambda _: error("AccessDeniedException", "User is not authorized to perform: "
                                   "servicequotas:GetServiceQuota"))
    p.check_launchable(g5_offer(p))
    assert len(calls) == 1


def test_a_zero_quota_refuses_the_offer_in_one_line_that_says_how_to_ask(moto_aws: MotoAWS) -> None:  # noqa: F811
    p = provider()
    answer(quotas_client(p), "before-call.service-quotas.GetServiceQuota", quota_answer({"L-DB2E81BA": 0}))
    with pytest.raises(ProviderError) as err:
        p.check_launchable(g5_offer(p))
    text = one_line(err)
    assert "'Running On-Demand G and VT instances' (L-DB2E81BA) in us-east-1 is 0 vCPUs" in text
    assert "g5.xlarge needs 4" in text
    assert "https://us-east-1.console.aws.amazon.com/servicequotas/home/services/ec2/quotas/L-DB2E81BA" in text
    assert ("aws service-quotas request-service-quota-increase --service-code ec2 --quota-code L-DB2E81BA "
            "--desired-value 4 --region us-east-1") in text


def test_the_quota_counts_what_already_runs(moto_aws: MotoAWS, ec2: Any) -> None:  # noqa: F811
    ec2.run_instances(ImageId=moto_aws.ami_id, InstanceType="g5.2xlarge", MinCount=1, MaxCount=1)  # 8 vCPUs
    p = provider()
    answer(quotas_client(p), "before-call.service-quotas.GetServiceQuota", quota_answer({"L-DB2E81BA": 8}))
    with pytest.raises(ProviderError) as err:
        p.check_launchable(g5_offer(p))
    assert "is 8 vCPUs, 8 in use" in one_line(err) and "--desired-value 12" in str(err.value)
    roomy = provider()
    answer(quotas_client(roomy), "before-call.service-quotas.GetServiceQuota", quota_answer({"L-DB2E81BA": 12}))
    roomy.check_launchable(g5_offer(roomy))


def test_spot_and_p_types_ask_their_own_quotas(moto_aws: MotoAWS) -> None:  # noqa: F811
    p = provider()
    asked = answer(quotas_client(p), "before-call.service-quotas.GetServiceQuota",
                   quota_answer({"L-3819A6DF": 64, "L-417A185B": 0}))
    p.check_launchable(g5_offer(p, spot=True))
    [h100] = p.offers(gpu="H100", count=1)
    with pytest.raises(ProviderError) as err:
        p.check_launchable(h100)
    assert "'Running On-Demand P instances' (L-417A185B)" in one_line(err) and "p5.4xlarge needs 16" in str(err.value)
    assert [c["QuotaCode"] for c in asked] == ["L-3819A6DF", "L-417A185B"]


def test_vcpu_limit_at_launch_keeps_its_clear_line(moto_aws: MotoAWS, ec2: Any, pubkey: str) -> None:  # noqa: F811
    p = provider()
    spec = spec_for(p, "aws-vcpu", pubkey)
    answer(p.ec2, "before-call.ec2.RunInstances",
           lambda _: error("VcpuLimitExceeded", "You have requested more vCPU capacity than your current "
                           "vCPU limit of 0 allows for the instance bucket that the specified instance type belongs to."))
    with pytest.raises(ProviderError) as err:
        p.create(spec)
    assert not isinstance(err.value, NoCapacityError)
    assert "VcpuLimitExceeded" in one_line(err) and "quota" in str(err.value)
    assert leftovers(ec2) == NOTHING


# ---------------------------------------------------------------- 4. capacity, zone by zone


def test_no_capacity_in_one_zone_launches_in_another(
    moto_aws: MotoAWS, ec2: Any, pubkey: str, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    seen = refuse_run_instances(monkeypatch, {"us-east-1a", "us-east-1b"})
    p = provider()
    inst = p.create(spec_for(p, "aws-zones", pubkey))
    # AWS's pick (moto: 1a) refused, then the default subnets of the zones that offer g5.xlarge.
    assert seen == ["us-east-1a", "us-east-1b", "us-east-1c"]
    assert inst.raw["availability_zone"] == "us-east-1c" and inst.ssh is not None
    [live] = [i for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]]
    assert live["InstanceId"] == inst.id and live["Placement"]["AvailabilityZone"] == "us-east-1c"
    assert {g["GroupName"] for g in ec2.describe_security_groups(
        GroupIds=inst.raw["security_groups"])["SecurityGroups"]} == {"gpurun-aws-zones"}


def test_each_zone_attempt_has_its_own_client_token(moto_aws: MotoAWS, pubkey: str) -> None:  # noqa: F811
    # Injected at the boto3 boundary: the first two RunInstances answer the real capacity error.
    p = provider()
    spec = spec_for(p, "aws-tokens", pubkey)
    zones = iter(["us-east-1d", "us-east-1a"])  # AWS's pick, then the first subnet tried
    calls = answer(p.ec2, "before-call.ec2.RunInstances", lambda _: error(
        "InsufficientInstanceCapacity", capacity_message("g5.xlarge", next(zones))) if len(calls) <= 2 else None)
    p.create(spec)
    tokens = [c["ClientToken"] for c in calls]
    assert len(tokens) == 3 and len(set(tokens)) == 3 and tokens[0] == "gpurun-aws-tokens"
    assert "SubnetId" not in calls[0] and all("SubnetId" in c for c in calls[1:])


def test_the_next_offer_of_a_run_gets_a_new_client_token(moto_aws: MotoAWS, ec2: Any, pubkey: str) -> None:  # noqa: F811
    # Offer fallback: the run's first instance is gone and its second offer is created. A reused
    # token would make real EC2 answer with the first (terminated) instance.
    p = provider()
    first = p.create(spec_for(p, "aws-fallback", pubkey))
    p.terminate(first.id)
    calls = answer(p.ec2, "before-call.ec2.RunInstances", lambda _: None)
    spec = spec_for(p, "aws-fallback", pubkey)
    spec.attempt = 2
    second = p.create(spec)
    assert [c["ClientToken"] for c in calls] == ["gpurun-aws-fallback-a2"] and second.id != first.id


def test_every_zone_refusing_is_no_capacity_with_nothing_left(
    moto_aws: MotoAWS, ec2: Any, pubkey: str, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    seen = refuse_run_instances(monkeypatch, None)
    p = provider()
    with pytest.raises(NoCapacityError) as err:
        p.create(spec_for(p, "aws-nocap", pubkey))
    text = one_line(err)
    # g5.xlarge is offered in a, b, c, d, f in moto's us-east-1 (not e): each tried once.
    assert seen == ["us-east-1a", "us-east-1b", "us-east-1c", "us-east-1d", "us-east-1f"]
    assert "no on-demand capacity for g5.xlarge in us-east-1" in text and "us-east-1f" in text
    assert "InsufficientInstanceCapacity" in text
    assert leftovers(ec2) == NOTHING


def test_unsupported_in_a_zone_also_moves_on(
    moto_aws: MotoAWS, ec2: Any, pubkey: str, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    seen = refuse_run_instances(monkeypatch, {"us-east-1a"}, code="Unsupported")
    p = provider()
    inst = p.create(spec_for(p, "aws-unsup", pubkey, gpu="L40S", spot=True))
    assert seen == ["us-east-1a", "us-east-1b"] and inst.raw["lifecycle"] == "spot"


def test_a_pinned_subnet_is_one_zone(
    moto_aws: MotoAWS, ec2: Any, pubkey: str, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.9.1.0/24", AvailabilityZone="us-east-1b")["Subnet"]["SubnetId"]
    seen = refuse_run_instances(monkeypatch, {"us-east-1b"})
    p = provider(subnet_id=subnet)
    with pytest.raises(NoCapacityError) as err:
        p.create(spec_for(p, "aws-pinned", pubkey))
    assert seen == ["us-east-1b"] and "subnet_id" in one_line(err)
    assert leftovers(ec2) == NOTHING


def test_opt_in_required_is_not_a_credentials_problem(moto_aws: MotoAWS, ec2: Any, pubkey: str) -> None:  # noqa: F811
    p = provider()
    spec = spec_for(p, "aws-optin", pubkey)
    answer(p.ec2, "before-call.ec2.RunInstances", lambda _: error(
        "OptInRequired", "In order to use this AWS Marketplace product you need to accept terms and subscribe."))
    with pytest.raises(ProviderError) as err:
        p.create(spec)
    assert not isinstance(err.value, CredentialsError)
    assert "opt in to the region/subscription" in one_line(err) and "credentials" not in str(err.value)
    assert leftovers(ec2) == NOTHING


# ------------------------------------------------------------- 5. launches that never boot


def test_an_instance_ended_for_capacity_during_launch_reports_a_boot_failure(
    moto_aws: MotoAWS, pubkey: str  # noqa: F811
) -> None:
    p = provider()
    inst = p.create(spec_for(p, "aws-noboot", pubkey, gpu="L40S", spot=True))
    assert p.get(inst.id).boot_failure == ""
    set_state_reason(inst.id, moto_aws.region, "shutting-down", "Server.InsufficientInstanceCapacity",
                     "Server.InsufficientInstanceCapacity: Insufficient capacity.")
    got = p.get(inst.id)
    assert got.state != TERMINATED and not got.gone  # not gone until EC2 says terminated
    assert "Server.InsufficientInstanceCapacity" in got.boot_failure and inst.id in got.boot_failure
    assert "\n" not in got.boot_failure
    assert got.raw["state_reason"]["Code"] == "Server.InsufficientInstanceCapacity"
    set_state_reason(inst.id, moto_aws.region, "terminated", "Server.InsufficientInstanceCapacity", "")
    assert p.get(inst.id).gone and p.get(inst.id).boot_failure


def test_a_user_terminated_instance_is_no_boot_failure(moto_aws: MotoAWS, pubkey: str) -> None:  # noqa: F811
    p = provider()
    inst = p.create(spec_for(p, "aws-userterm", pubkey))
    p.terminate(inst.id)
    got = p.get(inst.id)
    assert got.state == TERMINATED and got.boot_failure == ""  # moto: Client.UserInitiatedShutdown


# ------------------------------------------------------------ spot: no MaxPrice, price refusals


def spot_market(monkeypatch: pytest.MonkeyPatch, market: dict[str, float]) -> list[str | None]:
    """moto's server answers a spot RunInstances as EC2 does when the spot price is above what the
    request may pay: `SpotMaxPriceTooLow`, "Your Spot request price of X is lower than the minimum
    required Spot request fulfillment price of Y." (the EC2 error code list,
    https://docs.aws.amazon.com/AWSEC2/latest/APIReference/errors-overview.html; the text as EC2
    sends it, quoted in aws/aws-parallelcluster-node#415). What the request may pay is its
    `SpotOptions.MaxPrice`, or without one the on-demand price (botocore's ec2 model,
    SpotMarketOptions.MaxPrice: "If you do not specify this parameter, you will pay the current Spot
    price"; the default maximum is the on-demand price: here the static table's us-east-1 row).
    moto has no spot market (its price history is a fixed 0.00001): `market` is the spot price per
    type now. Returns the MaxPrice of every spot RunInstances (None: not sent), in order."""
    from moto.ec2.exceptions import EC2ClientError
    from moto.ec2.responses import EC2Response

    real = EC2Response.run_instances
    sent: list[str | None] = []

    def run_instances(self: Any) -> Any:
        if self._get_param("InstanceMarketOptions.MarketType") == "spot":
            itype = str(self._get_param("InstanceType"))
            max_price = self._get_param("InstanceMarketOptions.SpotOptions.MaxPrice")
            sent.append(max_price)
            limit = float(max_price) if max_price else static_price(itype, "us-east-1")[0]  # type: ignore[index]
            if itype in market and market[itype] > limit:
                raise EC2ClientError("SpotMaxPriceTooLow", f"Your Spot request price of {limit:g} is lower than the "
                                     f"minimum required Spot request fulfillment price of {market[itype]:g}.")
        return real(self)

    monkeypatch.setattr(EC2Response, "run_instances", run_instances)
    return sent


def test_a_spot_launch_sends_no_max_price_and_survives_a_price_rise(moto_aws: MotoAWS, ec2: Any, pubkey: str,  # noqa: F811
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # Planned at moto's spot price (0.00001); by launch the market is at 0.5, still under on-demand.
    p = provider()
    spec = spec_for(p, "aws-spotrise", pubkey, spot=True)
    assert spec.offer.spot and spec.offer.usd_per_hour < 0.5
    sent = spot_market(monkeypatch, {spec.offer.instance_type: 0.5})
    inst = p.create(spec)
    assert sent == [None]  # no MaxPrice: EC2 caps a spot instance at the on-demand price by itself
    assert inst.state != TERMINATED and leftovers(ec2)["instances"] == [inst.id]


def test_a_spot_price_refusal_is_no_capacity_and_leaves_nothing(moto_aws: MotoAWS, ec2: Any, pubkey: str,  # noqa: F811
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # The spot price went above the type's on-demand price: EC2 refuses; another offer may do.
    p = provider()
    spec = spec_for(p, "aws-spotdear", pubkey, spot=True)
    sent = spot_market(monkeypatch, {spec.offer.instance_type: 50.0})
    with pytest.raises(NoCapacityError) as err:
        p.create(spec)
    text = one_line(err)
    assert "SpotMaxPriceTooLow" in text and spec.offer.instance_type in text and "another offer" in text
    assert sent == [None]
    assert leftovers(ec2) == NOTHING  # the key pair and group it made are gone again
