"""`gpurun dashboard` is safe by default: the real CLI refuses to serve beyond loopback without a
token, every request without the token is a 401, only GET is answered; and a ledger it cannot read
is an error line on the page, never a dead server. The pages in a browser: test_dashboard_browser.py."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from click.testing import CliRunner
from starlette.testclient import TestClient

from orchestrator import settings
from orchestrator.cli.main import main
from orchestrator.dashboard.app import create_app
from orchestrator.money import last_audit
from orchestrator.state.ledger import Ledger
from tests.dashboard_helpers import dashboard, status
from tests.test_launch_local import gpurun

TOKEN = "a-token-of-twenty-chars"


def test_beyond_loopback_without_a_token_is_refused_with_one_line(tmp_path: Path) -> None:
    for args, expect in ((["--host", "0.0.0.0"], "pass --token"), (["--host", "0.0.0.0", "--token", "short"],
                                                                    "at least 16")):
        res = gpurun("dashboard", "--port", "0", *args, cwd=tmp_path, timeout=60)
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert res.returncode == 2 and len(lines) == 1 and expect in lines[0], res.stdout + res.stderr
        assert "http://" not in res.stdout  # nothing served, no URL


def test_every_request_needs_the_token_and_only_get_is_answered(tmp_path: Path) -> None:
    with dashboard("--host", "0.0.0.0", "--token", TOKEN) as (url, _):
        assert TOKEN not in url  # a token the person gave is not printed back
        base = url.rstrip("/")
        for path in ("/", "/money", "/runs/rows", "/static/dashboard.js", "/static/chart.umd.min.js", "/run/x"):
            assert status(base + path) == 401, path
            assert status(base + path, {"Authorization": "Bearer wrong-token-wrong-token"}) == 401, path
            assert status(base + path, {"Authorization": f"Bearer {TOKEN}"}) == 200, path
        assert status(f"{base}/?token={TOKEN}") == 303  # then a cookie, and the URL without the token


def test_the_token_in_the_url_becomes_a_cookie_and_leaves_the_address_bar() -> None:
    client = TestClient(create_app(TOKEN, loopback_only=True), base_url="http://127.0.0.1:8765")
    first = client.get(f"/money?token={TOKEN}", follow_redirects=False)
    assert first.status_code == 303 and first.headers["location"] == "/money"
    assert "HttpOnly" in first.headers["set-cookie"] and "samesite=strict" in first.headers["set-cookie"].lower()
    page = client.get("/money")  # the cookie alone
    assert page.status_code == 200 and "Last audit" in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and page.headers["cache-control"] == "no-store"
    assert client.post("/", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 405
    # A DNS-rebinding page reaches a loopback server under its own name: refused.
    rebound = TestClient(create_app(TOKEN, loopback_only=True), base_url="http://evil.example:8765")
    assert rebound.get("/", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 421


def test_a_ledger_row_this_gpurun_cannot_read_is_an_error_line(tmp_path: Path) -> None:
    ledger = Ledger()
    ledger.create_run("20260101-000000-good", "local", 1.0, {}, str(tmp_path / "good"))
    client = TestClient(create_app(TOKEN, loopback_only=True), base_url="http://127.0.0.1",
                        headers={"Authorization": f"Bearer {TOKEN}"})
    page = client.get("/")
    assert page.status_code == 200 and "20260101-000000-good" in page.text and "cannot be shown" in page.text
    # A phase a newer gpurun wrote: the ledger cannot list the runs at all; the page says so and serves on.
    with sqlite3.connect(settings.home() / "ledger.db") as db:
        db.execute("UPDATE runs SET phase = 'hibernating' WHERE run_id = '20260101-000000-good'")
    for path in ("/", "/runs/rows", "/run/20260101-000000-good", "/money"):
        res = client.get(path)
        assert res.status_code == 200, path
        assert "hibernating" in res.text, path


def test_gpurun_audit_keeps_its_last_result_for_the_dashboard() -> None:
    res = CliRunner().invoke(main, ["audit", "--provider", "local"])
    assert res.exit_code == 0, res.output
    audit, why = last_audit.load(settings.home())
    assert audit is not None and why == "" and audit["rows"] == [] and audit["at"] <= time.time()
