"""AWSProvider: the real boto3 against moto's real server on loopback (tests/fixtures/moto_server.py)."""

from __future__ import annotations

import shlex
import subprocess
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from orchestrator.money.budgets_file import load_budgets, packaged_budgets_file
from providers import get_provider
from providers.aws import (
    DLAMI_SSM_PATH,
    STATIC_PRICE_DATE,
    TAG_OWNER,
    TAG_RUN_ID,
    AWSProvider,
    ebs_usd_per_hour,
    elapsed_seconds,
    termination_time,
)
from providers.aws.instance import self_destruct_script
from providers.base import (
    NOT_FOUND,
    RUNNING,
    TERMINATED,
    BillingRule,
    CredentialsError,
    InstanceSpec,
    Offer,
    ProviderError,
)
from tests.fixtures.moto_server import MotoAWS, moto_aws, moto_server  # noqa: F401  (fixtures)
from tests.offer_helpers import pick_offer

STATIC = f"static table ({STATIC_PRICE_DATE})"
# The provider carries no billing rule of its own: AWS's (per second, 60 s minimum) is budgets.yaml's.
AWS_RULE = load_budgets(packaged_budgets_file()).billing_for("aws")


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


def no_pricing(instance_type: str, region: str) -> float | None:
    return None


def provider(**options: Any) -> AWSProvider:
    options.setdefault("price_lookup", no_pricing)  # static prices, without the Pricing API round trip
    return AWSProvider(**options)


def spec_for(p: AWSProvider, run_id: str, pubkey: str, *, gpu: str = "A10G", spot: bool = False,
             **kw: Any) -> InstanceSpec:
    offer = pick_offer(p.offers(gpu=gpu, spot=spot), gpu)
    return InstanceSpec(run_id=run_id, offer=offer, ssh_public_key=pubkey, owner="tester", **kw)


def all_instances(ec2: Any) -> list[dict[str, Any]]:
    return [i for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]]


def gpurun_leftovers(ec2: Any) -> dict[str, list[str]]:
    keys = [k["KeyName"] for k in ec2.describe_key_pairs()["KeyPairs"] if k["KeyName"].startswith("gpurun-")]
    groups = [g["GroupName"] for g in ec2.describe_security_groups()["SecurityGroups"]
              if g["GroupName"].startswith("gpurun-")]
    return {"instances": [i["InstanceId"] for i in all_instances(ec2)], "keys": keys, "groups": groups}


NOTHING = {"instances": [], "keys": [], "groups": []}


def fail_next(client: Any, operation: str, code: str, times: int, message: str = "injected") -> list[int]:
    """Make the next `times` calls of `operation` answer an AWS error, through botocore's own
    before-call hook (the request never leaves; botocore raises the ClientError as for a real one)."""
    calls: list[int] = []

    class _Http:
        status_code = 400

    def hook(**_: Any) -> Any:
        calls.append(1)
        if len(calls) <= times:
            return _Http(), {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": 400}}
        return None

    client.meta.events.register(f"before-call.ec2.{operation}", hook)
    return calls


def runs_the_shipped_self_destruct(command: str) -> bool:
    return shlex.split(command) == ["sh", "-c", self_destruct_script(), "gpurun-self-destruct"]


def one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(exc.value)
    assert "\n" not in text and text, text
    return text


# ------------------------------------------------------------------------------------- offers


def test_registry_builds_the_aws_provider(moto_aws: MotoAWS) -> None:  # noqa: F811
    p = get_provider("aws", region="us-east-1", disk_gb=120)
    assert isinstance(p, AWSProvider)
    assert p.region == "us-east-1" and p.disk_gb == 120
    assert runs_the_shipped_self_destruct(p.self_destruct_command(None))  # type: ignore[arg-type]


def test_offers_fall_back_to_the_dated_static_table_when_pricing_is_unreachable(moto_aws: MotoAWS) -> None:  # noqa: F811
    # Default price_lookup = the AWS Pricing API, which moto does not serve: it must fail soft.
    p = AWSProvider()
    offers = p.offers(gpu="A10G")
    assert offers and {o.instance_type.split(".")[0] for o in offers} == {"g5"}
    assert all(o.gpu == "A10G" and o.gpu_count == 1 and o.provider == "aws" for o in offers)
    assert all(o.price_source == STATIC and not o.price_is_live for o in offers)
    best = pick_offer(offers, "a10g")
    assert best.instance_type == "g5.xlarge" and best.usd_per_hour == pytest.approx(1.006)
    # 100 GB gp3 root at us-east-1's 0.08 USD/GB-month + the public IPv4 address, 0.005 USD/h.
    assert best.extra_usd_per_hour == pytest.approx(100 * 0.08 / 730 + 0.005, abs=1e-6)
    assert best.billing == BillingRule()  # the plan sets budgets.yaml's rule; the provider has none
    assert best.memory_gb == pytest.approx(22.4, abs=0.1) and best.region == "us-east-1"
    # Multi-GPU types are offered for their own count.
    eight = p.offers(gpu="H100", count=8)
    assert [o.instance_type for o in eight] == ["p5.48xlarge"] and eight[0].gpu_count == 8


def test_an_injected_pricing_lookup_is_marked_live_and_its_failures_are_soft(moto_aws: MotoAWS) -> None:  # noqa: F811
    seen: list[tuple[str, str]] = []

    def lookup(instance_type: str, region: str) -> float | None:
        seen.append((instance_type, region))
        if instance_type == "g5.2xlarge":
            raise TimeoutError("pricing endpoint timed out")
        return 0.9 if instance_type == "g5.xlarge" else None

    offers = {o.instance_type: o for o in AWSProvider(price_lookup=lookup).offers(gpu="A10G")}
    assert ("g5.xlarge", "us-east-1") in seen
    assert offers["g5.xlarge"].usd_per_hour == 0.9 and offers["g5.xlarge"].price_source == "live"
    assert offers["g5.2xlarge"].price_source == STATIC  # raised: table
    assert offers["g5.4xlarge"].price_source == STATIC  # None: table


def test_spot_offers_use_the_spot_price_history(moto_aws: MotoAWS) -> None:  # noqa: F811
    offers = provider().offers(gpu="L40S", spot=True)
    assert offers and all(o.spot and o.price_source == "live" for o in offers)
    g6e = next(o for o in offers if o.instance_type == "g6e.xlarge")
    assert g6e.usd_per_hour == pytest.approx(0.00001)  # moto's fixed spot price
    assert g6e.details["spot_usd_per_hour_by_zone"] and g6e.details["on_demand_usd_per_hour"] == pytest.approx(1.861)


def test_offers_only_types_the_region_has(moto_aws: MotoAWS) -> None:  # noqa: F811
    p = provider(region="af-south-1")  # moto: only g4dn among the GPU families there
    assert {o.gpu for o in p.offers()} == {"T4"}
    with pytest.raises(ProviderError) as err:
        p.offers(gpu="A10G")
    assert "af-south-1" in one_line(err) and "T4" in str(err.value)
    # The static table is us-east-1's: elsewhere it is scaled up, never down.
    t4 = pick_offer(p.offers(gpu="T4"), "T4")
    assert t4.instance_type == "g4dn.xlarge" and t4.usd_per_hour > 0.526 and "static_note" in t4.details


def test_unknown_gpu_or_count_is_one_clear_line(moto_aws: MotoAWS) -> None:  # noqa: F811
    p = provider()
    with pytest.raises(ProviderError) as err:
        p.offers(gpu="RTX 9999")
    assert "RTX 9999" in one_line(err) and "A10G" in str(err.value)
    with pytest.raises(ProviderError) as err:
        p.offers(gpu="A10G", count=3)
    assert "1, 4, 8" in one_line(err)


# ------------------------------------------------------------------------------------- create


def test_create_sets_every_property_the_cap_and_the_teardown_rely_on(
    moto_aws: MotoAWS, ec2: Any, pubkey: str  # noqa: F811
) -> None:
    p = provider(ssh_cidr="203.0.113.7")
    inst = p.create(spec_for(p, "aws-run-1", pubkey))
    assert inst.provider == "aws" and inst.run_id == "aws-run-1" and inst.name == "gpurun-aws-run-1"
    assert inst.instance_type == "g5.xlarge" and inst.gpu_count == 1 and inst.created_at
    assert inst.usd_per_hour == pytest.approx(1.006 + ebs_usd_per_hour(100) + 0.005, abs=1e-6)  # + public IPv4

    desc = ec2.describe_instances(InstanceIds=[inst.id])["Reservations"][0]["Instances"][0]
    assert desc["ImageId"] == moto_aws.ami_id  # found through the DLAMI's public SSM parameter
    attr = ec2.describe_instance_attribute(InstanceId=inst.id, Attribute="instanceInitiatedShutdownBehavior")
    assert attr["InstanceInitiatedShutdownBehavior"]["Value"] == "terminate"
    tags = {t["Key"]: t["Value"] for t in desc["Tags"]}
    assert tags[TAG_RUN_ID] == "aws-run-1" and tags[TAG_OWNER] == "tester" and tags["Name"] == "gpurun-aws-run-1"
    assert desc["KeyName"] == "gpurun-aws-run-1"
    assert desc["MetadataOptions"]["HttpTokens"] == "required"

    vols = ec2.describe_volumes(Filters=[{"Name": "attachment.instance-id", "Values": [inst.id]}])["Volumes"]
    assert [(v["Size"], v["VolumeType"]) for v in vols] == [(100, "gp3")]
    vtags = {t["Key"]: t["Value"] for t in vols[0]["Tags"]}
    assert vtags[TAG_RUN_ID] == "aws-run-1" and vtags["Name"] == "gpurun-aws-run-1" and vtags[TAG_OWNER] == "tester"
    assert desc["BlockDeviceMappings"][0]["Ebs"]["DeleteOnTermination"] is True

    [group] = ec2.describe_security_groups(GroupIds=[g["GroupId"] for g in desc["SecurityGroups"]])["SecurityGroups"]
    assert group["GroupName"] == "gpurun-aws-run-1"
    assert [(r["IpProtocol"], r["FromPort"], r["ToPort"], [x["CidrIp"] for x in r["IpRanges"]])
            for r in group["IpPermissions"]] == [("tcp", 22, 22, ["203.0.113.7/32"])]
    [key] = ec2.describe_key_pairs(KeyNames=["gpurun-aws-run-1"])["KeyPairs"]
    assert {t["Key"]: t["Value"] for t in key.get("Tags", [])}.get(TAG_RUN_ID) == "aws-run-1"

    assert inst.ssh is not None and p.ssh_endpoint(inst) == inst.ssh
    assert (inst.ssh.host, inst.ssh.port, inst.ssh.user) == (desc["PublicDnsName"], 22, "ubuntu")
    assert runs_the_shipped_self_destruct(p.self_destruct_command(inst))
    assert p.self_destruct_files(inst) == []  # the script travels inside the command


def test_the_self_destruct_shuts_the_instance_down(tmp_path: Path) -> None:
    # A halt from inside = termination (InstanceInitiatedShutdownBehavior=terminate, asserted above).
    # Run the command as the watchdog does, with a `sudo` on PATH that records what it was asked.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    asked = tmp_path / "sudo.args"
    (bin_dir / "sudo").write_text(f'#!/bin/sh\necho "$@" >> {asked}\n')
    (bin_dir / "sudo").chmod(0o755)
    command = AWSProvider().self_destruct_command(None)  # type: ignore[arg-type]
    (tmp_path / "watchdog.selfdestruct").write_text(command + "\n")
    res = subprocess.run(["sh", str(tmp_path / "watchdog.selfdestruct")], cwd=tmp_path, capture_output=True,
                         text=True, env={"PATH": f"{bin_dir}:/usr/bin:/bin"}, check=False)
    assert res.returncode == 0, res.stderr
    assert asked.read_text().splitlines() == ["shutdown -h now"]


def test_create_is_idempotent_by_run_id(moto_aws: MotoAWS, ec2: Any, pubkey: str) -> None:  # noqa: F811
    p = provider()
    spec = spec_for(p, "aws-idem", pubkey)
    first = p.create(spec)
    again = provider().create(spec)  # a fresh controller resuming the run
    assert again.id == first.id
    assert len(all_instances(ec2)) == 1
    assert [i.id for i in p.list_run("aws-idem")] == [first.id]


def test_ssh_is_open_to_the_world_by_default_and_the_disk_is_at_least_asked(
    moto_aws: MotoAWS, ec2: Any, pubkey: str  # noqa: F811
) -> None:
    p = provider(disk_gb=60)
    inst = p.create(spec_for(p, "aws-disk", pubkey, disk_gb=80, volume_gb=20))
    [group] = ec2.describe_security_groups(GroupNames=["gpurun-aws-disk"])["SecurityGroups"]
    assert [x["CidrIp"] for r in group["IpPermissions"] for x in r["IpRanges"]] == ["0.0.0.0/0"]
    vols = ec2.describe_volumes(Filters=[{"Name": "attachment.instance-id", "Values": [inst.id]}])["Volumes"]
    assert [v["Size"] for v in vols] == [100]  # max(spec 80, option 60, AMI snapshot) + 20
    assert inst.raw["root_volume_gb"] == 100


def test_spot_create_asks_for_a_one_time_spot_instance(moto_aws: MotoAWS, ec2: Any, pubkey: str) -> None:  # noqa: F811
    p = provider()
    inst = p.create(spec_for(p, "aws-spot", pubkey, gpu="L40S", spot=True))
    desc = ec2.describe_instances(InstanceIds=[inst.id])["Reservations"][0]["Instances"][0]
    assert desc.get("InstanceLifecycle") == "spot" and inst.raw["lifecycle"] == "spot"


def test_a_subnet_option_launches_there_with_the_group(moto_aws: MotoAWS, ec2: Any, pubkey: str) -> None:  # noqa: F811
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.9.1.0/24")["Subnet"]["SubnetId"]
    p = provider(subnet_id=subnet)
    inst = p.create(spec_for(p, "aws-subnet", pubkey))
    desc = ec2.describe_instances(InstanceIds=[inst.id])["Reservations"][0]["Instances"][0]
    assert desc["SubnetId"] == subnet and desc["VpcId"] == vpc
    assert len(inst.raw["security_groups"]) == 1  # moto: only on the NIC with NetworkInterfaces
    [group] = ec2.describe_security_groups(GroupIds=inst.raw["security_groups"])["SecurityGroups"]
    assert group["GroupName"] == "gpurun-aws-subnet" and group["VpcId"] == vpc
    with pytest.raises(ProviderError) as err:
        provider(subnet_id="subnet-00000000000000000").create(spec_for(p, "aws-nosubnet", pubkey))
    assert "subnet-00000000000000000" in one_line(err)


def test_image_option_and_parameter_option(moto_aws: MotoAWS, ec2: Any, pubkey: str) -> None:  # noqa: F811
    other = next(i["ImageId"] for i in ec2.describe_images(
        Filters=[{"Name": "name", "Values": ["ubuntu/images/*"]}])["Images"] if i["ImageId"] != moto_aws.ami_id)
    p = provider(image=other)
    a = p.create(spec_for(p, "aws-img-a", pubkey))
    p2 = provider(ami_ssm_parameter=moto_aws.test_ami_parameter)
    b = p2.create(spec_for(p2, "aws-img-b", pubkey))
    images = {i["InstanceId"]: i["ImageId"] for i in all_instances(ec2)}
    assert images == {a.id: other, b.id: moto_aws.ami_id}


def test_a_retired_default_dlami_falls_back_to_the_newest_published(
    moto_aws: MotoAWS, ec2: Any, pubkey: str  # noqa: F811
) -> None:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ssm.models import ssm_backends

    from tests.fixtures.moto_server import _publish_public_parameter

    ssm = ssm_backends[DEFAULT_ACCOUNT_ID][moto_aws.region]
    ssm._parameters.pop(moto_aws.ami_parameter)
    imgs = [i["ImageId"] for i in ec2.describe_images(
        Filters=[{"Name": "name", "Values": ["*ubuntu*", "amzn*"]}])["Images"]][:3]
    assert len(imgs) == 3
    for version, ami in (("2.9-ubuntu-24.04", imgs[0]), ("2.12-ubuntu-22.04", imgs[1]), ("2.12-ubuntu-24.04", imgs[2])):
        _publish_public_parameter(
            f"{DLAMI_SSM_PATH}/oss-nvidia-driver-gpu-pytorch-{version}/latest/ami-id", ami, moto_aws.region
        )
    p = provider()
    inst = p.create(spec_for(p, "aws-dlami", pubkey))
    assert ec2.describe_instances(InstanceIds=[inst.id])["Reservations"][0]["Instances"][0]["ImageId"] == imgs[2]


# ------------------------------------------------------------------------ refused before creating


def test_missing_credentials_are_one_line_and_create_nothing(
    moto_aws: MotoAWS, ec2: Any, pubkey: str, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    spec = spec_for(provider(), "aws-nocreds", pubkey)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    p = provider()
    with pytest.raises(CredentialsError) as err:
        p.check_credentials()
    assert "AWS_ACCESS_KEY_ID" in one_line(err)
    with pytest.raises(CredentialsError) as err:
        p.create(spec)
    one_line(err)
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")
    with pytest.raises(CredentialsError) as err:
        AWSProvider().check_credentials()
    assert "no-such-profile" in one_line(err)
    assert gpurun_leftovers(ec2) == NOTHING  # ec2 was built while the credentials were set


def test_missing_region_is_a_credentials_error(moto_aws: MotoAWS, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    with pytest.raises(CredentialsError) as err:
        AWSProvider().check_credentials()
    assert "AWS_DEFAULT_REGION" in one_line(err)


def test_valid_credentials_pass_the_check(moto_aws: MotoAWS) -> None:  # noqa: F811
    p = provider()
    p.check_credentials()
    assert p.account()["account"] == "123456789012"


def test_unknown_instance_type_is_refused_before_anything_is_made(
    moto_aws: MotoAWS, ec2: Any, pubkey: str  # noqa: F811
) -> None:
    # moto's RunInstances would accept any type name: the provider must check first.
    offer = Offer(provider="aws", gpu="Z1", gpu_count=1, instance_type="g99.xlarge", usd_per_hour=1.0)
    with pytest.raises(ProviderError) as err:
        provider().create(InstanceSpec(run_id="aws-badtype", offer=offer, ssh_public_key=pubkey))
    assert "g99.xlarge" in one_line(err) and "us-east-1" in str(err.value)
    assert gpurun_leftovers(ec2) == NOTHING


def test_nonexistent_ami_is_refused_before_anything_is_made(
    moto_aws: MotoAWS, ec2: Any, pubkey: str  # noqa: F811
) -> None:
    p = provider(image="ami-0123456789abcdef0")
    with pytest.raises(ProviderError) as err:
        p.create(spec_for(p, "aws-noami", pubkey))
    assert "ami-0123456789abcdef0" in one_line(err) and "does not exist" in str(err.value)
    p = provider(ami_ssm_parameter="/gpurun/test/no-such-parameter")
    with pytest.raises(ProviderError) as err:
        p.create(spec_for(p, "aws-noami", pubkey))
    assert "/gpurun/test/no-such-parameter" in one_line(err)
    assert gpurun_leftovers(ec2) == NOTHING


def test_a_refused_launch_leaves_no_key_pair_or_group(moto_aws: MotoAWS, ec2: Any, pubkey: str) -> None:  # noqa: F811
    p = provider()
    spec = spec_for(p, "aws-quota", pubkey)
    fail_next(p.ec2, "RunInstances", "VcpuLimitExceeded", 1, "You have requested more vCPU capacity")
    with pytest.raises(ProviderError) as err:
        p.create(spec)
    assert "VcpuLimitExceeded" in one_line(err) and "quota" in str(err.value)
    assert gpurun_leftovers(ec2) == NOTHING


# ---------------------------------------------------------------------- get / terminate / list


def test_get_and_terminate_reach_terminated(moto_aws: MotoAWS, ec2: Any, pubkey: str) -> None:  # noqa: F811
    p = provider()
    inst = p.create(spec_for(p, "aws-term", pubkey))
    assert p.get(inst.id).state == RUNNING  # moto: pending at create, running at the next describe
    resp = p.terminate(inst.id)
    assert resp["instance_id"] == inst.id and resp["TerminatingInstances"][0]["InstanceId"] == inst.id
    assert resp["requested_at"] and resp["already_gone"] is False
    after = p.get(inst.id)
    assert after.state == TERMINATED and after.gone and after.ssh is None
    assert after.raw["terminated_at"] and AWS_RULE.cost(after.raw["elapsed_s"], after.usd_per_hour) > 0
    again = p.terminate(inst.id)  # already terminated is fine
    assert again["already_gone"] is True
    assert p.list_run("aws-term") == []  # the zero-match check of a proof


def test_unknown_instance_is_not_found(moto_aws: MotoAWS) -> None:  # noqa: F811
    p = provider()
    assert p.get("i-0123456789abcdef0").state == NOT_FOUND
    resp = p.terminate("i-0123456789abcdef0")
    assert resp["already_gone"] is True and resp["error"]["code"] == "InvalidInstanceID.NotFound"


def test_list_owned_finds_instances_by_the_run_id_tag(moto_aws: MotoAWS, ec2: Any, pubkey: str) -> None:  # noqa: F811
    p = provider()
    a = p.create(spec_for(p, "aws-list-a", pubkey))
    b = p.create(spec_for(p, "aws-list-b", pubkey))
    ec2.run_instances(ImageId=moto_aws.ami_id, InstanceType="g5.xlarge", MinCount=1, MaxCount=1)  # not ours
    p.terminate(b.id)
    owned = {i.id: i for i in p.list_owned()}
    assert set(owned) == {a.id, b.id}
    assert owned[a.id].run_id == "aws-list-a" and owned[a.id].state == RUNNING
    assert owned[b.id].state == TERMINATED
    assert owned[a.id].raw["launch_time"]
    # Just launched: its elapsed time bills as the 60 s minimum.
    assert AWS_RULE.cost(owned[a.id].raw["elapsed_s"], a.usd_per_hour) == pytest.approx(a.usd_per_hour * 60 / 3600)


def test_sweep_sees_an_instance_tagged_gpurun_made_outside_gpurun(moto_aws: MotoAWS, ec2: Any) -> None:  # noqa: F811
    ec2.run_instances(
        ImageId=moto_aws.ami_id, InstanceType="g5.xlarge", MinCount=1, MaxCount=1,
        BlockDeviceMappings=[{"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": 50, "VolumeType": "gp3"}}],
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": TAG_RUN_ID, "Value": "stray-run"}]}],
    )
    [stray] = provider().list_owned()
    assert stray.run_id == "stray-run" and stray.state == RUNNING and stray.created_at
    # No price tag: priced from the (static) list price plus its 50 GB of gp3.
    assert stray.usd_per_hour == pytest.approx(1.006 + ebs_usd_per_hour(50) + 0.005, abs=1e-6)  # + public IPv4
    minimum = stray.usd_per_hour * 60 / 3600
    assert AWS_RULE.cost(stray.raw["elapsed_s"], stray.usd_per_hour) == pytest.approx(minimum)  # the 60 s minimum


# -------------------------------------------------------------------------------------- cleanup


def test_cleanup_removes_key_pair_and_group_once_the_instance_is_gone(
    moto_aws: MotoAWS, ec2: Any, pubkey: str  # noqa: F811
) -> None:
    p = provider(sg_delete_timeout_s=30)
    inst = p.create(spec_for(p, "aws-clean", pubkey))
    p.terminate(inst.id)
    gone = p.cleanup("aws-clean")
    assert gone[0] == "key-pair gpurun-aws-clean" and gone[1].startswith("security-group sg-")
    assert ec2.describe_key_pairs(Filters=[{"Name": "key-name", "Values": ["gpurun-aws-clean"]}])["KeyPairs"] == []
    assert ec2.describe_security_groups(
        Filters=[{"Name": "group-name", "Values": ["gpurun-aws-clean"]}])["SecurityGroups"] == []
    assert p.cleanup("aws-clean") == []  # nothing left: nothing to do


def test_cleanup_waits_for_the_instance_then_deletes_the_group(
    moto_aws: MotoAWS, ec2: Any, pubkey: str  # noqa: F811
) -> None:
    p = provider(sg_delete_timeout_s=1.5)
    inst = p.create(spec_for(p, "aws-wait", pubkey))
    with pytest.raises(ProviderError) as err:  # still running: bounded wait, then one clear line
        p.cleanup("aws-wait")
    assert "still in use" in one_line(err) and inst.id in str(err.value)

    p.sg_delete_timeout_s = 30
    terminated = threading.Event()

    def terminate() -> None:
        provider().terminate(inst.id)
        terminated.set()

    timer = threading.Timer(1.0, terminate)
    timer.start()
    try:
        gone = p.cleanup("aws-wait")
        assert terminated.is_set()  # the group went only after the instance did
    finally:
        timer.join()
    assert [g.split()[0] for g in gone] == ["security-group"]  # the key pair went on the first try


def test_cleanup_retries_dependency_violation(moto_aws: MotoAWS, ec2: Any, pubkey: str) -> None:  # noqa: F811
    # Real EC2 refuses the group for a while after the instance reads terminated; moto never does.
    p = provider(sg_delete_timeout_s=30)
    inst = p.create(spec_for(p, "aws-depv", pubkey))
    p.terminate(inst.id)
    calls = fail_next(p.ec2, "DeleteSecurityGroup", "DependencyViolation", 2, "resource has a dependent object")
    gone = p.cleanup("aws-depv")
    assert len(calls) == 3 and any(g.startswith("security-group") for g in gone)


# ------------------------------------------------------------------------------------- billing


def test_billed_cost_from_moto_launch_and_termination_times(moto_aws: MotoAWS, ec2: Any) -> None:  # noqa: F811
    before = datetime.now(timezone.utc).replace(microsecond=0)  # moto keeps whole seconds
    [desc] = ec2.run_instances(ImageId=moto_aws.ami_id, InstanceType="g5.xlarge", MinCount=1, MaxCount=1)["Instances"]
    ec2.terminate_instances(InstanceIds=[desc["InstanceId"]])
    after = datetime.now(timezone.utc)
    desc = ec2.describe_instances(InstanceIds=[desc["InstanceId"]])["Reservations"][0]["Instances"][0]
    # moto records the termination only in StateTransitionReason: "User initiated (YYYY-MM-DD HH:MM:SS UTC)".
    ended = termination_time(desc)
    assert ended is not None and before <= desc["LaunchTime"] <= ended <= after  # in the order they happened
    assert AWS_RULE.billed_seconds(elapsed_seconds(desc)) == 60  # terminated within seconds: the 60 s minimum
    assert AWS_RULE.cost(elapsed_seconds(desc), 3.6) == pytest.approx(0.06)
    # With a termination time recorded by the caller instead (per second, rounded up).
    later = desc["LaunchTime"] + timedelta(seconds=125.2)
    assert elapsed_seconds(desc, ended_at=later) == pytest.approx(125.2)
    assert AWS_RULE.billed_seconds(elapsed_seconds(desc, ended_at=later)) == 126


def test_termination_time_parses_real_ec2_and_moto_reasons() -> None:
    base = {"LaunchTime": datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)}
    real = {**base, "State": {"Name": "terminated"}, "StateTransitionReason": "User initiated (2026-01-01 12:10:00 GMT)"}
    moto = {**base, "State": {"Name": "terminated"}, "StateTransitionReason": "User initiated (2026-01-01 12:00:30 UTC)"}
    assert termination_time(real) == datetime(2026, 1, 1, 12, 10, tzinfo=timezone.utc)
    assert elapsed_seconds(real) == 600 and elapsed_seconds(moto) == 30
    running = {**base, "State": {"Name": "running"}, "StateTransitionReason": ""}
    assert termination_time(running) is None
    assert elapsed_seconds(running, now=base["LaunchTime"].timestamp() + 3600.5) == 3600.5
    assert elapsed_seconds({"State": {"Name": "running"}}) is None  # no LaunchTime: nothing to count
    self_halted = {**base, "State": {"Name": "terminated"},
                   "StateTransitionReason": "Client.InstanceInitiatedShutdown: Instance initiated shutdown"}
    assert termination_time(self_halted) is None  # no time in it: the caller's own record is needed


def test_every_session_of_the_process_reads_the_service_models_once(moto_aws: MotoAWS,  # noqa: F811
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Sessions of several regions (as `offers` and `sweep` make them) share one botocore Loader: ec2's
    model is read from disk once, and boto3's data folder is on its search path once."""
    from providers.aws.api import AWSApi

    east = AWSApi(region="us-east-1")
    east.ec2.describe_regions()
    loader = east.session()._session.get_component("data_loader")
    read: list[str] = []
    load_file = loader.file_loader.load_file
    monkeypatch.setattr(loader.file_loader, "load_file", lambda path: read.append(path) or load_file(path))
    for region in ("us-west-2", "eu-central-1"):
        other = AWSApi(region=region)
        other.ec2.describe_regions()
        assert other.session()._session.get_component("data_loader") is loader
    assert read == []
    assert len(loader.search_paths) == len(set(loader.search_paths))
