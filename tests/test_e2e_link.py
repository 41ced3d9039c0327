"""The link home, end to end through the real CLI: the loopback instance's SSH goes through a
throttled TCP proxy (tests/fixtures/throttle.py) standing in for a slow home connection, and the
trainer's checkpoint is too big to come home in what the reserve leaves the final pull. The
guard measures the link on its periodic pulls, warns, stops training earlier, and the final
checkpoint arrives verified before the switch; the instance is verified gone inside the cap."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.state.endings import Exit
from orchestrator.state.ledger import Ledger
from orchestrator.transport.keys import run_key
from tests.e2e_helpers import LOOPBACK_BUDGETS, loopback_env
from tests.fixtures.sshd import SSHServer, sshd  # noqa: F401
from tests.fixtures.throttle import ThrottledLink

REPO = Path(__file__).resolve().parent.parent
RATE_BPS = 400_000  # 400 kB/s: a ~4.8 MB checkpoint takes ~12 s, the reserve leaves the final pull ~5 s

BUDGETS = LOOPBACK_BUDGETS + """\
notify:
  command: "cat >> NOTES && echo >> NOTES"
"""


@pytest.fixture
def slow_link(sshd: SSHServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, object]]:  # noqa: F811
    sshd.authorize(run_key().public_line)
    remote = tmp_path / "instance"
    remote.mkdir()
    notes = tmp_path / "notifications.jsonl"
    budgets = tmp_path / "budgets.yaml"
    budgets.write_text(BUDGETS.replace("NOTES", str(notes)))
    with ThrottledLink((sshd.host, sshd.port), RATE_BPS) as link:
        env = loopback_env("127.0.0.1", link.port, sshd.user, remote)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        yield {"budgets": str(budgets), "remote": remote, "notes": notes, "link": link}


def test_a_slow_link_moves_the_stop_earlier_and_the_final_checkpoint_comes_home(
    slow_link: dict[str, object], tmp_path: Path
) -> None:
    # 0.1 USD at 0.001 USD/s buys 100 s; the plan's stop is at 70 s, the switch acts at 85 s.
    # n_embd=128: a ~4.8 MB checkpoint (weights + AdamW state), every 3 s, pulled every 2 s.
    cmd = [sys.executable, "-m", "orchestrator.cli.main", "launch", "--provider", "loopback", "--yes",
           "--budgets", str(slow_link["budgets"]), "--max-usd", "0.1", "--sync-interval", "2",
           "--set", "max_iters=1000000", "--set", "ckpt_interval_s=3", "--set", "model=tiny", "--set", "n_embd=128"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=dict(os.environ), capture_output=True, text=True, timeout=240)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    ledger = Ledger()
    (run,) = ledger.list_runs()
    events = ledger.events(run.run_id)
    names = [e.phase for e in events]
    # The guard measured the link, warned once, and moved its stop time earlier (never later).
    (warning,) = [e.payload for e in events if e.phase == "link_too_slow"]
    assert warning["final_pull_s"] > warning["window_s"] and "reserve_s" in warning["message"]
    moved = [e.payload for e in events if e.phase == "stop_moved"]
    assert moved and all(m["stop_at_epoch"] < m["plan_stop_at_epoch"] for m in moved)
    assert names.index("link_too_slow") < names.index("stopping") < names.index("syncing_final")
    stopping = next(e for e in events if e.phase == "stopping")
    assert "before the plan's stop time" in stopping.payload["reason"]
    assert run.stop_at_epoch is not None and stopping.time < run.stop_at_epoch
    notes = [json.loads(line) for line in Path(str(slow_link["notes"])).read_text().splitlines()]
    assert "link_too_slow" in [n["event"] for n in notes]
    # The final pull finished with the job's last checkpoint verified at home.
    final = [e.payload for e in events if e.phase == "sync" and e.payload.get("final")][-1]
    print(f"link: measured {moved[-1]['rate_bps'] / 1e3:.0f} kB/s (limit {RATE_BPS / 1e3:.0f}), checkpoint"
          f" {moved[-1]['checkpoint_bytes'] / 1e6:.2f} MB, final pull expected {moved[-1]['final_pull_s']:.1f} s"
          f" (window {warning['window_s']:.1f} s), took {final['seconds']:.1f} s for {final['bytes'] / 1e6:.2f} MB;"
          f" stop moved {moved[-1]['plan_stop_at_epoch'] - moved[-1]['stop_at_epoch']:.1f} s earlier")
    assert final["complete"] and final["latest_home"] and final["latest"] in final["verified"]
    run_dir = Path(run.run_dir)
    ends = [json.loads(x) for x in (run_dir / "out" / "metrics.jsonl").read_text().splitlines()]
    assert ends[-1]["type"] == "end"
    manifest = json.loads((run_dir / "out" / "checkpoints" / "MANIFEST.json").read_text())
    assert manifest["latest"] == final["latest"] and manifest["checkpoints"][-1]["step"] == ends[-1]["step"]
    from trainer.manifest import verify_checkpoints

    ok, bad = verify_checkpoints(run_dir / "out" / "checkpoints")
    assert final["latest"] in ok and not bad
    # The final step's weights-only export came too (pulled first), and the card names what came home.
    (export,) = manifest["exports"]
    assert export["file"] in final["verified"] and export["step"] == ends[-1]["step"]
    card = (run_dir / "EVIDENCE.md").read_text()
    assert f"came home: `{manifest['checkpoints'][0]['file']}`" in card and f"`{export['file']}` (weights only" in card
    # The guard, not the switch, ended it; verified gone; billed inside the cap by meter and card.
    assert not (Path(str(slow_link["remote"])) / run.run_id / "self_destruct.ran").exists()
    proof = json.loads((run_dir / "shutdown_proof.json").read_text())
    assert proof["verified"] is True and proof["zero_match_listing"] == []
    from tests.fakes.loopback_provider import LoopbackProvider

    assert LoopbackProvider().get(f"lb-{run.run_id}").state == "terminated"
    assert LoopbackProvider().meter_usd() <= 0.1
    assert run.phase == "verified" and run.cost_usd is not None and run.cost_usd <= 0.1


def test_a_link_that_fails_at_the_end_loses_the_final_checkpoint_and_the_run_says_so(
    slow_link: dict[str, object], tmp_path: Path
) -> None:
    """The issue's run: the link carried every periodic pull, then nearly stops as the job ends.
    The final pull is ended at its own deadline (the switch's time), the run is not a success
    (exit 6, saying the final checkpoint did not come home), and it is still verified gone with the
    meter and the card inside the cap (the cost counted to the end of billing)."""
    link = slow_link["link"]
    assert isinstance(link, ThrottledLink)
    link.down.rate = link.up.rate = 20 * RATE_BPS  # 8 MB/s: the periodic pulls fit, the stop never moves
    ledger = Ledger()

    def choke_before_the_stop() -> None:
        """A few seconds before the plan's stop (the trainer checkpoints just before it), the link
        all but stops: the job's last checkpoint cannot come home before the switch."""
        while not (runs := Ledger().list_runs()) or runs[0].stop_at_epoch is None:
            time.sleep(0.2)
        time.sleep(max(0.0, runs[0].stop_at_epoch - 6 - time.time()))
        link.down.rate = 2_000.0

    threading.Thread(target=choke_before_the_stop, daemon=True).start()
    # 0.08 USD at 0.001 USD/s buys 80 s: the plan's stop at 50 s, the switch at 65 s.
    cmd = [sys.executable, "-m", "orchestrator.cli.main", "launch", "--provider", "loopback", "--yes",
           "--budgets", str(slow_link["budgets"]), "--max-usd", "0.08", "--sync-interval", "2",
           "--set", "max_iters=1000000", "--set", "ckpt_interval_s=3", "--set", "model=tiny", "--set", "n_embd=128"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=dict(os.environ), capture_output=True, text=True, timeout=240)
    out = proc.stdout + proc.stderr
    assert proc.returncode == Exit.RUN_FAILED, out
    assert "the final checkpoint did not come home" in out and "newest at home: ckpt-" in out, out
    (run,) = ledger.list_runs()
    names = [e.phase for e in ledger.events(run.run_id)]
    assert "final_checkpoint_missing" in names
    # Cut at its deadline, or never begun: the stop itself, over the choked link, ran to the switch's time.
    finals = [e.payload for e in ledger.events(run.run_id) if e.phase == "sync" and e.payload.get("final")]
    assert not finals or finals[-1]["complete"] is False or finals[-1]["latest_home"] is False
    # What the periodic pulls brought is still there, verified: an earlier checkpoint, not the last one.
    manifest = json.loads((Path(run.run_dir) / "out" / "checkpoints" / "MANIFEST.json").read_text())
    assert manifest["checkpoints"] and "ckpt-" in manifest["latest"]
    from tests.fakes.loopback_provider import LoopbackProvider

    assert LoopbackProvider().get(f"lb-{run.run_id}").state == "terminated"
    assert run.phase == "verified" and run.cost_usd is not None and run.cost_usd <= 0.08
    assert LoopbackProvider().meter_usd() <= 0.08
    card = (Path(run.run_dir) / "EVIDENCE.md").read_text()
    assert "final checkpoint did not come home" in card
