"""`gpurun dashboard`: the runs, one run's curves and proof, and the money, as web pages (read-only).

The server lives in orchestrator/dashboard/, imported when the command runs: the other commands
never load the web framework.
"""

from __future__ import annotations

import sys

import click
from rich.markup import escape

from orchestrator.cli.console import err_console
from orchestrator.state.endings import Exit


@click.command()
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True,
              help="TCP port (0: any free one, printed)")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="address to listen on; anything but loopback needs --token")
@click.option("--token", help="what every request must carry (16+ characters); `generate`: a random one, "
                              "printed once (the default on loopback)")
@click.option("--open", "open_browser", is_flag=True, help="open the page in the browser")
@click.option("--budgets", type=click.Path(dir_okay=False), help="budgets.yaml whose caps the money page shows")
def dashboard(port: int, host: str, token: str | None, open_browser: bool, budgets: str | None) -> None:
    """Serve the ledger as web pages: every run, its curves, its proof, the money. Read-only."""
    from orchestrator.dashboard.access import AccessError
    from orchestrator.dashboard.serve import serve

    try:
        serve(host, port, token, open_browser, budgets)
    except AccessError as exc:
        err_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(Exit.REFUSED)
