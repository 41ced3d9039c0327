"""`gpurun pool`: each member's spend against their caps, and the pool's own (budgets.yaml `pools:`)."""

from __future__ import annotations

import time

import click
from rich.table import Table

from orchestrator.cli.console import console
from orchestrator.money.budgets_file import load_budgets
from orchestrator.money.caps import Cap, pool_caps
from orchestrator.money.errors import BudgetError
from orchestrator.state.ledger import Ledger


def _against(cap: Cap, ledger: Ledger) -> str:
    """'spent+held / cap' (no cap: the spend alone)."""
    used = cap.used(ledger)
    return f"{used:.2f}" + ("" if cap.usd is None else f" / {cap.usd:.2f}")


@click.command("pool")
@click.argument("name", required=False)
@click.option("--budgets", type=click.Path(dir_okay=False))
def pool(name: str | None, budgets: str | None) -> None:
    """Each member's spend and holds (today, this month, in all) against their caps, and the pool's."""
    conf = load_budgets(budgets)
    pools = conf.pools if name is None else {n: p for n, p in conf.pools.items() if n == name}
    if name is not None and not pools:
        raise BudgetError(f"no pool {name!r} in {conf.path}: use one of {', '.join(conf.pools) or 'none (add pools:)'}")
    if not pools:
        console.print(f"no pools in {conf.path}: docs/BUDGET.md (People and pools) shows how to add them")
        return
    ledger, now = Ledger(), time.time()
    for p in pools.values():
        per_run = p.per_person.per_run_usd
        table = Table(title=f"pool {p.name}: spent + held USD / cap (admin: {p.admin or 'none'};"
                            f" per run: {'no cap' if per_run is None else f'{per_run:.2f}'})")
        for col in ("person", "today", "this month", "in all", "open runs"):
            table.add_column(col)
        for person in p.people:
            opened = len(ledger.list_runs(open_only=True, person=person))
            role = " (admin)" if person == p.admin else ""
            table.add_row(person + role, *(_against(c, ledger) for c in pool_caps(p, now, person)), str(opened))
        table.add_row("[bold]the pool[/bold]", *(_against(c, ledger) for c in pool_caps(p, now)), "")
        console.print(table)
