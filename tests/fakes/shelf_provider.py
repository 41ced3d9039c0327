"""A provider with several offers, each scripted to boot or not: the controller's offer fallback
under test, on this machine (the sandboxes of the `local` provider are its instances).

This is not a model of a cloud's API (tests/fakes/runpod_api.py and datacrunch_api.py are, and the
e2e fallback tests run against those); it scripts the outcomes the providers report through the
interface of providers/base.py, so that every path of orchestrator.run.provisioning can be driven:

    GPURUN_PROVIDERS="shelf=tests.fakes.shelf_provider:ShelfProvider"
    GPURUN_SHELF='[{"gpu": "A", "region": "r1", "usd_per_hour": 3.6, "boot": "no_capacity"}, ...]'

`boot` is one of: "ok" (runs at once), "no_capacity" (create raises NoCapacityError, nothing made),
"boot_failure" (made, then `get` says it never will boot), "pending" (made, stays pending: only
the boot window ends it), "vanishes" (made, then not found while booting). An offer with
`"spot": true, "preempt_after_s": N` runs, and N seconds after its job started the "cloud" takes it back:
its processes die and `get` says preempted (stopped, not gone, until gpurun terminates it); with
`"preempt_once": true` only the run's first instance of it is; with `"preempt_during": "data"` the N
seconds count from the start of the recipe's data phase instead (the reclaim lands while it prepares),
with `"preempt_during": "training"` from the job's first checkpoint (it has trained, however slowly it
started).
"""


from __future__ import annotations

import json
import os
import shlex
import signal
import threading
import time
from pathlib import Path
from typing import Any

from providers.base import NOT_FOUND, PENDING, STOPPED, Instance, InstanceSpec, NoCapacityError, Offer
from providers.local import LocalProvider

# What the reclaim's N seconds count from: the file that appears on the instance when it starts.
PREEMPT_FROM = {"job": "job.pid", "data": "data.pid", "training": "out/checkpoints/MANIFEST.json"}


def _script() -> list[dict[str, Any]]:
    return json.loads(os.environ.get("GPURUN_SHELF", "[]"))


class ShelfProvider(LocalProvider):
    name = "shelf"
    launch_options = frozenset()

    def __init__(self, **_: Any) -> None:
        super().__init__(usd_per_hour=0.0)
        self.root = self.root.parent / "shelf"

    def offers(self, gpu: str | None = None, count: int = 1, spot: bool = False) -> list[Offer]:
        return [Offer(provider=self.name, gpu=o["gpu"], gpu_count=1, instance_type=f"{o['gpu']}-box",
                      usd_per_hour=float(o["usd_per_hour"]), region=o["region"], price_source="scripted",
                      available=o.get("available", True), spot=bool(o.get("spot")),
                      details={"boot": o["boot"], "preempt_after_s": o.get("preempt_after_s"),
                               "notice_after_s": o.get("notice_after_s"),
                               "preempt_once": o.get("preempt_once", False),
                               "preempt_during": o.get("preempt_during", "job")})
                for o in _script()]

    def create(self, spec: InstanceSpec) -> Instance:
        boot = spec.offer.details["boot"]
        if boot == "no_capacity":
            raise NoCapacityError(f"no {spec.offer.gpu} left in {spec.offer.region}")
        # One sandbox per attempt: the same run tries several offers, and one offer again after a preemption.
        iid = f"local-{spec.run_id}-{spec.offer.region}-a{spec.attempt}"
        sandbox = self._sandbox(iid)
        sandbox.mkdir(parents=True, exist_ok=True)
        (sandbox / "pgids").touch()
        info = {"id": iid, "run_id": spec.run_id, "name": spec.name, "created_at": time.time(),
                "usd_per_hour": spec.offer.usd_per_hour, "gpu_count": 1, "boot": boot,
                # "preempt_once": only the offer's first instance is taken back (the spot market calmed).
                "preempt_after_s": None if spec.offer.details.get("preempt_once") and spec.attempt > 1
                else spec.offer.details.get("preempt_after_s"),
                "notice_after_s": None if spec.attempt > 1 else spec.offer.details.get("notice_after_s"),
                "preempt_during": spec.offer.details.get("preempt_during") or "job"}
        (sandbox / "instance.json").write_text(json.dumps(info))
        if info["preempt_after_s"] is not None:  # the cloud acts on its own clock, asked or not
            threading.Thread(target=self._reclaim, args=(iid, float(info["preempt_after_s"]), info["preempt_during"]),
                             daemon=True).start()
        return self.get(iid)

    def spot_notice_command(self, instance: Instance, root: str) -> str | None:
        """An offer with `"notice_after_s": N` warns N s after the job's first checkpoint (a job that is
        training, however slowly it started), as EC2's two-minute notice does: spot.notice written,
        the job sent SIGUSR1 (checkpoint and stop)."""
        after = instance.raw.get("notice_after_s")
        if after is None:
            return None
        q = shlex.quote(root)
        return (f"while [ ! -s {q}/out/checkpoints/MANIFEST.json ]; do sleep 0.2; done; sleep {float(after)}; "
                f"echo '{{\"action\": \"terminate\"}}' > {q}/spot.notice; kill -s USR1 -- -$(cat {q}/job.pid)")

    def _reclaim(self, instance_id: str, after_s: float, during: str = "job") -> None:
        # N seconds after the job (or the data phase) started there (however long the boot took), or
        # never if it is gone.
        sandbox = self._sandbox(instance_id)
        while not (sandbox / PREEMPT_FROM[during]).exists():
            if (sandbox / "terminated").exists():
                return
            time.sleep(0.2)
        time.sleep(after_s)
        if (sandbox / "terminated").exists():
            return
        (sandbox / "preempted").write_text(str(time.time()))
        for pgid in self.pgids(instance_id):  # the machine is gone from under the job
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def get(self, instance_id: str) -> Instance:
        inst = super().get(instance_id)
        boot = inst.raw.get("boot", "ok")
        if not inst.gone and (self._sandbox(instance_id) / "preempted").exists():
            inst.state = STOPPED
            inst.preempted = "the cloud reclaimed the spot instance"
            return inst
        if inst.gone or boot == "ok":
            return inst
        if boot == "vanishes":
            inst.state = NOT_FOUND
        elif boot == "boot_failure":
            inst.boot_failure = "no_capacity: the order could not be placed"
            inst.state = PENDING
        else:
            inst.state = PENDING
        return inst

    def list_owned(self) -> list[Instance]:
        if not self.root.is_dir():
            return []
        return [self.get(f"local-{d.name}") for d in sorted(self.root.iterdir()) if (d / "instance.json").exists()]

    def sandboxes(self) -> list[Path]:
        return sorted(self.root.iterdir()) if self.root.is_dir() else []
