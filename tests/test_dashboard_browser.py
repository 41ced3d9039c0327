"""`gpurun dashboard` in a real browser: the real CLI serving a ledger with a verified run, a NOT
VERIFIED one, an open local run in progress (a real detached launch, its guard syncing every
second) and a malformed row; Debian's headless Chromium driven by Playwright reads the pages as a
person would. The finished runs are written the way the controller writes them (the ledger's API,
the proof module, the evidence card's writer) with figures the test knows; the screenshots land
in docs/screenshots/ (the README shows them)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator import settings
from orchestrator.money import last_audit
from orchestrator.money.audit import Audit, classify
from orchestrator.state.ledger import Ledger
from providers.base import Billable
from tests.dashboard_helpers import (
    CHROMIUM,
    SCREENSHOTS,
    dashboard,
    launch_chromium,
    not_verified_run,
    status,
    verified_run,
)
from tests.test_launch_local import REPO, gpurun

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extra: make setup")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium: `make sysdeps` installs it")

# Not shaped like any known token, so only the dashboard's own masking (the key registered from
# its environment) can keep it off the page: the ledger of this test process stores it as it is.
SECRET = "planted" + secrets.token_hex(16)


def launch_open_run(cwd: Path) -> str:
    """A local run in progress under a detached guard that pulls its metrics home every second."""
    res = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli.main", "launch", "--max-usd", "0.1", "--usd-per-hour", "1.2",
         "--detach", "--yes", "--sync-interval", "1", "--set", "max_iters=1000000"],
        cwd=cwd, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120,
        stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stdout + res.stderr
    (run,) = Ledger().list_runs(open_only=True)
    return run.run_id


def plant(ledger: Ledger, runs_dir: Path, plan: dict[str, Any]) -> dict[str, str]:
    ids = {"verified": "20261201-100000-ver1", "not_verified": "20261201-110000-nov2",
           "malformed": "20261201-120000-bad3"}
    verified_run(ledger, ids["verified"], plan, runs_dir, cost=0.0123, cap=0.04, billed=0.0125)
    card = runs_dir / ids["verified"] / "EVIDENCE.md"
    card.write_text(card.read_text() + f"\nnote from the job: upload key {SECRET}\n")
    not_verified_run(ledger, ids["not_verified"], plan, runs_dir, cost=0.0311, cap=0.05,
                     error=f"instance local-x still listed after 600 s (key {SECRET})")
    ledger.record_event(ids["not_verified"], "error", message=f"provider answered with X-Key {SECRET}")
    assert any(SECRET in str(e.payload) for e in ledger.events(ids["not_verified"])), "planted as it is"
    # A row this gpurun cannot show: its launch record lacks the offer and the allowance.
    ledger.create_run(ids["malformed"], "local", 1.0, {"options": {"provider": "local"}}, str(runs_dir / "bad"))
    orphan = Billable(kind="instance", id="local-left-behind", provider="local", name=f"gpurun-{ids['verified']}",
                      state="running", usd_per_hour=1.2, run_id=ids["verified"])
    last_audit.save(Audit([classify(ledger, orphan)], []), settings.home(), time.time())
    return ids


def rows_by_state(page: Any) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for row in page.query_selector_all("#runs tbody tr[data-state]"):
        found.setdefault(row.get_attribute("data-state"), []).append(row.get_attribute("data-run-id"))
    return found


def cell(page: Any, run_id: str, css: str) -> str:
    return page.inner_text(f'#runs tr[data-run-id="{run_id}"] {css}').strip()


def check_runs_page(page: Any, ids: dict[str, str], open_id: str) -> None:
    states = rows_by_state(page)
    assert states["verified"] == [ids["verified"]] and states["NOT VERIFIED"] == [ids["not_verified"]]
    assert states["open"] == [open_id]
    bad = page.inner_text(f'#runs tr[data-run-id="{ids["not_verified"]}"] td.state')
    assert "NOT VERIFIED" in bad and f"gpurun teardown {ids['not_verified']}" in bad
    badge = page.query_selector(f'#runs tr[data-run-id="{ids["not_verified"]}"] .badge')
    assert badge.evaluate("b => getComputedStyle(b).backgroundColor") == "rgb(198, 40, 40)"  # red
    malformed = page.inner_text(f'#runs tr[data-run-id="{ids["malformed"]}"]')
    assert "cannot be shown" in malformed and "launch record" in malformed
    # The spend bars' numbers are the ledger's.
    ledger = Ledger()
    for key in ("verified", "not_verified"):
        run = ledger.get_run(ids[key])
        assert cell(page, ids[key], ".spend .spent") == f"{run.cost_usd:.4f}"
        assert cell(page, ids[key], ".spend .cap") == f"{run.max_usd:.4f}"
        meter = page.query_selector(f'#runs tr[data-run-id="{ids[key]}"] meter')
        assert float(meter.get_attribute("value")) == pytest.approx(run.cost_usd)
    assert cell(page, open_id, ".spend .cap") == "0.1000"
    assert 0 <= float(cell(page, open_id, ".spend .spent")) <= 0.1
    billed = cell(page, ids["verified"], ".billed")
    assert "0.0125" in billed and "differs from the estimate by +1.6 %" in billed
    assert "verified, 1 proof" in page.inner_text("#chain")


def check_live_step(page: Any, open_id: str) -> None:
    """The open run's step advances while the page stays loaded (no reload: the marker survives)."""
    page.evaluate("window.__sameLoad = 'still here'")
    page.wait_for_function(f"""() => /^\\d+$/.test((document.querySelector('#runs tr[data-run-id="{open_id}"] .step')
                                || {{}}).textContent || '')""", timeout=60_000)
    first = int(cell(page, open_id, ".step"))
    page.wait_for_function(f"""() => Number(document.querySelector('#runs tr[data-run-id="{open_id}"] .step')
                                .textContent) > {first}""", timeout=30_000)
    assert page.evaluate("window.__sameLoad") == "still here"


def check_open_run_page(page: Any, base: str, run_id: str) -> None:
    """The open run's loss curve grows on its page while it stays loaded."""
    page.goto(f"{base}/run/{run_id}")
    points = "window.gpurunCharts && window.gpurunCharts.steps ? window.gpurunCharts.steps.getDatasetMeta(0).data.length : 0"
    page.wait_for_function(f"() => ({points}) > 0", timeout=30_000)
    first = page.evaluate(f"() => {points}")
    page.evaluate("window.__sameLoad = 'run page'")
    page.wait_for_function(f"() => ({points}) > {first}", timeout=30_000)
    assert page.evaluate("window.__sameLoad") == "run page"
    assert page.inner_text("#head .state").strip() == "open"


def check_run_page(page: Any, base: str, run_id: str) -> None:
    page.goto(f"{base}/run/{run_id}")
    page.wait_for_function("() => window.gpurunCharts && window.gpurunCharts.steps")
    drawn = page.evaluate("""() => {
        const c = window.gpurunCharts.steps, a = c.chartArea;
        return c.data.datasets.map((ds, i) => ({label: ds.label, data: ds.data.map(p => [p.x, p.y]),
            inside: c.getDatasetMeta(i).data.every(p => p.x >= a.left - 1 && p.x <= a.right + 1
                                                       && p.y >= a.top - 1 && p.y <= a.bottom + 1),
            points: c.getDatasetMeta(i).data.length}));
    }""")
    train, val = drawn
    assert train["data"] == [[s, pytest.approx(4.2 - s / 40)] for s in range(0, 81, 10)]
    assert train["points"] == 9 and train["inside"] and val["data"] == [[40, 3.4], [80, 2.4]] and val["inside"]
    usd = page.evaluate("() => window.gpurunCharts.usd.data.datasets[0].data.map(p => p.x)")
    assert len(usd) == 9 and usd == sorted(usd) and 0 < usd[-1] <= 0.04  # loss against the dollars spent
    assert "chain verified: 1 proof" in page.inner_text("#proof-chain")
    assert "verified gone" in page.inner_text("#proof-verified")
    assert "Evidence" in page.inner_text("article.card")
    assert page.query_selector_all("#timeline .seg")[-1].inner_text() == "verified"
    assert "48.0 KB" in page.inner_text("#syncs")


def check_no_secret(page: Any, base: str, ids: dict[str, str], open_id: str) -> None:
    paths = ["/", "/runs/rows", "/money", *(f"/run/{r}" for r in [*ids.values(), open_id]),
             *(f"/run/{r}/live" for r in ids.values())]
    for path in paths:
        res = page.request.get(base + path)
        assert res.status == 200, path
        assert SECRET not in res.text(), f"the planted secret reached {path}"
    page.goto(f"{base}/run/{ids['not_verified']}")
    assert "X-Key ***" in page.inner_text("#events") and SECRET not in page.content()


def test_the_dashboard_shows_runs_money_and_proof_in_a_real_browser(tmp_path: Path) -> None:
    open_id = launch_open_run(tmp_path)
    ledger = Ledger()
    plan = ledger.get_run(open_id).plan
    ids = plant(ledger, tmp_path / "runs", plan)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with dashboard(env={"RUNPOD_API_KEY": SECRET}) as (url, started_s), sync_api.sync_playwright() as pw:
        print(f"gpurun dashboard answered {started_s:.2f} s after it was started")
        base = url.split("/?", 1)[0]
        assert status(base + "/") == 401 and status(base + "/?token=not-the-token") == 401
        browser = launch_chromium(pw)
        page = browser.new_page(viewport={"width": 1500, "height": 900})
        page.goto(url)  # the token once; then a cookie, and the address bar without it
        assert "token=" not in page.url
        check_runs_page(page, ids, open_id)
        check_live_step(page, open_id)
        page.screenshot(path=str(SCREENSHOTS / "runs.png"), full_page=True)
        check_open_run_page(page, base, open_id)
        check_run_page(page, base, ids["verified"])
        page.screenshot(path=str(SCREENSHOTS / "run.png"), full_page=True)
        page.goto(f"{base}/money")
        orphan = page.inner_text("#audit tr.orphan")
        assert "ORPHAN" in orphan and "local-left-behind" in orphan and "gpurun sweep --provider local" in orphan
        assert "0.0434" in page.inner_text("#by-provider")  # 0.0123 + 0.0311 settled; the open run holds
        page.screenshot(path=str(SCREENSHOTS / "money.png"), full_page=True)
        check_no_secret(page, base, ids, open_id)
        # The open run torn down by the real CLI: its row turns verified on the page, with no reload.
        page.goto(base + "/")
        down = gpurun("teardown", open_id, cwd=tmp_path)
        assert down.returncode == 0, down.stdout + down.stderr
        page.wait_for_function(f"""() => document.querySelector('#runs tr[data-run-id="{open_id}"]')
                                    .dataset.state === 'verified'""", timeout=15_000)
        browser.close()
