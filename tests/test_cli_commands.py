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
