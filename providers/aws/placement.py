"""Where in the region a launch may be tried: one default subnet per Availability Zone that offers
the instance type, for the retry after a zone refused for capacity; and, for a multi-node run, the
run's cluster placement group.

EC2 answers InsufficientInstanceCapacity (or Unsupported) for one zone at a time; the message even
names the other zones that have it. SkyPilot's AWS provisioner does the same walk over the subnets
of the region (sky/provision/aws/instance.py, `_create_instances`, which rotates the subnet on a
failed create_instances).
"""

from __future__ import annotations

import logging
import re

from providers.aws.api import AWSApi, Tolerated
from providers.base import ProviderError
from providers.common import one_line, retry_policy

log = logging.getLogger("gpurun.providers.aws")

# "... in the Availability Zone you requested (us-east-1a)" / "... requested Availability Zone (us-east-1e)"
_ZONE_RE = re.compile(r"\(([a-z]{2}(?:-[a-z]+)+-\d+[a-z])\)")


def refused_zone(message: str) -> str:
    """The zone an EC2 capacity refusal names ("" when it names none)."""
    match = _ZONE_RE.search(message or "")
    return match.group(1) if match else ""


def zones_offering(api: AWSApi, instance_type: str) -> set[str]:
    offered = api.paginate(
        "describe-instance-type-offerings", "describe_instance_type_offerings", "InstanceTypeOfferings",
        LocationType="availability-zone", Filters=[{"Name": "instance-type", "Values": [instance_type]}],
    )
    return {str(o["Location"]) for o in offered}


def zone_subnets(api: AWSApi, vpc_id: str, instance_type: str) -> list[tuple[str, str]]:
    """(zone, subnet id) of the VPC's default subnets in the zones that offer the type, by zone name."""
    zones = zones_offering(api, instance_type)
    subnets = api.paginate(
        "describe-subnets", "describe_subnets", "Subnets",
        Filters=[{"Name": "vpc-id", "Values": [vpc_id]}, {"Name": "default-for-az", "Values": ["true"]}],
    )
    by_zone = {str(s["AvailabilityZone"]): str(s["SubnetId"]) for s in subnets}
    return sorted((z, sid) for z, sid in by_zone.items() if z in zones)


# ---- multi-node runs: one cluster placement group per run

# The error codes of the placement-group calls (EC2 API error codes,
# https://docs.aws.amazon.com/AWSEC2/latest/APIReference/errors-overview.html): a name already taken,
# a group that still has instances (DeletePlacementGroup: "You must terminate all instances in the
# placement group before you can delete the placement group", botocore's ec2 service model), a
# group that does not exist.
PG_DUPLICATE = "InvalidPlacementGroup.Duplicate"
PG_IN_USE = "InvalidPlacementGroup.InUse"
PG_UNKNOWN = "InvalidPlacementGroup.Unknown"


class PlacementGroupBusy(Exception):
    """The run's placement group still holds an instance (InvalidPlacementGroup.InUse)."""


def ensure_placement_group(api: AWSApi, name: str, tags: list[dict[str, str]]) -> bool:
    """The run's cluster placement group `name` (CreatePlacementGroup, Strategy=cluster: "a logical
    grouping of instances within a single Availability Zone that benefit from low network latency,
    high network throughput", botocore's ec2 service model). Idempotent: a group of that name that
    already exists (InvalidPlacementGroup.Duplicate; names are unique per account and region) is
    reused. Returns whether this call made it."""
    got = api.call(
        "create-placement-group", api.ec2.create_placement_group, GroupName=name, Strategy="cluster",
        TagSpecifications=[{"ResourceType": "placement-group", "Tags": tags}], tolerate=(PG_DUPLICATE,),
    )
    return not isinstance(got, Tolerated)


def delete_placement_group(api: AWSApi, name: str, timeout_s: float) -> list[str]:
    """Delete the run's placement group once its instances are gone: InvalidPlacementGroup.InUse is
    waited out, bounded by timeout_s; none of that name is nothing to do. Credentials that may not
    describe placement groups (a single-node user's IAM policy need not allow it) skip it with a
    warning: a placement group bills nothing."""
    got = api.call(
        "describe-placement-groups", api.ec2.describe_placement_groups,
        Filters=[{"Name": "group-name", "Values": [name]}], tolerate=("UnauthorizedOperation",),
    )
    if isinstance(got, Tolerated):
        log.warning("aws: may not describe placement groups (%s): %s not checked", got.code, name)
        return []
    if not got.get("PlacementGroups"):
        return []

    def delete() -> None:
        got = api.call("delete-placement-group", api.ec2.delete_placement_group, GroupName=name,
                       tolerate=(PG_IN_USE, PG_UNKNOWN))
        if isinstance(got, Tolerated) and got.code == PG_IN_USE:
            raise PlacementGroupBusy(got.message)

    policy = retry_policy(
        attempts=int(timeout_s / 0.5) + 1, deadline_s=timeout_s, initial_s=0.5, max_wait_s=10,
        retry_on=lambda exc: isinstance(exc, PlacementGroupBusy), logger=log,
    )
    try:
        policy(delete)
    except PlacementGroupBusy as exc:
        raise ProviderError(
            f"placement group {name} still in use after {timeout_s:.0f}s ({one_line(exc, 120)}): terminate "
            "the run's instances, then run the teardown again"
        ) from exc
    return [f"placement-group {name}"]
