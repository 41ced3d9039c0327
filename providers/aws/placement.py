"""Where in the region a launch may be tried: one default subnet per Availability Zone that offers
the instance type, for the retry after a zone refused for capacity.

EC2 answers InsufficientInstanceCapacity (or Unsupported) for one zone at a time; the message even
names the other zones that have it. SkyPilot's AWS provisioner does the same walk over the subnets
of the region (sky/provision/aws/instance.py, `_create_instances`, which rotates the subnet on a
failed create_instances).
"""

from __future__ import annotations

import re

from providers.aws.api import AWSApi

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
