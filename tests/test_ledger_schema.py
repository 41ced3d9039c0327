"""The ledger's schema: one definition, Alembic migrations from the last pre-Alembic SQLite schema
(4), and which database a ledger opens (ledger.db, GPURUN_LEDGER, budgets.yaml's `ledger:`)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from orchestrator.settings import SettingsError, ledger_url
from orchestrator.state import schema, tables
from orchestrator.state.endings import Ending
from orchestrator.state.ledger import Ledger
from orchestrator.state.values import LedgerError, LedgerUnavailable
from tests.fixtures.postgres import Cluster
from tests.legacy_ledger import write_schema_4_ledger

SHA = "a" * 64


def test_a_schema_4_ledger_migrates_in_place_and_keeps_everything(gpurun_home: Path) -> None:
    conn = write_schema_4_ledger(gpurun_home / "ledger.db")
    conn.executescript(f"""
        INSERT INTO runs (run_id, provider, phase, created_at, updated_at, max_usd, cost_usd, settled, run_dir,
                          plan, end_reason, ending, billed_usd)
            VALUES ('20250101-000000-aaaa', 'aws', 'verified', 10, 20, 3.0, 1.25, 1, '/r/a', '{{"gpu": "A10G"}}',
                    'deadline: budget guard', 'deadline', 1.2);
        INSERT INTO events (run_id, time, phase, is_phase, payload) VALUES ('20250101-000000-aaaa', 11, 'planned', 1, '{{}}');
        INSERT INTO events (run_id, time, phase, is_phase, payload) VALUES ('20250101-000000-aaaa', 12, 'sync', 0, '{{"bytes": 5}}');
        INSERT INTO instances (instance_id, run_id, provider, state, info, created_at, updated_at, host_key_type, host_key)
            VALUES ('i-1', '20250101-000000-aaaa', 'aws', 'terminated', '{{}}', 10, 20, 'ssh-ed25519', 'AAAA');
        INSERT INTO holds (run_id, provider, held_usd, created_at, settled_usd, settled_at)
            VALUES ('20250101-000000-aaaa', 'aws', 3.0, 10, 1.25, 20);
        INSERT INTO proofs (run_id, sha256, path, prev_sha256, created_at) VALUES ('20250101-000000-aaaa', '{SHA}', '/r/a/p.json', NULL, 20);
    """)
    conn.close()
    ledger = Ledger()
    run = ledger.get_run("20250101-000000-aaaa")
    assert run is not None and run.phase == "verified" and run.plan == {"gpu": "A10G"} and run.cost_usd == 1.25
    assert run.ending is Ending.DEADLINE and run.billed_usd == 1.2 and run.person is None and run.pool is None
    assert [(e.phase, e.payload) for e in ledger.events(run.run_id)] == [("planned", {}), ("sync", {"bytes": 5})]
    assert ledger.host_key("i-1") == ("ssh-ed25519", "AAAA")
    assert ledger.committed_usd(0.0, "aws") == 1.25 and ledger.last_proof_sha256() == SHA
    with sqlite3.connect(ledger.path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION
        assert raw.execute("SELECT version_num FROM alembic_version").fetchone()[0] == schema.HEAD_REVISION
    # New runs go on beside the old ones, with their person.
    ledger.create_run("new", "local", 1.0, {}, "/r/new", person="ana")
    assert [r.person for r in ledger.list_runs()] == ["ana", None]


def test_the_head_revision_is_the_newest_migration_and_the_tables_match_it(gpurun_home: Path) -> None:
    config = Config()
    config.set_main_option("script_location", str(Path(schema.__file__).parent / "migrations"))
    assert ScriptDirectory.from_config(config).get_current_head() == schema.HEAD_REVISION
    ledger = Ledger()  # migrated from nothing: the same columns as the one definition in state/tables.py
    with ledger.reading() as conn:
        found = {t: {c["name"] for c in inspect(conn).get_columns(t)} for t in tables.metadata.tables}
    assert found == {name: set(t.columns.keys()) for name, t in tables.metadata.tables.items()}


def test_a_ledger_from_a_newer_gpurun_is_refused(gpurun_home: Path) -> None:
    write_schema_4_ledger(gpurun_home / "ledger.db", version=9).close()
    with pytest.raises(LedgerError, match="written by a newer gpurun \\(schema 9\\): upgrade gpurun"):
        Ledger()


def test_which_database_a_ledger_opens(gpurun_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       pg_cluster: Cluster) -> None:
    monkeypatch.delenv("GPURUN_LEDGER", raising=False)
    monkeypatch.chdir(tmp_path)
    assert not Ledger().shared  # nothing said: ledger.db under GPURUN_HOME
    url = pg_cluster.new_database()
    (gpurun_home / "budgets.yaml").write_text(f"ledger: {url}\n")
    shared = Ledger()
    assert shared.shared and shared.where.startswith("postgresql://gpurun@127.0.0.1:")
    shared.create_run("r", "local", 1.0, {}, "/r")
    other = pg_cluster.new_database()
    monkeypatch.setenv("GPURUN_LEDGER", other)  # the variable wins over budgets.yaml
    assert Ledger().get_run("r") is None
    monkeypatch.setenv("GPURUN_LEDGER", "mysql://root:hunter2@db/x")
    with pytest.raises(SettingsError) as err:
        Ledger()
    assert "hunter2" not in str(err.value) and "expected postgresql://" in str(err.value)
    assert ledger_url({"GPURUN_LEDGER": url}) == url


def test_a_server_that_does_not_answer_is_one_line_without_the_password(gpurun_home: Path) -> None:
    from tests.fixtures.sshd import free_port

    url = f"postgresql://gpurun:s3cret-pw@127.0.0.1:{free_port()}/gpurun"
    with pytest.raises(LedgerUnavailable) as err:
        Ledger(url=url)
    text = str(err.value)
    assert "s3cret-pw" not in text and "cannot be reached" in text and "\n" not in text
