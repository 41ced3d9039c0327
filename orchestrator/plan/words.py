"""How the plan and the CLI write figures in a line: durations, offers, where an offer is, the account."""

from __future__ import annotations

from typing import Any

from providers.base import Offer


def account_words(account: dict[str, Any]) -> str:
    """The provider's account facts in words: balance, what already bills, the spend limit."""
    currency = str(account.get("currency") or "usd").upper()
    balance = account.get("balance_usd", account.get("balance"))
    parts = []
    if isinstance(balance, (int, float)):
        parts.append(f"balance {balance:.2f} {'USD' if 'balance_usd' in account else currency}")
    if isinstance(account.get("current_spend_usd_per_hour"), (int, float)):
        parts.append(f"billing now {account['current_spend_usd_per_hour']:.2f} USD/h")
    if isinstance(account.get("spend_limit_usd_per_hour"), (int, float)):
        parts.append(f"spend limit {account['spend_limit_usd_per_hour']:.2f} USD/h")
    return "; ".join(parts)


def offer_where(o: Offer) -> str:
    """Where an offer is: its region / location / zone and cloud type (RunPod's region is its cloud)."""
    parts: list[str] = []
    for x in (o.region, str(o.details.get("zone") or ""), str(o.details.get("cloud_type") or "")):
        if x and x.lower() not in (p.lower() for p in parts):
            parts.append(x)
    return ", ".join(parts)


def offer_label(o: Offer) -> str:
    """One offer in a line: `RTX 4090 x1 (NVIDIA GeForce RTX 4090, community) 0.3400 USD/h`."""
    where = ", ".join(x for x in (o.instance_type, offer_where(o)) if x)
    return f"{o.gpu} x{o.gpu_count} ({where}){' spot' if o.spot else ''} {o.total_usd_per_hour:.4f} USD/h"


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    if h >= 72:  # a forecast that long is a figure of speech: days, not minutes
        return f"{h // 24}d{h % 24:02d}h"
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def price_words(offer: Offer) -> str:
    """The per-hour price by its parts: the provider's own lines (`details["price_lines"]`: compute,
    storage, a public IPv4 ...) where it gives them, else compute + storage."""
    lines = offer.details.get("price_lines")
    if lines:
        return " + ".join(f"{label} {float(usd):.4f} USD/h" for label, usd in lines)
    return f"{offer.usd_per_hour:.4f} USD/h + storage {offer.extra_usd_per_hour:.4f} USD/h"
