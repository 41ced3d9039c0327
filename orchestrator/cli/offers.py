"""What can be rented and what it buys: `gpurun offers` (live prices) and `gpurun recipes` (each recipe's cost)."""

from __future__ import annotations

import click
from rich.table import Table

from orchestrator.cli.console import console
from orchestrator.money.budget import max_runtime_s
from orchestrator.money.budgets_file import load_budgets
from orchestrator.plan.job import DEFAULT_CPU_RECIPE, DEFAULT_GPU_RECIPE, has_gpu
from orchestrator.plan.options import LaunchOptions
from orchestrator.plan.words import duration, offer_label, offer_where
from providers import get_provider
from providers.base import BillingRule, Offer
from trainer import recipes


@click.command()
@click.option("--provider", default="local", show_default=True)
@click.option("--gpu", help="filter by GPU name")
@click.option("--gpus", type=int, default=1, show_default=True)
@click.option("--spot", is_flag=True)
@click.option("--usd-per-hour", type=float, help="local provider price")
@click.option("--budgets", type=click.Path(dir_okay=False))
def offers(provider: str, gpu: str | None, gpus: int, spot: bool, usd_per_hour: float | None,
           budgets: str | None) -> None:
    """Live prices, and what the default budget buys of each."""
    options = LaunchOptions(provider=provider, usd_per_hour=usd_per_hour)
    conf = load_budgets(budgets)
    prov = get_provider(provider, **options.provider_options())
    prov.check_credentials()
    found = prov.offers(gpu=gpu, count=gpus, spot=spot)
    rule = conf.billing_for(prov.name)
    table = Table(title=f"{prov.name} offers (default budget {conf.per_run_default_usd:.2f} USD)")
    for col in ("gpu", "count", "instance type", "where", "stock", "USD/h", "storage USD/h", "price source",
                f"{conf.per_run_default_usd:.2f} USD buys"):
        table.add_column(col)
    for o in sorted(found, key=lambda o: o.total_usd_per_hour):
        buys = max_runtime_s(conf.per_run_default_usd, o.total_usd_per_hour, rule)
        # The provider's own stock word where it has one (RunPod: High/Medium/Low), else yes/none.
        stock = str(o.details.get("stock_status") or ("yes" if o.available else "none"))
        table.add_row(o.gpu, str(o.gpu_count), o.instance_type, offer_where(o) or "-", stock,
                      f"{o.usd_per_hour:.4f}", f"{o.extra_usd_per_hour:.4f}", o.price_source,
                      "unbounded" if buys == float("inf") else f"{buys / 3600:.2f} h")
    console.print(table)


@click.command("recipes")
@click.option("--provider", default="local", show_default=True, help="price each recipe on this provider's offers")
@click.option("--gpu", help="only offers of this GPU")
@click.option("--gpus", type=int, default=1, show_default=True)
@click.option("--spot", is_flag=True)
@click.option("--usd-per-hour", type=float, help="local provider price")
@click.option("--budgets", type=click.Path(dir_okay=False))
def recipes_(provider: str, gpu: str | None, gpus: int, spot: bool, usd_per_hour: float | None,
             budgets: str | None) -> None:
    """The packaged jobs, and what each takes and costs to max_iters on each offer."""
    options = LaunchOptions(provider=provider, usd_per_hour=usd_per_hour)
    conf = load_budgets(budgets)
    prov = get_provider(provider, **options.provider_options())  # a bad provider is refused before any output
    prov.check_credentials()
    found = sorted(prov.offers(gpu=gpu, count=gpus, spot=spot), key=lambda o: o.total_usd_per_hour)
    table = Table(title=f"recipes (gpurun launch --recipe NAME; default {DEFAULT_GPU_RECIPE} with a GPU, "
                        f"{DEFAULT_CPU_RECIPE} without)")
    for col in ("recipe", "summary", "data", "tokens/step", "max_iters", "tokens"):
        table.add_column(col)
    for r in recipes.RECIPES.values():
        table.add_row(r.name, r.summary, r.data.describe(), f"{r.tokens_per_step:,}", f"{r.max_iters:,}",
                      recipes.human(r.max_iters * r.tokens_per_step))
    console.print(table)
    rule = conf.billing_for(prov.name)
    costs = Table(title=f"{prov.name}: time to max_iters (data phase included, boot not) and its billed cost")
    for col in ("offer", "USD/h", *recipes.RECIPES):
        costs.add_column(col)
    for o in found:
        cells = [recipe_cost(r, o, rule) for r in recipes.RECIPES.values()]
        costs.add_row(offer_label(o), f"{o.total_usd_per_hour:.4f}", *cells)
    console.print(costs if found else f"{prov.name}: no offers" + (f" of {gpu}" if gpu else ""))
    console.print("tokens/s per GPU class, from trainer/recipes.py (no estimate: a GPU outside "
                  f"{', '.join(recipes.GPU_CLASSES)}):", highlight=False)
    for r in recipes.RECIPES.values():
        rates = ", ".join(f"{k} {v:,.0f}" for k, v in r.tokens_per_s.items())
        console.print(f"  {r.name}: {rates}. Source: {r.sources}", highlight=False, markup=False)


def recipe_cost(recipe: recipes.Recipe, offer: Offer, rule: BillingRule) -> str:
    """"~46m, 42.10 USD" on this offer, from the recipe's tokens/s for the offer's GPU class."""
    gpu = has_gpu(offer)
    klass = recipes.gpu_class(offer.gpu) if gpu else "cpu"
    rate = recipe.throughput(klass, max(1, offer.gpu_count))
    if rate is None:
        return "no estimate"
    world = max(1, offer.gpu_count) if gpu else 1
    seconds = recipe.max_iters * recipes.tokens_per_step(recipe.config, world) / rate
    seconds += recipe.data.prepare_s(klass)
    return f"~{duration(seconds)}, {rule.cost(seconds, offer.total_usd_per_hour):.2f} USD"
