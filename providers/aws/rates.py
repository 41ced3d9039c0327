"""What an EC2 instance bills per region besides its compute: the gp3 root volume, the public IPv4
address, and data transfer out to the internet. Dated, sourced static tables (the Pricing API is used
for compute only), each figure marked with where and when it was read.

An offer's `extra_usd_per_hour` is gp3 + public IPv4 for the region it is in, and
`details["price_lines"]` the breakdown the plan shows; `egress_usd_per_gb` / `egress_source` the
region's data-transfer-out rate. A region missing from a table is priced at that table's dearest
figure and flagged "upper bound": a plan may over-price, never under-price.
"""

from __future__ import annotations

from providers.common import HOURS_PER_MONTH

RATES_DATE = "2026-12-07"  # when these tables were compiled from the pages below

# gp3 storage, USD per GB-month of provisioned storage (730 h), per region: "Amazon EBS pricing",
# General Purpose SSD (gp3) - Storage, https://aws.amazon.com/ebs/pricing/ (the region selector).
# The baseline 3,000 IOPS and 125 MB/s are free; gpurun provisions no more.
GP3_SOURCE = "https://aws.amazon.com/ebs/pricing/"
GP3_USD_PER_GB_MONTH_BY_REGION: dict[str, float] = {
    "us-east-1": 0.08, "us-east-2": 0.08, "us-west-2": 0.08, "us-west-1": 0.096,
    "ca-central-1": 0.088, "eu-west-1": 0.088, "eu-west-2": 0.0928, "eu-west-3": 0.0928,
    "eu-central-1": 0.0952, "eu-north-1": 0.0836, "ap-northeast-1": 0.096, "ap-northeast-2": 0.0912,
    "ap-southeast-1": 0.096, "ap-southeast-2": 0.096, "ap-south-1": 0.0912, "sa-east-1": 0.152,
}

# Public IPv4: "$0.005 per IP per hour for all public IPv4 addresses", in use or idle, since
# 2024-02-01 (https://aws.amazon.com/vpc/pricing/, "Public IPv4 addresses"; the same rate in every
# commercial region). gpurun's instance gets one at launch (default subnet, or
# AssociatePublicIpAddress with subnet_id): it bills for as long as the instance exists. The free
# tier's 750 h a month is not subtracted (plan with the dearer reading).
PUBLIC_IPV4_SOURCE = "https://aws.amazon.com/vpc/pricing/"
PUBLIC_IPV4_USD_PER_HOUR = 0.005

# Data transfer OUT from Amazon EC2 to the internet, USD per GB, the first paid tier ("Next 9.999 TB
# / Month"), per region: https://aws.amazon.com/ec2/pricing/on-demand/, "Data Transfer OUT From
# Amazon EC2 To Internet". The first 100 GB a month are free across the account (all services and
# regions together): gpurun does not assume any of it is left, so every GB is priced.
EGRESS_SOURCE = "https://aws.amazon.com/ec2/pricing/on-demand/ (Data Transfer OUT From Amazon EC2 To Internet)"
EGRESS_USD_PER_GB_BY_REGION: dict[str, float] = {
    "us-east-1": 0.09, "us-east-2": 0.09, "us-west-1": 0.09, "us-west-2": 0.09, "ca-central-1": 0.09,
    "eu-west-1": 0.09, "eu-west-2": 0.09, "eu-west-3": 0.09, "eu-central-1": 0.09, "eu-north-1": 0.09,
    "ap-northeast-1": 0.114, "ap-northeast-2": 0.126, "ap-southeast-1": 0.12, "ap-southeast-2": 0.114,
    "ap-south-1": 0.1093, "sa-east-1": 0.15,
}


def _regional(table: dict[str, float], region: str) -> tuple[float, bool]:
    """(figure, known): the region's own figure, else the table's dearest (an upper bound)."""
    if region in table:
        return table[region], True
    return max(table.values()), False


def gp3_usd_per_gb_month(region: str) -> tuple[float, str]:
    """(USD per GB-month, source line) of gp3 storage in `region`."""
    usd, known = _regional(GP3_USD_PER_GB_MONTH_BY_REGION, region or "us-east-1")
    note = "" if known else f", {region} not in the table: the dearest region's, an upper bound"
    return usd, f"static table ({RATES_DATE}): {GP3_SOURCE}{note}"


def gp3_usd_per_hour(gb: float, region: str = "us-east-1") -> float:
    return gb * gp3_usd_per_gb_month(region)[0] / HOURS_PER_MONTH


def egress_usd_per_gb(region: str) -> tuple[float, str]:
    """(USD per GB out to the internet, source line) in `region`: no free tier assumed."""
    usd, known = _regional(EGRESS_USD_PER_GB_BY_REGION, region or "us-east-1")
    note = "" if known else f"; {region} not in the table: the dearest region's, an upper bound"
    return usd, (f"static table ({RATES_DATE}): {EGRESS_SOURCE}, the first paid tier; the account's 100 GB "
                 f"free a month not assumed{note}")


def instance_extras(gb: float, region: str) -> list[tuple[str, float]]:
    """The per-hour lines an instance bills besides compute: its gp3 root volume and public IPv4."""
    return [(f"gp3 storage {gb:g} GB", round(gp3_usd_per_hour(gb, region), 6)),
            ("public IPv4", PUBLIC_IPV4_USD_PER_HOUR)]
