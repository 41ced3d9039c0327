"""Everything on the RunPod account that bills now, gpurun's or not: pods (running or stopped) and
network volumes, each with what it costs per hour in its state and why.

One GraphQL query: `myself { pods { ... } networkVolumes { id name size dataCenterId } }` (the pod
fields are those runpodctl's api/pod.go GetPods and runpod-python's api/queries/pods.py ask; the
network volume fields are runpodctl's api/volume.go GetNetworkVolumes and runpod-python's
api/queries/user.py). `env` and `dockerArgs` are never asked for: they can hold the user's secrets
(and RunPod puts the pod's own RUNPOD_API_KEY in the container environment).

What each costs per hour (docs.runpod.io/pods/pricing "Storage pricing", docs.runpod.io/pods/storage/types
"Comparison", docs.runpod.io/accounts-billing/billing "Storage pricing summary"; runpod/docs a900806e):
- a running pod: `costPerHr` (the GPU price; the disks are not in it, as in catalog.py) + container disk
  and volume disk at $0.10/GB-month;
- a stopped (EXITED) pod: its volume disk at $0.20/GB-month; the container disk is "Not charged" and
  the GPU stops (REST v2's Pod.cost is "0.0 when EXITED or TERMINATED", api-reference-v2/openapi.json);
- a network volume: $0.07/GB-month for the first 1 TB and $0.05 beyond (storage/network-volumes.mdx,
  "First 1 TB" / "Beyond 1 TB"), billed hourly whether or not a pod uses it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from providers.base import Billable
from providers.common import HOURS_PER_MONTH
from providers.runpod.api import RunPodClient, to_float
from providers.runpod.catalog import (
    CONTAINER_DISK_USD_PER_GB_MONTH,
    PROVIDER_NAME,
    VOLUME_DISK_USD_PER_GB_MONTH,
)

STOPPED_VOLUME_USD_PER_GB_MONTH = 0.20
NETWORK_VOLUME_USD_PER_GB_MONTH = 0.07
NETWORK_VOLUME_OVER_1TB_USD_PER_GB_MONTH = 0.05
NETWORK_VOLUME_TIER_GB = 1000
STORAGE_DOCS = "https://docs.runpod.io/pods/pricing"
# desiredStatus values of a pod whose GPU is released but whose volume is kept (instance.pod_state).
STOPPED_STATUSES = ("EXITED", "STOPPED", "PAUSED", "DEAD")

INVENTORY_QUERY = """query { myself {
  pods { id name desiredStatus costPerHr gpuCount containerDiskInGb volumeInGb podType lastStatusChange
         uptimeSeconds machine { gpuDisplayName } }
  networkVolumes { id name size dataCenterId }
} }"""


def _per_hour(gb: float, usd_per_gb_month: float) -> float:
    return gb * usd_per_gb_month / HOURS_PER_MONTH


def pod_billable(pod: dict[str, Any], run_id_of: Callable[[str | None], str | None]) -> Billable | None:
    """A pod as something that bills; None for a terminated one (it bills nothing)."""
    status = str(pod.get("desiredStatus") or "").upper()
    if status == "TERMINATED":
        return None
    disk = to_float(pod.get("containerDiskInGb")) or 0.0
    volume = to_float(pod.get("volumeInGb")) or 0.0
    if status in STOPPED_STATUSES:
        usd = _per_hour(volume, STOPPED_VOLUME_USD_PER_GB_MONTH)
        note = (f"stopped pod: its {volume:g} GB volume disk still bills at "
                f"${STOPPED_VOLUME_USD_PER_GB_MONTH:.2f}/GB-month ({STORAGE_DOCS}); terminate it to stop that"
                if volume else "stopped pod without a volume disk: bills nothing now (container disk is not "
                f"charged while stopped, {STORAGE_DOCS})")
    else:
        gpu = to_float(pod.get("costPerHr"))
        storage = _per_hour(disk, CONTAINER_DISK_USD_PER_GB_MONTH) + _per_hour(volume, VOLUME_DISK_USD_PER_GB_MONTH)
        usd = None if gpu is None else gpu + storage
        note = (f"{status.lower() or 'unknown state'} pod: GPU (costPerHr) + {disk:g} GB container disk"
                f"{f' + {volume:g} GB volume' if volume else ''} at $0.10/GB-month")
    name = str(pod.get("name") or "")
    return Billable(kind="pod", id=str(pod.get("id") or ""), provider=PROVIDER_NAME, name=name, state=status,
                    usd_per_hour=None if usd is None else round(usd, 6), run_id=run_id_of(name),
                    note=note, raw=dict(pod))


def network_volume_billable(vol: dict[str, Any], run_id_of: Callable[[str | None], str | None]) -> Billable:
    size = to_float(vol.get("size")) or 0.0
    first = min(size, NETWORK_VOLUME_TIER_GB)
    usd = (_per_hour(first, NETWORK_VOLUME_USD_PER_GB_MONTH)
           + _per_hour(size - first, NETWORK_VOLUME_OVER_1TB_USD_PER_GB_MONTH))
    name = str(vol.get("name") or "")
    return Billable(kind="volume", id=str(vol.get("id") or ""), provider=PROVIDER_NAME, name=name,
                    state="available", usd_per_hour=round(usd, 6), run_id=run_id_of(name),
                    note=(f"network volume ({size:g} GB in {vol.get('dataCenterId') or '?'}): bills "
                          f"${NETWORK_VOLUME_USD_PER_GB_MONTH:.2f}/GB-month (first 1 TB) whether or not a pod "
                          f"uses it ({STORAGE_DOCS})"),
                    raw=dict(vol))


def inventory(client: RunPodClient, run_id_of: Callable[[str | None], str | None]) -> list[Billable]:
    """Every pod and network volume on the account; `run_id_of` reads a gpurun name (`gpurun-<run id>`)."""
    data = client.graphql("list what bills", INVENTORY_QUERY)
    me = (data.get("data") or {}).get("myself") or {}
    items = [b for p in me.get("pods") or [] if (b := pod_billable(p, run_id_of)) is not None]
    items += [network_volume_billable(v, run_id_of) for v in me.get("networkVolumes") or []]
    return items
