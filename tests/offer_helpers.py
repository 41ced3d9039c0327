"""Test helper: pick one offer from a provider's list (production plans through `rank_offers`)."""

from __future__ import annotations

from providers.base import Offer, rank_offers, split_gpus


def pick_offer(offers: list[Offer], gpu: str | None) -> Offer:
    """The cheapest available offer matching `gpu` (case-insensitive substring), or a clear error."""
    return rank_offers(offers, split_gpus(gpu)[0] if split_gpus(gpu) else None)[0]
