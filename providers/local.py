"""The embedded default provider: the "instance" is a sandbox directory on this machine.

Every process the run starts (the job, the watchdog) runs in its own session, and its process-group
id is appended to `<sandbox>/pgids`; terminate kills those groups, and the instance counts as
terminated only when no process of any of them is left. The price is whatever `--usd-per-hour`
says (default 0), so the budget guard can be watched working without a cloud account. Jobs run with
the controller's own interpreter (`sys.executable`): the machine's python is never looked at.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from providers.base import (
    NOT_FOUND,
    RUNNING,
    STOPPING,
    TERMINATED,
    BilledCost,
    ImageFacts,
    Instance,
    InstanceSpec,
    LocalSandbox,
    Offer,
    Provider,
    ProviderError,
    TorchOnImage,
)


def gpurun_home() -> Path:
    return Path(os.environ.get("GPURUN_HOME") or Path.home() / ".gpurun")


def pgid_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _importable(name: str) -> bool:
    """Whether this interpreter has `name`, without importing it (torch takes seconds)."""
    try:
        return find_spec(name) is not None
    except (ImportError, ValueError):  # a module set to None, or one a finder refuses
        return False


def _local_gpus() -> list[str]:
    """GPU names from nvidia-smi, without importing torch (the controller must not need it), as CUDA
    sees them: CUDA_VISIBLE_DEVICES (indices) narrows them, and an empty one hides them all."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and not visible.strip() or not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = [(line.split(":", 1)[1].split("(UUID")[0].strip(), line.split("UUID:")[-1].strip(" )"))
            for line in out.splitlines() if ":" in line]
    if visible is None:
        return [name for name, _ in gpus]
    return [gpus[i][0] for i in visible_indices(visible, [uuid for _, uuid in gpus])]


def visible_indices(visible: str, uuids: list[str]) -> list[int]:
    """CUDA_VISIBLE_DEVICES as CUDA reads it: indices or (prefixes of) UUIDs, up to the first entry
    that names no GPU ("-1" hides them all)."""
    picked: list[int] = []
    for entry in (e.strip() for e in visible.split(",")):
        if entry.isdigit() and int(entry) < len(uuids):
            picked.append(int(entry))
        elif entry.startswith(("GPU-", "MIG-")) and (match := [i for i, u in enumerate(uuids) if u.startswith(entry)]):
            picked.append(match[0])
        else:
            break
    return picked


class LocalProvider(Provider):
    name = "local"
    needs_ssh_key = False  # the "instance" is a directory on this machine, reached without SSH
    default_sync_interval_s = 5.0  # a pull is a local copy: cheap
    # The price of the pretend instance, and of the data pulled home from it (a cloud's egress).
    launch_options = frozenset({"usd_per_hour", "egress_usd_per_gb"})

    def __init__(self, usd_per_hour: float = 0.0, root: Path | None = None, egress_usd_per_gb: float = 0.0) -> None:
        if not usd_per_hour >= 0 or not math.isfinite(usd_per_hour):
            raise ProviderError(f"--usd-per-hour must be a finite number >= 0, got {usd_per_hour}")
        if not egress_usd_per_gb >= 0 or not math.isfinite(egress_usd_per_gb):
            raise ProviderError(f"--egress-usd-per-gb must be a finite number >= 0, got {egress_usd_per_gb}")
        self.usd_per_hour = float(usd_per_hour)
        self.egress_usd_per_gb = float(egress_usd_per_gb)
        self.root = Path(root) if root else gpurun_home() / "sandboxes"

    # --- offers -------------------------------------------------------------------------------
    def offers(self, gpu: str | None = None, count: int = 1, spot: bool = False) -> list[Offer]:
        gpus = _local_gpus()
        name = gpus[0] if gpus else "cpu"
        return [
            Offer(
                provider=self.name,
                gpu=name,
                gpu_count=len(gpus),
                instance_type="local-gpu" if gpus else "local-cpu",
                usd_per_hour=self.usd_per_hour,
                price_source="configured (--usd-per-hour)",
                details={"cpus": os.cpu_count() or 1},
                egress_usd_per_gb=self.egress_usd_per_gb,
                egress_source=("configured (--egress-usd-per-gb)" if self.egress_usd_per_gb
                               else "local: nothing leaves this machine"),
            )
        ]

    # --- instances ----------------------------------------------------------------------------
    def _sandbox(self, instance_id: str) -> Path:
        if not instance_id.startswith("local-"):
            raise ProviderError(f"not a local instance id: {instance_id!r}")
        return self.root / instance_id.removeprefix("local-")

    def check_nodes(self, nodes: int) -> None:
        """Multi-node runs are accepted: each node is a sandbox of its own on this machine, and the
        nodes reach one another on 127.0.0.1 (their private_ip)."""

    def create(self, spec: InstanceSpec) -> Instance:
        # local-<run id> for a run's (first) node, as always; local-<run id>-n<rank> for the others.
        instance_id = f"local-{spec.run_id}" + (f"-n{spec.node_rank}" if spec.node_rank else "")
        sandbox = self._sandbox(instance_id)
        meta = sandbox / "instance.json"
        if meta.exists():  # idempotent by run id
            return self.get(instance_id)
        sandbox.mkdir(parents=True, exist_ok=True)
        (sandbox / "pgids").touch()
        info = {
            "id": instance_id,
            "run_id": spec.run_id,
            "name": spec.name,
            "created_at": time.time(),
            "usd_per_hour": self.usd_per_hour,
            "gpu_count": spec.offer.gpu_count,
            "node_rank": spec.node_rank,
            "nodes": spec.nodes,
        }
        meta.write_text(json.dumps(info, indent=2))
        return self.get(instance_id)

    def pgids(self, instance_id: str) -> list[int]:
        path = self._sandbox(instance_id) / "pgids"
        if not path.exists():
            return []
        return [int(x) for x in path.read_text().split() if x.strip().isdigit()]

    def get(self, instance_id: str) -> Instance:
        sandbox = self._sandbox(instance_id)
        meta = sandbox / "instance.json"
        if not meta.exists():
            return Instance(id=instance_id, provider=self.name, state=NOT_FOUND)
        info: dict[str, Any] = json.loads(meta.read_text())
        alive = [g for g in self.pgids(instance_id) if pgid_alive(g)]
        if (sandbox / "terminated").exists():
            state = STOPPING if alive else TERMINATED
        else:
            state = RUNNING
        return Instance(
            id=instance_id,
            provider=self.name,
            state=state,
            run_id=info.get("run_id"),
            name=info.get("name", ""),
            instance_type="local",
            gpu_count=int(info.get("gpu_count", 0)),
            created_at=info.get("created_at"),
            usd_per_hour=info.get("usd_per_hour"),
            raw={**info, "sandbox": str(sandbox), "state": state, "live_process_groups": alive},
            private_ip="127.0.0.1",  # every node is a sandbox on this machine
        )

    def terminate(self, instance_id: str) -> dict[str, Any]:
        sandbox = self._sandbox(instance_id)
        if not (sandbox / "instance.json").exists():
            return {"instance_id": instance_id, "result": "not found (already gone)"}
        marker = sandbox / "terminated"
        if not marker.exists():
            marker.write_text(str(time.time()))
        killed = []
        for pgid in self.pgids(instance_id):
            try:
                os.killpg(pgid, signal.SIGKILL)
                killed.append(pgid)
            except ProcessLookupError:
                pass
        return {"instance_id": instance_id, "result": "terminate requested", "killed_process_groups": killed}

    def list_owned(self) -> list[Instance]:
        if not self.root.is_dir():
            return []
        return [self.get(f"local-{d.name}") for d in sorted(self.root.iterdir()) if (d / "instance.json").exists()]

    def billed_cost(self, run_id: str, instance_ids: list[str], start: float, end: float) -> BilledCost:
        """The simulated meter: each sandbox from its create to its terminate marker, per second at its price."""
        rows = []
        for iid in instance_ids:
            sandbox = self._sandbox(iid)
            meta, marker = sandbox / "instance.json", sandbox / "terminated"
            if not meta.exists() or not marker.exists():
                return BilledCost(None, "gpurun local meter: the sandbox is gone or still running", complete=False)
            info = json.loads(meta.read_text())
            seconds = math.ceil(max(0.0, float(marker.read_text().split()[0]) - float(info["created_at"])))
            rows.append({"instance_id": iid, "seconds": seconds, "usd_per_hour": info.get("usd_per_hour") or 0.0})
        usd = sum(r["seconds"] * r["usd_per_hour"] / 3600.0 for r in rows)
        return BilledCost(usd, "gpurun local meter (per second from create to terminate)", details={"rows": rows})

    def access(self, instance: Instance) -> LocalSandbox | None:
        sandbox = instance.raw.get("sandbox")
        return LocalSandbox(str(sandbox), python=sys.executable) if sandbox and not instance.gone else None

    def image_facts(self, image: str | None, offer: Offer) -> ImageFacts:
        """The "image" is the controller's own interpreter (the one with gpurun's `train` extra): jobs
        run with it, and bootstrap never installs into it or into any python found on PATH."""
        has = _importable("torch") and _importable("numpy")
        return ImageFacts(f"this Python ({sys.executable})", TorchOnImage.CARRIED if has else TorchOnImage.ABSENT,
                          installs=False)

    def self_destruct_command(self, instance: Instance) -> str:
        # Kill every process group of the sandbox, the watchdog's own (which runs this) last.
        box = shlex.quote(str(self._sandbox(instance.id)))
        return (
            f"date +%s > {box}/terminated; me=$(cat {box}/watchdog.pid 2>/dev/null); "
            f'for g in $(cat {box}/pgids); do [ "$g" = "$me" ] || kill -s KILL -- -"$g" 2>/dev/null; done; '
            f'[ -n "$me" ] && kill -s KILL -- -"$me"; true'
        )
