"""What DataCrunch rents and for how much: instance types, live prices, where they are, storage.

Prices are kept as Decimals parsed from the API's strings (`price_per_hour` is a STRING), so what the
plan shows is what the API said; the Offer's floats are for the money maths.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

from providers.base import CredentialsError, Offer, ProviderError
from providers.common import HOURS_PER_MONTH
from providers.datacrunch.api import DataCrunchAPI, sdk_paths

_HOURS_PER_MONTH = Decimal(str(HOURS_PER_MONTH))


def decimal_or_none(value: Any) -> Decimal | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        d = Decimal(str(value).strip())  # str() first: a float would carry its binary error into the Decimal
    except (InvalidOperation, ValueError):
        return None
    return d if d.is_finite() else None


def gpu_name(instance_type: dict[str, Any]) -> str:
    """"1x A100 SXM4 80GB" -> "A100 SXM4 80GB" (the count is the Offer's gpu_count)."""
    desc = str((instance_type.get("gpu") or {}).get("description") or "")
    desc = re.sub(r"^\d+\s*x\s*", "", desc).strip()
    t = instance_type
    return desc or str(t.get("name") or t.get("model") or t.get("instance_type"))


# Data transfer out is not priced anywhere DataCrunch publishes: the pricing page
# (https://docs.verda.com/welcome-to-verda/pricing-and-billing) lists GPU, storage and contract prices and
# no data-transfer charge, and no API answer (instance types, volume types, balance) carries one.
EGRESS_USD_PER_GB = 0.0
EGRESS_SOURCE = ("not billed: no data-transfer charge on https://docs.verda.com/welcome-to-verda/pricing-and-billing"
                 " and no egress price in the API (read 2026-12; an absence, not a published 'free')")


def spot_params(spot: bool) -> dict[str, str]:
    """The spot flag of an /instance-availability query, in both spellings: the Go SDK sends `is_spot=true`
    and nothing for on-demand (pkg/verda/instance_availability.go, GetAllAvailabilities and
    GetInstanceTypeAvailability; verda-cli's `availability --spot` goes through it), and so does the API's
    published parameter list (listInstanceAvailability: `is_spot`, boolean); the Python SDK sends
    `isSpot=true|false` (verda/instances/_instances.py, get_availabilities / is_available). Sending only
    `isSpot` to an API that reads `is_spot` would ask for on-demand stock on a spot launch."""
    flag = str(bool(spot)).lower()
    return {"is_spot": flag, "isSpot": flag}


def availability(api: DataCrunchAPI, spot: bool) -> dict[str, list[str]] | None:
    """instance type -> the locations that have it now (GET /instance-availability: one row per location
    with the types in stock, asked for spot or on-demand); None when the API would not say."""
    try:
        rows = api.request("get", sdk_paths().availability, params=spot_params(spot)).json()
    except CredentialsError:
        raise
    except ProviderError:
        return None  # availability unknown: show the prices, let create find out
    where: dict[str, list[str]] = {}
    for row in rows:
        for t in row.get("availabilities") or []:
            where.setdefault(t, []).append(row.get("location_code", ""))
    return where


def storage_usd_per_hour(api: DataCrunchAPI, disk_gb: int) -> tuple[Decimal, str]:
    """The OS volume is billed on top of the instance: disk_gb x NVMe price per GB-month / 730 h.
    Returns (USD per hour, the GB-month price as the API sent it, or "unknown")."""
    try:
        rows = api.request("get", sdk_paths().volume_types).json()
    except CredentialsError:
        raise
    except ProviderError:
        return Decimal(0), "unknown"
    for row in rows:
        if row.get("type") == "NVMe":
            p = decimal_or_none((row.get("price") or {}).get("price_per_month_per_gb"))
            if p is not None:
                return Decimal(disk_gb) * p / _HOURS_PER_MONTH, str(p)
    return Decimal(0), "unknown"


def in_stock(api: DataCrunchAPI, instance_type: str, location: str, spot: bool) -> bool | None:
    """GET /instance-availability/{type}?location_code=&isSpot= (InstancesService.is_available): a bool,
    or the string "true"/"false" (Go SDK CheckInstanceTypeAvailability); None when the API would not say."""
    try:
        answer = api.request("get", sdk_paths().availability + "/{instance_type}",
                             path_params={"instance_type": instance_type},
                             params={**spot_params(spot), "location_code": location}).json()
    except CredentialsError:
        raise
    except (ProviderError, ValueError):
        return None
    if isinstance(answer, bool):
        return answer
    if isinstance(answer, str) and answer.lower() in ("true", "false"):
        return answer.lower() == "true"
    return None


def planned_price(api_price: Decimal, n_gpu: int) -> tuple[Decimal, dict[str, str], str]:
    """The USD/h a plan uses for an instance type whose API price is `api_price`, both readings, and why.

    Whether `price_per_hour` / `spot_price` on /instance-types is the whole instance or per unit (per GPU,
    per vCPU) is not settled by any source gpurun can read: the API's reference and the Python SDK
    (InstanceType.price_per_hour: "Instance type price per hour") do not say; verda-cli says both (commit
    26d3b11 "API price_per_hour is total, not per-GPU", its cmd/vm/CLAUDE.md, README and create wizard read it
    as the total; commit 2d98f06 "price_per_hour is per-unit, not total", its root CLAUDE.md ("Pricing")
    and cmd/util/pricing.go multiply it by the GPU count); dstack's gpuhunt reads the total. Until one is
    settled, a multi-GPU type is planned at the dearer reading (x the GPU count): the cap then holds under
    either, at the cost of buying less time if the total reading is the true one."""
    total, per_unit = api_price, api_price * n_gpu
    readings = {"instance_total": str(total), "per_gpu_x_count": str(per_unit)}
    if n_gpu == 1:
        return total, readings, "one GPU: both readings agree"
    return per_unit, readings, (f"planned at the dearer reading, {api_price} x {n_gpu} GPUs = {per_unit} USD/h "
                                f"(price_per_hour per GPU); read as the instance total it is {total} USD/h")


def offers(api: DataCrunchAPI, *, provider: str, gpu: str | None, count: int, spot: bool, currency: str,
           disk_gb: int) -> list[Offer]:
    """One Offer per (instance type, location that has it); every location unknown -> one offer, available.
    Offers carry the default BillingRule: the plan sets the rule from budgets.yaml."""
    types = api.request("get", sdk_paths().instance_types, params={"currency": currency}).json()
    where = availability(api, spot)
    extra, vol_price = storage_usd_per_hour(api, disk_gb)
    want = (gpu or "").lower().replace(" ", "")
    out: list[Offer] = []
    for t in types:
        api_price = decimal_or_none(t.get("spot_price") if spot else t.get("price_per_hour"))
        n_gpu = int((t.get("gpu") or {}).get("number_of_gpus") or 0)
        if api_price is None or n_gpu == 0 or (count and n_gpu != count):
            continue
        name = gpu_name(t)
        itype = str(t.get("instance_type", ""))
        if want and want not in name.lower().replace(" ", "") and want != itype.lower():
            continue
        price, readings, reading = planned_price(api_price, n_gpu)
        details = {
            "price_per_hour": str(t.get("price_per_hour")),  # exact strings as the API sent them
            "spot_price": str(t.get("spot_price")),
            "usd_per_hour_exact": str(price),  # what the plan uses: the dearer reading
            "usd_per_gpu_hour_exact": str(price / n_gpu),
            "price_readings": readings,
            "price_reading": reading,
            "extra_usd_per_hour_exact": str(extra),
            "storage": f"{disk_gb} GB NVMe OS volume at {vol_price} USD/GB-month",
            "currency": t.get("currency", currency),
            "display_name": t.get("display_name") or t.get("name"),
            "supported_os": list(t.get("supported_os") or []),  # the images this type takes (check_launchable)
            "deploy_warning": t.get("deploy_warning") or "",
        }
        regions = where.get(itype, []) if where is not None else [""]
        for region in regions or [""]:
            out.append(Offer(
                provider=provider, gpu=name, gpu_count=n_gpu, instance_type=itype,
                usd_per_hour=float(price), extra_usd_per_hour=float(extra), price_source="live",
                egress_usd_per_gb=EGRESS_USD_PER_GB, egress_source=EGRESS_SOURCE,
                spot=spot, region=region, available=bool(region) or where is None,
                memory_gb=float((t.get("gpu_memory") or {}).get("size_in_gigabytes") or 0) or None,
                details=dict(details, location=region,
                             availability="unknown" if where is None else ("yes" if region else "none")),
            ))
    return out
