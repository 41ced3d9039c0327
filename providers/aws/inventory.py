"""Everything in the region that bills now, gpurun's or not (`gpurun audit`): EC2 instances in every
state but terminated, EBS volumes nobody has attached, and Elastic IPs associated with nothing.

Read-only: DescribeInstances, DescribeVolumes, DescribeAddresses (and the catalog's price look-up).

What bills in which state (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/ec2-instance-lifecycle.html,
"Billing by instance state"): instance usage is billed only while `running` (and while `stopping`
into hibernation); `pending`, `stopping`, `stopped` and `shutting-down` are not, but "Amazon EBS
volumes and Elastic IP addresses incur charges regardless of the instance's state". So a stopped
instance is listed at the price of its volumes (and public IPv4), with a note saying so; a pending
one at its running price, which it reaches in seconds.
"""

from __future__ import annotations

from typing import Any

from providers.aws.api import AWSApi, as_utc, jsonable
from providers.aws.catalog import Catalog
from providers.base import Billable
from providers.common import HOURS_PER_MONTH

# The tags instance.py writes (instance.py imports this module, so they cannot be imported from
# there; tests/test_aws_billing.py checks that they agree).
TAG_RUN_ID = "gpurun:run-id"
TAG_PRICE = "gpurun:usd-per-hour"

# EBS storage, USD per GB-month of provisioned storage, us-east-1 (https://aws.amazon.com/ebs/pricing/;
# gp3 0.08 is the figure catalog.py prices root volumes with). Other regions cost more (up to ~1.9x):
# these are a floor there. A type missing here is priced as the dearest one listed.
EBS_USD_PER_GB_MONTH = {
    "gp3": 0.08, "gp2": 0.10, "io1": 0.125, "io2": 0.125, "st1": 0.045, "sc1": 0.015, "standard": 0.05,
}
# Performance above gp3's free baseline (3,000 IOPS, 125 MB/s) and io1/io2 provisioned IOPS, per month
# (same page). io2's cheaper tiers above 32,000 IOPS are not modelled: an upper bound there.
GP3_FREE_IOPS, GP3_USD_PER_IOPS_MONTH = 3000, 0.005
GP3_FREE_MBPS, GP3_USD_PER_MBPS_MONTH = 125, 0.04
IO_USD_PER_IOPS_MONTH = 0.065
# "$0.005 per IP per hour for all public IPv4 addresses", in use or idle, since 2024-02-01
# (https://aws.amazon.com/vpc/pricing/, "Public IPv4 addresses"; AWS News Blog "New - AWS Public IPv4
# Address Charge + Public IP Insights", 2023-07-28). BYOIP addresses are exempt; the free tier's 750 h
# is not subtracted.
PUBLIC_IPV4_USD_PER_HOUR = 0.005
# EC2 states that still exist; `terminated` is gone (and bills nothing but a reservation's term).
LISTED_STATES = ["pending", "running", "stopping", "stopped", "shutting-down"]
COMPUTE_BILLS = ("pending", "running")
_NOTES = {
    "stopping": "stopping: compute no longer bills (unless it hibernates); its EBS volumes still do",
    "stopped": "stopped: no compute charge, but its EBS volumes still bill until it is terminated",
    "shutting-down": "shutting-down: on its way to terminated; its EBS volumes bill until they are deleted",
}


def _tags(item: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in item.get("Tags") or []}


def _epoch(value: Any) -> float | None:
    moment = as_utc(value)
    return moment.timestamp() if moment else None


def volume_usd_per_hour(vol: dict[str, Any]) -> float:
    """What one EBS volume bills per hour: storage by type, plus provisioned performance."""
    vtype = str(vol.get("VolumeType") or "gp3")
    size = float(vol.get("Size") or 0)
    month = size * EBS_USD_PER_GB_MONTH.get(vtype, max(EBS_USD_PER_GB_MONTH.values()))
    iops = float(vol.get("Iops") or 0)
    if vtype == "gp3":
        month += max(0.0, iops - GP3_FREE_IOPS) * GP3_USD_PER_IOPS_MONTH
        month += max(0.0, float(vol.get("Throughput") or 0) - GP3_FREE_MBPS) * GP3_USD_PER_MBPS_MONTH
    elif vtype in ("io1", "io2"):
        month += iops * IO_USD_PER_IOPS_MONTH
    return month / HOURS_PER_MONTH


def _volume_summary(vol: dict[str, Any]) -> dict[str, Any]:
    return {"id": vol.get("VolumeId"), "type": vol.get("VolumeType"), "size_gb": vol.get("Size"),
            "iops": vol.get("Iops"), "throughput": vol.get("Throughput"),
            "usd_per_hour": round(volume_usd_per_hour(vol), 6)}


class _Prices:
    """On-demand compute prices through the provider's catalog (Pricing API, override or the dated
    static table), asked once per instance type."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._seen: dict[str, tuple[float, str] | None] = {}

    def compute(self, instance_type: str) -> tuple[float, str] | None:
        if instance_type not in self._seen:
            self._seen[instance_type] = self.catalog.on_demand_price(instance_type)
        return self._seen[instance_type]


def _instance(desc: dict[str, Any], volumes: dict[str, dict[str, Any]], prices: _Prices,
              region: str) -> Billable:
    tags = _tags(desc)
    state = str((desc.get("State") or {}).get("Name") or "")
    itype = str(desc.get("InstanceType") or "")
    spot = desc.get("InstanceLifecycle") == "spot"
    attached = [volumes[v] for v in (
        (m.get("Ebs") or {}).get("VolumeId") for m in desc.get("BlockDeviceMappings") or []) if v in volumes]
    ebs = sum(volume_usd_per_hour(v) for v in attached)
    ebs_gb = sum(int(v.get("Size") or 0) for v in attached)
    public_ip = desc.get("PublicIpAddress") or ""
    ipv4 = PUBLIC_IPV4_USD_PER_HOUR if public_ip else 0.0
    extras = f"{len(attached)} EBS volume(s), {ebs_gb} GB" + (" + public IPv4" if public_ip else "")

    compute: float | None = 0.0
    price_source = "EBS and public IPv4 only (no compute charge in this state)"
    usd: float | None
    if state in COMPUTE_BILLS:
        listed = None if spot else prices.compute(itype)
        planned = tags.get(TAG_PRICE)
        if listed is not None:
            compute, price_source = listed[0], f"on-demand {listed[1]}"
        elif planned:  # gpurun's planned total (compute + root volume + public IPv4), tagged at create
            compute, price_source = None, f"planned price (tag {TAG_PRICE})"
        else:
            compute, price_source = None, "unknown (no live or static price for this type)"
        if compute is not None:
            usd = compute + ebs + ipv4
        elif planned:
            try:
                usd = float(planned)  # its public IPv4 is in it (providers/aws/rates.py)
            except ValueError:
                usd, price_source = None, f"unknown (tag {TAG_PRICE}={planned!r} is not a number)"
        else:
            usd = None
        note = (f"{state}: compute bills" + (" once running" if state == "pending" else "")
                + f" ({itype}{', spot' if spot else ''}) + {extras}")
        if usd is None:
            note += f"; compute price of {itype} unknown"
    else:
        usd = ebs + ipv4
        note = f"{_NOTES.get(state, state)} ({extras})"

    raw = {
        "instance_type": itype, "state_name": state, "lifecycle": desc.get("InstanceLifecycle") or "on-demand",
        "availability_zone": (desc.get("Placement") or {}).get("AvailabilityZone", ""),
        "launch_time": jsonable(desc.get("LaunchTime")), "state_reason": jsonable(desc.get("StateReason") or {}),
        "state_transition_reason": desc.get("StateTransitionReason") or "",
        "public_ip": public_ip, "volumes": [_volume_summary(v) for v in attached],
        "compute_usd_per_hour": compute, "ebs_usd_per_hour": round(ebs, 6), "public_ipv4_usd_per_hour": ipv4,
        "price_source": price_source, "tags": tags, "region": region,
    }
    return Billable(
        kind="instance", id=str(desc.get("InstanceId")), provider="aws", name=tags.get("Name", ""), state=state,
        usd_per_hour=round(usd, 6) if usd is not None else None, created_at=_epoch(desc.get("LaunchTime")),
        run_id=tags.get(TAG_RUN_ID), note=note, raw=raw,
    )


def _detached_volume(vol: dict[str, Any], region: str) -> Billable:
    tags = _tags(vol)
    return Billable(
        kind="volume", id=str(vol.get("VolumeId")), provider="aws", name=tags.get("Name", ""),
        state=str(vol.get("State") or ""), usd_per_hour=round(volume_usd_per_hour(vol), 6),
        created_at=_epoch(vol.get("CreateTime")), run_id=tags.get(TAG_RUN_ID),
        note=f"detached EBS volume ({vol.get('VolumeType')}, {vol.get('Size')} GB): bills per GB-month "
             "while it exists, attached or not",
        raw={**_volume_summary(vol), "availability_zone": vol.get("AvailabilityZone"),
             "snapshot_id": vol.get("SnapshotId") or "", "create_time": jsonable(vol.get("CreateTime")),
             "tags": tags, "region": region},
    )


def _idle_address(addr: dict[str, Any], region: str) -> Billable:
    tags = _tags(addr)
    return Billable(
        kind="address", id=str(addr.get("AllocationId") or addr.get("PublicIp")), provider="aws",
        name=tags.get("Name", "") or str(addr.get("PublicIp") or ""), state="unassociated",
        usd_per_hour=PUBLIC_IPV4_USD_PER_HOUR, run_id=tags.get(TAG_RUN_ID),
        note=f"Elastic IP associated with nothing: bills {PUBLIC_IPV4_USD_PER_HOUR} USD/h (public IPv4) "
             "until released",
        raw={"public_ip": addr.get("PublicIp"), "allocation_id": addr.get("AllocationId"),
             "domain": addr.get("Domain"), "tags": tags, "region": region},
    )


def inventory(api: AWSApi, catalog: Catalog) -> list[Billable]:
    """Instances (all states but terminated), detached volumes and idle Elastic IPs of the region."""
    region = api.region
    descs = [
        i for res in api.paginate("describe-instances", "describe_instances", "Reservations",
                                  Filters=[{"Name": "instance-state-name", "Values": LISTED_STATES}])
        for i in res.get("Instances") or []
    ]
    volumes = {v["VolumeId"]: v for v in api.paginate("describe-volumes", "describe_volumes", "Volumes")}
    prices = _Prices(catalog)
    found = [_instance(d, volumes, prices, region) for d in descs]
    found += [_detached_volume(v, region) for v in volumes.values() if v.get("State") == "available"]
    addresses = api.call("describe-addresses", api.ec2.describe_addresses).get("Addresses") or []
    found += [_idle_address(a, region) for a in addresses if not a.get("AssociationId")]
    return found
