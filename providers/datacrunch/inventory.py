"""Everything on a DataCrunch (Verda) account that bills now, gpurun's or not (`gpurun audit`).

Read-only: GET /instances (every non-deleted instance, whatever its status: the SDK's
`InstancesService.get()`), GET /volumes (attached and detached) and GET /volumes/trash (deleted but
not permanently: SDK `get_in_trash`, Go `GetVolumesInTrash`), priced with GET /volume-types.

What bills in which state, and where that comes from:
  - an instance bills at its `price_per_hour` until it is deleted (`discontinued`); shut down
    (`offline`) it still bills: verda-cli cmd/vm/action.go, "Shutdown instances continue to charge
    your account". Storage is billed apart (its volumes are listed as their own rows).
  - a volume bills size x `price_per_month_per_gb` of its type / 730 h (verda-cli cmd/volume/CLAUDE.md,
    "730 ... matching the web frontend") while it exists, attached or detached, and in the trash
    until it is permanently deleted (volumes stay restorable there for 96 h: verda-cli trash.go).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

from providers.base import OWNER_TAG, Billable, CredentialsError, Instance, ProviderError, owned_name
from providers.common import HOURS_PER_MONTH
from providers.datacrunch.api import DataCrunchAPI, sdk_paths
from providers.datacrunch.catalog import decimal_or_none

TRASH_SUFFIX = "/trash"
_HOURS_PER_MONTH = Decimal(str(HOURS_PER_MONTH))
# Statuses in which an instance is listed but bills nothing itself (its volumes still do).
_NOT_BILLING = {"discontinued"}
# Why an instance bills in each status (the provider's own words: verda.constants.InstanceStatus and the
# Go SDK's Status* constants). A status not listed reads as billing (never under-count).
_INSTANCE_NOTES: dict[str, str] = {
    "running": "running: bills its hourly price until deleted",
    "offline": "shut down (offline): still bills its hourly price; only delete stops it",
    "error": "error: not gone, counted as billing until deleted",
    "no_capacity": "order ended in no_capacity (never booted): counted as billing until deleted",
    "deleting": "deleting: bills until discontinued",
    "starting_hibernation": "hibernating: counted as billing until hibernated",
    # verda SDK InstancesService.action: hibernate "discontinues the instance and retains its volumes ...
    # Retained volumes remain billable"; verda-cli cmd/vm/action.go: hibernating "stops billing".
    "hibernating": "hibernated: the instance itself no longer bills; its volumes, listed apart, still do",
}
_STARTING = {"new", "ordered", "pending", "provisioning", "validating", "restoring"}
# Keys whose values are credentials wherever they turn up (defence in depth: the API's instance and
# volume rows carry none today, and raw must never carry one).
_SECRET_KEY_RE = re.compile(r"secret|token|password|authorization|credential", re.I)
_VOLUME_SUFFIX_RE = re.compile(r"-(?:os|data)$")


def known_secrets(api: DataCrunchAPI) -> list[str]:
    """The client secret and, once authenticated, the bearer and refresh tokens the SDK holds."""
    auth = getattr(getattr(api._client, "_http_client", None), "_auth_service", None)
    values = [api.client_secret, getattr(auth, "_access_token", None), getattr(auth, "_refresh_token", None)]
    return [v for v in values if isinstance(v, str) and len(v) >= 6]


def scrub(obj: Any, secrets: list[str]) -> Any:
    """A copy of an API row with no credential in it: secret-named keys dropped, secret values redacted."""
    if isinstance(obj, dict):
        return {k: scrub(v, secrets) for k, v in obj.items() if not _SECRET_KEY_RE.search(str(k))}
    if isinstance(obj, list):
        return [scrub(v, secrets) for v in obj]
    if isinstance(obj, str) and any(s in obj for s in secrets):
        return "<redacted>"
    return obj


def volume_prices(api: DataCrunchAPI) -> dict[str, Decimal] | None:
    """Volume type -> USD per GB-month (GET /volume-types); the legacy `monthly_per_gb` spelling is read
    too (Go SDK VolumeTypePrice.UnmarshalJSON). None when the API would not say (rows stay unpriced)."""
    try:
        rows = api.request("get", sdk_paths().volume_types).json()
    except CredentialsError:
        raise
    except ProviderError:
        return None
    prices: dict[str, Decimal] = {}
    for row in rows if isinstance(rows, list) else []:
        price = row.get("price") or {}
        p = decimal_or_none(price.get("price_per_month_per_gb", price.get("monthly_per_gb")))
        if row.get("type") and p is not None:
            prices[str(row["type"])] = p
    return prices


def _run_id_of_volume(name: str, owner_run: str | None) -> str | None:
    """The run a volume belongs to: its instance's run, else its name gpurun-<run id>[-n<rank>][-os|-data]
    (the instance's hostname, providers.base.owned_name, plus the volume's suffix)."""
    if owner_run:
        return owner_run
    if not name.startswith(f"{OWNER_TAG}-"):
        return None
    for candidate in (_VOLUME_SUFFIX_RE.sub("", name), name):
        owned = owned_name(candidate)
        if owned:
            return owned[0]
    return None


def _instance_row(inst: Instance, raw: dict[str, Any], provider: str, secrets: list[str]) -> Billable | None:
    status = str(raw.get("status") or "").lower()
    if status in _NOT_BILLING:
        return None
    if status in _STARTING:
        note = f"starting ({status}): counted as billing from the order"
    else:
        unknown = f"status {status or 'unknown'!r}: counted as billing until deleted"
        note = _INSTANCE_NOTES.get(status, unknown)
    usd = None if status == "hibernating" else inst.usd_per_hour
    if raw.get("is_spot"):
        note += "; spot"
    return Billable(kind="instance", id=inst.id, provider=provider, name=inst.name, state=status,
                    usd_per_hour=usd, created_at=inst.created_at, run_id=inst.run_id, note=note,
                    raw=scrub(raw, secrets))


def _epoch(value: Any) -> float | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _volume_usd_per_hour(raw: dict[str, Any], prices: dict[str, Decimal] | None) -> tuple[float | None, str]:
    """(USD per hour, where the figure comes from) for one volume row."""
    vtype, size = str(raw.get("type") or ""), decimal_or_none(raw.get("size"))
    per_gb_month = (prices or {}).get(vtype)
    if per_gb_month is not None and size is not None:
        basis = f"{size} GB x {per_gb_month} USD/GB-month / 730 h"
        return float(size * per_gb_month / _HOURS_PER_MONTH), basis
    # The row's own figure (SDK Volume.monthly_price, Go Volume.MonthlyPrice: "Volume monthly price", read
    # as the whole volume's), only where /volume-types has no price for its type.
    monthly = decimal_or_none(raw.get("monthly_price"))
    if monthly is not None and monthly > 0:
        return float(monthly / _HOURS_PER_MONTH), f"its monthly_price {monthly} / 730 h"
    why = ("/volume-types did not answer" if prices is None
           else f"no {vtype or 'unknown'} price in /volume-types")
    return None, f"price unknown ({why})"


def _volume_row(raw: dict[str, Any], *, in_trash: bool, prices: dict[str, Decimal] | None,
                owners: dict[str, Instance], provider: str, secrets: list[str]) -> Billable:
    usd, basis = _volume_usd_per_hour(raw, prices)
    owner = owners.get(str(raw.get("instance_id") or ""))
    status = str(raw.get("status") or "")
    name = str(raw.get("name") or "")
    if in_trash:
        note = (f"in the trash since {raw.get('deleted_at') or '?'}: bills until permanently deleted "
                "(restorable for 96 h)")
    elif owner is not None:
        note = f"attached to {owner.name or owner.id} ({owner.raw.get('status', '?')}): bills until deleted"
    elif raw.get("instance_id"):
        note = f"attached to instance {raw['instance_id']} (not listed): bills until deleted"
    else:
        note = f"{status or 'detached'}, on no instance: bills until permanently deleted"
    return Billable(kind="volume", id=str(raw.get("id")), provider=provider, name=name,
                    state=f"{status or 'deleted'} (trash)" if in_trash else status, usd_per_hour=usd,
                    created_at=_epoch(raw.get("created_at")), note=f"{note}; {basis}",
                    run_id=_run_id_of_volume(name, owner.run_id if owner else None), raw=scrub(raw, secrets))


def _listed(api: DataCrunchAPI, path: str) -> list[dict[str, Any]]:
    """A list endpoint's rows; an answer that is no list fails loudly (an audit must not read it as empty)."""
    rows = api.request("get", path).json()
    if not isinstance(rows, list):
        raise ProviderError(f"DataCrunch GET {path} answered {type(rows).__name__}, not a list: cannot audit")
    return [r for r in rows if isinstance(r, dict)]


def billables(api: DataCrunchAPI, provider: str,
              read: Callable[[dict[str, Any]], Instance]) -> list[Billable]:
    """Every instance (any status but discontinued) and every volume that still bills, priced per hour.
    `read` turns an instance row into an Instance (the provider's own reading: run id, price, time)."""
    paths = sdk_paths()
    rows = _listed(api, paths.instances)
    secrets = known_secrets(api)  # after the first call: authenticated, so the tokens are known
    owners: dict[str, Instance] = {}
    out: list[Billable] = []
    for raw in rows:
        inst = read(raw)
        owners[inst.id] = inst
        row = _instance_row(inst, raw, provider, secrets)
        if row is not None:
            out.append(row)
    volumes = _listed(api, paths.volumes)
    trash = [v for v in _listed(api, paths.volumes + TRASH_SUFFIX) if not v.get("is_permanently_deleted")]
    prices = volume_prices(api)
    for raw in volumes:
        out.append(_volume_row(raw, in_trash=False, prices=prices, owners=owners, provider=provider,
                               secrets=secrets))
    for raw in trash:
        out.append(_volume_row(raw, in_trash=True, prices=prices, owners=owners, provider=provider,
                               secrets=secrets))
    return out
