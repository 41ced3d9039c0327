"""`gpurun cost` (with `--reconcile`) and `gpurun audit`: what was paid, and what is billing now.

The commands are registered on the CLI group by orchestrator/cli/main.py (`main.add_command`); the
logic is orchestrator.money.reconcile and orchestrator.money.audit.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click
from rich import box
from rich.console import Console
from rich.table import Table

from orchestrator import settings
from orchestrator.money import last_audit
from orchestrator.money.audit import ORPHAN, Audit, Leftover, audit, retry_cleanup
from orchestrator.money.budgets_file import load_budgets
from orchestrator.money.caps import cap_uses
from orchestrator.money.reconcile import Reconciliation, pending, reconcile, verified_at
from orchestrator.plan.record import RunRecord, is_orphan
from orchestrator.proof.run_card import write_run_evidence
from orchestrator.state.endings import Exit
from orchestrator.state.ledger import Ledger
from orchestrator.state.rows import Run
from providers import get_provider, provider_names
from providers.base import Provider, ProviderError

console = Console()


def _cap(value: float | None) -> str:
    return "none" if value is None else f"{value:.2f}"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    hours = seconds / 3600
    return f"{hours / 24:.1f} d" if hours >= 48 else f"{hours:.1f} h"


def rewrite_card(run: Run) -> None:
    """The evidence card again, now with the provider's figure (a sweep-adopted run has none)."""
    if is_orphan(run):
        return
    proof = Path(run.run_dir) / "shutdown_proof.json"
    end = verified_at(Ledger(), run) or run.updated_at
    runtime = (end - run.clock_start_epoch) if run.clock_start_epoch else None
    write_run_evidence(run, proof if proof.exists() else None, run.cost_usd, runtime)


def reconcile_pending(ledger: Ledger) -> list[Reconciliation]:
    """Ask each provider again for every verified run whose figure is not final; re-write its card."""
    results: list[Reconciliation] = []
    providers: dict[str, Provider | None] = {}
    for run in pending(ledger):
        if run.provider not in providers:
            try:
                providers[run.provider] = get_provider(run.provider)
                providers[run.provider].check_credentials()  # type: ignore[union-attr]
            except ProviderError as exc:
                console.print(f"[dim]{run.provider}: not asked ({exc})[/dim]")
                providers[run.provider] = None
        provider = providers[run.provider]
        if provider is None:
            continue
        results.append(reconcile(ledger, run, provider))
        refreshed = ledger.get_run(run.run_id)
        if refreshed is not None:
            rewrite_card(refreshed)
    return results


@click.command()
@click.option("--by", type=click.Choice(["day", "month", "provider", "person"]), default="day", show_default=True,
              help="group the spend (person: who launched each run, everyone's)")
@click.option("--budgets", type=click.Path(dir_okay=False))
@click.option("--reconcile", "ask", is_flag=True,
              help="ask the providers again for what finished runs cost (AWS Cost Explorer lags hours)")
def cost(by: str, budgets: str | None, ask: bool) -> None:
    """Spend by day, month, provider or person against the caps in budgets.yaml, and the providers' own figures."""
    ledger = Ledger()
    conf = load_budgets(budgets)
    if ask:
        asked = reconcile_pending(ledger)
        console.print(f"asked the providers about {len(asked)} run(s)")
    table = Table(title=f"spend by {by}")
    for col in (by, "runs", "settled USD", "held USD"):
        table.add_column(col)
    for row in ledger.spend_by(by):
        table.add_row(str(row["key"]), str(row["runs"]), f"{row['cost_usd']:.4f}", f"{row['held_usd']:.4f}")
    console.print(table)
    runs = [r for r in ledger.list_runs() if not r.open and r.cost_usd is not None and not is_orphan(r)]
    if runs:
        figures = Table(title="estimate vs the provider's figure", box=box.SIMPLE_HEAD)
        for col in ("run", "provider", "estimate USD", "billed USD", "final", "flag"):
            figures.add_column(col, overflow="fold")
        for run in runs[-20:]:
            rec = Reconciliation.of_run(run)
            flag = rec.flag
            figures.add_row(run.run_id, run.provider, f"{run.cost_usd:.4f}",
                            "-" if rec.billed_usd is None else f"{rec.billed_usd:.4f}",
                            "yes" if rec.complete else "no", f"[bold red]{flag}[/]" if flag else rec.source)
        console.print(figures)
    caps = Table(title=f"caps ({conf.path})")
    for col in ("cap", "limit USD", "spent + held USD"):
        caps.add_column(col)
    for use in cap_uses(ledger, conf, time.time()):
        caps.add_row(use.name, _cap(use.limit_usd), f"{use.used_usd:.4f}")
    console.print(caps)


@click.command("audit")
@click.option("--provider", "providers_", multiple=True, help="provider(s) to audit (default: all with credentials)")
@click.option("--cleanup", "again", is_flag=True,
              help="run the provider's cleanup again for every run whose cleanup failed after its teardown")
def audit_cmd(providers_: tuple[str, ...], again: bool) -> None:
    """Everything billing on your accounts now, gpurun's or not, and every run whose cleanup did not
    finish; exits 7 when anything bills that no open run owns, or a cleanup is unfinished (for cron)."""
    ledger = Ledger()
    names = list(providers_) or [n for n in provider_names() if n != "local"]
    providers: list[Provider] = []
    for name in names:
        try:
            providers.append(get_provider(name))
        except ProviderError as exc:
            if providers_:
                raise
            console.print(f"[dim]{name}: skipped ({exc})[/dim]")
    result = audit(ledger, providers, names)
    if again:
        result.leftovers = [left for left in result.leftovers if not _clean_again(ledger, left)]
    last_audit.save(result, settings.home(), time.time())  # what `gpurun dashboard` shows as the last audit
    for name, why in result.skipped:
        console.print(f"[dim]{name}: not listed ({why})[/dim]")
    _print_billing(result)
    _print_leftovers(result.leftovers)
    unowned = result.unowned
    console.print(f"{len(result.rows)} billing item(s), {result.usd_per_hour:.4f} USD/h in all; "
                  f"{len(unowned)} not owned by an open run"
                  + (f"; {len(result.leftovers)} run(s) whose cleanup did not finish" if result.leftovers else ""))
    if unowned or result.leftovers:
        sys.exit(Exit.UNOWNED_BILLING)


def _print_billing(result: Audit) -> None:
    now = time.time()
    table = Table(title="billing now", box=box.SIMPLE_HEAD)
    for col in ("provider", "kind", "id", "name", "state", "USD/h", "age", "whose", "what to do"):
        table.add_column(col, overflow="fold")
    for row in result.rows:
        item = row.item
        age = None if item.created_at is None else now - item.created_at
        whose = row.owner + (f" {row.run_id}" if row.run_id else "")
        style = "bold red" if row.owner == ORPHAN else ("yellow" if row.unowned else "")
        table.add_row(item.provider, item.kind, item.id, item.name, item.state + (f" ({item.note})" if item.note else ""),
                      "?" if item.usd_per_hour is None else f"{item.usd_per_hour:.4f}", _age(age),
                      f"[{style}]{whose}[/]" if style else whose, row.action)
    console.print(table)


def _print_leftovers(found: list[Leftover]) -> None:
    """One line per run whose cleanup failed after its teardown (never wrapped, so a script can grep
    it): the error, what is left, what it bills, the command that removes it."""
    for left in found:
        f = left.failure
        console.print(f"cleanup not finished: run {left.run_id} ({left.provider}), its instances verified gone:"
                      f" {f.get('error')}; left: {f.get('left')}; bills: {f.get('bills')}; remove it: `{f.get('remove')}`",
                      soft_wrap=True, markup=False, highlight=False, style="bold red")


def _clean_again(ledger: Ledger, left: Leftover) -> bool:
    """`gpurun audit --cleanup`: the provider's cleanup for the run once more (with the run's own
    provider options: an AWS region); True when it went through."""
    run = ledger.get_run(left.run_id)
    options = {} if run is None or is_orphan(run) else RunRecord.of_run(run).provider_options
    try:
        deleted = retry_cleanup(ledger, left, get_provider(left.provider, **options))
    except Exception as exc:  # noqa: BLE001 - whatever the SDK raises: the leftover stays listed
        console.print(f"run {left.run_id}: cleanup failed again: {type(exc).__name__}: {exc}")
        return False
    console.print(f"run {left.run_id}: cleaned up: {', '.join(deleted) or 'nothing was left'}")
    return True
