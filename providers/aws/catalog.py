"""What EC2 rents and what it costs: the GPU instance types of a region, their on-demand price
(Pricing API, GPURUN_AWS_PRICES override, or a dated static table), spot prices, and EBS storage.

The lifecycle class assembles offers from this; nothing here creates anything.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from providers.aws.api import AWSApi, Tolerated, as_utc, chunks
from providers.aws.rates import GP3_USD_PER_GB_MONTH_BY_REGION, gp3_usd_per_hour
from providers.base import ProviderError
from providers.common import one_line

log = logging.getLogger("gpurun.providers.aws")

# Families whose instances carry whole NVIDIA GPUs on x86_64 (what the DLAMI supports). Left out on
# purpose: g4ad (AMD), g5g (Arm), g6f/gr6f (fractional GPUs), inf/trn/dl1 (not CUDA).
GPU_FAMILIES = (
    "g4dn", "g5", "g6", "gr6", "g6e", "g7e", "p3", "p3dn", "p4d", "p4de", "p5", "p5e", "p5en",
    "p6-b200", "p6-b300",
)

# The instance families the default image (the Deep Learning OSS Nvidia Driver AMI GPU PyTorch,
# Ubuntu 24.04, x86_64) supports. Its release notes list "supported_ec2_instances: G4dn, G5, G6,
# Gr6, G6e, P4, P4de, P5, P5e, P5en, P6-B200":
# https://docs.aws.amazon.com/dlami/latest/devguide/aws-deep-learning-ami-gpupt29oss-ul2404-2026-03-20.html
# (read 2026-12-01; the same list in the 2026-01-08 release). Not there: P3/P3dn (Volta; AWS's
# last AMIs for them are the Amazon Linux 2 "Base Proprietary Nvidia Driver" ones, without
# PyTorch, and version 73.1 of 2026-06-05 dropped P3 too), G7e and P6-B300 (only the Base AMIs
# list them). Offers for these are dropped unless the user brings an image (`image=`).
DLAMI_FAMILIES = ("g4dn", "g5", "g6", "gr6", "g6e", "p4d", "p4de", "p5", "p5e", "p5en", "p6-b200")
DLAMI_SOURCE = (
    "https://docs.aws.amazon.com/dlami/latest/devguide/aws-deep-learning-ami-gpupt29oss-ul2404-2026-03-20.html"
)

# STATIC: snapshots, not live prices. An offer priced from a row says "static table (<its date>)".
# us-east-1 Linux on-demand USD/hour; each row names where and when its number was read:
_AWS_PAGE = ("2025-05-01", "https://aws.amazon.com/ec2/pricing/on-demand/")
_SKY_CATALOG = (  # SkyPilot's catalog, generated from the AWS Pricing API (Price = on-demand)
    "2026-12-01",
    "https://github.com/skypilot-org/skypilot-catalog/blob/00148f2af3672e2229b4f7bf8157d5a3f36e3c35"
    "/catalogs/v8/aws/vms.csv",
)
STATIC_PRICE_DATE = _AWS_PAGE[0]  # the date of the G rows (unchanged list prices since)
# instance type -> (GPU, GPUs, GiB per GPU, USD/hour, (date, source URL)). Used only when the
# Pricing API cannot be read. P4d keeps its price from before AWS's June 2025 cut of up to 45 %
# (the catalog row was not re-read): it errs on the side of the dollar cap. Only types the default
# DLAMI supports are here (no p3/p3dn, g7e, p6-b300); p5e is sold through Capacity Blocks and has no
# us-east-1 on-demand row in the catalog, so it has no static price (the Pricing API still prices it).
STATIC_CATALOGUE: dict[str, tuple[str, int, float, float, tuple[str, str]]] = {
    "g4dn.xlarge": ("T4", 1, 16, 0.526, _AWS_PAGE),
    "g4dn.2xlarge": ("T4", 1, 16, 0.752, _AWS_PAGE),
    "g4dn.4xlarge": ("T4", 1, 16, 1.204, _AWS_PAGE),
    "g4dn.8xlarge": ("T4", 1, 16, 2.176, _AWS_PAGE),
    "g4dn.16xlarge": ("T4", 1, 16, 4.352, _AWS_PAGE),
    "g4dn.12xlarge": ("T4", 4, 16, 3.912, _AWS_PAGE),
    "g4dn.metal": ("T4", 8, 16, 7.824, _AWS_PAGE),
    "g5.xlarge": ("A10G", 1, 24, 1.006, _AWS_PAGE),
    "g5.2xlarge": ("A10G", 1, 24, 1.212, _AWS_PAGE),
    "g5.4xlarge": ("A10G", 1, 24, 1.624, _AWS_PAGE),
    "g5.8xlarge": ("A10G", 1, 24, 2.448, _AWS_PAGE),
    "g5.16xlarge": ("A10G", 1, 24, 4.096, _AWS_PAGE),
    "g5.12xlarge": ("A10G", 4, 24, 5.672, _AWS_PAGE),
    "g5.24xlarge": ("A10G", 4, 24, 8.144, _AWS_PAGE),
    "g5.48xlarge": ("A10G", 8, 24, 16.288, _AWS_PAGE),
    "g6.xlarge": ("L4", 1, 24, 0.8048, _AWS_PAGE),
    "g6.2xlarge": ("L4", 1, 24, 0.9776, _AWS_PAGE),
    "g6.4xlarge": ("L4", 1, 24, 1.3232, _AWS_PAGE),
    "g6.8xlarge": ("L4", 1, 24, 2.0144, _AWS_PAGE),
    "g6.16xlarge": ("L4", 1, 24, 3.3968, _AWS_PAGE),
    "g6.12xlarge": ("L4", 4, 24, 4.6016, _AWS_PAGE),
    "g6.24xlarge": ("L4", 4, 24, 6.6752, _AWS_PAGE),
    "g6.48xlarge": ("L4", 8, 24, 13.3504, _AWS_PAGE),
    "gr6.4xlarge": ("L4", 1, 24, 1.5392, _AWS_PAGE),
    "gr6.8xlarge": ("L4", 1, 24, 2.4464, _AWS_PAGE),
    "g6e.xlarge": ("L40S", 1, 48, 1.861, _AWS_PAGE),
    "g6e.2xlarge": ("L40S", 1, 48, 2.24208, _AWS_PAGE),
    "g6e.4xlarge": ("L40S", 1, 48, 3.00424, _AWS_PAGE),
    "g6e.8xlarge": ("L40S", 1, 48, 4.52856, _AWS_PAGE),
    "g6e.16xlarge": ("L40S", 1, 48, 7.57719, _AWS_PAGE),
    "g6e.12xlarge": ("L40S", 4, 48, 10.49264, _AWS_PAGE),
    "g6e.24xlarge": ("L40S", 4, 48, 15.06559, _AWS_PAGE),
    "g6e.48xlarge": ("L40S", 8, 48, 30.13118, _AWS_PAGE),
    "p4d.24xlarge": ("A100", 8, 40, 32.7726, _AWS_PAGE),
    "p4de.24xlarge": ("A100", 8, 80, 27.44705, _SKY_CATALOG),
    "p5.4xlarge": ("H100", 1, 80, 6.88, _SKY_CATALOG),
    "p5.48xlarge": ("H100", 8, 80, 55.04, _SKY_CATALOG),
    "p5en.48xlarge": ("H200", 8, 141, 63.296, _SKY_CATALOG),
    "p6-b200.48xlarge": ("B200", 8, 179, 113.9328, _SKY_CATALOG),
}
# The static prices are us-east-1's (us-east-2 and us-west-2 match). Elsewhere they are scaled up
# by the dearest region's ratio (sa-east-1, ~1.7x) so a static plan never under-prices a run.
STATIC_SAME_PRICE_REGIONS = ("us-east-1", "us-east-2", "us-west-2")
STATIC_OTHER_REGION_FACTOR = 1.75
GP3_USD_PER_GB_MONTH = GP3_USD_PER_GB_MONTH_BY_REGION["us-east-1"]  # per GB-month of 730 h; rates.py has each region's

# (instance_type, region) -> on-demand USD/hour, or None when unknown. Injectable for tests.
PriceLookup = Callable[[str, str], "float | None"]

# GPURUN_AWS_PRICES="g5.xlarge=80,g4dn.xlarge=0.6": on-demand USD/hour per instance type instead of
# the Pricing API (a negotiated rate; moto, which has no Pricing API). Offers priced this way are
# flagged with this source, not "live"; types it does not name fall back to the static table.
ENV_PRICES = "GPURUN_AWS_PRICES"
PRICE_OVERRIDE_SOURCE = f"override ({ENV_PRICES})"


@dataclass(frozen=True)
class TypeSpec:
    instance_type: str
    gpu: str
    gpu_count: int
    gpu_memory_gb: float | None
    vcpus: int | None = None
    memory_gb: float | None = None
    architectures: tuple[str, ...] = ("x86_64",)


def env_price_lookup() -> PriceLookup | None:
    """The GPURUN_AWS_PRICES override as a lookup, None when it is not set; a bad entry is refused."""
    spec = os.environ.get(ENV_PRICES, "").strip()
    if not spec:
        return None
    prices: dict[str, float] = {}
    for item in filter(None, (x.strip() for x in spec.split(","))):
        itype, eq, value = item.partition("=")
        try:
            price = float(value)
        except ValueError:
            price = -1.0
        if not eq or not itype.strip() or not math.isfinite(price) or price <= 0:
            raise ProviderError(f"{ENV_PRICES} entry {item!r}: expected INSTANCE_TYPE=USD_PER_HOUR (> 0)")
        prices[itype.strip()] = price
    return lambda instance_type, region: prices.get(instance_type)


def ebs_usd_per_hour(gb: float, region: str = "us-east-1") -> float:
    """A gp3 volume of `gb` per hour at the region's own rate (providers/aws/rates.py)."""
    return gp3_usd_per_hour(gb, region)


def static_price(instance_type: str, region: str) -> tuple[float, str] | None:
    """(USD/hour, "static table (<date of the row>)"), or None for a type the table lacks."""
    entry = STATIC_CATALOGUE.get(instance_type)
    if entry is None:
        return None
    factor = 1.0 if region in STATIC_SAME_PRICE_REGIONS else STATIC_OTHER_REGION_FACTOR
    return round(entry[3] * factor, 6), f"static table ({entry[4][0]})"


def dlami_supports(instance_type: str) -> bool:
    """Whether the default Deep Learning AMI lists the type's family (DLAMI_SOURCE)."""
    return instance_type.split(".")[0] in DLAMI_FAMILIES


def static_gpu_count(instance_type: str) -> int:
    """GPUs of a type from the static table (0 when it is not there): for instances made elsewhere."""
    return STATIC_CATALOGUE.get(instance_type, ("", 0))[1]


def gpu_matches(want: str, spec: TypeSpec) -> bool:
    # The same rule as providers.base.pick_offer: substring of the GPU name, or the exact type.
    w = want.lower().replace(" ", "")
    return w in spec.gpu.lower().replace(" ", "") or w == spec.instance_type.lower()


def spec_from_description(item: dict[str, Any]) -> TypeSpec | None:
    """A DescribeInstanceTypes entry as a TypeSpec; None unless it has NVIDIA GPUs on x86_64."""
    itype = item.get("InstanceType", "")
    archs = tuple(item.get("ProcessorInfo", {}).get("SupportedArchitectures") or ())
    gpus = [
        g for g in (item.get("GpuInfo") or {}).get("Gpus") or []
        if g.get("Manufacturer") == "NVIDIA" and int(g.get("Count") or 0) >= 1
    ]
    static = STATIC_CATALOGUE.get(itype)
    if gpus:
        gpu = gpus[0]
        name, count = str(gpu.get("Name")), sum(int(g.get("Count") or 0) for g in gpus)
        mib = (gpu.get("MemoryInfo") or {}).get("SizeInMiB")
        mem = round(mib / 1024, 1) if mib else None
    elif static and not item.get("GpuInfo"):
        name, count, mem = static[0], static[1], float(static[2])
    else:
        return None
    if archs and "x86_64" not in archs:
        return None
    ram = (item.get("MemoryInfo") or {}).get("SizeInMiB")
    return TypeSpec(
        instance_type=itype, gpu=name, gpu_count=count, gpu_memory_gb=mem,
        vcpus=(item.get("VCpuInfo") or {}).get("DefaultVCpus"),
        memory_gb=round(ram / 1024, 1) if ram else None, architectures=archs or ("x86_64",),
    )


class Catalog:
    """A region's GPU instance types and their prices, read through `api` and cached per provider.

    price_lookup replaces the Pricing API (tests, GPURUN_AWS_PRICES); its failures, like the
    Pricing API's, fall back to the static table.
    """

    def __init__(self, api: AWSApi, price_lookup: PriceLookup | None = None) -> None:
        self.api = api
        env_lookup = None if price_lookup is not None else env_price_lookup()
        self._price_lookup: PriceLookup = price_lookup or env_lookup or self.pricing_api_price
        self._pricing_injected = price_lookup is not None or env_lookup is not None
        self._price_source = PRICE_OVERRIDE_SOURCE if env_lookup is not None else "live"
        self._pricing_down = False  # set once the Pricing API fails: don't pay its timeout per type
        self._type_cache: dict[str, TypeSpec] | None = None

    # ---- instance types

    def gpu_types(self) -> dict[str, TypeSpec]:
        """GPU instance types that exist AND are offered in the region, with their GPU specs."""
        if self._type_cache is not None:
            return self._type_cache
        described = self.api.paginate(
            "describe-instance-types", "describe_instance_types", "InstanceTypes",
            Filters=[{"Name": "instance-type", "Values": [f"{fam}.*" for fam in GPU_FAMILIES]}],
        )
        specs: dict[str, TypeSpec] = {}
        for item in described:
            spec = spec_from_description(item)
            if spec is not None and spec.instance_type.split(".")[0] in GPU_FAMILIES:
                specs[spec.instance_type] = spec
        offered = self.offered_in_region(sorted(specs))
        self._type_cache = {t: s for t, s in specs.items() if t in offered}
        return self._type_cache

    def offered_in_region(self, types: list[str]) -> set[str]:
        # Exact names, not wildcards: moto's offerings filter matches literally (real EC2 allows both).
        offered: set[str] = set()
        for chunk in chunks(types, 100):
            for item in self.api.paginate(
                "describe-instance-type-offerings", "describe_instance_type_offerings", "InstanceTypeOfferings",
                LocationType="region", Filters=[{"Name": "instance-type", "Values": chunk}],
            ):
                offered.add(item["InstanceType"])
        return offered

    def check_instance_type(self, instance_type: str, image: dict[str, Any] | None = None) -> TypeSpec | None:
        """Refuse a type the region does not offer, or one the AMI's architecture cannot run.

        moto's RunInstances would accept any type name, so this is checked before anything is made.
        """
        got = self.api.call(
            "describe-instance-types", self.api.ec2.describe_instance_types, InstanceTypes=[instance_type],
            tolerate=("InvalidInstanceType",),
        )
        items = [] if isinstance(got, Tolerated) else got.get("InstanceTypes") or []
        if not items or instance_type not in self.offered_in_region([instance_type]):
            raise ProviderError(
                f"instance type {instance_type!r} is not offered in {self.api.region} "
                "(see `gpurun offers --provider aws`)"
            )
        archs = items[0].get("ProcessorInfo", {}).get("SupportedArchitectures") or []
        if image is not None and archs and image.get("Architecture") not in archs:
            raise ProviderError(
                f"AMI {image.get('ImageId')} is {image.get('Architecture')} but {instance_type} runs {'/'.join(archs)}"
            )
        return spec_from_description(items[0])

    # ---- prices

    def pricing_api_price(self, instance_type: str, region: str) -> float | None:
        """Linux, shared-tenancy, on-demand USD/hour from the AWS Pricing API (served from us-east-1)."""
        client = self.api.client("pricing", "us-east-1", fast=True)
        filters = {
            "instanceType": instance_type, "regionCode": region, "operatingSystem": "Linux",
            "tenancy": "Shared", "preInstalledSw": "NA", "capacitystatus": "Used",
            "licenseModel": "No License required", "marketoption": "OnDemand",
        }
        resp = client.get_products(
            ServiceCode="AmazonEC2", MaxResults=10,
            Filters=[{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in filters.items()],
        )
        for raw in resp.get("PriceList") or []:
            product = json.loads(raw) if isinstance(raw, str) else raw
            for term in (product.get("terms", {}).get("OnDemand") or {}).values():
                for dim in (term.get("priceDimensions") or {}).values():
                    usd = float((dim.get("pricePerUnit") or {}).get("USD") or 0)
                    if usd > 0:
                        return usd
        return None

    def on_demand_price(self, instance_type: str) -> tuple[float, str] | None:
        """(USD/hour, price_source) for an instance type: live where it can be read, else static."""
        region = self.api.region
        if not self._pricing_down or self._pricing_injected:
            try:
                price = self._price_lookup(instance_type, region)
                if price is not None and price > 0:
                    return float(price), self._price_source
            except Exception as exc:  # noqa: BLE001 - any failure here only means "use the table"
                if not self._pricing_injected:
                    self._pricing_down = True
                log.info("aws: no live price for %s (%s); using the static table", instance_type, one_line(exc))
        return static_price(instance_type, region)

    def spot_prices(self, types: list[str]) -> dict[str, dict[str, float]]:
        """Current spot USD/hour per availability zone, for each type (Linux/UNIX)."""
        now = datetime.now(timezone.utc)
        found: dict[str, dict[str, tuple[datetime, float]]] = {}
        for chunk in chunks(types, 50):
            # ProductDescriptions, not a filter: moto honours only AZ/type filters.
            for item in self.api.paginate(
                "describe-spot-price-history", "describe_spot_price_history", "SpotPriceHistory",
                InstanceTypes=chunk, ProductDescriptions=["Linux/UNIX"], StartTime=now,
            ):
                if not str(item.get("ProductDescription", "")).startswith("Linux/UNIX"):
                    continue
                zones = found.setdefault(item["InstanceType"], {})
                stamp = as_utc(item.get("Timestamp")) or now
                zone = item.get("AvailabilityZone", "")
                if zone not in zones or stamp > zones[zone][0]:
                    zones[zone] = (stamp, float(item["SpotPrice"]))
        return {t: {z: p for z, (_, p) in zones.items()} for t, zones in found.items()}
