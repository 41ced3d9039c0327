"""Where a run's instance sits and who may reach it: the VPC and subnet, a security group opening
TCP 22 only (and, for a multi-node run, all traffic between its own instances), the run's imported
key pair, and their removal after the instance is gone."""

from __future__ import annotations

import ipaddress
import logging
import urllib.request
from typing import Any

from providers.aws.api import LIVE_STATES, AWSApi, Tolerated
from providers.base import ProviderError
from providers.common import one_line, retry_policy

log = logging.getLogger("gpurun.providers.aws")

OPEN_TO_ALL = "0.0.0.0/0"
_CHECKIP_URL = "https://checkip.amazonaws.com"  # AWS's own what-is-my-address service

Tags = list[dict[str, str]]


class SecurityGroupBusy(Exception):
    """The run's security group is still attached (DependencyViolation, or a live instance uses it)."""


def resolve_ssh_cidr(value: str | None) -> str:
    """The CIDR allowed on port 22: the option as given (an address becomes a /32), "auto" for this
    machine's public address, the whole IPv4 internet when unset (the run's key is the guard)."""
    value = (value or "").strip()
    if not value:
        return OPEN_TO_ALL
    if value == "auto":
        try:  # only asked for when the user opted in
            with urllib.request.urlopen(_CHECKIP_URL, timeout=5) as resp:  # noqa: S310
                value = resp.read().decode().strip()
        except OSError as exc:
            log.warning("aws: cannot learn this machine's public address (%s); opening 22 to %s", exc, OPEN_TO_ALL)
            return OPEN_TO_ALL
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError as exc:
        raise ProviderError(f"ssh_cidr {value!r} is not an address or CIDR (e.g. 203.0.113.7/32)") from exc
    if net.version != 4:
        raise ProviderError(f"ssh_cidr {value!r}: only IPv4 is supported")
    return str(net)


def find_network(api: AWSApi, subnet_id: str | None) -> tuple[str, str | None]:
    """(vpc id, subnet id or None for the default VPC's default subnet)."""
    if subnet_id:
        subnets = api.call("describe-subnets", api.ec2.describe_subnets, SubnetIds=[subnet_id]).get("Subnets") or []
        if not subnets:
            raise ProviderError(f"subnet {subnet_id!r} does not exist in {api.region}")
        return subnets[0]["VpcId"], subnet_id
    vpcs = api.call(
        "describe-vpcs", api.ec2.describe_vpcs, Filters=[{"Name": "is-default", "Values": ["true"]}]
    ).get("Vpcs") or []
    if not vpcs:
        raise ProviderError(
            f"no default VPC in {api.region}: run `aws ec2 create-default-vpc` or pass subnet_id=subnet-..."
        )
    return vpcs[0]["VpcId"], None


def ensure_key_pair(api: AWSApi, name: str, public_key: str, tags: Tags) -> None:
    """Import the run's public key as `name`."""

    def do_import(**extra: Any) -> Any:
        return api.call(
            "import-key-pair", api.ec2.import_key_pair, KeyName=name,
            PublicKeyMaterial=public_key.strip().encode(),
            TagSpecifications=[{"ResourceType": "key-pair", "Tags": tags}], **extra,
        )

    if isinstance(do_import(tolerate=("InvalidKeyPair.Duplicate",)), Tolerated):
        # Left from an earlier attempt of this run with no live instance: replace it with this key.
        api.call("delete-key-pair", api.ec2.delete_key_pair, KeyName=name)
        do_import()


def ensure_security_group(api: AWSApi, name: str, vpc_id: str, cidr: str, tags: Tags) -> tuple[str, bool]:
    """The run's group with TCP 22 from `cidr` only: (group id, whether this call created it)."""
    got = api.call(
        "create-security-group", api.ec2.create_security_group,
        GroupName=name, VpcId=vpc_id, Description=f"gpurun {name}: SSH (22) only",
        TagSpecifications=[{"ResourceType": "security-group", "Tags": tags}],
        tolerate=("InvalidGroup.Duplicate",),
    )
    created = not isinstance(got, Tolerated)
    if created:
        group_id = got["GroupId"]
    else:
        groups = api.call(
            "describe-security-groups", api.ec2.describe_security_groups,
            Filters=[{"Name": "group-name", "Values": [name]}, {"Name": "vpc-id", "Values": [vpc_id]}],
        ).get("SecurityGroups") or []
        if not groups:
            raise ProviderError(f"security group {name} exists but cannot be read in {vpc_id}")
        group_id = groups[0]["GroupId"]
    api.call(
        "authorize-security-group-ingress", api.ec2.authorize_security_group_ingress,
        GroupId=group_id,
        IpPermissions=[{
            "IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
            "IpRanges": [{"CidrIp": cidr, "Description": "gpurun ssh"}],
        }],
        tolerate=("InvalidPermission.Duplicate",),
    )
    return group_id, created


def allow_group_traffic(api: AWSApi, group_id: str) -> None:
    """Let the instances of the group reach one another on every port and protocol (a multi-node
    run: the rendezvous on 29500, and the further TCP ports NCCL / gloo open between the nodes).

    The rule names the group itself as the source (IpPermissions with IpProtocol "-1", "all
    protocols", and UserIdGroupPairs with its own GroupId: botocore's ec2 service model, IpPermission
    / UserIdGroupPair; a VPC's default security group has the same self-referencing inbound rule,
    https://docs.aws.amazon.com/vpc/latest/userguide/default-security-group.html), so nothing
    outside the run's instances is let in. Idempotent: the rule already there answers
    InvalidPermission.Duplicate. (A self-reference does not keep the group from being deleted:
    DeleteSecurityGroup fails with DependencyViolation for a group "referenced by another security
    group", botocore's ec2 service model.)
    """
    api.call(
        "authorize-security-group-ingress", api.ec2.authorize_security_group_ingress,
        GroupId=group_id,
        IpPermissions=[{
            "IpProtocol": "-1",
            "UserIdGroupPairs": [{"GroupId": group_id, "Description": "gpurun multi-node: the run's own nodes"}],
        }],
        tolerate=("InvalidPermission.Duplicate",),
    )


def undo_launch_setup(api: AWSApi, name: str, group_id: str | None) -> None:
    """Best effort after a refused run-instances: nothing was launched, so nothing must remain."""
    try:
        api.ec2.delete_key_pair(KeyName=name)
        if group_id:
            api.ec2.delete_security_group(GroupId=group_id)
    except Exception as exc:  # noqa: BLE001 - cleanup(run_id) removes them later anyway
        log.warning("aws: could not undo %s after a failed launch: %s", name, one_line(exc))


def delete_key_pair(api: AWSApi, name: str) -> list[str]:
    """Delete the run's key pair; what went (nothing when it was already gone)."""
    keys = api.call(
        "describe-key-pairs", api.ec2.describe_key_pairs, Filters=[{"Name": "key-name", "Values": [name]}]
    ).get("KeyPairs") or []
    if not keys:
        return []
    api.call("delete-key-pair", api.ec2.delete_key_pair, KeyName=name)
    return [f"key-pair {name}"]


def delete_security_groups(api: AWSApi, name: str, timeout_s: float) -> list[str]:
    """Delete the run's security group(s), each once no instance uses it: waits, bounded by
    timeout_s, for a termination to finish; out of time is one line saying what to do."""
    groups = api.call(
        "describe-security-groups", api.ec2.describe_security_groups,
        Filters=[{"Name": "group-name", "Values": [name]}],
    ).get("SecurityGroups") or []
    gone: list[str] = []
    for group in groups:
        group_id = group["GroupId"]
        # Bounded by time; the try count only has to be out of the way (one per shortest wait).
        policy = retry_policy(
            attempts=int(timeout_s / 0.5) + 1, deadline_s=timeout_s, initial_s=0.5, max_wait_s=10,
            retry_on=lambda exc: isinstance(exc, SecurityGroupBusy), logger=log,
        )
        try:
            policy(_delete_unused_group, api, group_id)
        except SecurityGroupBusy as exc:
            raise ProviderError(
                f"security group {group_id} ({name}) still in use after {timeout_s:.0f}s "
                f"({exc}): terminate the instance, then run the teardown again"
            ) from exc
        gone.append(f"security-group {group_id}")
    return gone


def _delete_unused_group(api: AWSApi, group_id: str) -> None:
    users = [
        i["InstanceId"]
        for res in api.paginate(
            "describe-instances", "describe_instances", "Reservations",
            Filters=[{"Name": "instance.group-id", "Values": [group_id]},
                     {"Name": "instance-state-name", "Values": [*LIVE_STATES, "shutting-down"]}],
        )
        for i in res.get("Instances") or []
    ]
    if users:  # real EC2 would answer DependencyViolation; moto deletes it regardless
        raise SecurityGroupBusy(f"used by {', '.join(users)}")
    got = api.call(
        "delete-security-group", api.ec2.delete_security_group, GroupId=group_id,
        tolerate=("InvalidGroup.NotFound", "DependencyViolation", "InvalidGroup.InUse"),
    )
    if isinstance(got, Tolerated) and got.code != "InvalidGroup.NotFound":
        raise SecurityGroupBusy(got.message)
