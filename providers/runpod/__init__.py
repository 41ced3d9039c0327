"""RunPod pods through the official `runpod` SDK (GraphQL under the hood), one job per module:

api.py            the SDK wrapped: lazy import, the key, bounded + retried calls, errors, safe strings
catalog.py        gpuTypes -> Offers, storage priced in
instance.py       RunPodProvider: the lifecycle calls
self_destruct.py  the watchdog's way out (providers/scripts/runpod_self_destruct.sh)
spot.py           podRentInterruptable, the one (undocumented, GraphQL-only) way to rent spot pods
ssh_start.py      the dockerArgs start command that opens SSH on images without RunPod's start script

Importing this package does not import the SDK; the first API call does.
"""

from providers.runpod.api import import_runpod
from providers.runpod.catalog import (
    CONTAINER_DISK_USD_PER_GB_MONTH,
    VOLUME_DISK_USD_PER_GB_MONTH,
    storage_usd_per_hour,
)
from providers.runpod.instance import DEFAULT_IMAGE, RunPodProvider, run_id_from_name

__all__ = [
    "CONTAINER_DISK_USD_PER_GB_MONTH",
    "DEFAULT_IMAGE",
    "VOLUME_DISK_USD_PER_GB_MONTH",
    "RunPodProvider",
    "import_runpod",
    "run_id_from_name",
    "storage_usd_per_hour",
]
