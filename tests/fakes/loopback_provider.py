"""A provider whose "instance" is the tests' loopback sshd: the SSH transport's end-to-end stand-in.

Selected with GPURUN_PROVIDERS="loopback=tests.fakes.loopback_provider:LoopbackProvider". The sshd
endpoint comes from GPURUN_LOOPBACK_SSH=host:port:user and the price from
GPURUN_LOOPBACK_USD_PER_HOUR. A multi-node run (`--nodes N`) gets one "instance" per node: node r is
reached at the r-th endpoint of GPURUN_LOOPBACK_SSH=host:port:user,host:port:user,... (one sshd per
node; an endpoint where nothing listens is a node that never becomes reachable), its run directory is
<root>/<run id>-n<r> (what the controller uses for a worker), and its private address is 127.0.0.1.
Each instance keeps a meter from create to terminate (`meter_usd`). Terminating kills every process the run started on the host (what a
cloud does when it powers the VM off); the self-destruct command does the same from the instance
side and leaves a `self_destruct.ran` marker so tests can see that the watchdog fired it.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import time
from pathlib import Path
from typing import Any

from providers.base import (
    NOT_FOUND,
    RUNNING,
    TERMINATED,
    Instance,
    InstanceSpec,
    Offer,
    Provider,
    SSHEndpoint,
)


def _home() -> Path:
    return Path(os.environ["GPURUN_HOME"]) / "loopback"


class LoopbackProvider(Provider):
    name = "loopback"

    def __init__(self, **_: Any) -> None:
        self.endpoints = []
        for item in os.environ["GPURUN_LOOPBACK_SSH"].split(","):
            host, port, user = item.split(":")
            self.endpoints.append(SSHEndpoint(host, int(port), user))
        self.endpoint = self.endpoints[0]
        self.usd_per_hour = float(os.environ.get("GPURUN_LOOPBACK_USD_PER_HOUR", "3.6"))
        self.remote_base = Path(os.environ["GPURUN_REMOTE_ROOT"])
        _home().mkdir(parents=True, exist_ok=True)

    def _state(self, instance_id: str) -> Path:
        return _home() / f"{instance_id}.json"

    def offers(self, gpu: str | None = None, count: int = 1, spot: bool = False) -> list[Offer]:
        return [Offer(provider=self.name, gpu="loopback-cpu", gpu_count=0, instance_type="loopback",
                      usd_per_hour=self.usd_per_hour)]

    def check_nodes(self, nodes: int) -> None:
        """Every node is this machine: they reach each other on 127.0.0.1."""

    def create(self, spec: InstanceSpec) -> Instance:
        instance_id = f"lb-{spec.run_id}" + (f"-n{spec.node_rank}" if spec.node_rank else "")
        path = self._state(instance_id)
        if not path.exists():
            path.write_text(json.dumps({"run_id": spec.run_id, "created_at": time.time(), "state": RUNNING,
                                        "rank": spec.node_rank}))
        return self.get(instance_id)

    def _dir(self, info: dict[str, Any]) -> Path:
        """The node's run directory: the controller's <root>/<run id>, -n<rank> for a worker."""
        rank = int(info.get("rank") or 0)
        return self.remote_base / (info["run_id"] + (f"-n{rank}" if rank else ""))

    def meter_usd(self) -> float:
        """Every instance's billed time (create to terminate, or now) at the price, all together.
        An instance the switch ended stopped billing then (a cloud bills to the self-destruct's
        terminate call, not to the controller's later one)."""
        total = 0.0
        for path in _home().glob("lb-*.json"):
            info = json.loads(path.read_text())
            total += (self._ended_at(info) or time.time()) - info["created_at"]
        return total * self.usd_per_hour / 3600.0

    def _ended_at(self, info: dict[str, Any]) -> float | None:
        ends = [float(info["terminated_at"])] if info.get("terminated_at") else []
        marker = self._dir(info) / "self_destruct.ran"
        try:
            ends.append(float(marker.read_text().strip()))
        except (OSError, ValueError):
            pass
        return min(ends, default=None)

    def get(self, instance_id: str) -> Instance:
        path = self._state(instance_id)
        if not path.exists():
            return Instance(id=instance_id, provider=self.name, state=NOT_FOUND)
        info = json.loads(path.read_text())
        if (self._dir(info) / "self_destruct.ran").exists():
            info["state"] = TERMINATED
        rank = int(info.get("rank") or 0)
        endpoint = self.endpoints[rank % len(self.endpoints)]
        return Instance(id=instance_id, provider=self.name, state=info["state"], run_id=info["run_id"],
                        name=f"gpurun-{info['run_id']}" + (f"-n{rank}" if rank else ""), created_at=info["created_at"],
                        usd_per_hour=self.usd_per_hour, ssh=endpoint if info["state"] == RUNNING else None,
                        raw=info, private_ip="127.0.0.1")

    def terminate(self, instance_id: str) -> dict[str, Any]:
        path = self._state(instance_id)
        if not path.exists():
            return {"result": "not found"}
        info = json.loads(path.read_text())
        killed = []
        for pid_file in self._dir(info).glob("*.pid"):
            try:
                os.killpg(int(pid_file.read_text().strip()), signal.SIGKILL)
                killed.append(pid_file.stem)
            except (ProcessLookupError, ValueError):
                pass
        if info["state"] != TERMINATED:
            info["terminated_at"] = time.time()
        info["state"] = TERMINATED
        path.write_text(json.dumps(info))
        return {"result": "terminated", "killed": killed}

    def list_owned(self) -> list[Instance]:
        return [self.get(p.stem) for p in sorted(_home().glob("lb-*.json"))]

    def self_destruct_command(self, instance: Instance) -> str:
        root = shlex.quote(str(self._dir(instance.raw)))
        # Mark first (the controller may be gone; the marker is what the test checks), then kill the job.
        return (f"date +%s > {root}/self_destruct.ran; "
                f"kill -s KILL -- -$(cat {root}/job.pid) 2>/dev/null; true")
