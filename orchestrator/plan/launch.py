"""Turn `gpurun launch` options into a plan (`make_plan`): provider, offer, live price, deadline. No side effects.

Everything that can refuse a launch (unknown provider, missing credentials, unknown GPU, a budget
too small, a cap already spent, a balance too low) refuses here, before anything is created. The
pieces: plan/options.py (the options), plan/refusals.py (checks of the input), plan/job.py (the
recipe and its config), plan/forecast.py (what the money buys), plan/words.py (figures in words).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator import settings
from orchestrator.money.budget import Allowance, allowance_for, check_caps
from orchestrator.money.budgets_file import Budgets, load_budgets
from orchestrator.money.errors import BudgetError
from orchestrator.plan.bucket import BucketPlan, plan_bucket
from orchestrator.plan.data_in import DataIn, plan_data_in
from orchestrator.plan.egress import Pulls, egress_words, expected_pulls
from orchestrator.plan.forecast import Forecast, bootstrap_words
from orchestrator.plan.job import DEFAULT_CPU_RECIPE, DEFAULT_GPU_RECIPE, has_gpu, recipe_for
from orchestrator.plan.market import Market, Ranked, candidates
from orchestrator.plan.options import LaunchOptions
from orchestrator.plan.refusals import boot_budget_usd, check_image, check_options
from orchestrator.plan.words import account_words, duration, offer_label, price_words
from orchestrator.state.ledger import Ledger
from providers import get_provider
from providers.base import ImageFacts, Offer, Provider, ProviderError, rank_offers, split_gpus

# Steps of the search for the longest training time whose expected pulls fit the cap (plan/egress.py).
EGRESS_SEARCH_STEPS = 40

# Offers a launch keeps in its fallback order (the chosen one included): enough for the other cloud
# type / region and a second GPU, few enough that a plan stays readable.
MAX_CANDIDATES = 6


@dataclass
class LaunchPlan:
    options: LaunchOptions
    provider: Provider
    offer: Offer
    budgets: Budgets
    allowance: Allowance
    account: dict[str, Any]
    run_dir_root: Path
    # The offers tried next, in order, when the chosen one has no capacity or never boots.
    fallbacks: list[Offer] = field(default_factory=list)
    # Candidates the plan dropped, with the one-line reason (a quota, an image, the budget).
    skipped: list[tuple[Offer, str]] = field(default_factory=list)
    max_boot_usd: float = 0.0
    # The recipe's training terms on the chosen offer (None: a command, or the user's own --config).
    forecast: Forecast | None = None
    # PyTorch on the image: where it is not carried, bootstrap's install comes out of the budget.
    image: ImageFacts | None = None
    # What the run is expected to pull home (None: the offer bills no egress, nothing is reserved).
    egress: Pulls | None = None
    # --provider any: every provider asked (a fallback may be any of them), the offers ranked by the
    # recipe's tokens per dollar, and what was noted (a provider skipped, offers not ranked).
    providers: dict[str, Provider] = field(default_factory=dict)
    ranking: list[Ranked] = field(default_factory=list)
    market_notes: list[str] = field(default_factory=list)
    # --data-from's send, sized and timed against the budget (None: no --data-from).
    data_in: DataIn | None = None
    # --checkpoints-to's bucket and what it costs there (None: checkpoints come home over the link).
    bucket: BucketPlan | None = None

    def rows(self) -> list[tuple[str, str]]:
        """What the user confirms: every figure the cap depends on."""
        o, b = self.offer, self.allowance
        price_note = "" if o.price_is_live else f"  [{o.price_source}: not a live price]"
        rows = [
            ("provider", f"{o.provider} ({o.region})" if o.region else o.provider),
            ("instance", f"{o.instance_type}: {o.gpu_count} x {o.gpu}{'  (spot)' if o.spot else ''}"),
            ("price", f"{price_words(o)} = {o.total_usd_per_hour:.4f} USD/h ({o.price_source}){price_note}"),
            ("billing", f"per {b.billing.increment_s} s, minimum {b.billing.minimum_s} s"
                        + (f" ({b.billing.source})" if b.billing.source else "")),
            ("budget", f"{b.max_usd:.4f} USD  ->  {duration(b.max_runtime_s)} of billed time"
                       + (f" (after {b.egress_reserve_usd:.4f} USD reserved for egress)" if b.egress_reserve_usd else "")),
            ("training", f"{duration(b.train_s)}, then the guard stops the job "
                         f"({duration(b.reserve_s)} reserved for the final sync and teardown)"),
            ("egress", egress_words(o, self.egress, b.egress_reserve_usd)),
            ("job", self._job_label()),
        ]
        if self.data_in is not None:
            rows.append(("data in", self.data_in.words()))
        if self.bucket is not None:
            rows.append(("checkpoints to", self.bucket.words()))
        if self.image is not None:
            rows.append(("bootstrap", bootstrap_words(self.image, self.options, b, o)))
        if self.forecast is not None:
            rows += self.forecast.rows(self.options, b, o)
        rows.append(("budgets file", str(self.budgets.path)))
        if self.options.resume_run:
            rows.append(("resumes", f"run {self.options.resume_run} from its last checkpoint, in its run directory"))
        if self.options.nodes > 1:
            n = self.options.nodes
            rows.insert(3, ("nodes", f"{n} x {o.instance_type}, created together in one network: {n} x"
                                     f" {o.total_usd_per_hour:.4f} = {self.options.group_usd_per_hour(o):.4f} USD/h"
                                     " (the budget below is at that rate); node 0 hosts the rendezvous, each node"
                                     " has its own dead-man's switch; a node that does not come up fails the run"
                                     " and every node is torn down"))
        if self.fallbacks:
            rows.append(("fallback", "; ".join(f"{i}. {self._label(f)}" for i, f in enumerate(self.fallbacks, 2))))
        rows.append(("failed boots", f"at most {self.max_boot_usd:.4f} USD in total (--max-boot-usd), "
                                     "inside the budget; each is torn down and verified before the next offer"))
        if o.spot:
            rows.append(("preemption", self._recovery_words()))
        for offer, why in self.skipped:
            rows.append(("skipped", f"{self._label(offer)}: {why}"))
        rows += self._market_rows()
        if self.account and account_words(self.account):
            rows.append(("account", account_words(self.account)))
        return rows

    def _label(self, offer: Offer) -> str:
        """An offer in a line; with --provider any the offers are several providers': each names its own."""
        return f"{offer.provider} {offer_label(offer)}" if self.options.any_provider else offer_label(offer)

    def _market_rows(self) -> list[tuple[str, str]]:
        """--provider any: the providers asked, and the ranking the fallback walks."""
        if not self.options.any_provider:
            return []
        f = self.forecast
        measure = (f"training tokens per USD of recipe {f.recipe.name} (its tokens/s for the GPU over the price,"
                   " storage and an hour's egress included)" if f else "price (a command has no tokens/s figure)")
        rows = [("providers", f"asked: {', '.join(sorted(self.providers))}")]
        rows += [("providers", note) for note in self.market_notes]
        rows.append(("ranked by", measure))
        rows += [("ranked", f"{i}. {r.words()}") for i, r in enumerate(self.ranking, 1)]
        return rows

    def _recovery_words(self) -> str:
        """How a spot run's recovery draws on the cap: what a resume needs, and until when one is possible."""
        b = self.allowance
        need_usd = b.billing.cost(b.min_runtime_s + b.reserve_s, b.usd_per_hour)
        where = "the same offer, then the fallbacks" if self.fallbacks else "the same offer"
        until = b.max_usd - need_usd
        return (f"a reclaimed instance is verified gone and its billed time comes out of this budget; the run"
                f" resumes from its last checkpoint on {where} while what is left buys {duration(b.min_runtime_s)}"
                f" of training + {duration(b.reserve_s)} reserve ({need_usd:.4f} USD at this price): up to"
                f" {max(0.0, until):.4f} USD spent; past that it ends, nothing left billing")

    def _job_label(self) -> str:
        if self.options.command:
            return " ".join(self.options.command)
        label = "GPT-2 trainer (bundled)"
        f = self.forecast
        if f is None:
            return f"{label}, config {self.options.config}" if self.options.config else label
        label += f", recipe {f.recipe.name}: {f.recipe.summary}"
        if f.default and f.recipe.name == DEFAULT_GPU_RECIPE:
            label += " (the default with a GPU: --recipe picks another; an instance without CUDA runs the" \
                     f" CPU {DEFAULT_CPU_RECIPE} run)"
        return label


def runs_root(explicit: str | None = None) -> Path:
    return settings.runs_dir(explicit)


def make_plan(options: LaunchOptions, now: float | None = None) -> LaunchPlan:
    """Everything is checked here; raises BudgetError, ProviderError or LaunchError with one actionable line."""
    check_options(options)
    budgets = load_budgets(options.budgets)
    market: Market | None = None
    ranking: list[Ranked] = []
    if options.any_provider:  # every provider with credentials, ranked by tokens per dollar (plan/market.py)
        market = Market.ask(options)
        ranking, ranked = candidates(options, market, MAX_CANDIDATES)
        providers = market.providers
    else:
        only = get_provider(options.provider, **options.provider_options())
        only.check_nodes(options.nodes)
        only.check_credentials()
        ranked, providers = _candidates(options, only), {only.name: only}
    accepted, skipped = _affordable(options, providers, budgets, ranked, now)
    offer, allowance, egress = accepted[0]
    provider = providers[offer.provider] if market else next(iter(providers.values()))
    image = provider.image_facts(options.image, offer)
    check_image(options, image)
    # The caps are checked again, atomically with the hold, when the run is created.
    check_caps(budgets, Ledger(), provider.name, allowance.max_usd)
    account = provider.account()
    recipe, default = recipe_for(options, has_gpu(offer))
    forecast = Forecast.of(options, recipe, default, offer) if recipe is not None else None
    return LaunchPlan(options, provider, offer, budgets, allowance, account, runs_root(options.runs_dir),
                      fallbacks=[o for o, _, _ in accepted[1:]], skipped=skipped,
                      max_boot_usd=boot_budget_usd(options, budgets, allowance.max_usd), forecast=forecast,
                      image=image, egress=egress, providers=providers,
                      ranking=[r for r in ranking if any(r.offer is o for o, _, _ in accepted)],
                      market_notes=market.notes if market else [],
                      data_in=plan_data_in(options, allowance),
                      bucket=plan_bucket(options, offer, allowance, provider.default_sync_interval_s))


def _candidates(options: LaunchOptions, provider: Provider) -> list[Offer]:
    """The offers the launch may try, in order: the user's GPUs, cheapest first; with --spot-fallback
    the same GPUs on-demand after the spot ones."""
    offers: list[Offer] = []
    for gpu in split_gpus(options.gpu) or [None]:
        offers += provider.offers(gpu=gpu, count=options.gpus, spot=options.spot)
    ranked = rank_offers(offers, options.gpu)[:MAX_CANDIDATES]
    if options.spot and options.spot_fallback:  # then the same GPUs on-demand
        on_demand: list[Offer] = []
        for gpu in split_gpus(options.gpu) or [ranked[0].gpu]:
            on_demand += provider.offers(gpu=gpu, count=options.gpus, spot=False)
        ranked += [o for o in rank_offers(on_demand, options.gpu or ranked[0].gpu) if o not in ranked][:MAX_CANDIDATES]
    return ranked


def _allowance(options: LaunchOptions, provider: Provider, budgets: Budgets, offer: Offer,
               now: float) -> tuple[Allowance, Pulls | None]:
    """What the budget buys on `offer`: where the offer bills egress, the price of the pulls expected
    in the time the whole budget buys (an upper bound) is reserved first, and the runtime bought
    with the rest (BudgetError when that is too little)."""
    price = options.group_usd_per_hour(offer)
    allowance = allowance_for(budgets, provider.name, options.max_usd, price, now=now)
    if not offer.egress_usd_per_gb:
        return allowance, None

    def bought(train_s: float) -> tuple[Allowance, Pulls]:
        """The allowance that keeps back the pulls of `train_s` of training (BudgetError: too little left)."""
        pulls = expected_pulls(options, offer, train_s, provider.default_sync_interval_s)
        return allowance_for(budgets, provider.name, options.max_usd, price, now=now,
                             egress_usd_per_gb=offer.egress_usd_per_gb, egress_bytes=pulls.bytes), pulls

    try:  # the pulls of all the time the whole budget buys: an upper bound, when it fits
        return bought(allowance.train_s)
    except BudgetError as too_much:
        return _longest_affordable(bought, allowance.train_s, too_much)


def _longest_affordable(bought: Callable[[float], tuple[Allowance, Pulls]], upper_s: float,
                        refusal: BudgetError) -> tuple[Allowance, Pulls]:
    """The pulls of the whole budget's time cost more than it leaves: the longest training time whose
    own pulls still fit (bisection: a longer run pulls more). Its allowance trains no longer than
    that; pulls past the estimate are still metered, and the guard stops a run they would take
    past the cap (run/watch.py)."""
    best: tuple[Allowance, Pulls] | None = None
    low, high = 0.0, upper_s
    for _ in range(EGRESS_SEARCH_STEPS):
        mid = (low + high) / 2
        try:
            candidate = bought(mid)
        except BudgetError:
            high = mid
            continue
        if candidate[0].train_s <= mid:  # its reserve covers the time it buys
            best, high = candidate, mid
        else:
            low = mid
    if best is None:
        raise refusal
    return best


def _affordable(options: LaunchOptions, providers: dict[str, Provider], budgets: Budgets, ranked: list[Offer],
                now: float | None) -> tuple[list[tuple[Offer, Allowance, Pulls | None]], list[tuple[Offer, str]]]:
    """(the candidates the budget, the account and the provider accept, with their allowance and
    expected pulls; the others with the reason). None accepted: the first candidate's own refusal is raised.
    `providers`: the one --provider names, or every provider --provider any asked (by offer.provider)."""
    accepted: list[tuple[Offer, Allowance, Pulls | None]] = []
    skipped: list[tuple[Offer, str]] = []
    first_refusal: Exception | None = None
    only = next(iter(providers.values())) if len(providers) == 1 and not options.any_provider else None
    for offer in ranked:
        provider = only or providers[offer.provider]
        offer.billing = budgets.billing_for(provider.name)
        try:
            allowance, egress = _allowance(options, provider, budgets, offer, now or time.time())
            if options.any_provider:  # each provider's own caps (budgets.yaml providers:)
                check_caps(budgets, Ledger(), provider.name, allowance.max_usd)
            provider.check_launchable(offer)  # quota, image support, credit to deploy
            # The account must be able to pay the cap, and the price must fit an hourly spend limit.
            provider.check_spend(allowance.max_usd, options.group_usd_per_hour(offer))
        except (BudgetError, ProviderError) as exc:
            skipped.append((offer, str(exc)))
            first_refusal = first_refusal or exc
            continue
        accepted.append((offer, allowance, egress))
    if not accepted:
        assert first_refusal is not None
        raise first_refusal  # the chosen offer's own reason: one line saying what to change
    return accepted, skipped
