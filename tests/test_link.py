"""The reserve sized from the measured link (orchestrator/run/link.py, orchestrator/run/syncing.py):
the estimate's arithmetic, the guard's stop moved earlier (never later), the warning, `status`,
the outcome of a run whose final checkpoint did not come home, and the cost counted to the end
of billing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator.cli.main import main
from orchestrator.plan.launch import make_plan
from orchestrator.plan.options import LaunchOptions
from orchestrator.proof.shutdown import TerminateRequest, billing_ended_at
from orchestrator.run import link
from orchestrator.run.controller import Controller
from orchestrator.run.outcome import final_checkpoint_missing, judge_final_checkpoint
from orchestrator.run.stop import End, StopKind
from orchestrator.run.syncing import link_status
from orchestrator.state.endings import Ending
from orchestrator.state.events import EventKind
from orchestrator.state.ledger import Ledger
from orchestrator.state.rows import Event
from orchestrator.transport.protocol import SyncResult

MB = 1_000_000


def test_the_estimate_plans_the_final_pull_from_the_pulls_it_saw() -> None:
    est = link.LinkEstimate()
    assert est.rate_bps is None and est.final_pull_s is None  # nothing measured: the plan's stop stands
    est.add(1_000, 0.5)  # a pull that moved only the logs: its time is the fixed cost, not the rate
    est.add(4 * MB, 10.5)
    est.add(4 * MB, 9.5)
    est.checkpoint_bytes = 8 * MB
    assert est.rate_bps == pytest.approx(8 * MB / 20.0)
    assert est.overhead_s == 0.5
    assert est.final_pull_s == pytest.approx(0.5 + link.SAFETY * 20.0)
    # The window the reserve leaves: switch (stop + 15 s) - grace 7.5 s - margin.
    assert link.pull_window_s(1000.0, 1015.0, 7.5) == pytest.approx(15 - 7.5 - link.MARGIN_S)
    stop = link.stop_for(1000.0, 1015.0, 7.5, est.final_pull_s)
    assert stop == pytest.approx(1015.0 - link.MARGIN_S - 7.5 - est.final_pull_s)
    assert link.stop_for(1000.0, 1015.0, 7.5, 1.0) == 1000.0  # a fast link never moves it later
    assert link.sync_line(est.rate_bps, est.final_pull_s) == "sync 400.0 kB/s, final pull ~26 s"


def local_controller(tmp_path: Path) -> Controller:
    from orchestrator.run.boot import create_head

    plan = make_plan(LaunchOptions(provider="local", max_usd=0.05, usd_per_hour=1.2, runs_dir=str(tmp_path / "runs")))
    ctl = Controller.create(Ledger(), plan)
    create_head(ctl.ctx, ctl.group)
    return ctl


def write_home_manifest(run_dir: Path, size: int) -> None:
    ckpt = run_dir / "out" / "checkpoints"
    ckpt.mkdir(parents=True, exist_ok=True)
    (ckpt / "MANIFEST.json").write_text(json.dumps({"latest": "ckpt-000010.pt", "checkpoints": [
        {"file": "ckpt-000010.pt", "step": 10, "sha256": "0" * 64, "bytes": size, "time": 1.0}]}))


def test_a_slow_link_moves_the_guards_stop_earlier_warns_once_and_status_shows_it(tmp_path: Path) -> None:
    ctl = local_controller(tmp_path)
    ctx = ctl.ctx
    plan_stop = ctx.run.stop_at_epoch
    assert plan_stop is not None and ctx.stop_at() == plan_stop
    write_home_manifest(ctl.run_dir, 50 * MB)
    # A fast pull: 50 MB in 1 s; the final pull fits in what the reserve leaves it.
    ctl.syncing._record(SyncResult(files=1, bytes=50 * MB, seconds=1.0, method="rsync"), final=False)
    assert ctx.stop_at() == plan_stop and ctx.sync_line.startswith("sync 50.0 MB/s")
    # The link slows to 0.5 MB/s: 50 MB needs ~125 s more than the window; the stop moves earlier.
    for _ in range(5):
        ctl.syncing._record(SyncResult(files=1, bytes=5 * MB, seconds=10.0, method="rsync"), final=False)
    moved = ctx.stop_at()
    assert moved is not None and moved < plan_stop - 60
    events = ctx.ledger.events(ctx.run_id)
    assert [e.phase for e in events].count(EventKind.LINK_TOO_SLOW.value) == 1  # warned once
    warning = next(e.payload for e in events if e.phase == EventKind.LINK_TOO_SLOW.value)
    assert "reserve_s" in warning["message"] and warning["final_pull_s"] > warning["window_s"]
    # A faster pull afterwards never moves it back later.
    ctl.syncing._record(SyncResult(files=1, bytes=50 * MB, seconds=1.0, method="rsync"), final=False)
    assert ctx.stop_at() == moved
    # `gpurun status` reads the same from the ledger; a guard taking the run over starts from it.
    stop, line = link_status(ctx.ledger.events(ctx.run_id), plan_stop)
    assert stop == moved and "final pull ~" in line
    shown = CliRunner().invoke(main, ["status"])
    # The column and its cell ("1.7 MB/s, final pull ~44 s") wrap on a narrow console.
    assert shown.exit_code == 0 and all(w in shown.output for w in ("link", "home", "MB/s", "final")), shown.output
    assert Controller.load(ctx.ledger, ctx.refresh()).ctx.stop_at() == moved
    # The guard stops at the moved time and says why.
    ctx.guard_stop_at = 0.0
    stop_now = ctl.watch._asked("")
    assert stop_now is not None and stop_now.kind is StopKind.ENDED and stop_now.end is not None
    assert stop_now.end.ending is Ending.DEADLINE and "before the plan's stop time" in stop_now.end.reason
    ctl.teardown()


def sync_event(**payload: object) -> Event:
    return Event("r", 0.0, EventKind.SYNC.value, {"final": True, **payload})


def test_a_final_checkpoint_that_did_not_come_home_is_named() -> None:
    assert final_checkpoint_missing([]) == "no final pull was made"
    cut = final_checkpoint_missing([sync_event(complete=False, error="CutOff: the final sync still pulling")])
    assert cut is not None and "did not finish" in cut and "CutOff" in cut
    bad = final_checkpoint_missing([sync_event(complete=True, latest="ckpt-000020.pt", latest_home=False)])
    assert bad is not None and "ckpt-000020.pt" in bad
    assert final_checkpoint_missing([sync_event(complete=True, latest="ckpt-000020.pt", latest_home=True)]) is None
    assert final_checkpoint_missing([sync_event(bytes=10)]) is None  # a ledger from before these fields


def test_a_clean_end_without_the_final_checkpoint_home_fails_the_run(tmp_path: Path) -> None:
    ctl = local_controller(tmp_path)
    ctx = ctl.ctx
    write_home_manifest(ctl.run_dir, 10)
    ctx.event(EventKind.SYNC, final=True, complete=False, error="PullDeadline: rsync still moving")
    deadline = End.because(Ending.DEADLINE, "budget guard")
    failed = judge_final_checkpoint(ctx, deadline, None)
    assert failed is not None and failed.ending is Ending.RUN_FAILED
    assert "final checkpoint did not come home" in failed.reason and "ckpt-000010.pt" in failed.reason
    assert judge_final_checkpoint(ctx, End.job_ended(3), 3) is None  # a failed job already fails
    ctl.teardown()


def test_the_cost_is_counted_to_the_accepted_terminate_call_not_the_verification() -> None:
    reqs = [TerminateRequest("a", 100.0, {"ok": True}, responded_at=101.0),
            TerminateRequest("a", 110.0, {"ok": True}, responded_at=111.0),  # asked again while polling
            TerminateRequest("b", 100.0, None, error="busy", responded_at=100.5),
            TerminateRequest("b", 105.0, {"ok": True}, responded_at=106.0)]
    assert billing_ended_at(reqs, ["a", "b"], verified_at=130.0) == 106.0
    assert billing_ended_at(reqs[2:3], ["b"], verified_at=130.0) == 130.0  # never accepted: to the verification
