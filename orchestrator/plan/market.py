"""`--provider any`: every provider with credentials asked for offers, ranked by what a dollar buys of the job.

A provider without credentials (or whose SDK is not installed, or that cannot carry --nodes) is
skipped with a note the plan shows; `local` is never asked (it is this machine, not a GPU to rent).
The offers are ranked by the recipe's training tokens per dollar: its tokens/s for the offer's GPU
class and count (trainer/recipes.py) over the price of the instance per hour, storage included, plus
the egress of the pulls an hour of training brings home at the offer's rate (plan/egress.py). An
offer whose GPU has no tokens/s figure cannot be ranked and is left out, with a note. Without a
recipe (a command, or the user's own --config) the only measure left is the price: cheapest first.
docs/DESIGN.md ("Choosing among providers") says why.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.plan.egress import expected_pulls
from orchestrator.plan.job import has_gpu, recipe_for
from orchestrator.plan.options import LaunchOptions
from orchestrator.plan.quality import tokens_per_usd
from orchestrator.plan.words import offer_label
from providers import get_provider, provider_names
from providers.base import Offer, Provider, ProviderError, rank_offers, split_gpus
from providers.common import one_line
from trainer import recipes
from trainer.recipes import Recipe

# Not asked by --provider any: the embedded provider runs on this machine's CPU.
NOT_RENTED = frozenset({"local"})
# An hour of training: the egress figure in the ranking is the pulls of one hour at the offer's rate.
HOUR_S = 3600.0


@dataclass(frozen=True)
class Ranked:
    """One offer and what a dollar buys on it."""

    offer: Offer
    tokens_per_s: float | None  # all GPUs and nodes together; None: ranked by price (no recipe)
    usd_per_hour: float  # every node, storage and the egress of an hour's pulls included
    egress_usd_per_hour: float

    @property
    def tokens_per_usd(self) -> float | None:
        return None if self.tokens_per_s is None else tokens_per_usd(self.tokens_per_s, self.usd_per_hour)

    def words(self) -> str:
        """`datacrunch A100 x1 (...) 1.2900 USD/h: ~837.2M tokens/USD`."""
        egress = f" + egress ~{self.egress_usd_per_hour:.4f} USD/h" if self.egress_usd_per_hour else ""
        per = "" if self.tokens_per_usd is None else f": ~{recipes.human(self.tokens_per_usd)} tokens/USD"
        return f"{self.offer.provider} {offer_label(self.offer)}{egress}{per}"


@dataclass
class Market:
    """The providers --provider any asked (name -> object, credentials checked) and what it noted."""

    providers: dict[str, Provider] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # "aws: skipped (credentials not found ...)"

    @classmethod
    def ask(cls, options: LaunchOptions) -> Market:
        """Every registered provider but `local`, each with the options that apply to it; ProviderError
        naming every reason when none can be used."""
        market = cls()
        for name in provider_names():
            if name in NOT_RENTED:
                continue
            try:
                provider = get_provider(name, **options.provider_options(name))
                provider.check_credentials()
                provider.check_nodes(options.nodes)
            except ProviderError as exc:
                market.notes.append(f"{name}: skipped ({one_line(str(exc))})")
                continue
            market.providers[provider.name] = provider
        if not market.providers:
            raise ProviderError("--provider any: no provider can be used: " + "; ".join(market.notes)
                                + ". Set one provider's credentials (docs/PROVIDERS.md)")
        return market

    def provider_of(self, offer: Offer) -> Provider:
        """The provider an offer came from (each provider names itself in its offers)."""
        if len(self.providers) == 1:
            return next(iter(self.providers.values()))
        return self.providers[offer.provider]

    def offers(self, gpu: str | None, count: int, spot: bool) -> list[Offer]:
        """Every asked provider's offers of the GPUs asked (all GPUs without --gpu); a provider whose
        offers cannot be read is noted and left out."""
        found: list[Offer] = []
        for name, provider in self.providers.items():
            try:
                for g in split_gpus(gpu) or [None]:
                    found += provider.offers(gpu=g, count=count, spot=spot)
            except ProviderError as exc:
                self.notes.append(f"{name}: offers not read ({one_line(str(exc))})")
        return found

    def ranked(self, options: LaunchOptions, offers: list[Offer]) -> list[Ranked]:
        """The available offers (of --gpu's GPUs, when given) that rent a GPU, most tokens per dollar
        first (the price breaks a tie); ProviderError when none can be ranked."""
        usable = [o for o in offers if o.available and has_gpu(o)]
        if options.gpu:
            usable = rank_offers(usable, options.gpu)  # only the user's GPUs (an error when none)
        recipe, _ = recipe_for(options, gpu=True)
        ranked: list[Ranked] = []
        unranked: list[str] = []
        for offer in usable:
            entry = rank_entry(options, recipe, offer, self.provider_of(offer).default_sync_interval_s)
            if entry is None:
                unranked.append(offer_label(offer))
            else:
                ranked.append(entry)
        if unranked:
            assert recipe is not None
            self.notes.append(f"not ranked (recipe {recipe.name} has no tokens/s figure for their GPU):"
                              f" {'; '.join(unranked)}")
        if not ranked:
            seen = sorted({o.gpu for o in offers})
            raise ProviderError(f"--provider any: no offer to rank{' of ' + repr(options.gpu) if options.gpu else ''}"
                                f" (offers seen: {', '.join(seen) or 'none'}); " + "; ".join(self.notes))
        ranked.sort(key=_order)
        return ranked


def _order(entry: Ranked) -> tuple[float, float, str]:
    per = entry.tokens_per_usd
    return (-(per if per is not None else 0.0), entry.usd_per_hour, entry.offer.provider)


def rank_entry(options: LaunchOptions, recipe: Recipe | None, offer: Offer, sync_interval_s: float) -> Ranked | None:
    """What a dollar buys on `offer` (None: the recipe has no tokens/s figure for its GPU)."""
    price = options.group_usd_per_hour(offer)
    egress = 0.0
    if offer.egress_usd_per_gb:  # the pulls of an hour of training, at this offer's rate
        egress = expected_pulls(options, offer, HOUR_S, sync_interval_s).bytes / 1e9 * offer.egress_usd_per_gb
    if recipe is None:  # a command or the user's own config: no throughput to weigh, only the price
        return Ranked(offer, None, price + egress, egress)
    rate = recipe.throughput(recipes.gpu_class(offer.gpu), max(1, offer.gpu_count))
    if rate is None:
        return None
    return Ranked(offer, rate * max(1, options.nodes), price + egress, egress)


def candidates(options: LaunchOptions, market: Market, limit: int) -> tuple[list[Ranked], list[Offer]]:
    """(the ranking, the offers a launch tries in order): the best `limit` of the ranking; with
    --spot-fallback the on-demand ranking after the spot one."""
    ranked = market.ranked(options, market.offers(options.gpu, options.gpus, options.spot))[:limit]
    order = [r.offer for r in ranked]
    if options.spot and options.spot_fallback:
        on_demand = market.ranked(options, market.offers(options.gpu, options.gpus, spot=False))[:limit]
        ranked += [r for r in on_demand if r.offer not in order]
        order += [r.offer for r in on_demand if r.offer not in order]
    return ranked, order

