"""Did DataCrunch (Verda) take a spot instance back? What the API shows, and what this provider asked.

The API has no preemption status, reason or notice: the statuses are the Go SDK's Status* constants
(pkg/verda/instances_types.go: new, ordered, provisioning, validating, running, offline, pending,
discontinued, unknown, notfound, error, deleting, no_capacity) and the Python SDK's InstanceStatus;
none is "preempted" or "reclaimed". What it does say:
- a spot instance reads `is_spot: true` and `contract: "SPOT"` (SDK `Instance.is_spot`, `Contract =
  Literal['LONG_TERM', 'PAY_AS_YOU_GO', 'SPOT']`; Go `Instance.IsSpot`, `Contract`);
- the platform taking it back is a "spot discontinue" (SDK `OSVolume.on_spot_discontinue`, "What to do
  with the volume on spot discontinue"; Go `SpotDiscontinue*`, "volume behavior when a spot instance is
  discontinued"), so it ends `discontinued`, the same terminal status our own delete ends in
  (verda-cli cmd/util/status_messages.go InstanceTerminalStatuses), and may later answer 404.
So who discontinued it is only known to whoever sent the delete: this provider remembers every id it
sent a delete for, and a spot instance on its way out (`deleting`, `discontinued`, or a 404 for one it
knew as spot) without one is a preemption. An on-demand instance never is.

Known limit: a delete this process did not send (the on-instance self-destruct at the deadline, a
`gpurun teardown` from another process, the console) reads the same as a reclaim.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SPOT_CONTRACT = "SPOT"
# The statuses of an instance on its way out (our delete walks deleting -> discontinued).
LEAVING = ("deleting", "discontinued")


def is_spot(raw: dict[str, Any]) -> bool:
    """The API's own word that this is a spot instance (either field: `contract` may be absent)."""
    return raw.get("is_spot") is True or str(raw.get("contract") or "").upper() == SPOT_CONTRACT


@dataclass
class Verdict:
    preempted: str = ""
    boot_failure: str = ""


@dataclass
class PreemptionWatch:
    """What this provider saw and asked, per instance id: the half of the answer the API does not keep."""

    own_deletes: set[str] = field(default_factory=set)  # ids this provider sent a delete for
    spot: set[str] = field(default_factory=set)  # ids the API showed as spot
    ran: set[str] = field(default_factory=set)  # ids seen running
    booting: set[str] = field(default_factory=set)  # ids seen before running (ordered, provisioning, ...)

    def observe(self, raw: dict[str, Any]) -> None:
        iid = str(raw.get("id") or "")
        if not iid:
            return
        status = str(raw.get("status") or "").lower()
        if is_spot(raw):
            self.spot.add(iid)
        if status == "running":
            self.ran.add(iid)
        elif status not in LEAVING and iid not in self.ran:
            self.booting.add(iid)

    def deleting(self, instance_id: str) -> None:
        """Called just before this provider sends a delete: from then on the instance's end is ours."""
        self.own_deletes.add(instance_id)

    def verdict(self, instance_id: str, raw: dict[str, Any] | None) -> Verdict:
        """`raw` is GET /instances/{id} (None: 404). Only a spot instance leaving without our delete
        counts; one seen booting and never running is a boot that never came up, not a preemption."""
        if instance_id in self.own_deletes:
            return Verdict()
        if raw is None:
            if instance_id in self.spot and instance_id in self.ran:
                return Verdict(preempted=f"DataCrunch spot instance {instance_id} is gone (404) and gpurun "
                                         "never deleted it: the platform took the spot capacity back")
            return Verdict()  # not known as a spot instance that ran: nothing to say
        self.observe(raw)
        status = str(raw.get("status") or "").lower()
        if status not in LEAVING or not is_spot(raw):
            return Verdict()
        where = f"{raw.get('instance_type') or 'spot'} in {raw.get('location') or 'its location'}"
        if instance_id in self.booting and instance_id not in self.ran:
            return Verdict(boot_failure=f"DataCrunch discontinued the spot order {instance_id} ({where}) "
                                        "before it ever ran, without a delete from gpurun")
        return Verdict(preempted=f"DataCrunch spot instance {instance_id} ({where}) is {status} and gpurun "
                                 "never deleted it: the platform took the spot capacity back")
