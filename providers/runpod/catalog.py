"""What RunPod rents and at what price: the gpuTypes query, turned into Offers with storage priced in.

Billing rules are not set here: an Offer carries the default BillingRule until the plan fills it in
from budgets.yaml, the one place those rules live.
"""

from __future__ import annotations

from typing import Any

from providers.base import Offer, ProviderError
from providers.common import HOURS_PER_MONTH
from providers.runpod.api import RunPodClient, to_float
from providers.runpod.spot import SPOT_API

PROVIDER_NAME = "runpod"
CLOUD_TYPES = ("SECURE", "COMMUNITY", "ALL")

# Storage is billed on top of the GPU price. Source: https://docs.runpod.io/pods/storage (the
# "Comparison" table, read 2025): container disk $0.10/GB/month, volume disk $0.10/GB/month while
# the pod runs and $0.20/GB/month while it is stopped. gpurun terminates rather than stops, so the
# running rate applies.
CONTAINER_DISK_USD_PER_GB_MONTH = 0.10
VOLUME_DISK_USD_PER_GB_MONTH = 0.10
STORAGE_RATES = "container $0.10/GB-month, volume $0.10/GB-month (running)"
# Data transfer is not billed: "Pods are billed by the second for compute and storage, with no fees
# for data ingress or egress" (https://docs.runpod.io/pods/pricing, runpod/docs pods/pricing.mdx;
# also pods/overview.mdx: "no fees for ingress/egress").
EGRESS_USD_PER_GB = 0.0
EGRESS_SOURCE = ("free: docs.runpod.io/pods/pricing (\"Pods are billed by the second for compute and storage, "
                 "with no fees for data ingress or egress\")")

# lowestPrice's stockStatus: "Values include `High`, `Medium`, `Low`, and `None`" (runpod/docs
# sdks/graphql/manage-pods.mdx, "Check GPU availability"). `None` is a value, the STRING "None",
# beside a JSON null: both mean nothing to place. Only a level below is in stock; any other text
# (the console's "Unavailable", get-started.mdx) is read as out of stock, never as available.
STOCK_LEVELS = ("High", "Medium", "Low")


def stock_level(value: Any) -> str | None:
    """The stock level a stockStatus names ("High", "Medium", "Low"), or None: out of stock (null,
    the string "None", or anything else)."""
    text = str(value).strip().capitalize() if isinstance(value, str) else ""
    return text if text in STOCK_LEVELS else None


def check_cloud_type(cloud_type: str, what: str = "cloud type") -> str:
    cloud = str(cloud_type).upper()
    if cloud not in CLOUD_TYPES:
        raise ProviderError(f"RunPod {what} {cloud_type!r} is not one of {', '.join(CLOUD_TYPES)}")
    return cloud


def storage_usd_per_hour(container_disk_gb: int, volume_gb: int) -> float:
    """Per-hour cost of a running pod's disks (RunPod quotes them per GB-month)."""
    return (container_disk_gb * CONTAINER_DISK_USD_PER_GB_MONTH
            + volume_gb * VOLUME_DISK_USD_PER_GB_MONTH) / HOURS_PER_MONTH


# A sane host per GPU, as SkyPilot asks RunPod for (sky/provision/runpod/utils.py launch():
# min_vcpu_count=4 * gpu_quantity, min_memory_in_gb=gpu_memory_gb * gpu_quantity): 4 vCPUs feed the
# data loader and the RAM holds a checkpoint of what fits on the GPU. RunPod's own default is 1 / 1
# (runpod-python ctl_commands.create_pod), which can land a GPU on a starved host.
MIN_VCPU_PER_GPU = 4

def host_minimums(memory_in_gb: Any, count: int, *, vcpu_per_gpu: int = MIN_VCPU_PER_GPU,
                  ram_gb_per_gpu: int | None = None) -> tuple[int, int]:
    """(minVcpuCount, minMemoryInGb) for `count` GPUs: vCPUs per GPU, and RAM per GPU (default: the
    GPU's own memory, at least 8 GB)."""
    ram = ram_gb_per_gpu if ram_gb_per_gpu is not None else max(8, int(to_float(memory_in_gb) or 0))
    return int(vcpu_per_gpu) * int(count), int(ram) * int(count)


def gpu_types_query(count: int, min_vcpu: int = 0) -> str:
    # The SDK's get_gpus() asks only id/displayName/memoryInGb and get_gpu() one type at a time;
    # this is get_gpu()'s field list for all types in one round trip, with lowestPrice asked once
    # per cloud type (aliases): stockStatus is per cloud when `secureCloud` is given (runpod/docs
    # sdks/graphql/manage-pods.mdx, "Check GPU availability": lowestPrice(input: {gpuCount: 1,
    # secureCloud: true}) { stockStatus uninterruptablePrice }). minVcpuCount is a GpuLowestPriceInput
    # field (runpodctl api/cloud.go), so the stock read is for a host we would accept; the RAM minimum
    # differs per type and cannot be given in one query, so only the deploy carries it.
    def lowest(alias: str, secure: bool) -> str:
        vcpu = f", minVcpuCount: {int(min_vcpu)}" if min_vcpu else ""
        return (f"{alias}: lowestPrice(input: {{gpuCount: {int(count)}, secureCloud: {str(secure).lower()}{vcpu}}}) "
                f"{{ minimumBidPrice uninterruptablePrice stockStatus }}")

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
        {lowest("secureLowest", True)}
        {lowest("communityLowest", False)}
      }}
    }}
    """


def _matches(t: dict[str, Any], want: str | None) -> bool:
    if not want:
        return True
    display = str(t.get("displayName") or t.get("id") or "").lower().replace(" ", "")
    gpu_id = str(t.get("id") or "").lower().replace(" ", "")
    return want in display or want in gpu_id


def _per_gpu_price(listed: Any, lowest: dict[str, Any], spot: bool) -> float | None:
    """The cloud's price per GPU: the listed one, or lowestPrice's where that is higher or the only one
    (the budget must never assume less than RunPod will charge)."""
    live = to_float(lowest.get("minimumBidPrice" if spot else "uninterruptablePrice"))
    prices = [p for p in (to_float(listed), live) if p and p > 0]
    return max(prices) if prices else None


def offers_from_gpu_types(types: list[dict[str, Any]], *, gpu: str | None, count: int, spot: bool,
                          cloud_type: str, container_disk_gb: int, volume_gb: int,
                          vcpu_per_gpu: int = MIN_VCPU_PER_GPU,
                          ram_gb_per_gpu: int | None = None) -> list[Offer]:
    """One Offer per GPU type and cloud type (SECURE / COMMUNITY) that has a price, cheapest first;
    `available` is that cloud's own stockStatus: High / Medium / Low (null or "None": nothing to place)."""
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
        min_vcpu, min_memory = host_minimums(t.get("memoryInGb"), count, vcpu_per_gpu=vcpu_per_gpu,
                                             ram_gb_per_gpu=ram_gb_per_gpu)
        clouds = []
        if cloud_type in ("ALL", "SECURE") and t.get("secureCloud"):
            clouds.append(("SECURE", t.get("secureSpotPrice" if spot else "securePrice"), t.get("secureLowest")))
        if cloud_type in ("ALL", "COMMUNITY") and t.get("communityCloud"):
            clouds.append(("COMMUNITY", t.get("communitySpotPrice" if spot else "communityPrice"),
                           t.get("communityLowest")))
        for cloud, listed, lowest in clouds:
            lowest = lowest or {}
            per_gpu = _per_gpu_price(listed, lowest, spot)
            if not per_gpu:
                continue
            reported = lowest.get("stockStatus")
            stock = stock_level(reported)
            details: dict[str, Any] = {
                "cloud_type": cloud,
                "stock_status": stock,
                "stock_status_reported": reported,
                "usd_per_gpu_hour": per_gpu,
                "container_disk_gb": container_disk_gb,
                "volume_gb": volume_gb,
                "storage_rates": STORAGE_RATES,
                "max_gpu_count": max_count,
                "min_vcpu_count": min_vcpu,
                "min_memory_gb": min_memory,
            }
            if spot:
                details["bid_per_gpu"] = per_gpu
                details["api"] = SPOT_API
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
                available=stock is not None,
                memory_gb=to_float(t.get("memoryInGb")),
                details=details,
                egress_usd_per_gb=EGRESS_USD_PER_GB,
                egress_source=EGRESS_SOURCE,
            ))
    out.sort(key=lambda o: o.total_usd_per_hour)
    return out


def fetch_offers(client: RunPodClient, *, gpu: str | None, count: int, spot: bool, cloud_type: str,
                 container_disk_gb: int, volume_gb: int, vcpu_per_gpu: int = MIN_VCPU_PER_GPU,
                 ram_gb_per_gpu: int | None = None) -> list[Offer]:
    """Live offers: one gpuTypes query, priced for `count` GPUs and the pod's disks."""
    if int(count) < 1:
        raise ProviderError(f"GPU count must be >= 1, got {count}")
    data = client.graphql("list GPU types", gpu_types_query(count, int(vcpu_per_gpu) * int(count)))
    types = ((data.get("data") or {}).get("gpuTypes")) or []
    return offers_from_gpu_types(types, gpu=gpu, count=count, spot=spot, cloud_type=cloud_type,
                                 container_disk_gb=container_disk_gb, volume_gb=volume_gb,
                                 vcpu_per_gpu=vcpu_per_gpu, ram_gb_per_gpu=ram_gb_per_gpu)
