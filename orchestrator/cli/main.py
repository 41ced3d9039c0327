"""`gpurun`: the command line's group. Thin: every command lives by concern in orchestrator/cli/ and is registered here.

launch.py (`launch`, the hidden `guard`), runs.py (`status`, `logs`, `sync`, `teardown`, `evidence`),
offers.py (`offers`, `recipes`), sweep.py (`sweep`), money.py (`cost`, `audit`), dashboard.py (`dashboard`), pools.py (`pool`). An expected failure
ends in one clear line and the exit status orchestrator/state/endings.py gives it, never a traceback.
"""

from __future__ import annotations

import atexit
import gc
import importlib
import sys
from typing import Any

import click
from rich.markup import escape

from orchestrator.cli.console import err_console
from orchestrator.errors import RunFailed, VerifyFailed
from orchestrator.money.errors import BudgetError
from orchestrator.plan.options import LaunchError
from orchestrator.redact import register_secrets_from_env
from orchestrator.settings import SettingsError
from orchestrator.state.endings import Exit
from orchestrator.state.values import LedgerError
from providers.base import ProviderError

# Each command's module is imported only when that command runs (or the help lists them all):
# `gpurun dashboard` or `gpurun status` need not load the controller, paramiko and the providers.
COMMANDS = {
    "launch": "launch:launch", "guard": "launch:guard",
    "status": "runs:status", "logs": "runs:logs", "sync": "runs:sync", "teardown": "runs:teardown",
    "evidence": "runs:evidence", "offers": "offers:offers", "recipes": "offers:recipes_", "sweep": "sweep:sweep",
    "cost": "money:cost", "audit": "money:audit_cmd", "dashboard": "dashboard:dashboard", "pool": "pools:pool",
}


class GpurunGroup(click.Group):
    """Loads each command on first use; turns expected failures into one clear line and a non-zero
    exit, never a traceback."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        where = COMMANDS.get(cmd_name)
        if where is None:
            return None
        module, attr = where.split(":")
        command = getattr(importlib.import_module(f"orchestrator.cli.{module}"), attr)
        assert isinstance(command, click.Command) and command.name == cmd_name, where
        return command

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
    leave_the_heap_to_the_os()


def leave_the_heap_to_the_os() -> None:
    """At exit, freeze what is alive, so the interpreter's last garbage collections skip it.

    Python's shutdown collects garbage over every object still alive; with SQLAlchemy, rich, paramiko
    and matplotlib loaded that took 0.2-0.45 CPU-s of every command, the whole time a `gpurun status`
    spends on its own work. The memory is the OS's to take back anyway, and the atexit handlers (the
    journal's flush, logging's) still run. A ledger connection no collection closed is what a crash
    leaves: its writes are committed, and SQLite's write-ahead log keeps them.
    """
    atexit.unregister(gc.freeze)  # once per process, however many commands run in it (tests)
    atexit.register(gc.freeze)


if __name__ == "__main__":
    main()
