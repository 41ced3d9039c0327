"""AWS EC2 behind the Provider interface, on boto3 (imported lazily).

Credentials, region and endpoint come from boto3's own chain: AWS_PROFILE / ~/.aws, the
AWS_ACCESS_KEY_ID family, AWS_DEFAULT_REGION, and AWS_ENDPOINT_URL (which boto3 >= 1.28 honours
for every client: the tests point it at moto's server).

What `create` makes for a run, all named `gpurun-<run id>` and tagged `gpurun:run-id`:
an imported key pair, a security group opening TCP 22 only, and one instance launched with
InstanceInitiatedShutdownBehavior=terminate (so `sudo shutdown -h now` on the box ends the billing)
and a gp3 root volume that is deleted with it. `cleanup` removes the key pair, the group and any
volume of the run left unattached.
"""

from __future__ import annotations

import getpass
import ipaddress
import json
import logging
import math
import os
import re
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from providers.base import (
    NOT_FOUND,
    PENDING,
    RUN_ID_RE,
    RUNNING,
    STOPPED,
    STOPPING,
    TERMINATED,
    BillingRule,
    CredentialsError,
    Instance,
    InstanceSpec,
    Offer,
    Provider,
    ProviderError,
    SSHEndpoint,
    TransientProviderError,
)

log = logging.getLogger("gpurun.providers.aws")

TAG_RUN_ID = "gpurun:run-id"
TAG_OWNER = "gpurun:owner"
TAG_PRICE = "gpurun:usd-per-hour"  # the planned total (compute + EBS), so sweep can price it later
TAG_GPUS = "gpurun:gpu-count"

# The AWS Deep Learning AMI (OSS NVIDIA driver, PyTorch, Ubuntu) through its public SSM parameter.
# PyTorch lives in a venv there: /opt/pytorch/bin/python (`source /opt/pytorch/bin/activate`).
# The versioned names retire over time; when this one is gone the newest
# oss-nvidia-driver-gpu-pytorch-*-ubuntu-* under the same path is used instead.
DLAMI_SSM_PATH = "/aws/service/deeplearning/ami/x86_64"
DEFAULT_AMI_SSM_PARAMETER = f"{DLAMI_SSM_PATH}/oss-nvidia-driver-gpu-pytorch-2.10-ubuntu-24.04/latest/ami-id"
_DLAMI_PARAM_RE = re.compile(
    r"/oss-nvidia-driver-gpu-pytorch-(\d+)\.(\d+)-ubuntu-(\d+)\.(\d+)/latest/ami-id$"
)

# AWS Linux on-demand and spot instances bill per second with a 60 s minimum; so does EBS.
AWS_BILLING = BillingRule(
    increment_s=1,
    minimum_s=60,
    source="https://aws.amazon.com/ec2/pricing/on-demand/ (per-second billing, 60 s minimum, Linux)",
)

# Families whose instances carry whole NVIDIA GPUs on x86_64 (what the DLAMI supports). Left out on
# purpose: g4ad (AMD), g5g (Arm), g6f/gr6f (fractional GPUs), inf/trn/dl1 (not CUDA).
GPU_FAMILIES = (
    "g4dn", "g5", "g6", "gr6", "g6e", "g7e", "p3", "p3dn", "p4d", "p4de", "p5", "p5e", "p5en",
    "p6-b200", "p6-b300",
)

STATIC_PRICE_DATE = "2025-05-01"
# us-east-1 Linux on-demand USD/hour as listed on the AWS pricing page on STATIC_PRICE_DATE:
# instance type -> (GPU, GPUs, GiB per GPU, USD/hour). Used only when the Pricing API cannot be
# read; the offer is then flagged "static table (date)". P4d/P4de/P5 were cut up to 45 % in June
# 2025: the older, higher prices are kept, which errs on the side of the dollar cap.
STATIC_CATALOGUE: dict[str, tuple[str, int, float, float]] = {
    "g4dn.xlarge": ("T4", 1, 16, 0.526),
    "g4dn.2xlarge": ("T4", 1, 16, 0.752),
    "g4dn.4xlarge": ("T4", 1, 16, 1.204),
    "g4dn.8xlarge": ("T4", 1, 16, 2.176),
    "g4dn.16xlarge": ("T4", 1, 16, 4.352),
    "g4dn.12xlarge": ("T4", 4, 16, 3.912),
    "g4dn.metal": ("T4", 8, 16, 7.824),
    "g5.xlarge": ("A10G", 1, 24, 1.006),
    "g5.2xlarge": ("A10G", 1, 24, 1.212),
    "g5.4xlarge": ("A10G", 1, 24, 1.624),
    "g5.8xlarge": ("A10G", 1, 24, 2.448),
    "g5.16xlarge": ("A10G", 1, 24, 4.096),
    "g5.12xlarge": ("A10G", 4, 24, 5.672),
    "g5.24xlarge": ("A10G", 4, 24, 8.144),
    "g5.48xlarge": ("A10G", 8, 24, 16.288),
    "g6.xlarge": ("L4", 1, 24, 0.8048),
    "g6.2xlarge": ("L4", 1, 24, 0.9776),
    "g6.4xlarge": ("L4", 1, 24, 1.3232),
    "g6.8xlarge": ("L4", 1, 24, 2.0144),
    "g6.16xlarge": ("L4", 1, 24, 3.3968),
    "g6.12xlarge": ("L4", 4, 24, 4.6016),
    "g6.24xlarge": ("L4", 4, 24, 6.6752),
    "g6.48xlarge": ("L4", 8, 24, 13.3504),
    "gr6.4xlarge": ("L4", 1, 24, 1.5392),
    "gr6.8xlarge": ("L4", 1, 24, 2.4464),
    "g6e.xlarge": ("L40S", 1, 48, 1.861),
    "g6e.2xlarge": ("L40S", 1, 48, 2.24208),
    "g6e.4xlarge": ("L40S", 1, 48, 3.00424),
    "g6e.8xlarge": ("L40S", 1, 48, 4.52856),
    "g6e.16xlarge": ("L40S", 1, 48, 7.57719),
    "g6e.12xlarge": ("L40S", 4, 48, 10.49264),
    "g6e.24xlarge": ("L40S", 4, 48, 15.06559),
    "g6e.48xlarge": ("L40S", 8, 48, 30.13118),
    "p3dn.24xlarge": ("V100", 8, 32, 31.212),
    "p4d.24xlarge": ("A100", 8, 40, 32.7726),
    "p4de.24xlarge": ("A100", 8, 80, 40.9657),
    "p5.48xlarge": ("H100", 8, 80, 98.32),
}
# The static prices are us-east-1's (us-east-2 and us-west-2 match). Elsewhere they are scaled up
# by the dearest region's ratio (sa-east-1, ~1.7x) so a static plan never under-prices a run.
_STATIC_SAME_PRICE_REGIONS = ("us-east-1", "us-east-2", "us-west-2")
_STATIC_OTHER_REGION_FACTOR = 1.75
GP3_USD_PER_GB_MONTH = 0.08  # us-east-1 gp3 storage; AWS prices EBS per GB-month of 730 hours
HOURS_PER_MONTH = 730.0

DEFAULT_DISK_GB = 100  # the DLAMI's root snapshot is ~75-100 GB; smaller requests are raised to it
DEFAULT_SSH_USER = "ubuntu"
SELF_DESTRUCT = "sudo shutdown -h now"

_STATES = {
    "pending": PENDING,
    "running": RUNNING,
    "stopping": STOPPING,
    "stopped": STOPPED,
    # shutting-down is on its way to terminated, but a proof must wait for `terminated` itself.
    "shutting-down": STOPPING,
    "terminated": TERMINATED,
}
_LIVE_STATES = ["pending", "running", "stopping", "stopped"]

_AUTH_CODES = {
    "AuthFailure", "InvalidClientTokenId", "SignatureDoesNotMatch", "ExpiredToken",
    "ExpiredTokenException", "UnrecognizedClientException", "InvalidAccessKeyId",
    "UnauthorizedOperation", "AccessDenied", "AccessDeniedException", "OptInRequired",
}
_TRANSIENT_CODES = {
    "Throttling", "ThrottlingException", "RequestLimitExceeded", "RequestThrottled",
    "ServiceUnavailable", "InternalError", "InternalFailure", "Unavailable",
}
_HINTS = {
    "VcpuLimitExceeded": "ask for a quota increase ('Running On-Demand G and VT instances' or "
    "'P instances') in the Service Quotas console",
    "MaxSpotInstanceCountExceeded": "ask for a spot quota increase in the Service Quotas console",
    "InsufficientInstanceCapacity": "AWS has no capacity for it right now: try another region or type",
    "SpotMaxPriceTooLow": "the spot price rose above the planned price: plan again",
    "Unsupported": "the instance type is not offered in the chosen zone or region",
}

# (instance_type, region) -> on-demand USD/hour, or None when unknown. Injectable for tests.
PriceLookup = Callable[[str, str], "float | None"]

# GPURUN_AWS_PRICES="g5.xlarge=80,g4dn.xlarge=0.6": on-demand USD/hour per instance type instead of
# the Pricing API (a negotiated rate; moto, which has no Pricing API). Offers priced this way are
# flagged with this source, not "live"; types it does not name fall back to the static table.
ENV_PRICES = "GPURUN_AWS_PRICES"
PRICE_OVERRIDE_SOURCE = f"override ({ENV_PRICES})"


def _env_price_lookup() -> PriceLookup | None:
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


@dataclass(frozen=True)
class _Tolerated:
    """An expected AWS error code, handed back by AWSProvider._call instead of raised."""

    code: str
    message: str


class _SecurityGroupBusy(Exception):
    """The run's security group is still attached (DependencyViolation, or a live instance uses it)."""


@dataclass(frozen=True)
class _TypeSpec:
    instance_type: str
    gpu: str
    gpu_count: int
    gpu_memory_gb: float | None
    vcpus: int | None = None
    memory_gb: float | None = None
    architectures: tuple[str, ...] = ("x86_64",)


# --------------------------------------------------------------------------------------- helpers


def _boto3() -> Any:
    try:
        import boto3
    except ModuleNotFoundError as exc:  # the registry's message, for a lazy import
        raise ProviderError("provider 'aws' needs the 'boto3' package: pip install 'gpurun[aws]'") from exc
    return boto3


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


def _local_user() -> str:
    try:
        return getpass.getuser() or "unknown"
    except (KeyError, OSError):  # no login name in some containers
        return "unknown"


def _jsonable(value: Any) -> Any:
    """boto3 responses (datetimes included) as plain JSON values, for the ledger and proofs."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _tags(desc: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in desc.get("Tags") or []}


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _group_ids(desc: dict[str, Any]) -> list[str]:
    # moto leaves the top-level list empty when launched with NetworkInterfaces; the NICs have them.
    groups = list(desc.get("SecurityGroups") or [])
    groups += [g for nic in desc.get("NetworkInterfaces") or [] for g in nic.get("Groups") or []]
    return sorted({str(g["GroupId"]) for g in groups if g.get("GroupId")})


def _gpu_matches(want: str, spec: _TypeSpec) -> bool:
    # The same rule as providers.base.pick_offer: substring of the GPU name, or the exact type.
    w = want.lower().replace(" ", "")
    return w in spec.gpu.lower().replace(" ", "") or w == spec.instance_type.lower()


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


_REASON_TIME_RE = re.compile(r"\((\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}) (?:UTC|GMT)\)")


def termination_time(desc: dict[str, Any]) -> datetime | None:
    """When a terminated (or stopped) instance went down, from its StateTransitionReason.

    Real EC2 writes "User initiated (2026-11-21 20:36:39 GMT)", moto "... UTC)"; both have whole
    seconds. None when the instance is still up or the reason carries no time (e.g. a shutdown
    initiated on the instance: "Client.InstanceInitiatedShutdown"); callers then use their own
    recorded time, or now.
    """
    if (desc.get("State") or {}).get("Name") not in ("terminated", "shutting-down", "stopped", "stopping"):
        return None
    match = _REASON_TIME_RE.search(desc.get("StateTransitionReason") or "")
    if not match:
        return None
    return datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)


def _as_utc(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def billed_seconds(
    desc: dict[str, Any], *, ended_at: datetime | float | None = None, now: float | None = None,
    rule: BillingRule = AWS_BILLING,
) -> int:
    """Billed seconds of an instance from LaunchTime to its end (given, parsed from the
    StateTransitionReason, or now while it runs), under AWS's per-second, 60 s minimum rule."""
    launched = _as_utc(desc.get("LaunchTime"))
    if launched is None:
        return 0
    if isinstance(ended_at, (int, float)):
        end = float(ended_at)
    else:
        end_dt = _as_utc(ended_at) or termination_time(desc)
        end = end_dt.timestamp() if end_dt else (time.time() if now is None else now)
    return rule.billed_seconds(end - launched.timestamp())


def billed_cost(
    desc: dict[str, Any], usd_per_hour: float, *, ended_at: datetime | float | None = None,
    now: float | None = None, rule: BillingRule = AWS_BILLING,
) -> float:
    """USD billed for an instance description (see billed_seconds) at `usd_per_hour`."""
    return billed_seconds(desc, ended_at=ended_at, now=now, rule=rule) * usd_per_hour / 3600.0


def ebs_usd_per_hour(gb: float) -> float:
    return gb * GP3_USD_PER_GB_MONTH / HOURS_PER_MONTH


def static_price(instance_type: str, region: str) -> float | None:
    entry = STATIC_CATALOGUE.get(instance_type)
    if entry is None:
        return None
    factor = 1.0 if region in _STATIC_SAME_PRICE_REGIONS else _STATIC_OTHER_REGION_FACTOR
    return round(entry[3] * factor, 6)


# -------------------------------------------------------------------------------------- provider


class AWSProvider(Provider):
    """EC2 on-demand or spot GPU instances from the Deep Learning AMI.

    Options (all keyword): region (else boto3's AWS_DEFAULT_REGION / profile), image (an AMI id,
    overrides the SSM lookup), ami_ssm_parameter (SSM name that holds the AMI id), disk_gb (floor
    of the gp3 root volume), ssh_cidr (who may reach port 22: a CIDR or address, "auto" for this
    machine's public address, default 0.0.0.0/0), price_lookup (callable(type, region) -> USD/hour
    or None; default: GPURUN_AWS_PRICES if set, else the AWS Pricing API), ssh_user, subnet_id (else the default VPC),
    profile (a named AWS profile), sg_delete_timeout_s (how long cleanup waits for the group).
    """

    name = "aws"
    transport = "ssh"

    def __init__(
        self,
        *,
        region: str | None = None,
        image: str | None = None,
        ami_ssm_parameter: str | None = None,
        disk_gb: int | None = None,
        ssh_cidr: str | None = None,
        price_lookup: PriceLookup | None = None,
        ssh_user: str = DEFAULT_SSH_USER,
        subnet_id: str | None = None,
        profile: str | None = None,
        sg_delete_timeout_s: float = 300.0,
        **_ignored: Any,
    ) -> None:
        self._region_option = region
        self.image = image
        self.ami_ssm_parameter = ami_ssm_parameter or DEFAULT_AMI_SSM_PARAMETER
        self.disk_gb = int(disk_gb) if disk_gb else DEFAULT_DISK_GB
        self.ssh_cidr = ssh_cidr
        self.ssh_user = ssh_user
        self.subnet_id = subnet_id
        self.profile = profile
        self.sg_delete_timeout_s = float(sg_delete_timeout_s)
        env_lookup = None if price_lookup is not None else _env_price_lookup()
        self._price_lookup: PriceLookup = price_lookup or env_lookup or self._pricing_api_price
        self._pricing_injected = price_lookup is not None or env_lookup is not None
        self._price_source = PRICE_OVERRIDE_SOURCE if env_lookup is not None else "live"
        self._pricing_down = False  # set once the Pricing API fails: don't pay its timeout per type
        self._session_obj: Any = None
        self._clients: dict[str, Any] = {}
        self._type_cache: dict[str, _TypeSpec] | None = None
        if _ignored:
            log.warning("aws: ignoring unknown options %s", sorted(_ignored))

    # ---- boto3 plumbing

    def _session(self) -> Any:
        if self._session_obj is None:
            boto3 = _boto3()
            from botocore.exceptions import ProfileNotFound

            try:
                self._session_obj = boto3.session.Session(profile_name=self.profile)
            except ProfileNotFound as exc:
                raise CredentialsError(
                    f"AWS profile {_one_line(exc.kwargs.get('profile', self.profile))!r} not found: "
                    "run `aws configure --profile NAME` or unset AWS_PROFILE"
                ) from exc
        return self._session_obj

    @property
    def region(self) -> str:
        region = self._region_option or self._session().region_name
        if not region:
            raise CredentialsError(
                "no AWS region configured: set AWS_DEFAULT_REGION (or `aws configure`) or pass region=..."
            )
        return region

    def _client(self, service: str, region: str | None = None, *, fast: bool = False) -> Any:
        key = f"{service}:{region or ''}:{fast}"
        if key not in self._clients:
            from botocore.config import Config

            if fast:  # optional look-ups (Pricing): fail in seconds rather than stall a plan
                config = Config(connect_timeout=3, read_timeout=10, retries={"mode": "standard", "max_attempts": 2})
            else:
                config = Config(
                    connect_timeout=10, read_timeout=60, retries={"mode": "standard", "max_attempts": 5},
                    user_agent_extra="gpurun",
                )
            self._clients[key] = self._session().client(service, region_name=region or self.region, config=config)
        return self._clients[key]

    @property
    def ec2(self) -> Any:
        return self._client("ec2")

    def _map_error(self, what: str, exc: Exception) -> ProviderError | None:
        """A botocore exception as a one-line ProviderError (None: not a botocore error)."""
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            NoCredentialsError,
            NoRegionError,
            PartialCredentialsError,
        )
        from botocore.exceptions import (
            ConnectionError as BotoConnectionError,
        )

        if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
            return CredentialsError(
                f"AWS credentials not found ({_one_line(exc)}): set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE (`aws configure`)"
            )
        if isinstance(exc, NoRegionError):
            return CredentialsError("no AWS region configured: set AWS_DEFAULT_REGION or pass region=...")
        if isinstance(exc, ClientError):
            code = _error_code(exc)
            message = _one_line(exc.response.get("Error", {}).get("Message", exc))
            if code in _AUTH_CODES:
                return CredentialsError(
                    f"AWS refused {what} ({code}: {message}): check the credentials and their IAM permissions"
                )
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            if code in _TRANSIENT_CODES or status >= 500:
                return TransientProviderError(f"AWS {what} failed, try again ({code or status}: {message})")
            hint = f"; {_HINTS[code]}" if code in _HINTS else ""
            return ProviderError(f"AWS {what} failed ({code}: {message}){hint}")
        if isinstance(exc, BotoConnectionError):
            return TransientProviderError(f"AWS {what}: cannot reach the endpoint ({_one_line(exc)})")
        if isinstance(exc, BotoCoreError):
            return ProviderError(f"AWS {what} failed: {_one_line(exc)}")
        return None

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, tolerate: tuple[str, ...] = (),
              **kwargs: Any) -> Any:
        """Run one boto3 call; its errors become one-line ProviderErrors, except the error codes in
        `tolerate`, which are returned as a _Tolerated value for the caller to handle."""
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            code = _error_code(exc)
            if code and code in tolerate:
                return _Tolerated(code, _one_line(exc))
            mapped = self._map_error(what, exc)
            if mapped is None:
                raise
            raise mapped from exc

    def _paginate(self, what: str, operation: str, key: str, **kwargs: Any) -> list[dict[str, Any]]:
        def run() -> list[dict[str, Any]]:
            items: list[dict[str, Any]] = []
            for page in self.ec2.get_paginator(operation).paginate(**kwargs):
                items.extend(page.get(key) or [])
            return items

        return self._call(what, run)

    # ---- credentials and account

    def check_credentials(self) -> None:
        session = self._session()
        if session.get_credentials() is None:
            raise CredentialsError(
                "AWS credentials not found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE "
                "(`aws configure`)"
            )
        _ = self.region
        self._call("the credentials check (sts get-caller-identity)", self._client("sts").get_caller_identity)

    def account(self) -> dict[str, Any]:
        ident = self._call("sts get-caller-identity", self._client("sts").get_caller_identity)
        return {"account": ident.get("Account"), "arn": ident.get("Arn"), "region": self.region}

    # ---- catalogue and prices

    def _gpu_types(self) -> dict[str, _TypeSpec]:
        """GPU instance types that exist AND are offered in the region, with their GPU specs."""
        if self._type_cache is not None:
            return self._type_cache
        described = self._paginate(
            "describe-instance-types", "describe_instance_types", "InstanceTypes",
            Filters=[{"Name": "instance-type", "Values": [f"{fam}.*" for fam in GPU_FAMILIES]}],
        )
        specs: dict[str, _TypeSpec] = {}
        for item in described:
            spec = self._spec_from_description(item)
            if spec is not None and spec.instance_type.split(".")[0] in GPU_FAMILIES:
                specs[spec.instance_type] = spec
        offered = self._offered_in_region(sorted(specs))
        self._type_cache = {t: s for t, s in specs.items() if t in offered}
        return self._type_cache

    @staticmethod
    def _spec_from_description(item: dict[str, Any]) -> _TypeSpec | None:
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
        return _TypeSpec(
            instance_type=itype, gpu=name, gpu_count=count, gpu_memory_gb=mem,
            vcpus=(item.get("VCpuInfo") or {}).get("DefaultVCpus"),
            memory_gb=round(ram / 1024, 1) if ram else None, architectures=archs or ("x86_64",),
        )

    def _offered_in_region(self, types: list[str]) -> set[str]:
        # Exact names, not wildcards: moto's offerings filter matches literally (real EC2 allows both).
        offered: set[str] = set()
        for chunk in _chunks(types, 100):
            for item in self._paginate(
                "describe-instance-type-offerings", "describe_instance_type_offerings", "InstanceTypeOfferings",
                LocationType="region", Filters=[{"Name": "instance-type", "Values": chunk}],
            ):
                offered.add(item["InstanceType"])
        return offered

    def _pricing_api_price(self, instance_type: str, region: str) -> float | None:
        """Linux, shared-tenancy, on-demand USD/hour from the AWS Pricing API (served from us-east-1)."""
        client = self._client("pricing", "us-east-1", fast=True)
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
        region = self.region
        if not self._pricing_down or self._pricing_injected:
            try:
                price = self._price_lookup(instance_type, region)
                if price is not None and price > 0:
                    return float(price), self._price_source
            except Exception as exc:  # noqa: BLE001 - any failure here only means "use the table"
                if not self._pricing_injected:
                    self._pricing_down = True
                log.info("aws: no live price for %s (%s); using the static table", instance_type, _one_line(exc))
        static = static_price(instance_type, region)
        return (static, f"static table ({STATIC_PRICE_DATE})") if static is not None else None

    def _spot_prices(self, types: list[str]) -> dict[str, dict[str, float]]:
        """Current spot USD/hour per availability zone, for each type (Linux/UNIX)."""
        now = datetime.now(timezone.utc)
        found: dict[str, dict[str, tuple[datetime, float]]] = {}
        for chunk in _chunks(types, 50):
            # ProductDescriptions, not a filter: moto honours only AZ/type filters.
            for item in self._paginate(
                "describe-spot-price-history", "describe_spot_price_history", "SpotPriceHistory",
                InstanceTypes=chunk, ProductDescriptions=["Linux/UNIX"], StartTime=now,
            ):
                if not str(item.get("ProductDescription", "")).startswith("Linux/UNIX"):
                    continue
                zones = found.setdefault(item["InstanceType"], {})
                stamp = _as_utc(item.get("Timestamp")) or now
                zone = item.get("AvailabilityZone", "")
                if zone not in zones or stamp > zones[zone][0]:
                    zones[zone] = (stamp, float(item["SpotPrice"]))
        return {t: {z: p for z, (_, p) in zones.items()} for t, zones in found.items()}

    def offers(self, gpu: str | None = None, count: int = 1, spot: bool = False) -> list[Offer]:
        region = self.region
        if self.image:  # an explicit AMI (--image) is checked when planning: a typo must create nothing
            self._describe_image(self.image)
        types = self._gpu_types()
        wanted = [s for s in types.values() if gpu is None or _gpu_matches(gpu, s)]
        if gpu and not wanted:
            known = ", ".join(sorted({s.gpu for s in types.values()})) or "none"
            raise ProviderError(f"AWS has no instance type with GPU {gpu!r} in {region} (GPUs there: {known})")
        matching = [s for s in wanted if s.gpu_count == count]
        if gpu and not matching:
            counts = ", ".join(str(c) for c in sorted({s.gpu_count for s in wanted}))
            raise ProviderError(f"AWS has no {count}x {gpu!r} instance in {region}: it comes with {counts} GPUs")
        disk_extra = ebs_usd_per_hour(self.disk_gb)
        spot_prices = self._spot_prices([s.instance_type for s in matching]) if spot and matching else {}
        result: list[Offer] = []
        for s in sorted(matching, key=lambda x: x.instance_type):
            on_demand = self.on_demand_price(s.instance_type)
            details: dict[str, Any] = {
                "vcpus": s.vcpus, "memory_gb": s.memory_gb, "gpu_memory_gb": s.gpu_memory_gb,
                "root_volume_gb": self.disk_gb, "ebs": f"gp3 at {GP3_USD_PER_GB_MONTH} USD/GB-month",
            }
            if on_demand is not None:
                details["on_demand_usd_per_hour"] = on_demand[0]
                if on_demand[1] != "live" and region not in _STATIC_SAME_PRICE_REGIONS:
                    details["static_note"] = f"us-east-1 price x{_STATIC_OTHER_REGION_FACTOR} (upper bound)"
            if spot:
                zones = spot_prices.get(s.instance_type)
                if not zones:
                    continue  # no spot market for it here
                # The zone is AWS's choice at launch: plan with the dearest one.
                price, source = max(zones.values()), "live"
                details["spot_usd_per_hour_by_zone"] = zones
            elif on_demand is None:
                log.info("aws: %s has no known price; not offered", s.instance_type)
                continue
            else:
                price, source = on_demand
            result.append(Offer(
                provider=self.name, gpu=s.gpu, gpu_count=s.gpu_count, instance_type=s.instance_type,
                usd_per_hour=price, extra_usd_per_hour=round(disk_extra, 6), price_source=source,
                billing=AWS_BILLING, spot=spot, region=region, available=True,
                memory_gb=s.gpu_memory_gb, details=details,
            ))
        return result

    # ---- image

    def _ami_from_ssm(self) -> str:
        ssm = self._client("ssm")
        name = self.ami_ssm_parameter
        got = self._call(f"SSM get-parameter {name}", ssm.get_parameter, Name=name, tolerate=("ParameterNotFound",))
        if not isinstance(got, _Tolerated):
            return str(got["Parameter"]["Value"])
        if name != DEFAULT_AMI_SSM_PARAMETER:
            raise ProviderError(f"SSM parameter {name!r} does not exist in {self.region}: fix ami_ssm_parameter or pass image=ami-...")
        # The pinned DLAMI version was retired: take the newest PyTorch/Ubuntu one still published.
        params = self._call(
            f"SSM get-parameters-by-path {DLAMI_SSM_PATH}",
            lambda: [
                p for page in ssm.get_paginator("get_parameters_by_path").paginate(Path=DLAMI_SSM_PATH, Recursive=True)
                for p in page.get("Parameters") or []
            ],
        )
        best: tuple[tuple[int, ...], str] | None = None
        for p in params:
            m = _DLAMI_PARAM_RE.search(p.get("Name", ""))
            if m:
                version = tuple(int(x) for x in m.groups())
                if best is None or version > best[0]:
                    best = (version, str(p["Value"]))
        if best is None:
            raise ProviderError(
                f"no PyTorch Deep Learning AMI found under SSM {DLAMI_SSM_PATH} in {self.region}: "
                "pass image=ami-... (or ami_ssm_parameter=...)"
            )
        return best[1]

    def _resolve_image(self, spec: InstanceSpec) -> dict[str, Any]:
        return self._describe_image(spec.image or self.image or self._ami_from_ssm())

    def _describe_image(self, ami: str) -> dict[str, Any]:
        got = self._call(
            "describe-images", self.ec2.describe_images, ImageIds=[ami],
            tolerate=("InvalidAMIID.NotFound", "InvalidAMIID.Malformed", "InvalidAMIID.Unavailable"),
        )
        images = [] if isinstance(got, _Tolerated) else got.get("Images") or []
        if not images:
            raise ProviderError(f"AMI {ami!r} does not exist in {self.region}: pass a valid image=ami-... for this region")
        image = images[0]
        if image.get("State", "available") != "available":
            raise ProviderError(f"AMI {ami} is {image.get('State')}, not available: pass another image")
        return image

    # ---- create

    def _find_live(self, run_id: str, *, shutting_down: bool = False) -> list[dict[str, Any]]:
        states = [*_LIVE_STATES, "shutting-down"] if shutting_down else _LIVE_STATES
        found: list[dict[str, Any]] = []
        for res in self._paginate(
            "describe-instances", "describe_instances", "Reservations",
            Filters=[{"Name": f"tag:{TAG_RUN_ID}", "Values": [run_id]},
                     {"Name": "instance-state-name", "Values": states}],
        ):
            found.extend(res.get("Instances") or [])
        return found

    def _check_instance_type(self, instance_type: str, image: dict[str, Any] | None = None) -> _TypeSpec | None:
        got = self._call(
            "describe-instance-types", self.ec2.describe_instance_types, InstanceTypes=[instance_type],
            tolerate=("InvalidInstanceType",),
        )
        items = [] if isinstance(got, _Tolerated) else got.get("InstanceTypes") or []
        if not items or instance_type not in self._offered_in_region([instance_type]):
            raise ProviderError(
                f"instance type {instance_type!r} is not offered in {self.region} (see `gpurun offers --provider aws`)"
            )
        archs = items[0].get("ProcessorInfo", {}).get("SupportedArchitectures") or []
        if image is not None and archs and image.get("Architecture") not in archs:
            raise ProviderError(
                f"AMI {image.get('ImageId')} is {image.get('Architecture')} but {instance_type} runs {'/'.join(archs)}"
            )
        return self._spec_from_description(items[0])

    def _resolve_ssh_cidr(self) -> str:
        value = (self.ssh_cidr or "").strip()
        if not value:
            return "0.0.0.0/0"
        if value == "auto":
            try:  # AWS's own what-is-my-address service; only asked for when the user opted in
                with urllib.request.urlopen("https://checkip.amazonaws.com", timeout=5) as resp:  # noqa: S310
                    value = resp.read().decode().strip()
            except OSError as exc:
                log.warning("aws: cannot learn this machine's public address (%s); opening 22 to 0.0.0.0/0", exc)
                return "0.0.0.0/0"
        try:
            net = ipaddress.ip_network(value, strict=False)
        except ValueError as exc:
            raise ProviderError(f"ssh_cidr {value!r} is not an address or CIDR (e.g. 203.0.113.7/32)") from exc
        if net.version != 4:
            raise ProviderError(f"ssh_cidr {value!r}: only IPv4 is supported")
        return str(net)

    def _network(self) -> tuple[str, str | None]:
        """(vpc id, subnet id or None for the default subnet)."""
        if self.subnet_id:
            subnets = self._call(
                "describe-subnets", self.ec2.describe_subnets, SubnetIds=[self.subnet_id]
            ).get("Subnets") or []
            if not subnets:
                raise ProviderError(f"subnet {self.subnet_id!r} does not exist in {self.region}")
            return subnets[0]["VpcId"], self.subnet_id
        vpcs = self._call(
            "describe-vpcs", self.ec2.describe_vpcs, Filters=[{"Name": "is-default", "Values": ["true"]}]
        ).get("Vpcs") or []
        if not vpcs:
            raise ProviderError(
                f"no default VPC in {self.region}: run `aws ec2 create-default-vpc` or pass subnet_id=subnet-..."
            )
        return vpcs[0]["VpcId"], None

    def _ensure_key_pair(self, name: str, public_key: str, tags: list[dict[str, str]]) -> None:
        """Import the run's public key as `name`."""

        def do_import(**extra: Any) -> Any:
            return self._call(
                "import-key-pair", self.ec2.import_key_pair, KeyName=name,
                PublicKeyMaterial=public_key.strip().encode(),
                TagSpecifications=[{"ResourceType": "key-pair", "Tags": tags}], **extra,
            )

        if isinstance(do_import(tolerate=("InvalidKeyPair.Duplicate",)), _Tolerated):
            # Left from an earlier attempt of this run with no live instance: replace it with this key.
            self._call("delete-key-pair", self.ec2.delete_key_pair, KeyName=name)
            do_import()

    def _ensure_security_group(self, name: str, vpc_id: str, cidr: str,
                               tags: list[dict[str, str]]) -> tuple[str, bool]:
        """The run's group with TCP 22 from `cidr` only: (group id, whether this call created it)."""
        got = self._call(
            "create-security-group", self.ec2.create_security_group,
            GroupName=name, VpcId=vpc_id, Description=f"gpurun {name}: SSH (22) only",
            TagSpecifications=[{"ResourceType": "security-group", "Tags": tags}],
            tolerate=("InvalidGroup.Duplicate",),
        )
        created = not isinstance(got, _Tolerated)
        if created:
            group_id = got["GroupId"]
        else:
            groups = self._call(
                "describe-security-groups", self.ec2.describe_security_groups,
                Filters=[{"Name": "group-name", "Values": [name]}, {"Name": "vpc-id", "Values": [vpc_id]}],
            ).get("SecurityGroups") or []
            if not groups:
                raise ProviderError(f"security group {name} exists but cannot be read in {vpc_id}")
            group_id = groups[0]["GroupId"]
        self._call(
            "authorize-security-group-ingress", self.ec2.authorize_security_group_ingress,
            GroupId=group_id,
            IpPermissions=[{
                "IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
                "IpRanges": [{"CidrIp": cidr, "Description": "gpurun ssh"}],
            }],
            tolerate=("InvalidPermission.Duplicate",),
        )
        return group_id, created

    def create(self, spec: InstanceSpec) -> Instance:
        run_id = spec.run_id
        if not RUN_ID_RE.match(run_id or ""):
            raise ProviderError(f"run id {run_id!r} is not valid (lowercase letters, digits and '-', 3-41 chars)")
        # Idempotent by run id: a live instance tagged with it is the answer. (ClientToken below
        # covers the describe lag of real EC2; moto ignores ClientToken, this lookup does not.)
        existing = self._find_live(run_id)
        if existing:
            log.info("aws: run %s already has instance %s", run_id, existing[0]["InstanceId"])
            return self._to_instance(existing[0])

        # Everything that can be refused is checked before anything is made.
        if not spec.ssh_public_key.strip():
            raise ProviderError("AWS needs the run's SSH public key (spec.ssh_public_key is empty)")
        offer = spec.offer
        image = self._resolve_image(spec)
        type_spec = self._check_instance_type(offer.instance_type, image)
        cidr = self._resolve_ssh_cidr()
        vpc_id, subnet_id = self._network()
        root_device = image.get("RootDeviceName") or "/dev/sda1"
        snapshot_gb = max(
            [int((m.get("Ebs") or {}).get("VolumeSize") or 0)
             for m in image.get("BlockDeviceMappings") or [] if m.get("DeviceName") == root_device] or [0]
        )
        # One volume, deleted with the instance: nothing is left billing after termination.
        disk_gb = max(int(spec.disk_gb or 0), self.disk_gb, snapshot_gb) + max(0, int(spec.volume_gb or 0))
        compute = float(offer.usd_per_hour)
        usd_per_hour = round(compute + ebs_usd_per_hour(disk_gb), 6)
        if disk_gb != self.disk_gb:
            log.info("aws: root volume %d GB (offer priced %d GB)", disk_gb, self.disk_gb)
        gpu_count = offer.gpu_count or (type_spec.gpu_count if type_spec else 0)

        name = spec.name
        owner = (spec.owner or _local_user())[:256]
        tags = [{"Key": TAG_RUN_ID, "Value": run_id}, {"Key": TAG_OWNER, "Value": owner}, {"Key": "Name", "Value": name}]
        instance_tags = tags + [{"Key": TAG_PRICE, "Value": f"{usd_per_hour:.6f}"}, {"Key": TAG_GPUS, "Value": str(gpu_count)}]

        self._ensure_key_pair(name, spec.ssh_public_key, tags)
        group_id, made_group = self._ensure_security_group(name, vpc_id, cidr, tags)
        kwargs: dict[str, Any] = {
            "ImageId": image["ImageId"], "InstanceType": offer.instance_type, "MinCount": 1, "MaxCount": 1,
            "KeyName": name, "ClientToken": name,
            "InstanceInitiatedShutdownBehavior": "terminate",  # `shutdown -h` on the box = terminated
            "BlockDeviceMappings": [{
                "DeviceName": root_device,
                "Ebs": {"VolumeSize": disk_gb, "VolumeType": "gp3", "DeleteOnTermination": True},
            }],
            "TagSpecifications": [
                {"ResourceType": "instance", "Tags": instance_tags},
                {"ResourceType": "volume", "Tags": tags},
            ],
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
        }
        if subnet_id:
            kwargs["NetworkInterfaces"] = [{
                "DeviceIndex": 0, "SubnetId": subnet_id, "Groups": [group_id], "AssociatePublicIpAddress": True,
            }]
        else:
            kwargs["SecurityGroupIds"] = [group_id]
        if offer.spot:
            kwargs["InstanceMarketOptions"] = {
                "MarketType": "spot",
                "SpotOptions": {
                    "SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate",
                    # Never pay more per hour than planned: above it AWS reclaims the instance.
                    "MaxPrice": f"{math.ceil(compute * 1e6) / 1e6:.6f}",  # rounded up, never below plan
                },
            }
        try:
            resp = self._call(f"run-instances ({offer.instance_type})", self.ec2.run_instances, **kwargs)
        except ProviderError:
            self._undo(name, group_id if made_group else None)
            raise
        desc = resp["Instances"][0]
        if desc.get("State", {}).get("Name") in ("shutting-down", "terminated"):
            # Real EC2 answers a reused ClientToken with the old instance, even a terminated one.
            raise ProviderError(f"run {run_id} already had instance {desc['InstanceId']}, now terminated: start a new run")
        log.info("aws: created %s (%s) for run %s", desc["InstanceId"], offer.instance_type, run_id)
        instance = self._to_instance(desc, usd_per_hour=usd_per_hour)
        instance.raw.update({"ssh_cidr": cidr, "root_volume_gb": disk_gb, "image_name": image.get("Name")})
        return instance

    def _undo(self, name: str, group_id: str | None) -> None:
        """Best effort after a refused run-instances: nothing was launched, so nothing must remain."""
        try:
            self.ec2.delete_key_pair(KeyName=name)
            if group_id:
                self.ec2.delete_security_group(GroupId=group_id)
        except Exception as exc:  # noqa: BLE001 - cleanup(run_id) removes them later anyway
            log.warning("aws: could not undo %s after a failed launch: %s", name, _one_line(exc))

    # ---- read / terminate / list

    def _to_instance(self, desc: dict[str, Any], *, usd_per_hour: float | None = None,
                     volume_gb: dict[str, int] | None = None) -> Instance:
        tags = _tags(desc)
        itype = desc.get("InstanceType", "")
        state_name = (desc.get("State") or {}).get("Name", "")
        if usd_per_hour is None:
            usd_per_hour = self._hourly_for(desc, tags, volume_gb)
        host = desc.get("PublicDnsName") or desc.get("PublicIpAddress")
        launched = _as_utc(desc.get("LaunchTime"))
        ended = termination_time(desc)
        gpu_count = int(tags.get(TAG_GPUS) or (STATIC_CATALOGUE.get(itype, ("", 0))[1]))
        raw = {
            "instance_id": desc.get("InstanceId"),
            "state_name": state_name,
            "state_transition_reason": desc.get("StateTransitionReason") or "",
            "launch_time": launched.isoformat() if launched else None,
            "terminated_at": ended.isoformat() if ended and state_name in ("terminated", "shutting-down") else None,
            "public_dns": desc.get("PublicDnsName") or "",
            "public_ip": desc.get("PublicIpAddress") or "",
            "private_ip": desc.get("PrivateIpAddress") or "",
            "availability_zone": (desc.get("Placement") or {}).get("AvailabilityZone", ""),
            "lifecycle": desc.get("InstanceLifecycle") or "on-demand",
            "image_id": desc.get("ImageId"),
            "key_name": desc.get("KeyName"),
            "security_groups": _group_ids(desc),
            "volumes": [(m.get("Ebs") or {}).get("VolumeId") for m in desc.get("BlockDeviceMappings") or []],
            "tags": tags,
            "region": self.region,
        }
        if usd_per_hour is not None and launched is not None:
            raw["billed_seconds"] = billed_seconds(desc)
            raw["cost_usd"] = round(billed_cost(desc, usd_per_hour), 6)
        return Instance(
            id=desc["InstanceId"], provider=self.name, state=_STATES.get(state_name, PENDING),
            run_id=tags.get(TAG_RUN_ID), name=tags.get("Name", ""), instance_type=itype, gpu_count=gpu_count,
            created_at=launched.timestamp() if launched else None, usd_per_hour=usd_per_hour,
            ssh=SSHEndpoint(host, 22, self.ssh_user) if host and state_name in ("pending", "running") else None,
            raw=raw,
        )

    def _hourly_for(self, desc: dict[str, Any], tags: dict[str, str],
                    volume_gb: dict[str, int] | None) -> float | None:
        """What an instance costs per hour: the price tagged at create, else list price + its EBS."""
        try:
            if tags.get(TAG_PRICE):
                return float(tags[TAG_PRICE])
        except ValueError:
            pass
        priced = self.on_demand_price(desc.get("InstanceType", ""))
        if priced is None:
            return None
        sizes = volume_gb or {}
        ebs_gb = sum(sizes.get((m.get("Ebs") or {}).get("VolumeId", ""), 0) for m in desc.get("BlockDeviceMappings") or [])
        return round(priced[0] + ebs_usd_per_hour(ebs_gb), 6)

    def get(self, instance_id: str) -> Instance:
        got = self._call(
            "describe-instances", self.ec2.describe_instances, InstanceIds=[instance_id],
            tolerate=("InvalidInstanceID.NotFound",),
        )
        descs = [] if isinstance(got, _Tolerated) else [
            i for r in got.get("Reservations") or [] for i in r.get("Instances") or []
        ]
        if not descs:
            return Instance(id=instance_id, provider=self.name, state=NOT_FOUND)
        return self._to_instance(descs[0])

    def terminate(self, instance_id: str) -> dict[str, Any]:
        requested_at = datetime.now(timezone.utc).isoformat()
        resp = self._call(
            "terminate-instances", self.ec2.terminate_instances, InstanceIds=[instance_id],
            tolerate=("InvalidInstanceID.NotFound",),
        )
        if isinstance(resp, _Tolerated):  # already gone is success
            return {
                "instance_id": instance_id, "requested_at": requested_at, "already_gone": True,
                "error": {"code": resp.code, "message": resp.message},
            }
        out = _jsonable({k: v for k, v in resp.items() if k != "ResponseMetadata"})
        out.update({
            "instance_id": instance_id, "requested_at": requested_at,
            "request_id": resp.get("ResponseMetadata", {}).get("RequestId"),
            "already_gone": any(
                (i.get("PreviousState") or {}).get("Name") == "terminated"
                for i in resp.get("TerminatingInstances") or []
            ),
        })
        return out

    def list_owned(self) -> list[Instance]:
        descs = [
            i
            for res in self._paginate(
                "describe-instances", "describe_instances", "Reservations",
                Filters=[{"Name": "tag-key", "Values": [TAG_RUN_ID]}],
            )
            for i in res.get("Instances") or []
        ]
        # Volume sizes for the ones that were not priced at create (made outside gpurun).
        volume_ids = [
            (m.get("Ebs") or {}).get("VolumeId")
            for d in descs if not _tags(d).get(TAG_PRICE)
            for m in d.get("BlockDeviceMappings") or [] if (m.get("Ebs") or {}).get("VolumeId")
        ]
        sizes: dict[str, int] = {}
        for chunk in _chunks(volume_ids, 200):
            for vol in self._paginate("describe-volumes", "describe_volumes", "Volumes", VolumeIds=chunk):
                sizes[vol["VolumeId"]] = int(vol.get("Size") or 0)
        return [self._to_instance(d, volume_gb=sizes) for d in descs]

    def list_run(self, run_id: str) -> list[Instance]:
        # Server-side filter; shutting-down still counts: only `terminated` is gone.
        return [self._to_instance(d) for d in self._find_live(run_id, shutting_down=True)]

    def self_destruct_command(self, instance: Instance) -> str:
        # InstanceInitiatedShutdownBehavior=terminate turns this halt into a termination.
        return SELF_DESTRUCT

    # ---- cleanup

    def cleanup(self, run_id: str) -> list[str]:
        """Delete the run's key pair, left-over volumes and security group (the group only once no
        instance uses it: it waits, bounded by sg_delete_timeout_s, for termination to finish)."""
        name = f"gpurun-{run_id}"
        gone: list[str] = []
        keys = self._call(
            "describe-key-pairs", self.ec2.describe_key_pairs, Filters=[{"Name": "key-name", "Values": [name]}]
        ).get("KeyPairs") or []
        if keys:
            self._call("delete-key-pair", self.ec2.delete_key_pair, KeyName=name)
            gone.append(f"key-pair {name}")
        # A data volume that outlived its instance still bills.
        for vol in self._paginate(
            "describe-volumes", "describe_volumes", "Volumes",
            Filters=[{"Name": f"tag:{TAG_RUN_ID}", "Values": [run_id]}, {"Name": "status", "Values": ["available"]}],
        ):
            self._call("delete-volume", self.ec2.delete_volume, VolumeId=vol["VolumeId"])
            gone.append(f"volume {vol['VolumeId']}")
        groups = self._call(
            "describe-security-groups", self.ec2.describe_security_groups,
            Filters=[{"Name": "group-name", "Values": [name]}],
        ).get("SecurityGroups") or []
        for group in groups:
            group_id = group["GroupId"]

            def delete_group(group_id: str = group_id) -> None:
                users = [
                    i["InstanceId"]
                    for res in self._paginate(
                        "describe-instances", "describe_instances", "Reservations",
                        Filters=[{"Name": "instance.group-id", "Values": [group_id]},
                                 {"Name": "instance-state-name", "Values": [*_LIVE_STATES, "shutting-down"]}],
                    )
                    for i in res.get("Instances") or []
                ]
                if users:  # real EC2 would answer DependencyViolation; moto deletes it regardless
                    raise _SecurityGroupBusy(f"used by {', '.join(users)}")
                got = self._call(
                    "delete-security-group", self.ec2.delete_security_group, GroupId=group_id,
                    tolerate=("InvalidGroup.NotFound", "DependencyViolation", "InvalidGroup.InUse"),
                )
                if isinstance(got, _Tolerated) and got.code != "InvalidGroup.NotFound":
                    raise _SecurityGroupBusy(got.message)

            try:
                for attempt in Retrying(
                    retry=retry_if_exception_type(_SecurityGroupBusy),
                    stop=stop_after_delay(self.sg_delete_timeout_s),
                    wait=wait_exponential(multiplier=0.5, min=0.5, max=10),
                    reraise=True,
                ):
                    with attempt:
                        delete_group()
            except _SecurityGroupBusy as exc:
                raise ProviderError(
                    f"security group {group_id} ({name}) still in use after {self.sg_delete_timeout_s:.0f}s "
                    f"({exc}): terminate the instance, then run the teardown again"
                ) from exc
            gone.append(f"security-group {group_id}")
        return gone
