"""What RunPod itself says a run's pods cost: the per-pod billing history, summed over the run.

The source is REST v2 `GET /v2/billing/pods?podId=...&bucketSize=hour&startTime=...&endTime=...`
(runpod/docs api-reference-v2/openapi.json, operation listPodBilling; schemas PodBillingRecord,
BillingTimeRange, PodBillingAmounts). It is the v2 form of what `runpodctl billing pods --pod-id`
reads: runpodctl (internal/api/billing.go GetPodBilling, commit 2e2df89e) calls REST v1
`GET https://rest.runpod.io/v1/billing/pods` (records `{time, amount, timeBilledMs, podId}`), and v1
retires on 2026-11-15 (api-reference/overview.mdx), so gpurun reads v2.

How the history behaves, and what that makes `complete`:
- Records are time buckets, half-open [startTime, endTime) in RFC 3339, one per pod per bucket,
  with `totalAmount` = GPU + CPU + disk in USD (`gpuAmount`, `cpuAmount`, `diskAmount`).
- The window is snapped to whole buckets (startTime down, endTime up): we ask for hour-aligned
  bounds ourselves, so the answer covers exactly what we asked.
- The newest bucket is "the current (in-progress) bucket" (the lastN parameter's description), and
  RunPod bills every 5 minutes (docs.runpod.io/accounts-billing/billing, "Low balance behavior"): a
  bucket's amount is final only once the bucket has closed and a billing cycle or two has run after
  it. Until then the figure is `complete=False`.
- A pod with no rows yet (just made, or the history not caught up) has no figure: while any pod of
  the run has none the result says so; `usd` is None when no pod has rows at all. A pod still without
  rows a day after the run (our choice, not RunPod's) counts as billed nothing, so a re-ask ends.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from providers.base import BilledCost
from providers.runpod.api import RunPodClient, check_pod_id, to_float

POD_BILLING_PATH = "/v2/billing/pods"
BUCKET = "hour"
BUCKET_S = 3600
# Two of RunPod's 5-minute billing cycles after a bucket closes before its amount counts as final.
SETTLE_S = 600
# After this long past the run, a pod that still has no rows is taken as having billed nothing.
NO_ROWS_FINAL_AFTER_S = 24 * 3600
SOURCE = (f"RunPod billing history: REST v2 GET {POD_BILLING_PATH} (podId, bucketSize={BUCKET}; "
          f"sum of records[].totalAmount = gpuAmount + cpuAmount + diskAmount, USD)")


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def bucket_window(start: float, end: float) -> tuple[float, float]:
    """[start, end] widened to whole hour buckets, one bucket earlier at the start: a pod created a
    little before the run's recorded start (clock skew) is still counted; a pod-filtered query
    has no rows where the pod did not exist, so the extra bucket costs nothing."""
    lo = math.floor(start / BUCKET_S) * BUCKET_S - BUCKET_S
    hi = math.ceil(max(end, start) / BUCKET_S) * BUCKET_S
    return lo, max(hi, lo + BUCKET_S)


def pod_records(answer: Any, pod_id: str) -> list[dict[str, Any]]:
    """The records of `pod_id` in a listPodBilling answer ({"records": [...], "metadata": {...}})."""
    records = answer.get("records") if isinstance(answer, dict) else None
    return [r for r in records or [] if isinstance(r, dict) and str(r.get("podId") or pod_id) == pod_id]


def _row(record: dict[str, Any]) -> dict[str, Any]:
    keys = ("startTime", "endTime", "totalAmount", "gpuAmount", "cpuAmount", "diskAmount")
    return {k: record.get(k) for k in keys}


def billed_cost(client: RunPodClient, instance_ids: list[str], start: float, end: float, *,
                now: Callable[[], float] = time.time) -> BilledCost:
    """Sum what the billing history says each of the run's pods cost over [start, end]."""
    pod_ids = [check_pod_id(str(i)) for i in dict.fromkeys(instance_ids)]
    lo, hi = bucket_window(start, end)
    window = {"startTime": rfc3339(lo), "endTime": rfc3339(hi)}
    details: dict[str, Any] = {"api": f"GET {POD_BILLING_PATH}", "bucket_size": BUCKET, "window": window,
                               "pods": {}}
    if not pod_ids:
        return BilledCost(None, f"{SOURCE}: the run recorded no pod ids", complete=True, details=details)

    total, without_rows = 0.0, []
    for pod_id in pod_ids:
        answer = client.rest_get("read pod billing", POD_BILLING_PATH,
                                 {**window, "bucketSize": BUCKET, "podId": pod_id})
        rows = pod_records(answer, pod_id)
        usd = sum(to_float(r.get("totalAmount")) or 0.0 for r in rows)
        details["pods"][pod_id] = {"usd": usd if rows else None, "rows": [_row(r) for r in rows]}
        if rows:
            total += usd
        else:
            without_rows.append(pod_id)

    t = now()
    settled = t >= hi + SETTLE_S
    rows_final = not without_rows or t >= end + NO_ROWS_FINAL_AFTER_S
    complete = settled and rows_final
    notes = []
    if not settled:
        notes.append(f"the last hour bucket (ends {window['endTime']}) is not final until about "
                     f"{rfc3339(hi + SETTLE_S)}")
    if without_rows:
        notes.append(f"no billing rows {'yet ' if not rows_final else ''}for pod(s) {', '.join(without_rows)}"
                     + (" (counted as 0 a day after the run)" if rows_final else ""))
    details["notes"] = notes
    source = SOURCE + (f": {'; '.join(notes)}" if notes else "")
    usd = None if len(without_rows) == len(pod_ids) else total
    return BilledCost(usd, source, complete=complete, details=details)
