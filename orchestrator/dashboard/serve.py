"""`gpurun dashboard`: bind, print the URL with its token once, serve with uvicorn until Ctrl-C.

The socket is bound here before uvicorn starts, so that --port 0 (any free port) prints the port it
got and a port in use is one clear error line. uvicorn's access log is off: it would print every
URL, the one carrying the token included.
"""

from __future__ import annotations

import socket
import sys
import webbrowser

import uvicorn

from orchestrator.dashboard.access import AccessError, choose_token, is_loopback
from orchestrator.dashboard.app import create_app
from orchestrator.redact import register_secret


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise AccessError(f"cannot listen on {host}:{port} ({exc.strerror or exc}): pick another --port "
                          f"(0: any free one)") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url_of(host: str, port: int, token: str | None) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/" + (f"?token={token}" if token else "")


def serve(host: str, port: int, token: str | None, open_browser: bool, budgets: str | None) -> None:
    """Everything is checked (the token rule, the port) before the URL is printed."""
    chosen, generated = choose_token(host, token)
    register_secret(chosen)  # no page, log or card ever shows it
    app = create_app(chosen, loopback_only=is_loopback(host), budgets=budgets)
    sock = bind(host, port)
    # The one place a generated token is shown: this line, for the person who started the server.
    url = url_of(host, sock.getsockname()[1], chosen if generated else None)
    print(f"gpurun dashboard (read-only) at {url}" + ("" if generated else " (with the --token given)"), flush=True)
    print("Ctrl-C stops it", file=sys.stderr, flush=True)
    if open_browser:
        webbrowser.open(url_of(host, sock.getsockname()[1], chosen))
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", server_header=False)
    uvicorn.Server(config).run(sockets=[sock])
