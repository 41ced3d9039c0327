"""What a person reads at a glance: the attached live view and `gpurun status -w` fit an 80-column
terminal without a wrapped line; `offers` tells cloud types apart; the plan's account row is words."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

from rich.console import Console

from orchestrator.cli.live import LiveView
from orchestrator.cli.watch import burn_down
from orchestrator.plan.words import account_words
from orchestrator.run.status import LiveStatus
from orchestrator.state.ledger import Ledger


def rendered(renderable: object, width: int = 80) -> list[str]:
    console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    console.print(renderable)
    return console.export_text().splitlines()


def test_the_burn_down_of_open_runs_fits_80_columns(tmp_path: Path) -> None:
    ledger = Ledger()
    now = time.time()
    for i, phase in enumerate(("running", "preparing_data")):
        run_id = f"20261201-23595{i}-ab{i}d"
        run = ledger.create_run(run_id, "datacrunch", 19.99, {}, str(tmp_path / run_id))
        for p in ("creating", "booting", "ssh_ready", "bootstrapped", phase):
            ledger.set_phase(run.run_id, p)
        ledger.update_run(run.run_id, usd_per_hour=17.52, stop_at_epoch=now + 7 * 3600 + 61, cost_usd=12.3456)
        out = Path(run.run_dir) / "out"
        out.mkdir(parents=True)
        (out / "metrics.jsonl").write_text(json.dumps({"type": "step", "step": 123456, "loss": 3.14159,
                                                       "tokens_per_s": 1234567.8}) + "\n")
    lines = rendered(burn_down(ledger, now))
    assert all(len(line) <= 80 for line in lines), "\n".join(lines)
    for i in range(2):  # each run is one whole line: nothing of it wrapped onto the next
        (row,) = [line for line in lines if f"20261201-23595{i}" in line]
        assert "123456" in row and "3.142" in row and "1.2M" in row and "12.35/19.99" in row
        assert "17.52" in row and "7h01m" in row and "…" not in row


def test_no_open_run_says_so() -> None:
    assert "no open runs" in "\n".join(rendered(burn_down(Ledger())))


def test_the_attached_view_never_wraps_a_line_at_80_columns() -> None:
    buf = io.StringIO()
    console = Console(width=80, file=buf, force_terminal=False, color_system=None)
    view = LiveView(console, interval_s=0)
    status = LiveStatus("running", step=1234567, loss=3.14159, tokens_per_s=1234567.0, spent_usd=12.3456,
                        max_usd=19.99, seconds_to_stop=7 * 3600 + 61,
                        message="attempt 1 failed: no capacity: RunPod has no NVIDIA H100 80GB HBM3 x8 in SECURE")
    view(status)
    view(status)
    lines = buf.getvalue().splitlines()
    # The phase line (its message cut, not wrapped), then one progress line per report.
    assert len(lines) == 3 and all(len(line) <= 80 for line in lines), lines
    assert "step 1234567" in lines[1] and "USD/cap 12.3456/19.99" in lines[1] and "stop in 7h01m" in lines[1]


def test_the_link_home_shows_its_rate_and_the_final_pulls_time() -> None:
    buf = io.StringIO()
    view = LiveView(Console(width=80, file=buf, force_terminal=False, color_system=None), interval_s=0)
    status = LiveStatus("running", step=1234567, loss=3.14159, tokens_per_s=1234567.0, spent_usd=12.3456,
                        max_usd=19.99, seconds_to_stop=61, sync="sync 337.3 kB/s, final pull ~18 s")
    view(status)
    view(status)  # the same figures: not repeated
    lines = buf.getvalue().splitlines()
    assert [line.strip() for line in lines if "link home" in line] == ["link home: sync 337.3 kB/s, final pull ~18 s"]
    assert all(len(line) <= 80 for line in lines), lines
    panel = rendered(LiveView(Console(width=80, file=io.StringIO()))._table(status))
    assert any("337.3 kB/s ~18s" in line for line in panel), panel


def test_the_account_row_is_words_not_a_dict() -> None:
    words = account_words({"balance_usd": 100.0, "current_spend_usd_per_hour": 0.69, "spend_limit_usd_per_hour": 80.0,
                           "raw": {"id": "user-fake", "pods": []}})
    assert words == "balance 100.00 USD; billing now 0.69 USD/h; spend limit 80.00 USD/h"
    assert "raw" not in words and "{" not in words
    assert account_words({"balance": 250.75, "currency": "usd", "provider": "datacrunch"}) == "balance 250.75 USD"
