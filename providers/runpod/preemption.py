"""Did RunPod take an interruptible (spot) pod back? Read from the pod the SDK's `get_pod` returns.

What RunPod publishes, and what it does not:
- An interruptible pod "can be stopped at any time to free up resources for another Pod"; a reserved
  (on-demand) one "runs until it exits or is manually stopped" (REST v1 Pod.interruptible,
  runpod/docs api-reference/openapi.json). GraphQL says the same as `podType: INTERRUPTABLE`, a field
  runpod-python's `get_pod` asks for (api/queries/pods.py generate_pod_query).
- A spot pod "can be terminated with only a 5-second warning (SIGTERM, then SIGKILL)" and "your volume
  disk is retained even if your Spot instance is interrupted" (pods/pricing.mdx before runpod/docs
  commit 8e5aebdb removed it on 2026-05-06); a stopped spot pod is resumed with `podBidResume`
  (sdks/graphql/manage-pods.mdx, same commit). So a reclaimed pod stays listed, stopped:
  `desiredStatus` EXITED (enum RUNNING | EXITED | TERMINATED, openapi.json Pod.desiredStatus) and
  `runtime` null once its container is gone.
- `lastStatusChange` is "a string describing the last lifecycle event on a Pod" (openapi.json, example
  "Rented by User: Fri Jul 12 2024 ..."). Its wording for a reclaim is not published: runpod-python,
  runpodctl and runpod/docs never read it. Third-party clients report "Outbid: <date>", "Exited by
  Runpod: <date>" (also for a failed image and for "Insufficient balance") and "Exited by user: <date>"
  / "Terminated by user: <date>" for the account's own stops. So the text is not required; it only
  vetoes: a stop it attributes to the user (gpurun's own podStop / podTerminate, or the console) or
  to the balance (pods/pricing.mdx: "Pods are automatically stopped when your account balance
  reaches $0" - a new pod would not start either) is not a preemption.

The conservative reading where the sources are silent: an interruptible pod that is no longer
running and that nobody on the account stopped was taken back by the platform.
"""

from __future__ import annotations

import re
from typing import Any

INTERRUPTIBLE_POD_TYPE = "INTERRUPTABLE"  # RunPod's spelling (GraphQL PodType, podRentInterruptable)
_ENDED_STATUSES = ("EXITED", "TERMINATED", "STOPPED", "DEAD", "PAUSED")
# lastStatusChange texts that name who stopped it: the account ("... by user: <date>") or its balance.
_NOT_PLATFORM_RE = re.compile(r"\bby\s+user\b|balance", re.IGNORECASE)


def is_interruptible(pod: dict[str, Any]) -> bool:
    """GraphQL `podType`, or REST v1's `interruptible` where a caller read the pod that way."""
    return str(pod.get("podType") or "").upper() == INTERRUPTIBLE_POD_TYPE or pod.get("interruptible") is True


def preemption_reason(pod: dict[str, Any] | None) -> str:
    """One line when RunPod reclaimed this interruptible pod, else "".

    Never for an on-demand pod (RunPod does not take those back), a pod that still runs or is still
    starting (desiredStatus RUNNING, whatever its runtime), a pod the API no longer returns (after
    our own podTerminate `pod` answers null: that is `not_found`, and a vanished instance is the
    controller's call, which knows whether its teardown asked), nor a stop the status text
    attributes to the user or the balance.
    """
    if not pod or not is_interruptible(pod):
        return ""
    desired = str(pod.get("desiredStatus") or "").upper()
    if desired not in _ENDED_STATUSES:
        return ""
    change = " ".join(str(pod.get("lastStatusChange") or "").split())
    if _NOT_PLATFORM_RE.search(change):
        return ""
    said = f"; lastStatusChange {change!r}" if change else ""
    return (f"RunPod took back interruptible pod {pod.get('id') or '?'} (desiredStatus {desired}{said}): "
            f"spot capacity reclaimed")
