"""What AWS itself says a run cost: Cost Explorer's GetCostAndUsage, filtered by the run's tag.

The figure is the sum of UnblendedCost over the UTC days the run touched, for every resource tagged
`gpurun:run-id=<run>` (its instance and root volume). Cost Explorer knows that tag only once it is
ACTIVATED as a user-defined cost allocation tag (Billing console > Cost allocation tags:
https://docs.aws.amazon.com/awsaccountbilling/latest/aboutv2/custom-tags.html, "After you have created
and applied the user-defined tags, you can activate [them] ... for cost allocation tracking"; the
activation steps end "It can take up to 24 hours for tags to activate",
https://docs.aws.amazon.com/awsaccountbilling/latest/aboutv2/activate-built-in-tags.html and its
user-defined twin activating-tags.html), and its data lags:
"AWS billing information updates up to three times daily"
(https://docs.aws.amazon.com/cost-management/latest/userguide/ce-api-best-practices.html). So a
figure is `complete` only once the run ended more than CE_LAG_S ago and no day of it is still
`Estimated` (ResultByTime.Estimated, "Determines whether the result is estimated":
https://docs.aws.amazon.com/aws-cost-management/latest/APIReference/API_ResultByTime.html);
`gpurun cost --reconcile` asks again until then. Each request costs 0.01 USD ("Each request will
incur a cost of $0.01": https://aws.amazon.com/aws-cost-management/aws-cost-explorer/pricing/).
"""

from __future__ import annotations

import time
from datetime import date, datetime, timedelta, timezone
from typing import Any

from providers.aws.api import AWSApi, Tolerated
from providers.base import BilledCost, ProviderError
from providers.common import one_line

# The run tag, as instance.py writes it (instance.py imports this module, so it cannot be imported
# from there; tests/test_aws_billing.py checks the two agree).
TAG_RUN_ID = "gpurun:run-id"

# Cost Explorer has one endpoint, https://ce.us-east-1.amazonaws.com (the boto3 `ce` client docs).
CE_REGION = "us-east-1"
# UnblendedCost: Cost Explorer's default, cash-based view ("Daily unblended costs":
# https://docs.aws.amazon.com/cost-management/latest/userguide/ce-chart.html); "Unblended costs
# represent your usage costs on the day they are charged to you ... For most of you, this is the
# only cost dataset that you will ever need" (AWS Cloud Financial Management blog, "Understanding
# your AWS Cost Datasets: A Cheat Sheet"). It is rate x usage of this account's line items, what the
# bill shows for them before credits. Blended averages rates across an organization;
# amortized spreads reservation fees; neither is what a user finds on the invoice for a run.
METRIC = "UnblendedCost"
# How long after a run's end its Cost Explorer figure may still grow: billing data arrives up to
# three times a day, and the docs give tag activation "up to 24 hours".
CE_LAG_S = 24 * 3600
MAX_PAGES = 20  # a run spans a few days: one page; a bound on the 0.01 USD requests regardless
# CE answers a caller without ce:GetCostAndUsage with AccessDeniedException (JSON protocol).
_DENIED = ("AccessDeniedException", "AccessDenied", "UnauthorizedOperation")
SOURCE = "AWS Cost Explorer"


def utc_day(epoch_s: float) -> date:
    return datetime.fromtimestamp(epoch_s, tz=timezone.utc).date()


def time_period(start: float, end: float) -> dict[str, str]:
    """The DAILY TimePeriod covering [start, end]: CE's Start is inclusive and its End exclusive
    (GetCostAndUsageRequest.TimePeriod in botocore's ce service model), in UTC days."""
    first = utc_day(min(start, end))
    last = utc_day(max(start, end))
    return {"Start": first.isoformat(), "End": (last + timedelta(days=1)).isoformat()}


def cost_request(run_id: str, period: dict[str, str]) -> dict[str, Any]:
    return {
        "TimePeriod": period, "Granularity": "DAILY", "Metrics": [METRIC],
        "Filter": {"Tags": {"Key": TAG_RUN_ID, "Values": [run_id], "MatchOptions": ["EQUALS"]}},
    }


def _amount(row: dict[str, Any]) -> float:
    metric = (row.get("Total") or {}).get(METRIC) or {}
    try:
        return float(metric.get("Amount") or 0.0)
    except (TypeError, ValueError):
        return 0.0


def _tag_status(api: AWSApi, ce: Any) -> str:
    """The run tag's cost allocation status: "Active", "Inactive", "absent" (Billing has not seen the
    key on any resource yet: that takes up to 24 h after first use), or "unknown (<why>)" where it
    cannot be read (no ce:ListCostAllocationTags; moto does not implement it)."""
    try:
        got = api.call("ce list-cost-allocation-tags", ce.list_cost_allocation_tags,
                       TagKeys=[TAG_RUN_ID], Type="UserDefined", tolerate=_DENIED)
    except ProviderError as exc:
        return f"unknown ({one_line(exc, 120)})"
    if isinstance(got, Tolerated):
        return f"unknown ({got.code}: no ce:ListCostAllocationTags)"
    for tag in got.get("CostAllocationTags") or []:
        if tag.get("TagKey") == TAG_RUN_ID:
            return str(tag.get("Status") or "unknown")
    return "absent"


def billed_cost(api: AWSApi, run_id: str, instance_ids: list[str], start: float, end: float, *,
                now: float | None = None) -> BilledCost:
    """Cost Explorer's figure for the run (see the module docstring); usd None with a one-line
    `source` where there is none. Never raises for an API answer: reconciliation must go on."""
    now = time.time() if now is None else now
    period = time_period(start, end)
    request = cost_request(run_id, period)
    fresh = now - max(start, end) < CE_LAG_S
    details: dict[str, Any] = {
        "metric": METRIC, "granularity": "DAILY", "time_period": period, "tag": {TAG_RUN_ID: run_id},
        "instance_ids": list(instance_ids), "rows": [], "requests": 0,
    }
    try:
        ce = api.client("ce", CE_REGION)
        rows: list[dict[str, Any]] = []
        token: str | None = None
        for _ in range(MAX_PAGES):
            kwargs = {**request, **({"NextPageToken": token} if token else {})}
            got = api.call("ce get-cost-and-usage", ce.get_cost_and_usage, tolerate=_DENIED, **kwargs)
            details["requests"] += 1
            if isinstance(got, Tolerated):
                return BilledCost(
                    None, f"{SOURCE}: no figure: these credentials lack ce:GetCostAndUsage ({got.code}); "
                    "allow it in IAM, then `gpurun cost --reconcile`", complete=False,
                    details={**details, "error": {"code": got.code, "message": got.message}},
                )
            rows.extend(got.get("ResultsByTime") or [])
            token = got.get("NextPageToken")
            if not token:
                break
    except ProviderError as exc:  # throttled, DataUnavailable, no network, no credentials
        return BilledCost(None, f"{SOURCE}: no figure ({one_line(exc, 200)})", complete=False,
                          details={**details, "error": {"message": one_line(exc)}})

    details["rows"] = [
        {"start": (r.get("TimePeriod") or {}).get("Start"), "end": (r.get("TimePeriod") or {}).get("End"),
         "usd": _amount(r), "unit": ((r.get("Total") or {}).get(METRIC) or {}).get("Unit"),
         "estimated": bool(r.get("Estimated"))}
        for r in rows
    ]
    estimated = any(r["estimated"] for r in details["rows"])
    usd = round(sum(r["usd"] for r in details["rows"]), 6)
    where = f"{METRIC}, tag {TAG_RUN_ID}={run_id}, UTC days {period['Start']}..{period['End']} (end exclusive)"

    if usd == 0.0:
        # An untagged (not activated) key and a run whose data has not arrived look the same: no
        # rows, or rows of 0. Tell them apart where the tag's status can be read.
        if fresh:
            return BilledCost(None, f"{SOURCE}: no cost yet under tag {TAG_RUN_ID}={run_id} (its data lags up "
                              "to 24 h): `gpurun cost --reconcile` asks again", complete=False, details=details)
        status = _tag_status(api, ce)
        details["tag_status"] = status
        if status != "Active":
            verdict = "is probably not" if status.startswith("unknown") else "is not"
            return BilledCost(
                None, f"{SOURCE}: no cost under tag {TAG_RUN_ID}={run_id}: the tag {verdict} activated as a cost "
                f"allocation tag (status {status}); activate it (Billing console > Cost allocation tags, or "
                "`aws ce update-cost-allocation-tags-status`): it counts from activation on",
                complete=False, details=details,
            )
    complete = not fresh and not estimated
    pending = [] if complete else [("estimated" if estimated else "within 24 h of the end") + ": may still change"]
    return BilledCost(usd, f"{SOURCE} ({where}){'; ' + pending[0] if pending else ''}", complete=complete,
                      details=details)
