"""Which OS image an instance type takes: checked at plan time, picked when the user named none.

Two sources say what a type supports: `supported_os` on GET /instance-types (the SDK's
`InstanceType.supported_os`) and GET /images?instance_type=<type> (`ImagesService.get(instance_type=)`,
the Go SDK's `GetImagesByInstanceType`), which also carries each image's name and details. An image
a type does not take is refused by the API only at create, after the plan promised a launch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from providers.base import CredentialsError, ProviderError
from providers.datacrunch.api import DataCrunchAPI, sdk_paths

# `image` may also be an existing OS volume's id (InstancesService.create docstring): not an image type.
_VOLUME_ID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)
_CUDA_RE = re.compile(r"cuda[- ]?(\d+)\.(\d+)", re.I)


@dataclass(frozen=True)
class ImageChoice:
    image: str  # the image_type to send as `image`
    reason: str  # why this one: "given", "picked: PyTorch + CUDA 12.8", ...


def is_volume_id(image: str) -> bool:
    return bool(_VOLUME_ID_RE.match(image))


def supported_images(api: DataCrunchAPI, instance_type: str, supported_os: list[str] | None) -> list[dict[str, Any]]:
    """The images this type takes: /images?instance_type= where it answers, else supported_os as bare rows.
    Empty when neither source says (then nothing is refused on a guess)."""
    try:
        rows = api.request("get", sdk_paths().images, params={"instance_type": instance_type}).json()
    except CredentialsError:
        raise
    except ProviderError:
        rows = None
    if isinstance(rows, list) and rows:
        listed = [r for r in rows if isinstance(r, dict) and r.get("image_type")]
        if supported_os:  # both sources: what both allow
            both = [r for r in listed if r["image_type"] in supported_os]
            listed = both or listed
        return listed
    return [{"image_type": name, "name": name, "details": []} for name in supported_os or []]


def _text(row: dict[str, Any]) -> str:
    return " ".join([str(row.get("image_type", "")), str(row.get("name", "")), *map(str, row.get("details") or [])])


def _rank(row: dict[str, Any], preferred: str) -> tuple[bool, bool, tuple[int, int], bool]:
    """PyTorch + CUDA first, then CUDA; the newer CUDA; the configured default breaks ties."""
    text = _text(row).lower()
    cuda = max(((int(a), int(b)) for a, b in _CUDA_RE.findall(text)), default=(0, 0))
    has_cuda = cuda > (0, 0)
    return "torch" in text and has_cuda, has_cuda, cuda, row.get("image_type") == preferred


def choose(images: list[dict[str, Any]], *, wanted: str | None, default: str, instance_type: str) -> ImageChoice:
    """The user's image if the type takes it (one-line refusal naming what it takes if not); else the best
    CUDA (+ PyTorch) image the type takes; else the default when no source said anything."""
    names = [str(r["image_type"]) for r in images]
    if wanted:
        if not names or wanted in names or is_volume_id(wanted):
            return ImageChoice(wanted, "given")
        raise ProviderError(
            f"DataCrunch image {wanted!r} does not run on {instance_type}; it takes: {', '.join(names)} "
            "(pass one of them with --image, or leave --image out to pick one)")
    usable = [r for r in images if not r.get("is_cluster")]
    if not usable:
        return ImageChoice(default, "default (the API listed no images for this type)")
    best = max(usable, key=lambda r: _rank(r, default))
    pytorch, has_cuda, cuda, _ = _rank(best, default)
    if not has_cuda:
        raise ProviderError(f"DataCrunch lists no CUDA image for {instance_type} (it takes: {', '.join(names)}): "
                            "pass one with --image")
    what = ("PyTorch + " if pytorch else "") + f"CUDA {cuda[0]}.{cuda[1]}"
    return ImageChoice(str(best["image_type"]), f"picked: {what}")
