"""The account's EC2 vCPU quota for GPU instances, read at plan time through Service Quotas.

A new AWS account often has 0 vCPUs for G and P instances: RunInstances then answers
VcpuLimitExceeded after the plan was accepted. `check_vcpu_quota` reads the applied quota with
`service-quotas get-service-quota` (ServiceCode ec2) and refuses, in one line, an offer that does
not fit; where the quota cannot be read (no `servicequotas:GetServiceQuota` permission, a code the
region does not have) it says so in the log and lets the launch go on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from providers.aws.api import AWSApi, error_code
from providers.base import ProviderError
from providers.common import one_line

log = logging.getLogger("gpurun.providers.aws")

# (instance class letter, spot) -> (quota code, quota name). The codes and names as the Service
# Quotas console lists them for EC2 (https://console.aws.amazon.com/servicequotas/home/services/ec2/quotas);
# the same mapping is in SkyPilot's catalog (catalogs/v5/aws/instance_quota_mapping.csv) and in
# AWS's own quota-monitor checks. Each counts vCPUs of running (or, for spot, requested) instances.
QUOTAS: dict[tuple[str, bool], tuple[str, str]] = {
    ("g", False): ("L-DB2E81BA", "Running On-Demand G and VT instances"),
    ("p", False): ("L-417A185B", "Running On-Demand P instances"),
    ("g", True): ("L-3819A6DF", "All G and VT Spot Instance Requests"),
    ("p", True): ("L-7212CCBC", "All P Spot Instance Requests"),
}
# G and VT share their quotas; gr6 is a G instance.
_CLASS_OF_FAMILY_PREFIX = (("vt", "g"), ("gr", "g"), ("g", "g"), ("p", "p"))


@dataclass(frozen=True)
class Quota:
    code: str
    name: str


def quota_for(instance_type: str, spot: bool) -> Quota | None:
    """The vCPU quota an instance type counts against (None: not a G or P type)."""
    letter = instance_class(instance_type)
    entry = QUOTAS.get((letter, spot)) if letter else None
    return Quota(*entry) if entry else None


def instance_class(instance_type: str) -> str:
    family = instance_type.split(".")[0].lower()
    return next((cls for prefix, cls in _CLASS_OF_FAMILY_PREFIX if family.startswith(prefix)), "")


def console_url(code: str, region: str) -> str:
    return f"https://{region}.console.aws.amazon.com/servicequotas/home/services/ec2/quotas/{code}"


def applied_quota(api: AWSApi, code: str) -> float | None:
    """The applied value of an EC2 quota in the region; None when it cannot be read."""
    client = api.client("service-quotas", fast=True)
    try:
        got = client.get_service_quota(ServiceCode="ec2", QuotaCode=code)
    except Exception as exc:  # noqa: BLE001 - optional check: AccessDenied, NoSuchResource, no network
        log.info("aws: vCPU quota %s not checked in %s (%s: %s)", code, api.region,
                 error_code(exc) or type(exc).__name__, one_line(exc))
        return None
    value = (got.get("Quota") or {}).get("Value")
    return float(value) if value is not None else None


def vcpus_in_use(api: AWSApi, letter: str, spot: bool) -> int:
    """vCPUs of the account's pending/running instances of that class and market in the region."""
    used, unsized = 0, []
    for res in api.paginate(
        "describe-instances", "describe_instances", "Reservations",
        Filters=[{"Name": "instance-state-name", "Values": ["pending", "running"]}],
    ):
        for inst in res.get("Instances") or []:
            itype = str(inst.get("InstanceType", ""))
            if (inst.get("InstanceLifecycle") == "spot") != spot or instance_class(itype) != letter:
                continue
            cpu: dict[str, Any] = inst.get("CpuOptions") or {}
            if cpu.get("CoreCount"):
                used += int(cpu["CoreCount"]) * int(cpu.get("ThreadsPerCore") or 1)
            else:  # moto describes no CpuOptions: the type's default vCPUs
                unsized.append(itype)
    if unsized:
        described = api.call(
            "describe-instance-types", api.ec2.describe_instance_types, InstanceTypes=sorted(set(unsized))
        ).get("InstanceTypes") or []
        default = {d["InstanceType"]: int((d.get("VCpuInfo") or {}).get("DefaultVCpus") or 0) for d in described}
        used += sum(default.get(t, 0) for t in unsized)
    return used


def check_vcpu_quota(api: AWSApi, instance_type: str, vcpus: int | None, spot: bool, count: int = 1) -> None:
    """Refuse, in one line, a type whose vCPUs (times `count` instances: the nodes of a multi-node
    run) do not fit in what the quota leaves free."""
    quota = quota_for(instance_type, spot)
    if quota is None or not vcpus:
        return
    value = applied_quota(api, quota.code)
    if value is None:
        return
    in_use = vcpus_in_use(api, instance_class(instance_type), spot)
    wanted = vcpus * max(1, int(count))
    if in_use + wanted <= value:
        return
    region = api.region
    need = in_use + wanted
    used = f", {in_use} in use" if in_use else ""
    what = f"{instance_type} needs {vcpus}" if count <= 1 else f"{count} x {instance_type} need {wanted}"
    raise ProviderError(
        f"AWS quota '{quota.name}' ({quota.code}) in {region} is {value:g} vCPUs{used}; {what}"
        f": request {need} at {console_url(quota.code, region)} or run `aws service-quotas "
        f"request-service-quota-increase --service-code ec2 --quota-code {quota.code} --desired-value {need} "
        f"--region {region}`"
    )
