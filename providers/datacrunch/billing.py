"""What DataCrunch (Verda) says a run cost: nothing per instance, because its public API has no such figure.

Checked (2026-08): the Python SDK verda 1.25 (services: balance, instances, instance types, volumes,
volume types, images, locations, ssh keys, scripts, clusters, containers, long-term periods: no
billing, usage, invoice or transaction call), the Go SDK verdacloud-sdk-go (pkg/verda/client.go: the
same services; `Balance` is the account balance now, `/instance-types/price-history` is list prices),
verda-cli (`verda cost` = estimate, running, balance: the first two multiply list prices, the third
reads /balance) and the API reference (api.verda.com/v1/docs, docs.verda.com "Verda API changes").

The difference of two balance readings is not a run's cost (every other instance, volume and top-up
on the account moves it too), so it is never offered as one. What is reported instead, in `details`,
is the rate the API itself states for each of the run's instances (`price_per_hour`, `pricing`,
`contract` on GET /instances/{id}) while the instance is still readable: evidence for the estimate, not
a charge.
"""

from __future__ import annotations

from typing import Any

from providers.base import BilledCost, ProviderError
from providers.common import one_line
from providers.datacrunch.api import DataCrunchAPI, DataCrunchNotFound, sdk_paths
from providers.datacrunch.inventory import known_secrets, scrub

NOT_AVAILABLE = (
    "not available: the Verda API has no per-instance cost endpoint (checked: verda Python SDK 1.25, "
    "Go SDK verdacloud-sdk-go, verda-cli `cost` commands, api.verda.com/v1/docs; /balance is the account "
    "balance now, not a run's charge)"
)
_RATE_FIELDS = ("status", "instance_type", "price_per_hour", "pricing", "contract", "is_spot", "created_at")


def _stated_rate(api: DataCrunchAPI, instance_id: str) -> dict[str, Any]:
    """The instance's own row, cut to what bears on its price; why not, where it cannot be read."""
    try:
        raw = api.request("get", sdk_paths().instances + "/{id}", path_params={"id": instance_id}).json()
    except DataCrunchNotFound:
        return {"id": instance_id, "status": "not_found"}
    except ProviderError as exc:  # credentials included: this is evidence, never a reason to fail
        return {"id": instance_id, "error": one_line(exc, 160)}
    if not isinstance(raw, dict):
        return {"id": instance_id, "error": "unreadable answer"}
    return {"id": instance_id, **{k: raw.get(k) for k in _RATE_FIELDS if k in raw}}


def billed_cost(api: DataCrunchAPI, run_id: str, instance_ids: list[str], start: float,
                end: float) -> BilledCost:
    """usd=None, complete=True (no later answer will bring a figure), with each instance's stated rate."""
    rates = [_stated_rate(api, i) for i in instance_ids]
    details = {"run_id": run_id, "start": start, "end": end, "instances": rates,
               "note": "price_per_hour is the rate the API states for the instance, not a charge"}
    return BilledCost(usd=None, source=NOT_AVAILABLE, complete=True,
                      details=scrub(details, known_secrets(api)))
