"""A provider whose "instance" is the tests' loopback sshd: the SSH transport's end-to-end stand-in.

Selected with GPURUN_PROVIDERS="loopback=tests.fakes.loopback_provider:LoopbackProvider". The sshd
endpoint comes from GPURUN_LOOPBACK_SSH=host:port:user and the price from
GPURUN_LOOPBACK_USD_PER_HOUR. Terminating kills every process the run started on the host (what a
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
        host, port, user = os.environ["GPURUN_LOOPBACK_SSH"].split(":")
        self.endpoint = SSHEndpoint(host, int(port), user)
        self.usd_per_hour = float(os.environ.get("GPURUN_LOOPBACK_USD_PER_HOUR", "3.6"))
        self.remote_base = Path(os.environ["GPURUN_REMOTE_ROOT"])
        _home().mkdir(parents=True, exist_ok=True)

    def _state(self, instance_id: str) -> Path:
        return _home() / f"{instance_id}.json"

    def offers(self, gpu: str | None = None, count: int = 1, spot: bool = False) -> list[Offer]:
        return [Offer(provider=self.name, gpu="loopback-cpu", gpu_count=0, instance_type="loopback",
                      usd_per_hour=self.usd_per_hour)]

    def create(self, spec: InstanceSpec) -> Instance:
        instance_id = f"lb-{spec.run_id}"
        path = self._state(instance_id)
        if not path.exists():
            path.write_text(json.dumps({"run_id": spec.run_id, "created_at": time.time(), "state": RUNNING}))
        return self.get(instance_id)

    def get(self, instance_id: str) -> Instance:
        path = self._state(instance_id)
        if not path.exists():
            return Instance(id=instance_id, provider=self.name, state=NOT_FOUND)
        info = json.loads(path.read_text())
        if (self.remote_base / info["run_id"] / "self_destruct.ran").exists():
            info["state"] = TERMINATED
        return Instance(id=instance_id, provider=self.name, state=info["state"], run_id=info["run_id"],
                        name=f"gpurun-{info['run_id']}", created_at=info["created_at"],
                        usd_per_hour=self.usd_per_hour, ssh=self.endpoint if info["state"] == RUNNING else None,
                        raw=info)

    def terminate(self, instance_id: str) -> dict[str, Any]:
        path = self._state(instance_id)
        if not path.exists():
            return {"result": "not found"}
        info = json.loads(path.read_text())
        killed = []
        for pid_file in (self.remote_base / info["run_id"]).glob("*.pid"):
            try:
                os.killpg(int(pid_file.read_text().strip()), signal.SIGKILL)
                killed.append(pid_file.stem)
            except (ProcessLookupError, ValueError):
                pass
        info["state"] = TERMINATED
        path.write_text(json.dumps(info))
        return {"result": "terminated", "killed": killed}

    def list_owned(self) -> list[Instance]:
        return [self.get(p.stem) for p in sorted(_home().glob("lb-*.json"))]

    def self_destruct_command(self, instance: Instance) -> str:
        root = shlex.quote(str(self.remote_base / (instance.run_id or "")))
        # Mark first (the controller may be gone; the marker is what the test checks), then kill the job.
        return (f"date +%s > {root}/self_destruct.ran; "
                f"kill -s KILL -- -$(cat {root}/job.pid) 2>/dev/null; true")
