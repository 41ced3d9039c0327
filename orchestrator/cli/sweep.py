"""`gpurun sweep`: find gpurun's instances that no open run owns and end each through a run's own teardown."""

from __future__ import annotations

import sys
import time

import click
from rich.markup import escape
from rich.table import Table

from orchestrator.cli.console import confirm, console, err_console
from orchestrator.errors import VerifyFailed
from orchestrator.money.budgets_file import load_budgets
from orchestrator.plan.launch import runs_root
from orchestrator.run import teardown as teardown_mod
from orchestrator.state.endings import Exit
from orchestrator.state.ledger import Ledger
from providers import get_provider, provider_names
from providers.base import Instance, Provider, ProviderError


@click.command()
@click.option("--provider", "providers_", multiple=True, help="provider(s) to sweep (default: all with credentials)")
@click.option("--runs-dir", type=click.Path(file_okay=False),
              help="where proofs of orphans this ledger does not know go (default ./runs)")
@click.option("--yes", "-y", is_flag=True, help="terminate without asking")
def sweep(providers_: tuple[str, ...], runs_dir: str | None, yes: bool) -> None:
    """Find instances tagged gpurun that no open run owns; on confirmation end each through the same
    teardown as a run (terminate, verify, shutdown proof chained in the ledger)."""
    ledger = Ledger()
    names = list(providers_) or provider_names()
    found: list[tuple[Provider, list[Instance]]] = []
    for name in names:
        try:
            prov = get_provider(name)
            prov.check_credentials()
            orphans = teardown_mod.find_orphans(ledger, prov)
        except ProviderError as exc:
            if providers_:
                raise
            console.print(f"[dim]{name}: skipped ({exc})[/dim]")
            continue
        if orphans:
            found.append((prov, orphans))
    if not found:
        console.print("nothing to sweep: every live gpurun instance belongs to an open run")
        return
    table = Table(title="orphaned gpurun instances")
    for col in ("provider", "instance", "name", "state", "running for", "USD/h", "cost so far"):
        table.add_column(col)
    now = time.time()
    conf = load_budgets()
    for prov, orphans in found:
        rule = conf.billing_for(prov.name)  # the same billing rule a run's own cost uses
        for inst in orphans:
            age = now - inst.created_at if inst.created_at else None
            rate = inst.usd_per_hour
            so_far = f"{rule.cost(age, rate):.4f}" if age is not None and rate is not None else "?"
            table.add_row(prov.name, inst.id, inst.name, inst.state, f"{age / 60:.1f} min" if age else "?",
                          "?" if rate is None else f"{rate:.4f}", so_far)
    console.print(table)
    if not yes:
        confirm(f"Terminate these {sum(len(o) for _, o in found)} instance(s)?")
    root = runs_root(runs_dir)
    failures = 0
    for prov, orphans in found:
        for group in teardown_mod.group_orphans(ledger, orphans):
            try:
                ended = teardown_mod.end_orphans(ledger, prov, group, root)
            except VerifyFailed as exc:
                err_console.print(f"[red]NOT VERIFIED:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
                failures += 1
                continue
            for inst in group:
                console.print(f"{prov.name} {inst.id}: terminated (verified)")
            console.print(f"shutdown proof: {ended.proof_path} (ledger run {ended.run_id})", highlight=False)
    if failures:
        sys.exit(Exit.NOT_VERIFIED)
