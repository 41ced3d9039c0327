"""What `gpurun launch` exits with (orchestrator/state/endings.py), and the stall kill, through the real
CLI on the `local` provider; plus the pieces they rest on (the table, the stall check, the ledger's
end_reason/job_exit_code columns on an old ledger)."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator.cli.main import main
from orchestrator.run import setup as run_setup
from orchestrator.run.progress import Probe, StallWatch, parse_probe
from orchestrator.state.endings import Ending, Exit, for_run
from orchestrator.state.ledger import Ledger
from orchestrator.state.rows import Run
from providers.local import LocalProvider
from tests.test_launch_local import gpurun, instances_in_ledger


def only_run() -> Run:
    (run,) = Ledger().list_runs()
    return run


def phases_of(run_id: str) -> list[str]:
    from orchestrator.state.phases import is_phase

    return [e.phase for e in Ledger().events(run_id) if is_phase(e.phase)]


def assert_verified_with_proof(run: Run) -> dict:
    assert run.phase == "verified" and phases_of(run.run_id)[-1] == "verified"
    assert len(Ledger().proofs(run.run_id)) == 1
    proof = json.loads((Path(run.run_dir) / "shutdown_proof.json").read_text())
    assert proof["verified"] is True and proof["zero_match_listing"] == []
    assert LocalProvider().get(f"local-{run.run_id}").state == "terminated"
    return proof


# --- the table --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("ending", "job_exit", "expect"),
    [
        (Ending.JOB_ENDED, 0, Exit.OK),
        (Ending.DEADLINE, 143, Exit.OK),  # the guard's clean stop of a command at the stop time
        (Ending.JOB_ENDED, 3, Exit.JOB_FAILED),
        (Ending.JOB_ENDED, None, Exit.JOB_FAILED),  # killed before it could record a status
        (Ending.STALLED, 0, Exit.STALLED),
        (Ending.LOST, None, Exit.RUN_FAILED),
        (Ending.RUN_FAILED, None, Exit.RUN_FAILED),
        (Ending.DATA_FAILED, None, Exit.RUN_FAILED),
        (Ending.PREEMPTED, None, Exit.RUN_FAILED),
        (Ending.REQUESTED, None, Exit.OK),
    ],
)
def test_a_runs_end_maps_to_one_exit_code(ending: Ending, job_exit: int | None, expect: Exit) -> None:
    assert for_run(ending, job_exit) is expect


# --- the stall check --------------------------------------------------------------------------------
def test_the_stall_check_watches_steps_for_the_trainer_and_output_for_a_command() -> None:
    probe = parse_probe("  120\n" + "\n".join(json.dumps(r) for r in [
        {"type": "step", "step": 7, "loss": 2.5, "tokens_per_s": 10.0}, {"type": "eval", "step": 7}]) + "\n")
    assert probe.log_bytes == 120 and probe.step == 7 and probe.metrics["loss"] == 2.5
    assert parse_probe("\n") == Probe(None, {})

    trainer = StallWatch(60, by_step=True, now=0)
    assert not trainer.look(Probe(10), now=0)  # start-up: output counts until a first step
    assert not trainer.look(Probe(20), now=50)
    assert not trainer.look(Probe(30, {"step": 1}), now=100)
    assert not trainer.look(Probe(90, {}), now=150)  # a tail of evals only, more output: no news
    assert trainer.look(Probe(99, {"step": 1}), now=161)  # output grew, but no new step for 61 s

    command = StallWatch(60, by_step=False, now=0)
    assert not command.look(Probe(0, {"step": 5}), now=0)
    assert not command.look(Probe(0, {"step": 6}), now=59)  # a command is judged by its output
    assert command.look(Probe(0, {"step": 7}), now=60) and command.what == "output"


# --- the ledger keeps how a run ended ---------------------------------------------------------------
def test_a_ledger_written_before_the_end_columns_opens_and_gains_them(gpurun_home: Path) -> None:
    db = gpurun_home / "ledger.db"
    conn = sqlite3.connect(db)
    conn.executescript(
        "CREATE TABLE runs (run_id TEXT PRIMARY KEY, provider TEXT NOT NULL, phase TEXT NOT NULL,"
        " created_at REAL NOT NULL, updated_at REAL NOT NULL, max_usd REAL NOT NULL, usd_per_hour REAL,"
        " clock_start_epoch REAL, deadline_epoch REAL, stop_at_epoch REAL, cost_usd REAL,"
        " settled INTEGER NOT NULL DEFAULT 0, run_dir TEXT NOT NULL DEFAULT '', plan TEXT NOT NULL DEFAULT '{}',"
        " error TEXT, controller_pid INTEGER);"
        "INSERT INTO runs (run_id, provider, phase, created_at, updated_at, max_usd)"
        " VALUES ('20250101-000000-aaaa', 'local', 'verified', 1, 1, 1);"
        "PRAGMA user_version = 1;"
    )
    conn.close()
    ledger = Ledger()
    old = ledger.resolve_run("20250101-000000-aaaa")
    assert old.end_reason is None and old.job_exit_code is None
    ledger.update_run(old.run_id, end_reason="stalled: no new step for 1 min", ending=Ending.STALLED, job_exit_code=143)
    again = Ledger().resolve_run(old.run_id)
    assert (again.end_reason, again.job_exit_code) == ("stalled: no new step for 1 min", 143)


# --- through the CLI --------------------------------------------------------------------------------
def test_a_job_that_exits_non_zero_fails_the_launch_in_one_line_after_a_verified_teardown(tmp_path: Path) -> None:
    res = gpurun("launch", "--max-usd", "1", "--usd-per-hour", "1.2", "--yes",
                 "--", sys.executable, "-c", "import sys; print('about to fail'); sys.exit(3)", cwd=tmp_path)
    assert res.returncode == Exit.JOB_FAILED, res.stdout + res.stderr
    run = only_run()
    job_log = Path(run.run_dir) / "job.log"
    lines = [line for line in res.stderr.splitlines() if "exit 3" in line]
    assert len(lines) == 1 and str(job_log) in lines[0], res.stderr
    assert "about to fail" in job_log.read_text()  # the log it names came home
    assert_verified_with_proof(run)
    assert run.job_exit_code == 3 and run.end_reason == "job ended (exit 3)"
    card = (Path(run.run_dir) / "EVIDENCE.md").read_text()
    assert "the job failed (exit 3)" in card


def test_a_job_without_progress_is_stopped_as_stalled_far_below_the_cap(tmp_path: Path) -> None:
    res = gpurun("launch", "--max-usd", "1", "--usd-per-hour", "1.2", "--stall-minutes", "0.05", "--yes",
                 "--", "sh", "-c", "sleep 100000", cwd=tmp_path)
    assert res.returncode == Exit.STALLED, res.stdout + res.stderr
    run = only_run()
    assert "stalled: no new output for 0.05 min" in res.stderr and str(Path(run.run_dir) / "job.log") in res.stderr
    assert_verified_with_proof(run)
    assert run.end_reason == "stalled: no new output for 0.05 min"
    # In order: the job started, then the stall stopped it (its SIGTERM ends sleep), synced, verified.
    events = Ledger().events(run.run_id)
    kinds = [e.phase for e in events]
    assert kinds.index("job_started") < kinds.index("stopping") < kinds.index("syncing_final") < kinds.index("verified")
    assert next(e for e in events if e.phase == "stopping").payload["reason"].startswith(str(Ending.STALLED))
    assert run.cost_usd is not None and run.cost_usd < 0.1 * run.max_usd  # far below the cap
    listed = gpurun("status", "--all", cwd=tmp_path)
    assert run.run_id in listed.stdout and "stalled" in listed.stdout, listed.stdout
    card = (Path(run.run_dir) / "EVIDENCE.md").read_text()
    assert "| ended | stalled: no new output for 0.05 min" in card


def test_a_job_the_on_instance_switch_stopped_as_stalled_is_reported_stalled(tmp_path: Path) -> None:
    # What the switch leaves when it stall-kills a job while the controller is away: its reason file
    # in the run root (cwd of the job is root/code) and a job that ended. The guard must say stalled.
    res = gpurun("launch", "--max-usd", "1", "--usd-per-hour", "1.2", "--yes",
                 "--", "sh", "-c", "echo stalled > ../watchdog.reason; exit 143", cwd=tmp_path)
    assert res.returncode == Exit.STALLED, res.stdout + res.stderr
    run = only_run()
    assert run.end_reason is not None and run.end_reason.startswith("stalled: stopped by the on-instance switch")
    assert_verified_with_proof(run)


def test_a_run_that_breaks_before_its_job_ends_exits_run_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_a: object, **_k: object) -> None:
        raise RuntimeError("no python on the instance")

    monkeypatch.setattr(run_setup, "bootstrap", broken)
    result = CliRunner().invoke(main, ["launch", "--max-usd", "1", "--usd-per-hour", "1.2", "--yes",
                                       "--", "true"])
    assert result.exit_code == Exit.RUN_FAILED, result.output
    assert "no python on the instance" in result.output
    run = only_run()
    assert_verified_with_proof(run)
    assert run.end_reason is not None and run.end_reason.startswith(str(Ending.RUN_FAILED))


def test_a_refusal_before_anything_is_created_exits_refused() -> None:
    result = CliRunner().invoke(main, ["launch", "--max-usd", "-1", "--yes"])
    assert result.exit_code == Exit.REFUSED, result.output
    assert instances_in_ledger() == 0
