"""The command group loads each command's module on first use: every name resolves to its command,
and a light command (the dashboard) starts without the controller, paramiko, the providers or torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click

from orchestrator.cli.main import COMMANDS, main

REPO = Path(__file__).resolve().parent.parent


def test_every_command_name_resolves_to_its_command_and_the_help_lists_the_visible_ones() -> None:
    ctx = click.Context(main)
    for name in COMMANDS:
        command = main.get_command(ctx, name)
        assert command is not None and command.name == name
    assert main.get_command(ctx, "no-such-command") is None
    text = main.get_help(ctx)
    assert all(name in text for name in COMMANDS if name != "guard") and " guard " not in text


def test_the_dashboard_command_starts_without_the_controller_paramiko_or_torch() -> None:
    probe = ("import sys\n"
             "from orchestrator.cli.main import main\n"
             "try:\n"
             "    main(['dashboard', '--help'])\n"
             "except SystemExit:\n"
             "    pass\n"
             "heavy = [m for m in ('orchestrator.run.controller', 'paramiko', 'torch', 'boto3') if m in sys.modules]\n"
             "print('HEAVY', heavy)\n")
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60).stdout
    assert "HEAVY []" in out, out


def test_a_command_leaves_its_heap_to_the_os_and_its_ledger_writes_stay() -> None:
    # The first atexit handler registered runs last: after the command's own, it sees what they left.
    probe = ("import atexit, gc, sys\n"
             "atexit.register(lambda: print('FROZEN', gc.get_freeze_count() > 0, flush=True))\n"
             "from orchestrator.cli.main import main\n"
             "main(['status'])\n")
    res = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "FROZEN True" in res.stdout, res.stdout + res.stderr
    # The ledger that command made and migrated, its connection left to the OS, is whole for the next.
    check = ("from orchestrator.state.db import Database\n"
             "from orchestrator.state.schema import HEAD_REVISION, current_revision\n"
             "with Database()._begin(write=False) as conn:\n"
             "    print('AT', current_revision(conn) == HEAD_REVISION)\n")
    again = subprocess.run([sys.executable, "-c", check], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert "AT True" in again.stdout, again.stdout + again.stderr
