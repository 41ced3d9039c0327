"""AWS multi-node runs (issue 18, `gpurun launch --nodes N`): every node of a run in one subnet and
one cluster placement group, behind a security group that lets the nodes reach one another; node 0's
private address is the rendezvous; cleanup removes the placement group after the instances.

The real boto3 against moto's server (tests/fixtures/moto_server.py). moto has no placement groups:
tests/fixtures/moto_placement.py puts CreatePlacementGroup / DescribePlacementGroups /
DeletePlacementGroup and RunInstances' Placement.GroupName into its EC2 server, in the real shapes.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from providers.aws import TAG_RUN_ID
from providers.aws.instance import TAG_NODE_RANK, TAG_NODES
from providers.base import InstanceSpec, NoCapacityError, ProviderError, owned_name
from tests.fixtures.moto_server import MotoAWS, moto_aws, moto_server  # noqa: F401  (fixtures)
from tests.test_aws_capacity import (
    answer,
    g5_offer,
    leftovers,
    one_line,
    quota_answer,
    quotas_client,
    refuse_run_instances,
)
from tests.test_aws_provider import ec2, fail_next, provider, pubkey, spec_for  # noqa: F401  (ec2, pubkey: fixtures)


def node(spec: InstanceSpec, rank: int, nodes: int = 2) -> InstanceSpec:
    """The spec the controller gives node `rank` of an N-node run: the same offer, key and run id."""
    return replace(spec, node_rank=rank, nodes=nodes)


def describe(ec2: Any, instance_id: str) -> dict[str, Any]:  # noqa: F811
    return ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]


def tags_of(desc: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in desc.get("Tags") or []}


def placement_groups(ec2: Any) -> list[dict[str, Any]]:  # noqa: F811
    return ec2.describe_placement_groups()["PlacementGroups"]


def test_aws_accepts_multi_node_runs(moto_aws: MotoAWS) -> None:  # noqa: F811
    p = provider()
    for n in (1, 2, 8):
        p.check_nodes(n)  # no refusal


def test_two_nodes_share_a_subnet_a_cluster_placement_group_and_a_group_open_to_each_other(
    moto_aws: MotoAWS, ec2: Any, pubkey: str  # noqa: F811
) -> None:
    p = provider(ssh_cidr="203.0.113.7")
    base = spec_for(p, "aws-mn", pubkey)
    n0 = p.create(node(base, 0))
    n1 = p.create(node(base, 1))
    assert n0.id != n1.id

    d0, d1 = describe(ec2, n0.id), describe(ec2, n1.id)
    # One subnet (so one zone), one cluster placement group named for the run.
    assert d0["SubnetId"] and d1["SubnetId"] == d0["SubnetId"]
    assert d1["Placement"]["AvailabilityZone"] == d0["Placement"]["AvailabilityZone"]
    assert d0["Placement"]["GroupName"] == d1["Placement"]["GroupName"] == "gpurun-aws-mn"
    [pg] = placement_groups(ec2)
    assert (pg["GroupName"], pg["Strategy"]) == ("gpurun-aws-mn", "cluster")
    assert tags_of(pg)[TAG_RUN_ID] == "aws-mn"

    # The private address is the rendezvous endpoint the other nodes connect to.
    assert n0.private_ip and n0.private_ip == d0["PrivateIpAddress"]
    assert n1.private_ip and n1.private_ip == d1["PrivateIpAddress"] and n1.private_ip != n0.private_ip
    assert p.get(n0.id).private_ip == n0.private_ip

    # Names and tags carry the rank; the run id tag is the run's, so list_run sees both nodes.
    assert (n0.name, n1.name) == ("gpurun-aws-mn", "gpurun-aws-mn-n1")
    assert owned_name(n1.name) == ("aws-mn", 1) and owned_name(n0.name) == ("aws-mn", 0)
    t0, t1 = tags_of(d0), tags_of(d1)
    assert (t0[TAG_RUN_ID], t0[TAG_NODE_RANK], t0[TAG_NODES]) == ("aws-mn", "0", "2")
    assert (t1[TAG_RUN_ID], t1[TAG_NODE_RANK], t1[TAG_NODES], t1["Name"]) == ("aws-mn", "1", "2", "gpurun-aws-mn-n1")
    vols = ec2.describe_volumes(Filters=[{"Name": "attachment.instance-id", "Values": [n1.id]}])["Volumes"]
    assert tags_of(vols[0])["Name"] == "gpurun-aws-mn-n1" and tags_of(vols[0])[TAG_NODE_RANK] == "1"
    assert sorted(i.id for i in p.list_run("aws-mn")) == sorted([n0.id, n1.id])
    assert sorted(i.id for i in p.list_owned() if i.run_id == "aws-mn") == sorted([n0.id, n1.id])

    # One key pair and one security group for the run, shared by its nodes.
    assert d0["KeyName"] == d1["KeyName"] == "gpurun-aws-mn"
    g0 = {g["GroupId"] for g in d0["NetworkInterfaces"][0]["Groups"]} | {g["GroupId"] for g in d0["SecurityGroups"]}
    g1 = {g["GroupId"] for g in d1["NetworkInterfaces"][0]["Groups"]} | {g["GroupId"] for g in d1["SecurityGroups"]}
    assert g0 == g1 and len(g0) == 1
    [group] = ec2.describe_security_groups(GroupIds=list(g0))["SecurityGroups"]
    assert group["GroupName"] == "gpurun-aws-mn"
    rules = group["IpPermissions"]
    # SSH from the configured address only; everything else only from the group itself.
    assert [(r["FromPort"], [x["CidrIp"] for x in r["IpRanges"]]) for r in rules if r["IpProtocol"] == "tcp"] == [
        (22, ["203.0.113.7/32"])]
    [own] = [r for r in rules if r["IpProtocol"] == "-1"]
    assert [pair["GroupId"] for pair in own["UserIdGroupPairs"]] == [group["GroupId"]] and own["IpRanges"] == []


def test_each_node_is_created_once(moto_aws: MotoAWS, ec2: Any, pubkey: str) -> None:  # noqa: F811
    p = provider()
    base = spec_for(p, "aws-mn-idem", pubkey)
    n0, n1 = p.create(node(base, 0)), p.create(node(base, 1))
    # A resumed controller asks again: each rank answers with its own instance, nothing new is made,
    # and the group's self rule and the placement group are there once (duplicates are fine).
    again = provider()
    assert again.create(node(base, 1)).id == n1.id and again.create(node(base, 0)).id == n0.id
    live = [i for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]]
    assert len(live) == 2 and len(placement_groups(ec2)) == 1
    [group] = ec2.describe_security_groups(GroupNames=["gpurun-aws-mn-idem"])["SecurityGroups"]
    assert len([r for r in group["IpPermissions"] if r["IpProtocol"] == "-1"]) == 1


def test_a_worker_node_needs_node_0(moto_aws: MotoAWS, ec2: Any, pubkey: str) -> None:  # noqa: F811
    p = provider()
    with pytest.raises(ProviderError) as exc:
        p.create(node(spec_for(p, "aws-mn-orphan", pubkey), 1))
    assert "node 0" in one_line(exc)
    assert [i for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]] == []


def test_a_worker_node_refused_for_capacity_beside_node_0_is_no_capacity_and_leaves_node_0(
    moto_aws: MotoAWS, ec2: Any, pubkey: str, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    p = provider()
    base = spec_for(p, "aws-mn-full", pubkey)
    n0 = p.create(node(base, 0))
    zone = describe(ec2, n0.id)["Placement"]["AvailabilityZone"]
    seen = refuse_run_instances(monkeypatch, {zone})
    with pytest.raises(NoCapacityError) as exc:
        p.create(node(base, 1))
    text = one_line(exc)
    assert "node 0" in text and "InsufficientInstanceCapacity" in text
    assert seen == [zone]  # node 0's zone only: no other zone is tried for a worker
    assert [i.id for i in p.list_run("aws-mn-full")] == [n0.id]  # node 0, its key and group untouched
    assert leftovers(ec2)["keys"] == ["gpurun-aws-mn-full"] and leftovers(ec2)["groups"] == ["gpurun-aws-mn-full"]


def test_cleanup_removes_the_placement_group_after_the_instances(
    moto_aws: MotoAWS, ec2: Any, pubkey: str  # noqa: F811
) -> None:
    p = provider(sg_delete_timeout_s=5)
    base = spec_for(p, "aws-mn-clean", pubkey)
    ids = [p.create(node(base, r, 3)).id for r in range(3)]
    ec2.terminate_instances(InstanceIds=ids)
    gone = p.cleanup("aws-mn-clean")
    assert "placement-group gpurun-aws-mn-clean" in gone
    assert "key-pair gpurun-aws-mn-clean" in gone and any(g.startswith("security-group ") for g in gone)
    assert placement_groups(ec2) == []
    assert leftovers(ec2)["keys"] == [] and leftovers(ec2)["groups"] == []
    assert p.cleanup("aws-mn-clean") == []  # nothing left: nothing to do


def test_cleanup_waits_for_the_instances_before_the_placement_group(
    moto_aws: MotoAWS, ec2: Any, pubkey: str  # noqa: F811
) -> None:
    p = provider(sg_delete_timeout_s=1)
    base = spec_for(p, "aws-mn-busy", pubkey)
    p.create(node(base, 0))
    with pytest.raises(ProviderError) as exc:  # a live node: the group (then the placement group) waits
        p.cleanup("aws-mn-busy")
    assert "still in use" in one_line(exc)
    assert [g["GroupName"] for g in placement_groups(ec2)] == ["gpurun-aws-mn-busy"]


def test_a_single_node_run_makes_no_placement_group(moto_aws: MotoAWS, ec2: Any, pubkey: str) -> None:  # noqa: F811
    p = provider()
    inst = p.create(spec_for(p, "aws-single", pubkey))
    desc = describe(ec2, inst.id)
    assert placement_groups(ec2) == [] and not desc["Placement"].get("GroupName")
    assert TAG_NODE_RANK not in tags_of(desc) and inst.name == "gpurun-aws-single"
    [group] = ec2.describe_security_groups(GroupNames=["gpurun-aws-single"])["SecurityGroups"]
    assert [r["IpProtocol"] for r in group["IpPermissions"]] == ["tcp"]  # SSH only, as before
    assert inst.private_ip and inst.private_ip == desc["PrivateIpAddress"]  # set for every instance
    ec2.terminate_instances(InstanceIds=[inst.id])
    assert "placement-group gpurun-aws-single" not in provider(sg_delete_timeout_s=5).cleanup("aws-single")


def test_node_0_still_tries_zone_by_zone_and_the_workers_follow_it(
    moto_aws: MotoAWS, ec2: Any, pubkey: str, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    p = provider()
    base = spec_for(p, "aws-mn-zones", pubkey)
    seen = refuse_run_instances(monkeypatch, {f"{moto_aws.region}a"})  # the zone AWS picks first in moto
    n0 = p.create(node(base, 0))
    n1 = p.create(node(base, 1))
    d0, d1 = describe(ec2, n0.id), describe(ec2, n1.id)
    assert seen[0] == f"{moto_aws.region}a" and d0["Placement"]["AvailabilityZone"] != seen[0]
    assert d1["SubnetId"] == d0["SubnetId"] and seen[-1] == d0["Placement"]["AvailabilityZone"]
    assert d0["Placement"]["GroupName"] == d1["Placement"]["GroupName"] == "gpurun-aws-mn-zones"


def test_cleanup_skips_placement_groups_it_may_not_describe(moto_aws: MotoAWS, ec2: Any, pubkey: str) -> None:  # noqa: F811
    # A single-node user's IAM policy need not allow DescribePlacementGroups: cleanup still works.
    p = provider(sg_delete_timeout_s=5)
    inst = p.create(spec_for(p, "aws-no-pg-perm", pubkey))
    ec2.terminate_instances(InstanceIds=[inst.id])
    calls = fail_next(p.ec2, "DescribePlacementGroups", "UnauthorizedOperation", 1,
                      "You are not authorized to perform this operation.")
    gone = p.cleanup("aws-no-pg-perm")
    assert calls and "key-pair gpurun-aws-no-pg-perm" in gone and not any("placement" in g for g in gone)


def test_the_vcpu_quota_is_checked_for_every_node(moto_aws: MotoAWS) -> None:  # noqa: F811
    # The plan calls check_nodes(N) before check_launchable(offer): N instances must fit the quota.
    p = provider()
    answer(quotas_client(p), "before-call.service-quotas.GetServiceQuota", quota_answer({"L-DB2E81BA": 8}))
    p.check_nodes(2)
    p.check_launchable(g5_offer(p))  # 2 x 4 vCPUs fit in 8
    p.check_nodes(3)
    with pytest.raises(ProviderError) as err:
        p.check_launchable(g5_offer(p))
    text = one_line(err)
    assert "3 x g5.xlarge need 12" in text and "--desired-value 12" in text
