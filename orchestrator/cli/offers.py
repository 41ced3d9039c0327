"""What can be rented and what it buys: `gpurun offers` (live prices) and `gpurun recipes` (each recipe's cost)."""

from __future__ import annotations

import click
from rich.table import Table

from orchestrator.cli.console import console
from orchestrator.money.budget import max_runtime_s
from orchestrator.money.budgets_file import Budgets, load_budgets
from orchestrator.plan.job import DEFAULT_CPU_RECIPE, DEFAULT_GPU_RECIPE, has_gpu
from orchestrator.plan.market import Market, Ranked, rank_entry
from orchestrator.plan.options import ANY_PROVIDER, LaunchOptions
from orchestrator.plan.quality import target_words
from orchestrator.plan.refusals import check_recipe_input
from orchestrator.plan.words import duration, offer_label, offer_where
from providers import get_provider, provider_names
from providers.base import BillingRule, Offer
from trainer import recipes

_PROVIDER_HELP = f"one of: {', '.join(provider_names(aliases=True))}, or {ANY_PROVIDER} (every provider with credentials)"


def _market(options: LaunchOptions) -> Market:
    """The providers to ask: every one with credentials (--provider any), else the one named."""
    if options.any_provider:
        return Market.ask(options)
    prov = get_provider(options.provider, **options.provider_options())  # a bad provider is refused before any output
    prov.check_credentials()
    return Market(providers={prov.name: prov})


def _notes(market: Market) -> None:
    for note in market.notes:
        console.print(f"[dim]{note}[/dim]", highlight=False)


@click.command()
@click.option("--provider", help=f"{_PROVIDER_HELP}; default: local, or {ANY_PROVIDER} with --recipe")
@click.option("--recipe", help="rank by this recipe's training tokens per USD (`gpurun recipes`)")
@click.option("--gpu", help="filter by GPU name")
@click.option("--gpus", type=int, default=1, show_default=True)
@click.option("--spot", is_flag=True)
@click.option("--usd-per-hour", type=float, help="local provider price")
@click.option("--budgets", type=click.Path(dir_okay=False))
def offers(provider: str | None, recipe: str | None, gpu: str | None, gpus: int, spot: bool,
           usd_per_hour: float | None, budgets: str | None) -> None:
    """Live prices, and what the default budget buys of each; with --recipe, ranked by tokens per USD."""
    options = LaunchOptions(provider=provider or (ANY_PROVIDER if recipe else "local"), usd_per_hour=usd_per_hour,
                            recipe=recipe, gpu=gpu, gpus=gpus, spot=spot)
    check_recipe_input(options)
    conf = load_budgets(budgets)
    market = _market(options)
    job = recipes.get(recipe) if recipe else None
    entries: list[tuple[Offer, Ranked | None]] = []
    for o in market.offers(gpu=gpu, count=gpus, spot=spot):
        sync_s = market.provider_of(o).default_sync_interval_s
        entries.append((o, rank_entry(options, job, o, sync_s) if job else None))
    entries.sort(key=lambda e: (-(e[1].tokens_per_usd or 0.0) if e[1] else 0.0, e[0].total_usd_per_hour))
    names = ", ".join(market.providers)
    table = Table(title=f"{names} offers (default budget {conf.per_run_default_usd:.2f} USD)"
                        + (f", ranked by recipe {job.name}'s tokens per USD" if job else ""))
    cols = ["provider", "gpu", "count", "instance type", "where", "stock", "USD/h", "storage USD/h", "price source",
            f"{conf.per_run_default_usd:.2f} USD buys"]
    for col in cols + (["tok/s", "tokens/USD"] if job else []):
        table.add_column(col)
    for o, entry in entries:
        buys = max_runtime_s(conf.per_run_default_usd, o.total_usd_per_hour, conf.billing_for(o.provider))
        # The provider's own stock word where it has one (RunPod: High/Medium/Low), else yes/none.
        stock = str(o.details.get("stock_status") or ("yes" if o.available else "none"))
        cells = [o.provider, o.gpu, str(o.gpu_count), o.instance_type, offer_where(o) or "-", stock,
                 f"{o.usd_per_hour:.4f}", f"{o.extra_usd_per_hour:.4f}", o.price_source,
                 "unbounded" if buys == float("inf") else f"{buys / 3600:.2f} h"]
        if job:
            per = entry.tokens_per_usd if entry else None
            cells += ["no estimate" if entry is None else f"{entry.tokens_per_s:,.0f}",
                      "-" if per is None else ("free" if per == float("inf") else recipes.human(per))]
        table.add_row(*cells)
    console.print(table)
    _notes(market)


@click.command("recipes")
@click.option("--provider", default="local", show_default=True, help=f"price each recipe on these offers: {_PROVIDER_HELP}")
@click.option("--gpu", help="only offers of this GPU")
@click.option("--gpus", type=int, default=1, show_default=True)
@click.option("--spot", is_flag=True)
@click.option("--usd-per-hour", type=float, help="local provider price")
@click.option("--budgets", type=click.Path(dir_okay=False))
def recipes_(provider: str, gpu: str | None, gpus: int, spot: bool, usd_per_hour: float | None,
             budgets: str | None) -> None:
    """The packaged jobs, what each takes and costs to max_iters on each offer, and to its quality target."""
    options = LaunchOptions(provider=provider, usd_per_hour=usd_per_hour)
    conf = load_budgets(budgets)
    market = _market(options)
    found = sorted(market.offers(gpu=gpu, count=gpus, spot=spot), key=lambda o: o.total_usd_per_hour)
    table = Table(title=f"recipes (gpurun launch --recipe NAME; default {DEFAULT_GPU_RECIPE} with a GPU, "
                        f"{DEFAULT_CPU_RECIPE} without)")
    for col in ("recipe", "summary", "data", "tokens/step", "max_iters", "tokens", "quality target"):
        table.add_column(col)
    for r in recipes.RECIPES.values():
        q = r.quality
        table.add_row(r.name, r.summary, r.data.describe(), f"{r.tokens_per_step:,}", f"{r.max_iters:,}",
                      recipes.human(r.max_iters * r.tokens_per_step),
                      f"{target_words(q)} in {recipes.human(q.tokens)} tokens" if q else "-")
    console.print(table)
    names = ", ".join(market.providers)
    costs = Table(title=f"{names}: time to max_iters (data phase included, boot not) and its billed cost")
    for col in ("offer", "USD/h", *recipes.RECIPES):
        costs.add_column(col)
    for o in found:
        rule = conf.billing_for(o.provider)
        costs.add_row(_label(o, market), f"{o.total_usd_per_hour:.4f}",
                      *[recipe_cost(r, o, rule) for r in recipes.RECIPES.values()])
    console.print(costs if found else f"{names}: no offers" + (f" of {gpu}" if gpu else ""))
    _quality_table(found, market, conf)
    console.print("tokens/s per GPU class, from trainer/recipes.py (no estimate: a GPU outside "
                  f"{', '.join(recipes.GPU_CLASSES)}):", highlight=False)
    for r in recipes.RECIPES.values():
        rates = ", ".join(f"{k} {v:,.0f}" for k, v in r.tokens_per_s.items())
        console.print(f"  {r.name}: {rates}. Source: {r.sources}", highlight=False, markup=False)
        if r.quality is not None:
            console.print(f"    {target_words(r.quality)}: {recipes.human(r.quality.tokens)} tokens"
                          f" ({r.quality.source}) = {_gpu_hours_by_class(r)}", highlight=False, markup=False)
    _notes(market)


def _label(offer: Offer, market: Market) -> str:
    return f"{offer.provider} {offer_label(offer)}" if len(market.providers) > 1 else offer_label(offer)


def _quality_table(found: list[Offer], market: Market, conf: Budgets) -> None:
    """Each recipe with a quality target: GPU-hours and billed cost to its target's tokens, per offer."""
    targeted = [r for r in recipes.RECIPES.values() if r.quality is not None]
    if not targeted or not found:
        return
    table = Table(title="to each recipe's quality target (its source's tokens): GPU-hours and billed cost")
    for col in ("offer", "USD/h", *(f"{r.name}: {target_words(r.quality)}" for r in targeted if r.quality)):
        table.add_column(col)
    for o in found:
        rule = conf.billing_for(o.provider)
        table.add_row(_label(o, market), f"{o.total_usd_per_hour:.4f}", *[quality_cost(r, o, rule) for r in targeted])
    console.print(table)


def _gpu_hours_by_class(recipe: recipes.Recipe) -> str:
    """"~2.0 H100-hours, ~4.3 A100-hours": the target's tokens at the recipe's figure for each GPU class."""
    assert recipe.quality is not None
    parts = [f"~{recipe.quality.tokens / rate / 3600:,.1f} {klass}-hours"
             for klass, rate in recipe.tokens_per_s.items() if klass != "cpu" and rate]
    return ", ".join(parts) or "no GPU figure"


def _seconds(recipe: recipes.Recipe, offer: Offer, tokens: float) -> tuple[float, int] | None:
    """(seconds to train `tokens` on this offer, data phase included; GPUs), None without an estimate."""
    gpu = has_gpu(offer)
    klass = recipes.gpu_class(offer.gpu) if gpu else "cpu"
    rate = recipe.throughput(klass, max(1, offer.gpu_count))
    if rate is None:
        return None
    return tokens / rate + recipe.data.prepare_s(klass), (max(1, offer.gpu_count) if gpu else 0)


def recipe_cost(recipe: recipes.Recipe, offer: Offer, rule: BillingRule) -> str:
    """"~46m, 42.10 USD" on this offer, from the recipe's tokens/s for the offer's GPU class."""
    world = max(1, offer.gpu_count) if has_gpu(offer) else 1
    found = _seconds(recipe, offer, recipe.max_iters * recipes.tokens_per_step(recipe.config, world))
    if found is None:
        return "no estimate"
    return f"~{duration(found[0])}, {rule.cost(found[0], offer.total_usd_per_hour):.2f} USD"


def quality_cost(recipe: recipes.Recipe, offer: Offer, rule: BillingRule) -> str:
    """"2.1 GPU-h, ~2h07m, 6.30 USD": training the quality target's tokens on this offer."""
    assert recipe.quality is not None
    found = _seconds(recipe, offer, recipe.quality.tokens)
    if found is None:
        return "no estimate"
    seconds, gpus = found
    hours = f"{seconds * gpus / 3600:,.1f} GPU-h, " if gpus else ""
    return f"{hours}~{duration(seconds)}, {rule.cost(seconds, offer.total_usd_per_hour):.2f} USD"
