"""Which AMI a run boots: the AWS Deep Learning AMI through its public SSM parameter, or the
user's own, checked to exist (and be available) before anything is made."""

from __future__ import annotations

import re
from typing import Any

from providers.aws.api import AWSApi, Tolerated
from providers.base import ProviderError

# The AWS Deep Learning AMI (OSS NVIDIA driver, PyTorch, Ubuntu) through its public SSM parameter.
# PyTorch lives in a venv there: /opt/pytorch/bin/python (`source /opt/pytorch/bin/activate`).
# The versioned names retire over time; when this one is gone the newest
# oss-nvidia-driver-gpu-pytorch-*-ubuntu-* under the same path is used instead.
DLAMI_SSM_PATH = "/aws/service/deeplearning/ami/x86_64"
DEFAULT_AMI_SSM_PARAMETER = f"{DLAMI_SSM_PATH}/oss-nvidia-driver-gpu-pytorch-2.10-ubuntu-24.04/latest/ami-id"
_DLAMI_PARAM_RE = re.compile(
    r"/oss-nvidia-driver-gpu-pytorch-(\d+)\.(\d+)-ubuntu-(\d+)\.(\d+)/latest/ami-id$"
)


def ami_from_ssm(api: AWSApi, parameter: str) -> str:
    """The AMI id an SSM parameter holds; for the default DLAMI parameter, once AWS has retired
    that version, the newest PyTorch/Ubuntu DLAMI still published."""
    ssm = api.client("ssm")
    got = api.call(f"SSM get-parameter {parameter}", ssm.get_parameter, Name=parameter,
                   tolerate=("ParameterNotFound",))
    if not isinstance(got, Tolerated):
        return str(got["Parameter"]["Value"])
    if parameter != DEFAULT_AMI_SSM_PARAMETER:
        raise ProviderError(
            f"SSM parameter {parameter!r} does not exist in {api.region}: fix ami_ssm_parameter or pass image=ami-..."
        )
    params = api.call(
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
            f"no PyTorch Deep Learning AMI found under SSM {DLAMI_SSM_PATH} in {api.region}: "
            "pass image=ami-... (or ami_ssm_parameter=...)"
        )
    return best[1]


def describe_image(api: AWSApi, ami: str) -> dict[str, Any]:
    """The AMI's description; a missing or unavailable AMI is one line naming it."""
    got = api.call(
        "describe-images", api.ec2.describe_images, ImageIds=[ami],
        tolerate=("InvalidAMIID.NotFound", "InvalidAMIID.Malformed", "InvalidAMIID.Unavailable"),
    )
    images = [] if isinstance(got, Tolerated) else got.get("Images") or []
    if not images:
        raise ProviderError(f"AMI {ami!r} does not exist in {api.region}: pass a valid image=ami-... for this region")
    image = images[0]
    if image.get("State", "available") != "available":
        raise ProviderError(f"AMI {ami} is {image.get('State')}, not available: pass another image")
    return image
