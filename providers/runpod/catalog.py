"""What RunPod rents and at what price: the gpuTypes query, turned into Offers with storage priced in.

Billing rules are not set here: an Offer carries the default BillingRule until the plan fills it in
from budgets.yaml, the one place those rules live.
"""

from __future__ import annotations

from typing import Any

from providers.base import Offer, ProviderError
from providers.common import HOURS_PER_MONTH
from providers.runpod.api import RunPodClient, to_float

PROVIDER_NAME = "runpod"
CLOUD_TYPES = ("SECURE", "COMMUNITY", "ALL")

# Storage is billed on top of the GPU price. Source: https://docs.runpod.io/pods/storage (the
# "Comparison" table, read 2025): container disk $0.10/GB/month, volume disk $0.10/GB/month while
# the pod runs and $0.20/GB/month while it is stopped. gpurun terminates rather than stops, so the
# running rate applies.
CONTAINER_DISK_USD_PER_GB_MONTH = 0.10
VOLUME_DISK_USD_PER_GB_MONTH = 0.10
STORAGE_RATES = "container $0.10/GB-month, volume $0.10/GB-month (running)"


def check_cloud_type(cloud_type: str, what: str = "cloud type") -> str:
    cloud = str(cloud_type).upper()
    if cloud not in CLOUD_TYPES:
        raise ProviderError(f"RunPod {what} {cloud_type!r} is not one of {', '.join(CLOUD_TYPES)}")
    return cloud


def storage_usd_per_hour(container_disk_gb: int, volume_gb: int) -> float:
    """Per-hour cost of a running pod's disks (RunPod quotes them per GB-month)."""
    return (container_disk_gb * CONTAINER_DISK_USD_PER_GB_MONTH
            + volume_gb * VOLUME_DISK_USD_PER_GB_MONTH) / HOURS_PER_MONTH


def gpu_types_query(count: int) -> str:
    # The SDK's get_gpus() asks only id/displayName/memoryInGb and get_gpu() one type at a time;
    # this is get_gpu()'s field list for all types in one round trip.
    return f"""
    query GpuTypes {{
      gpuTypes {{
        id
        displayName
        memoryInGb
        maxGpuCount
        secureCloud
        communityCloud
        securePrice
        communityPrice
        secureSpotPrice
        communitySpotPrice
        lowestPrice(input: {{gpuCount: {int(count)}}}) {{
          minimumBidPrice
          uninterruptablePrice
        }}
      }}
    }}
    """


def _matches(t: dict[str, Any], want: str | None) -> bool:
    if not want:
        return True
    display = str(t.get("displayName") or t.get("id") or "").lower().replace(" ", "")
    gpu_id = str(t.get("id") or "").lower().replace(" ", "")
    return want in display or want in gpu_id


def offers_from_gpu_types(types: list[dict[str, Any]], *, gpu: str | None, count: int, spot: bool,
                          cloud_type: str, container_disk_gb: int, volume_gb: int) -> list[Offer]:
    """One Offer per GPU type and cloud (secure / community) that has a price, cheapest first."""
    extra = storage_usd_per_hour(container_disk_gb, volume_gb)
    want = gpu.lower().replace(" ", "") if gpu else None
    out: list[Offer] = []
    for t in types:
        gpu_id = t.get("id") or ""
        if not gpu_id or gpu_id.lower() == "unknown" or not _matches(t, want):
            continue
        max_count = t.get("maxGpuCount")
        if max_count is not None and int(count) > int(max_count):
            continue
        lowest = t.get("lowestPrice") or {}
        # lowestPrice.uninterruptablePrice is null when no machine has `count` of these free.
        in_stock = not lowest or lowest.get("uninterruptablePrice") is not None
        clouds = []
        if cloud_type in ("ALL", "SECURE") and t.get("secureCloud"):
            clouds.append(("SECURE", t.get("securePrice"), t.get("secureSpotPrice")))
        if cloud_type in ("ALL", "COMMUNITY") and t.get("communityCloud"):
            clouds.append(("COMMUNITY", t.get("communityPrice"), t.get("communitySpotPrice")))
        for cloud, on_demand, spot_price in clouds:
            per_gpu = to_float(spot_price if spot else on_demand)
            if spot and not per_gpu:
                per_gpu = to_float(lowest.get("minimumBidPrice"))
            if not per_gpu or per_gpu <= 0:
                continue
            details: dict[str, Any] = {
                "cloud_type": cloud,
                "usd_per_gpu_hour": per_gpu,
                "container_disk_gb": container_disk_gb,
                "volume_gb": volume_gb,
                "storage_rates": STORAGE_RATES,
                "max_gpu_count": max_count,
                "in_stock": in_stock,
            }
            if spot:
                details["bid_per_gpu"] = per_gpu
            out.append(Offer(
                provider=PROVIDER_NAME,
                gpu=t.get("displayName") or gpu_id,
                gpu_count=int(count),
                instance_type=gpu_id,
                usd_per_hour=round(per_gpu * int(count), 6),
                extra_usd_per_hour=round(extra, 6),
                price_source="live",
                spot=spot,
                region=cloud.lower(),
                available=in_stock,
                memory_gb=to_float(t.get("memoryInGb")),
                details=details,
            ))
    out.sort(key=lambda o: o.total_usd_per_hour)
    return out


def fetch_offers(client: RunPodClient, *, gpu: str | None, count: int, spot: bool, cloud_type: str,
                 container_disk_gb: int, volume_gb: int) -> list[Offer]:
    """Live offers: one gpuTypes query, priced for `count` GPUs and the pod's disks."""
    if int(count) < 1:
        raise ProviderError(f"GPU count must be >= 1, got {count}")
    data = client.graphql("list GPU types", gpu_types_query(count))
    types = ((data.get("data") or {}).get("gpuTypes")) or []
    return offers_from_gpu_types(types, gpu=gpu, count=count, spot=spot, cloud_type=cloud_type,
                                 container_disk_gb=container_disk_gb, volume_gb=volume_gb)
