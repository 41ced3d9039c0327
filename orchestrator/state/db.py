"""The ledger's SQLite file: where it lives, one connection per thread, and transactions.

One file, `$GPURUN_HOME/ledger.db` (WAL mode), shared by every gpurun process on the machine.
Read-modify-write sequences run inside `transaction()`, which takes SQLite's write lock up front
(BEGIN IMMEDIATE): two launches checking the same budget cap are serialised instead of both
seeing the old total.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from orchestrator import settings
from orchestrator.state.schema import migrate
from orchestrator.state.values import LedgerError

BUSY_TIMEOUT_S = 30.0


def default_home() -> Path:
    """$GPURUN_HOME, else ~/.gpurun."""
    return settings.home()


def ensure_home(home: Path) -> Path:
    """Create the home directory 0700 (it holds keys and the ledger) if it is missing."""
    if not home.is_dir():
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(home, 0o700)  # mkdir's mode is filtered by the umask
    return home


class Database:
    """The SQLite file under GPURUN_HOME. Safe to share between threads and processes."""

    def __init__(self, home: Path | None = None) -> None:
        self.home = ensure_home(Path(home).expanduser() if home is not None else default_home())
        self.path = self.home / "ledger.db"
        if not self.path.exists():
            # Pre-create 0600: SQLite gives the -wal/-shm files the same mode as the database.
            os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
        self._local = threading.local()
        with self.transaction() as conn:
            migrate(conn, self.path)

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions; we issue BEGIN IMMEDIATE ourselves.
        conn = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_S, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")  # money and write-ahead intent: durability first
        return conn

    def _conn(self) -> sqlite3.Connection:
        # One connection per thread and process: sqlite3 connections are neither thread- nor fork-safe.
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            conn = self._connect()
            self._local.conn = conn
            self._local.pid = os.getpid()
            self._local.depth = 0
        return conn

    def close(self) -> None:
        """Close this thread's connection (others close when their thread's Ledger is collected)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "pid", None) == os.getpid():
            conn.close()
        self._local.conn = None

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error). Nested calls join the outer transaction."""
        conn = self._conn()
        if self._local.depth > 0:
            self._local.depth += 1
            try:
                yield conn
            finally:
                self._local.depth -= 1
            return
        conn.execute("BEGIN IMMEDIATE")
        self._local.depth = 1
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # SQLite may already have rolled back (e.g. disk full)
                conn.execute("ROLLBACK")
            raise
        finally:
            self._local.depth = 0

    def _require_run(self, conn: sqlite3.Connection, run_id: str) -> None:
        if conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is None:
            raise LedgerError(f"no run {run_id!r} in the ledger (see `gpurun status`)")
