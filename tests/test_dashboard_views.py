"""What the dashboard's pages are built from, without a browser: the person a row names, the evidence
card's Markdown (raw HTML off, only loss.png kept), the curves thinned, the day totals, the masking
of every value shown."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from orchestrator.dashboard import curves as curves_mod
from orchestrator.dashboard.app import create_app
from orchestrator.dashboard.money_view import by_person, per_day
from orchestrator.dashboard.pages import environment, render_card
from orchestrator.dashboard.runs_view import State, line_of
from orchestrator.redact import clear_secrets, register_secret
from orchestrator.state.ledger import Ledger
from tests.dashboard_helpers import not_verified_run, verified_run

TOKEN = "a-token-of-twenty-chars"


def plan_of_a_launch() -> dict:
    """A launch record as a real plan makes it (no run started)."""
    from orchestrator.plan.launch import make_plan
    from orchestrator.plan.options import LaunchOptions
    from orchestrator.plan.record import RunRecord

    return RunRecord.of_launch(make_plan(LaunchOptions(provider="local", max_usd=0.05, usd_per_hour=1.2))).to_dict()


def test_a_row_with_a_person_shows_them_and_one_without_shows_a_dash(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPURUN_USER", "ada")  # who launches is recorded on every run
    ledger = Ledger()
    verified_run(ledger, "20261201-100000-ver1", plan_of_a_launch(), tmp_path, cost=0.01, cap=0.04, billed=0.01)
    run = ledger.get_run("20261201-100000-ver1")
    assert run is not None
    line = line_of(ledger, run, time.time())
    assert line.person == "ada" and line.state is State.VERIFIED and line.gpu == "cpu" and line.step == 80
    people, problems = by_person(ledger, time.time())
    assert [(p.person, p.runs, round(p.spent_usd, 4)) for p in people] == [("ada", 1, 0.01)] and not problems
    run.person = None  # a run from before the ledger knew people
    assert line_of(ledger, run, time.time()).person == "-"


def test_the_card_keeps_its_text_and_table_but_no_raw_html_nor_foreign_image() -> None:
    html = str(render_card("# Card\n\n<script>alert(1)</script>\n\n![plot](loss.png) ![x](https://example.org/t.png)\n\n"
                           "| a | b |\n|---|---|\n| 1 | 2 |\n\n[bad](javascript:alert(1))\n", "r<1>"))
    assert "<script>" not in html and "&lt;script&gt;" in html and "<table>" in html
    assert 'src="/run/r%3C1%3E/loss.png"' in html and "example.org" not in html
    assert 'href="javascript:' not in html


def test_a_long_curve_is_thinned_and_keeps_its_last_point(tmp_path: Path) -> None:
    points = [(float(i), 1.0 / (i + 1)) for i in range(5001)]
    thinned = curves_mod._thin(points)
    assert len(thinned) <= curves_mod.MAX_POINTS + 1 and thinned[0] == points[0] and thinned[-1] == points[-1]


def test_the_day_totals_add_every_provider_of_the_day() -> None:
    rows = [{"key": "2026-12-07", "provider": "aws", "runs": 1, "cost_usd": 1.0, "held_usd": 0.5},
            {"key": "2026-12-07", "provider": "runpod", "runs": 2, "cost_usd": 2.0, "held_usd": 0.0},
            {"key": "2026-12-06", "provider": "aws", "runs": 1, "cost_usd": 4.0, "held_usd": 0.0}]
    days = per_day(rows)
    assert [(d["key"], d["runs"], d["cost_usd"], d["held_usd"]) for d in days] == [
        ("2026-12-07", 3, 3.0, 0.5), ("2026-12-06", 1, 4.0, 0.0)]


def test_every_value_shown_is_masked_and_escaped(tmp_path: Path) -> None:
    env = environment()
    secret = "sEcReT" + "x" * 20
    register_secret(secret)
    try:
        out = env.from_string("{{ a }} {{ b }} {{ c | data_json }}").render(
            a=f"<b>{secret}</b>", b="https://user:hunter2hunter2@example.org/x", c={"k": f"</script>{secret}"})
    finally:
        clear_secrets()
    assert secret not in out and "&lt;b&gt;" in out and "hunter2hunter2" not in out and "</script>" not in out


def test_a_not_verified_run_shows_its_teardown_command_and_its_events(tmp_path: Path) -> None:
    ledger = Ledger()
    not_verified_run(ledger, "20261201-110000-nov2", plan_of_a_launch(), tmp_path, cost=0.02, cap=0.05,
                     error="instance still listed")
    client = TestClient(create_app(TOKEN, loopback_only=True), base_url="http://127.0.0.1",
                        headers={"Authorization": f"Bearer {TOKEN}"})
    rows = client.get("/runs/rows").text
    assert 'data-state="NOT VERIFIED"' in rows and "gpurun teardown 20261201-110000-nov2" in rows
    page = client.get("/run/20261201-110000-nov2").text
    assert "failed_terminating" in page and "instance still listed" in page and "48.0 KB" in page
    live = json.loads(client.get("/run/20261201-110000-nov2/live").text)
    assert live["open"] is True and "NOT VERIFIED" in live["head"]
    assert "no run nope" in client.get("/run/nope").text


def test_a_run_id_and_a_path_are_text_never_markup(tmp_path: Path) -> None:
    ledger = Ledger()
    ledger.create_run("r<script>alert(1)", "local", 1.0, {}, str(tmp_path / "<img src=x onerror=alert(1)>"))
    client = TestClient(create_app(TOKEN, loopback_only=True), base_url="http://127.0.0.1",
                        headers={"Authorization": f"Bearer {TOKEN}"})
    for path in ("/", "/run/r%3Cscript%3Ealert(1)"):
        page = client.get(path).text
        assert "<script>alert" not in page and "<img src=x" not in page, path
        assert "r&lt;script&gt;alert(1)" in page, path
