"""The ledger's database: where it lives, one connection per thread, and transactions.

By default one SQLite file, `$GPURUN_HOME/ledger.db` (WAL mode), shared by every gpurun process on
the machine; with GPURUN_LEDGER (or budgets.yaml's `ledger:`) a PostgreSQL database shared by a team
(`state.engine`). Read-modify-write sequences run inside `transaction()`, which takes the ledger's
write lock up front (SQLite: BEGIN IMMEDIATE; PostgreSQL: the lock row, SELECT ... FOR UPDATE): two
launches checking the same budget cap, on one machine or two, are serialised instead of both seeing
the old total. Reads run in `reading()`, a short transaction of their own (or the caller's).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, Engine, RootTransaction, exc, select

from orchestrator import settings
from orchestrator.state import engine as engines
from orchestrator.state.engine import BUSY_TIMEOUT_S, WRITE
from orchestrator.state.schema import migrate
from orchestrator.state.tables import ledger_lock, runs
from orchestrator.state.values import LedgerError, LedgerUnavailable

__all__ = ["BUSY_TIMEOUT_S", "Database", "default_home", "ensure_home"]

_AT_HEAD: set[tuple[object, ...]] = set()  # the databases this process has found (or brought) at the head revision


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
    """The ledger's database (SQLite file or PostgreSQL). Safe to share between threads and processes.

    `url`: a postgresql:// URL; None reads GPURUN_LEDGER / budgets.yaml's ledger:, else ledger.db.
    """

    def __init__(self, home: Path | None = None, url: str | None = None) -> None:
        self.home = ensure_home(Path(home).expanduser() if home is not None else default_home())
        # An explicit URL is checked like GPURUN_LEDGER (SettingsError: one line, no password).
        self.url = settings.ledger_url({settings.LEDGER: url}) if url is not None else engines.configured_url(self.home)
        self.shared = engines.is_postgres(self.url)
        if self.url is not None and self.url.startswith("sqlite:///"):
            self.path = Path(self.url[len("sqlite:///"):]).expanduser()
        else:
            self.path = self.home / "ledger.db"  # the SQLite file (unused while the ledger is shared)
        self.where = engines.shown(self.url) if self.shared else str(self.path)
        if not self.shared and not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Pre-create 0600: SQLite gives the -wal/-shm files the same mode as the database.
            os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
        self._local = threading.local()
        ready = self._identity()
        if ready not in _AT_HEAD:  # once per database and process: a CLI opens its ledger many times
            with self._begin(write=True, lock=False) as conn:
                migrate(conn, self.where)
            _AT_HEAD.add(ready)

    def _identity(self) -> tuple[object, ...]:
        """This database, as far as this process can tell (a SQLite file made again is another one)."""
        if self.shared:
            return (self.url, os.getpid())
        st = self.path.stat()
        return (str(self.path), st.st_dev, st.st_ino, os.getpid())

    def _engine(self) -> Engine:
        return engines.postgres_engine(self.url) if self.shared else engines.sqlite_engine(self.path)  # type: ignore[arg-type]

    def _conn(self) -> Connection:
        # One connection per thread and process: neither sqlite3 nor psycopg connections are fork-safe.
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid() or conn.closed:
            try:
                conn = self._engine().connect()
            except exc.DBAPIError as err:
                raise self._unavailable(err) from None
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

    def _unavailable(self, err: BaseException) -> LedgerError:
        """A connection-level failure as one line; the thread's connection is dropped to reconnect later."""
        self._local.conn = None
        detail = str(getattr(err, "orig", err)).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return LedgerUnavailable(f"the ledger at {self.where} cannot be reached ({detail}):"
                                 " check the database server, or GPURUN_LEDGER")

    def _start(self, write: bool, lock: bool) -> tuple[Connection, RootTransaction]:
        """Begin a transaction and run its first statement; a connection the server dropped since its
        last use (a restart) is replaced once, so only a server that is really away counts as one."""
        for attempt in (0, 1):
            conn = self._conn()
            conn.info[WRITE] = write
            try:
                tx = conn.begin()
                if self.shared and write and lock:  # the ledger's write lock (see the module's doc)
                    conn.execute(select(ledger_lock.c.id).where(ledger_lock.c.id == 1).with_for_update())
                elif self.shared:
                    conn.exec_driver_sql("SELECT 1")
                return conn, tx
            except (exc.OperationalError, exc.InterfaceError) as err:
                if not (self.shared or err.connection_invalidated):
                    raise
                conn.invalidate()
                self._local.conn = None
                if attempt:
                    raise self._unavailable(err) from None
        raise AssertionError("unreachable")

    @contextmanager
    def _begin(self, write: bool, lock: bool = True) -> Iterator[Connection]:
        """A transaction on this thread's connection; nested calls join the outer one."""
        conn = self._conn()
        if self._local.depth > 0:
            self._local.depth += 1
            try:
                yield conn
            finally:
                self._local.depth -= 1
            return
        conn, tx = self._start(write, lock)
        self._local.depth = 1
        try:
            yield conn
            tx.commit()
        except (exc.OperationalError, exc.InterfaceError) as err:
            if not (self.shared or err.connection_invalidated):
                _rollback(tx)
                raise
            conn.invalidate()
            raise self._unavailable(err) from None
        except BaseException:
            _rollback(tx)
            raise
        finally:
            self._local.depth = 0

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A write transaction holding the ledger's write lock: COMMIT, or ROLLBACK on error."""
        with self._begin(write=True) as conn:
            yield conn

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        """A read: its own short transaction, or the caller's open one (it then sees its writes)."""
        with self._begin(write=False) as conn:
            yield conn

    def _require_run(self, conn: Connection, run_id: str) -> None:
        if conn.execute(select(runs.c.run_id).where(runs.c.run_id == run_id)).first() is None:
            raise LedgerError(f"no run {run_id!r} in the ledger (see `gpurun status`)")


def _rollback(tx: RootTransaction) -> None:
    if tx.is_active:  # SQLite may already have rolled back (e.g. disk full)
        tx.rollback()
