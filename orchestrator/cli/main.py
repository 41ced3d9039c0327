"""`gpurun`: the command line's group. Thin: every command lives by concern in orchestrator/cli/ and is registered here.

launch.py (`launch`, the hidden `guard`), runs.py (`status`, `logs`, `sync`, `teardown`, `evidence`),
offers.py (`offers`, `recipes`), sweep.py (`sweep`), money.py (`cost`, `audit`), dashboard.py (`dashboard`), pools.py (`pool`). An expected failure
ends in one clear line and the exit status orchestrator/state/endings.py gives it, never a traceback.
"""

from __future__ import annotations

import sys
from typing import Any

import click
from rich.markup import escape

from orchestrator.cli.console import err_console
from orchestrator.cli.dashboard import dashboard
from orchestrator.cli.launch import guard, launch
from orchestrator.cli.money import audit_cmd, cost
from orchestrator.cli.offers import offers, recipes_
from orchestrator.cli.pools import pool
from orchestrator.cli.runs import evidence, logs, status, sync, teardown
from orchestrator.cli.sweep import sweep
from orchestrator.errors import RunFailed
from orchestrator.money.errors import BudgetError
from orchestrator.plan.options import LaunchError
from orchestrator.redact import register_secrets_from_env
from orchestrator.run.teardown import VerifyFailed
from orchestrator.settings import SettingsError
from orchestrator.state.endings import Exit
from orchestrator.state.values import LedgerError
from providers.base import ProviderError


class GpurunGroup(click.Group):
    """Turns expected failures into one clear line and a non-zero exit, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (BudgetError, ProviderError, LaunchError, LedgerError, SettingsError) as exc:
            err_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
            sys.exit(Exit.REFUSED)
        except RunFailed as exc:
            err_console.print(f"[red]run failed:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
            sys.exit(Exit.RUN_FAILED)
        except VerifyFailed as exc:
            err_console.print(f"[red]NOT VERIFIED:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
            sys.exit(Exit.NOT_VERIFIED)


@click.group(cls=GpurunGroup)
@click.version_option(package_name="gpurun")
def main() -> None:
    """Rent a GPU, train on it under a hard dollar cap, bring the results home, prove it is gone."""
    register_secrets_from_env()  # so a key never reaches a log, the ledger or a card, even in free text


for command in (launch, guard, status, logs, sync, teardown, offers, recipes_, sweep, evidence, cost, audit_cmd,
                dashboard, pool):
    main.add_command(command)

if __name__ == "__main__":
    main()
