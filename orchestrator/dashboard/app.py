"""The dashboard's routes (Starlette): three pages, the fragments their scripts poll, the static files.

GET only, every request behind access.Guard. The handlers are plain functions, run in Starlette's
thread pool: the ledger is read with blocking calls, one connection per thread.
  /                      the runs            /runs/rows         their table body, polled every 2 s
  /run/{id}              one run             /run/{id}/live     its head and curves, polled while open
  /run/{id}/loss.png     the card's plot     /money             spend, caps, the last audit
  /static/...            the page's script, style and the vendored Chart.js
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from orchestrator.dashboard import money_view, run_view
from orchestrator.dashboard.access import Guard
from orchestrator.dashboard.curves import curves
from orchestrator.dashboard.pages import environment, render_card
from orchestrator.dashboard.runs_view import ErrorLine, line_of, run_lines, sync_history
from orchestrator.proof.shutdown import verify_proof_chain
from orchestrator.state.ledger import Ledger

STATIC = Path(__file__).resolve().parent / "static"
POLL_MS = 2000


class Dashboard:
    def __init__(self, ledger: Ledger, budgets: str | None) -> None:
        self.ledger, self.budgets, self.env = ledger, budgets, environment()

    def render(self, template: str, **context: Any) -> HTMLResponse:
        page = self.env.get_template(template).render(poll_ms=POLL_MS, now=time.time(), **context)
        return HTMLResponse(page)

    def page(self, template: str, page: str, build: Any) -> HTMLResponse:
        """`template` with what `build()` returns; a ledger that cannot be read is the page's error line."""
        try:
            context = build()
        except LookupError as exc:  # a run id that is not in the ledger
            return self.render("error.html", page=page, problem=str(exc))
        except Exception as exc:  # noqa: BLE001 - a row this gpurun cannot read: say so, keep serving
            return self.render("error.html", page=page, problem=f"the ledger cannot be read: {type(exc).__name__}: {exc}")
        return self.render(template, page=page, **context)

    def _chain(self) -> dict[str, Any]:
        try:
            proofs = self.ledger.proofs()
            return {"len": len(proofs), "problems": verify_proof_chain(proofs)}
        except Exception as exc:  # noqa: BLE001 - shown as the chain's problem, never a dead page
            return {"len": 0, "problems": [f"the proofs cannot be read: {type(exc).__name__}: {exc}"]}

    def runs(self, request: Request) -> Response:
        lines, problem = run_lines(self.ledger, time.time())
        return self.render("runs.html", page="runs", lines=lines, problem=problem, chain=self._chain())

    def rows(self, request: Request) -> Response:
        lines, problem = run_lines(self.ledger, time.time())
        return self.render("runs_rows.html", lines=lines, problem=problem)

    def _run(self, request: Request) -> Any:
        return self.ledger.get_run(request.path_params["run_id"])

    def _head(self, run: Any) -> dict[str, Any]:
        now = time.time()
        try:
            return {"line": line_of(self.ledger, run, now), "error": None}
        except Exception as exc:  # noqa: BLE001 - the row's error, on the page
            return {"line": ErrorLine(run.run_id, f"{type(exc).__name__}: {exc}"), "error": str(exc)}

    def run(self, request: Request) -> Response:
        return self.page("run.html", "run", lambda: self._run_context(request.path_params["run_id"]))

    def _run_context(self, run_id: str) -> dict[str, Any]:
        run = self.ledger.get_run(run_id)
        if run is None:
            raise LookupError(f"no run {run_id} in the ledger")
        head = self._head(run)
        spent = getattr(head["line"], "spent_usd", 0.0)
        sections: dict[str, Any] = {}
        for name, build in (("timeline", lambda: run_view.timeline(self.ledger, run)),
                            ("syncs", lambda: sync_history(self.ledger.events(run.run_id))),
                            ("attempts", lambda: run_view.attempts(run, spent)),
                            ("proof", lambda: run_view.proof(self.ledger, run)),
                            ("events", lambda: run_view.events(self.ledger, run)),
                            ("curves", lambda: curves(run))):
            try:
                sections[name] = build()
            except Exception as exc:  # noqa: BLE001 - one section's error line, the rest of the page stays
                sections[name] = None
                sections[f"{name}_error"] = f"{type(exc).__name__}: {exc}"
        card = run_view.evidence_markdown(run)
        return {"run": run, "head": head, "card": render_card(card, run.run_id) if card is not None else None,
                **sections}

    def run_live(self, request: Request) -> Response:
        try:
            run = self._run(request)
        except Exception:  # noqa: BLE001 - the page keeps what it shows
            run = None
        if run is None:
            return JSONResponse({"open": False, "head": ""}, status_code=404)
        head = self.env.get_template("run_head.html").render(head=self._head(run), now=time.time())
        try:
            data = curves(run)
        except Exception:  # noqa: BLE001 - the curves stay as drawn
            data = None
        return JSONResponse({"open": run.open, "head": head, "curves": data})

    def loss_png(self, request: Request) -> Response:
        try:
            run = self._run(request)
        except Exception:  # noqa: BLE001 - no plot rather than a dead server
            run = None
        path = Path(run.run_dir) / "loss.png" if run is not None and run.run_dir else None
        if path is None or not path.is_file():
            return PlainTextResponse("no loss.png for this run", status_code=404)
        return FileResponse(path, media_type="image/png")

    def money(self, request: Request) -> Response:
        return self.page("money.html", "money", lambda: money_view.money(self.ledger, self.budgets, time.time()))


def create_app(token: str, loopback_only: bool, ledger: Ledger | None = None, budgets: str | None = None) -> Guard:
    """The ASGI app: the routes behind the token guard."""
    dash = Dashboard(ledger or Ledger(), budgets)
    app = Starlette(routes=[
        Route("/", dash.runs), Route("/runs/rows", dash.rows), Route("/money", dash.money),
        Route("/run/{run_id}", dash.run), Route("/run/{run_id}/live", dash.run_live),
        Route("/run/{run_id}/loss.png", dash.loss_png),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ])
    return Guard(app, token, loopback_only)
