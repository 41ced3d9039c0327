"""The typed end of a run (runs.ending, schema 4), Run.phase as a Phase, and the event kinds."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from orchestrator.state.endings import Ending, Exit, for_run
from orchestrator.state.events import EventKind
from orchestrator.state.ledger import Ledger
from orchestrator.state.phases import Phase
from orchestrator.state.schema import SCHEMA_VERSION
from orchestrator.state.values import LedgerError
from tests.legacy_ledger import write_schema_4_ledger
from tests.test_imports import graph


def test_a_schema_3_ledger_gains_ending_filled_from_end_reason(gpurun_home: Path) -> None:
    conn = write_schema_4_ledger(gpurun_home / "ledger.db", version=3)  # what a schema-3 gpurun left
    for run_id, reason in (("a", "deadline: budget guard"), ("b", "job ended (exit 3)"), ("c", "odd words"),
                           ("d", None)):
        conn.execute("INSERT INTO runs (run_id, provider, phase, created_at, updated_at, max_usd, end_reason)"
                     " VALUES (?, 'local', 'verified', 1, 1, 1, ?)", (run_id, reason))
    conn.close()
    ledger = Ledger()
    got = {r.run_id: r.ending for r in ledger.list_runs()}
    assert got == {"a": Ending.DEADLINE, "b": Ending.JOB_ENDED, "c": None, "d": None}
    with sqlite3.connect(ledger.path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5


@pytest.mark.usefixtures("ledger_engine")  # both engines: SQLite and PostgreSQL
def test_update_run_stores_the_typed_ending_beside_the_message() -> None:
    ledger = Ledger()
    ledger.create_run("r", "local", 1.0, {}, "/tmp/x")
    ledger.update_run("r", end_reason="deadline: budget guard", ending=Ending.DEADLINE, job_exit_code=143)
    run = ledger.get_run("r")
    assert run is not None and run.ending is Ending.DEADLINE and run.end_reason == "deadline: budget guard"
    assert for_run(run.ending, run.job_exit_code) is Exit.OK
    with pytest.raises(LedgerError, match="with its ending"):  # nothing reads an ending out of the words
        ledger.update_run("r", end_reason="stalled: no new step for 1 min")
    with pytest.raises(LedgerError, match="unknown ending"):
        ledger.update_run("r", ending="sideways")  # type: ignore[arg-type]


def test_for_run_reads_the_typed_ending() -> None:
    assert for_run(Ending.JOB_ENDED, 0) is Exit.OK
    assert for_run(Ending.JOB_ENDED, None) is Exit.JOB_FAILED
    assert for_run(Ending.PREEMPTED, None) is Exit.RUN_FAILED
    assert for_run(Ending.STALLED, 0) is Exit.STALLED
    assert for_run(None, None) is Exit.OK


@pytest.mark.usefixtures("ledger_engine")  # both engines: SQLite and PostgreSQL
def test_run_phase_is_a_phase_that_reads_as_its_name() -> None:
    ledger = Ledger()
    run = ledger.create_run("r", "local", 1.0, {}, "/tmp/x")
    assert run.phase is Phase.PLANNED and run.phase == "planned"
    assert f"{run.phase}|{run.phase:>8}|{run.ending}" == "planned| planned|None"
    assert json.dumps({"phase": run.phase, "ending": Ending.DEADLINE}) == '{"phase": "planned", "ending": "deadline"}'


@pytest.mark.usefixtures("ledger_engine")  # both engines: SQLite and PostgreSQL
def test_record_event_takes_an_event_kind() -> None:
    ledger = Ledger()
    ledger.create_run("r", "local", 1.0, {}, "/tmp/x")
    ledger.record_event("r", EventKind.SYNC, files=1)
    ledger.record_event("r", "error", message="a plain str kind still works")
    assert [e.phase for e in ledger.events("r")] == ["planned", "sync", "error"]
    assert f"{EventKind.HANDOFF}" == str(EventKind.HANDOFF) == "handoff"
    assert not any(Phase._value2member_map_.get(k.value) for k in EventKind)  # no kind is a phase


def test_budgets_file_does_not_import_the_notifier() -> None:
    assert "orchestrator.notify" not in graph()["orchestrator.money.budgets_file"]
