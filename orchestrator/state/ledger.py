"""The ledger: every run, instance, phase change, card hold and shutdown proof, in SQLite.

One file, `$GPURUN_HOME/ledger.db` (WAL mode), shared by every gpurun process on the machine. The
lifecycle writes its intent here BEFORE acting (write-ahead), so a controller killed at any point
can be resumed or torn down by a later command. Read-modify-write sequences run inside
`Ledger.transaction()`, which takes SQLite's write lock up front (BEGIN IMMEDIATE): two launches
checking the same budget cap are serialised instead of both seeing the old total. A phase moves
only along `orchestrator.state.phases.ALLOWED_TRANSITIONS` (`set_phase` refuses anything else).

Nothing secret is stored: JSON payloads (events, plans, instance info) and error texts go through
`orchestrator.redact.redact` first.
"""

from __future__ import annotations

import json
import math
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from orchestrator import settings
from orchestrator.redact import redact
from orchestrator.state import phases
from orchestrator.state.phases import Phase, TransitionError

SCHEMA_VERSION = 3  # 2: runs.end_reason, runs.job_exit_code; 3: the provider's billed figure (reconciliation)
BUSY_TIMEOUT_S = 30.0

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id            TEXT PRIMARY KEY,
    provider          TEXT NOT NULL,
    phase             TEXT NOT NULL,
    created_at        REAL NOT NULL,
    updated_at        REAL NOT NULL,
    max_usd           REAL NOT NULL,
    usd_per_hour      REAL,
    clock_start_epoch REAL,
    deadline_epoch    REAL,
    stop_at_epoch     REAL,
    cost_usd          REAL,
    settled           INTEGER NOT NULL DEFAULT 0,
    run_dir           TEXT NOT NULL DEFAULT '',
    plan              TEXT NOT NULL DEFAULT '{}',
    error             TEXT,
    controller_pid    INTEGER,
    end_reason        TEXT,
    job_exit_code     INTEGER,
    billed_usd        REAL,
    billed_source     TEXT,
    billed_complete   INTEGER,
    reconciled_at     REAL
);
CREATE INDEX IF NOT EXISTS runs_created ON runs(created_at);

CREATE TABLE IF NOT EXISTS events (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id   TEXT NOT NULL,
    time     REAL NOT NULL,
    phase    TEXT NOT NULL,          -- a phase name, or the kind of a non-phase event
    is_phase INTEGER NOT NULL,
    payload  TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS events_run ON events(run_id, id);

CREATE TABLE IF NOT EXISTS instances (
    instance_id   TEXT PRIMARY KEY,
    run_id        TEXT NOT NULL,
    provider      TEXT NOT NULL,
    state         TEXT NOT NULL,
    info          TEXT NOT NULL DEFAULT '{}',
    created_at    REAL NOT NULL,
    updated_at    REAL NOT NULL,
    host_key_type TEXT,
    host_key      TEXT
);
CREATE INDEX IF NOT EXISTS instances_run ON instances(run_id);

-- One row per run that reserved money: the open hold until settled, then the actual cost.
CREATE TABLE IF NOT EXISTS holds (
    run_id      TEXT PRIMARY KEY,
    provider    TEXT NOT NULL,
    held_usd    REAL NOT NULL,
    created_at  REAL NOT NULL,
    settled_usd REAL,
    settled_at  REAL
);
CREATE INDEX IF NOT EXISTS holds_created ON holds(created_at);

CREATE TABLE IF NOT EXISTS proofs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id      TEXT NOT NULL,
    sha256      TEXT NOT NULL,
    path        TEXT NOT NULL,
    prev_sha256 TEXT,
    created_at  REAL NOT NULL
);
"""


class LedgerError(Exception):
    """A ledger operation was refused; the message is one line a user can act on."""


@dataclass
class Run:
    run_id: str
    provider: str
    phase: str
    created_at: float
    updated_at: float
    max_usd: float
    usd_per_hour: float | None = None
    clock_start_epoch: float | None = None
    deadline_epoch: float | None = None
    stop_at_epoch: float | None = None
    cost_usd: float | None = None
    settled: bool = False
    run_dir: str = ""
    plan: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    controller_pid: int | None = None
    end_reason: str | None = None  # why the run ended (orchestrator.state.endings.Ending leads it)
    job_exit_code: int | None = None  # the job's own exit status, once it has ended
    # Reconciliation: what the provider itself says the run cost (None: not asked, or no figure),
    # where that figure comes from, whether it is final, and when it was last asked.
    billed_usd: float | None = None
    billed_source: str | None = None
    billed_complete: bool | None = None
    reconciled_at: float | None = None

    @property
    def open(self) -> bool:
        return Phase(self.phase).is_open()

    @property
    def failed(self) -> bool:
        return Phase(self.phase).is_failed()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Event:
    run_id: str
    time: float
    phase: str
    payload: dict[str, Any]


@dataclass
class InstanceRow:
    run_id: str
    provider: str
    instance_id: str
    state: str
    info: dict[str, Any]
    created_at: float
    updated_at: float
    host_key_type: str | None = None
    host_key: str | None = None


_RUN_FIELDS = tuple(f.name for f in fields(Run))
# The phase changes only through set_phase, which checks the transition and writes its event.
_UPDATABLE = frozenset(_RUN_FIELDS) - {"run_id", "phase"}
_CLOSED_PHASES = tuple(p.value for p in Phase if not p.is_open())


def default_home() -> Path:
    """$GPURUN_HOME, else ~/.gpurun."""
    return settings.home()


def ensure_home(home: Path) -> Path:
    """Create the home directory 0700 (it holds keys and the ledger) if it is missing."""
    if not home.is_dir():
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(home, 0o700)  # mkdir's mode is filtered by the umask
    return home


def _redact(obj: Any) -> Any:
    return redact(obj)


def _json_default(obj: Any) -> Any:
    if is_dataclass(obj) and not isinstance(obj, type):
        return asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if isinstance(obj, bytes):
        return f"<{len(obj)} bytes>"
    return str(obj)


def _dumps(obj: Any) -> str:
    # Round-trip through JSON first so the redactor sees plain dicts/lists/strings only.
    plain = json.loads(json.dumps(obj, default=_json_default))
    return json.dumps(_redact(plain), sort_keys=True, default=_json_default)


def _loads(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    value = json.loads(text)
    return value if isinstance(value, dict) else {"value": value}


def _check_phase(phase: str) -> Phase:
    try:
        return phases.parse(phase)
    except ValueError as exc:
        raise LedgerError(str(exc)) from None


def _check_usd(name: str, usd: float) -> float:
    try:
        value = float(usd)
    except (TypeError, ValueError):
        raise LedgerError(f"{name} must be a number of USD, got {usd!r}") from None
    if isinstance(usd, bool) or not math.isfinite(value) or value < 0:
        raise LedgerError(f"{name} must be a finite number of USD >= 0, got {usd!r}")
    return value


# Columns added after schema 1: a ledger written before them gets them on open (NULL for old runs).
_ADDED_RUN_COLUMNS = (("end_reason", "TEXT"), ("job_exit_code", "INTEGER"), ("billed_usd", "REAL"),
                      ("billed_source", "TEXT"), ("billed_complete", "INTEGER"), ("reconciled_at", "REAL"))


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    have = {row["name"] for row in conn.execute("PRAGMA table_info(runs)").fetchall()}
    for name, kind in _ADDED_RUN_COLUMNS:
        if name not in have:
            conn.execute(f"ALTER TABLE runs ADD COLUMN {name} {kind}")


class Ledger:
    """SQLite ledger under GPURUN_HOME. Safe to share between threads and processes."""

    def __init__(self, home: Path | None = None) -> None:
        self.home = ensure_home(Path(home).expanduser() if home is not None else default_home())
        self.path = self.home / "ledger.db"
        if not self.path.exists():
            # Pre-create 0600: SQLite gives the -wal/-shm files the same mode as the database.
            os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
        self._local = threading.local()
        self._init_schema()

    # ---- connections and transactions -------------------------------------------------------

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

    def _init_schema(self) -> None:
        with self.transaction() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise LedgerError(
                    f"{self.path} was written by a newer gpurun (schema {version}): upgrade gpurun"
                )
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    conn.execute(stmt)
            _add_missing_columns(conn)
            if version < SCHEMA_VERSION:
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # ---- runs --------------------------------------------------------------------------------

    @staticmethod
    def _row_to_run(row: sqlite3.Row) -> Run:
        data = dict(row)
        data["settled"] = bool(data["settled"])
        data["plan"] = _loads(data["plan"])
        if data.get("billed_complete") is not None:
            data["billed_complete"] = bool(data["billed_complete"])
        return Run(**data)

    def _require_run(self, conn: sqlite3.Connection, run_id: str) -> None:
        if conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is None:
            raise LedgerError(f"no run {run_id!r} in the ledger (see `gpurun status`)")

    def create_run(self, run_id: str, provider: str, max_usd: float, plan: dict[str, Any], run_dir: str) -> Run:
        max_usd = _check_usd("max_usd", max_usd)
        now = time.time()
        with self.transaction() as conn:
            if conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone():
                raise LedgerError(f"run {run_id!r} already exists in the ledger: pick another run id")
            conn.execute(
                "INSERT INTO runs (run_id, provider, phase, created_at, updated_at, max_usd, run_dir, plan)"
                " VALUES (?, ?, 'planned', ?, ?, ?, ?, ?)",
                (run_id, provider, now, now, max_usd, str(run_dir), _dumps(plan or {})),
            )
            self._insert_event(conn, run_id, now, "planned", True, {"max_usd": max_usd, "provider": provider})
        run = self.get_run(run_id)
        assert run is not None
        return run

    def get_run(self, run_id: str) -> Run | None:
        row = self._conn().execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return self._row_to_run(row) if row else None

    def resolve_run(self, ref: str | None) -> Run:
        conn = self._conn()
        if ref is None:
            row = conn.execute("SELECT * FROM runs ORDER BY created_at DESC, rowid DESC LIMIT 1").fetchone()
            if row is None:
                raise LedgerError("no runs in the ledger yet (start one with `gpurun launch`)")
            return self._row_to_run(row)
        row = conn.execute("SELECT * FROM runs WHERE run_id = ?", (ref,)).fetchone()
        if row is not None:
            return self._row_to_run(row)
        escaped = ref.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        rows = conn.execute(
            "SELECT * FROM runs WHERE run_id LIKE ? ESCAPE '\\' ORDER BY created_at DESC", (escaped + "%",)
        ).fetchall()
        # LIKE is case-insensitive for ASCII; run ids are lower case, so keep exact-prefix matches only.
        rows = [r for r in rows if r["run_id"].startswith(ref)]
        if not rows:
            raise LedgerError(f"no run matches {ref!r} (see `gpurun status`)")
        if len(rows) > 1:
            shown = ", ".join(r["run_id"] for r in rows[:5]) + (", ..." if len(rows) > 5 else "")
            raise LedgerError(f"{ref!r} is ambiguous: it matches {shown} (give more of the run id)")
        return self._row_to_run(rows[0])

    def list_runs(self, open_only: bool = False) -> list[Run]:
        sql = "SELECT * FROM runs"
        args: tuple[str, ...] = ()
        if open_only:
            sql += f" WHERE phase NOT IN ({', '.join('?' * len(_CLOSED_PHASES))})"
            args = _CLOSED_PHASES
        sql += " ORDER BY created_at DESC, rowid DESC"
        return [self._row_to_run(r) for r in self._conn().execute(sql, args).fetchall()]

    def update_run(self, run_id: str, /, **fields_: Any) -> None:
        if "phase" in fields_:
            raise LedgerError("the phase changes only through set_phase (it checks the transition)")
        unknown = sorted(set(fields_) - _UPDATABLE)
        if unknown:
            raise LedgerError(f"cannot update run field(s) {', '.join(unknown)}: not a field, or run_id")
        with self.transaction() as conn:
            row = conn.execute("SELECT plan FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is None:
                raise LedgerError(f"no run {run_id!r} in the ledger (see `gpurun status`)")
            values: dict[str, Any] = {}
            for name, value in fields_.items():
                if name == "plan":
                    merged = _loads(row["plan"])
                    merged.update(value or {})
                    value = _dumps(merged)
                elif name in ("settled", "billed_complete") and value is not None:
                    value = int(bool(value))
                elif name in ("error", "end_reason", "billed_source") and value is not None:
                    value = _redact(str(value))
                values[name] = value
            values.setdefault("updated_at", time.time())
            assignments = ", ".join(f"{name} = ?" for name in values)
            conn.execute(f"UPDATE runs SET {assignments} WHERE run_id = ?", (*values.values(), run_id))

    # ---- events ------------------------------------------------------------------------------

    @staticmethod
    def _insert_event(
        conn: sqlite3.Connection, run_id: str, when: float, phase: str, is_phase: bool, payload: dict[str, Any]
    ) -> None:
        conn.execute(
            "INSERT INTO events (run_id, time, phase, is_phase, payload) VALUES (?, ?, ?, ?, ?)",
            (run_id, when, phase, int(is_phase), _dumps(payload)),
        )

    def set_phase(self, run_id: str, phase: str | Phase, **payload: Any) -> None:
        """Move the run to `phase` and record the event; a transition the lifecycle does not allow
        (orchestrator.state.phases.ALLOWED_TRANSITIONS) is refused with LedgerError and changes nothing."""
        target = _check_phase(phase)
        phase = target.value
        now = time.time()
        with self.transaction() as conn:
            row = conn.execute("SELECT phase FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is None:
                raise LedgerError(f"no run {run_id!r} in the ledger (see `gpurun status`)")
            try:  # read and write in one transaction: two controllers cannot both pass the check
                phases.check_transition(row["phase"], target)
            except TransitionError as exc:
                raise LedgerError(f"run {run_id}: {exc}") from None
            self._insert_event(conn, run_id, now, phase, True, payload)
            if target.is_failed() and payload.get("error") is not None:
                conn.execute(
                    "UPDATE runs SET phase = ?, updated_at = ?, error = ? WHERE run_id = ?",
                    (phase, now, _redact(str(payload["error"])), run_id),
                )
            else:
                conn.execute("UPDATE runs SET phase = ?, updated_at = ? WHERE run_id = ?", (phase, now, run_id))

    def record_event(self, run_id: str, kind: str, **payload: Any) -> None:
        if phases.is_phase(kind):
            raise LedgerError(f"{kind!r} is a phase: record it with set_phase so timings stay right")
        if not kind:
            raise LedgerError("an event needs a kind, e.g. 'sync' or 'guard'")
        with self.transaction() as conn:
            self._require_run(conn, run_id)
            self._insert_event(conn, run_id, time.time(), kind, False, payload)

    def events(self, run_id: str) -> list[Event]:
        rows = self._conn().execute(
            "SELECT run_id, time, phase, payload FROM events WHERE run_id = ? ORDER BY id", (run_id,)
        ).fetchall()
        return [Event(r["run_id"], r["time"], r["phase"], _loads(r["payload"])) for r in rows]

    def timings(self, run_id: str) -> list[tuple[str, float, float]]:
        """(phase, start epoch, seconds in it) for each phase event, in order.

        A phase lasts until the next phase event; the last one until now while the run is open,
        or until the run's last event of any kind once it is closed.
        """
        conn = self._conn()
        run = self.get_run(run_id)
        if run is None:
            raise LedgerError(f"no run {run_id!r} in the ledger (see `gpurun status`)")
        rows = conn.execute(
            "SELECT phase, time FROM events WHERE run_id = ? AND is_phase = 1 ORDER BY id", (run_id,)
        ).fetchall()
        if not rows:
            return []
        if run.open:
            end = time.time()
        else:
            end = conn.execute("SELECT MAX(time) FROM events WHERE run_id = ?", (run_id,)).fetchone()[0]
        out: list[tuple[str, float, float]] = []
        for i, row in enumerate(rows):
            stop = rows[i + 1]["time"] if i + 1 < len(rows) else end
            out.append((row["phase"], row["time"], max(0.0, stop - row["time"])))
        return out

    # ---- instances ---------------------------------------------------------------------------

    @staticmethod
    def _row_to_instance(row: sqlite3.Row) -> InstanceRow:
        return InstanceRow(
            run_id=row["run_id"],
            provider=row["provider"],
            instance_id=row["instance_id"],
            state=row["state"],
            info=_loads(row["info"]),
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            host_key_type=row["host_key_type"],
            host_key=row["host_key"],
        )

    def add_instance(
        self, run_id: str, provider: str, instance_id: str, state: str, info: dict[str, Any] | None = None
    ) -> None:
        """Record an instance for a run. Re-adding it for the same run (a resumed create) updates it."""
        now = time.time()
        with self.transaction() as conn:
            self._require_run(conn, run_id)
            row = conn.execute("SELECT run_id, info FROM instances WHERE instance_id = ?", (instance_id,)).fetchone()
            if row is not None:
                if row["run_id"] != run_id:
                    raise LedgerError(
                        f"instance {instance_id!r} already belongs to run {row['run_id']!r}, not {run_id!r}"
                    )
                merged = _loads(row["info"])
                merged.update(info or {})
                conn.execute(
                    "UPDATE instances SET state = ?, info = ?, updated_at = ? WHERE instance_id = ?",
                    (state, _dumps(merged), now, instance_id),
                )
                return
            conn.execute(
                "INSERT INTO instances (instance_id, run_id, provider, state, info, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (instance_id, run_id, provider, state, _dumps(info or {}), now, now),
            )

    def update_instance(self, instance_id: str, state: str | None = None, info: dict[str, Any] | None = None) -> None:
        """Set the state and/or merge `info` into the stored info."""
        with self.transaction() as conn:
            row = conn.execute("SELECT info FROM instances WHERE instance_id = ?", (instance_id,)).fetchone()
            if row is None:
                raise LedgerError(f"no instance {instance_id!r} in the ledger")
            merged = _loads(row["info"])
            merged.update(info or {})
            conn.execute(
                "UPDATE instances SET state = COALESCE(?, state), info = ?, updated_at = ? WHERE instance_id = ?",
                (state, _dumps(merged), time.time(), instance_id),
            )

    def instances(self, run_id: str) -> list[InstanceRow]:
        rows = self._conn().execute(
            "SELECT * FROM instances WHERE run_id = ? ORDER BY created_at, rowid", (run_id,)
        ).fetchall()
        return [self._row_to_instance(r) for r in rows]

    def instance_owner(self, instance_id: str) -> str | None:
        row = self._conn().execute("SELECT run_id FROM instances WHERE instance_id = ?", (instance_id,)).fetchone()
        return row["run_id"] if row else None

    def pin_host_key(self, instance_id: str, key_type: str, key_b64: str) -> None:
        """Trust on first use: pin the key; pinning a DIFFERENT key later is refused."""
        with self.transaction() as conn:
            row = conn.execute(
                "SELECT host_key_type, host_key FROM instances WHERE instance_id = ?", (instance_id,)
            ).fetchone()
            if row is None:
                raise LedgerError(f"no instance {instance_id!r} in the ledger: add it before pinning its host key")
            if row["host_key"] is not None:
                if (row["host_key_type"], row["host_key"]) == (key_type, key_b64):
                    return
                raise LedgerError(
                    f"instance {instance_id!r} already has a different pinned host key ({row['host_key_type']}):"
                    " refusing to replace it (possible man-in-the-middle)"
                )
            conn.execute(
                "UPDATE instances SET host_key_type = ?, host_key = ?, updated_at = ? WHERE instance_id = ?",
                (key_type, key_b64, time.time(), instance_id),
            )

    def host_key(self, instance_id: str) -> tuple[str, str] | None:
        row = self._conn().execute(
            "SELECT host_key_type, host_key FROM instances WHERE instance_id = ?", (instance_id,)
        ).fetchone()
        if row is None or row["host_key"] is None:
            return None
        return row["host_key_type"], row["host_key"]

    # ---- money: holds and settlement ---------------------------------------------------------

    def add_hold(self, run_id: str, provider: str, usd: float, at: float | None = None) -> None:
        """Hold `usd` against the account caps for this run (like a card hold).

        Holding again for the same unsettled run replaces the hold (a resumed launch); a settled
        run cannot be held again.
        """
        usd = _check_usd("hold", usd)
        when = time.time() if at is None else float(at)
        with self.transaction() as conn:
            row = conn.execute("SELECT settled_at FROM holds WHERE run_id = ?", (run_id,)).fetchone()
            if row is not None and row["settled_at"] is not None:
                raise LedgerError(f"run {run_id!r} is already settled: it cannot hold money again")
            conn.execute(
                "INSERT INTO holds (run_id, provider, held_usd, created_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(run_id) DO UPDATE SET provider = excluded.provider,"
                " held_usd = excluded.held_usd, created_at = excluded.created_at",
                (run_id, provider, usd, when),
            )

    def settle(self, run_id: str, actual_usd: float) -> None:
        """Release the run's hold and record what it really cost (settling again corrects it)."""
        actual = _check_usd("actual cost", actual_usd)
        now = time.time()
        with self.transaction() as conn:
            run = conn.execute("SELECT provider, created_at FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            hold = conn.execute("SELECT 1 FROM holds WHERE run_id = ?", (run_id,)).fetchone()
            if run is None and hold is None:
                raise LedgerError(f"no run {run_id!r} in the ledger (see `gpurun status`)")
            if hold is None:
                # Settled without a hold (e.g. caps were off): still count the money it cost.
                conn.execute(
                    "INSERT INTO holds (run_id, provider, held_usd, created_at) VALUES (?, ?, 0, ?)",
                    (run_id, run["provider"], run["created_at"]),
                )
            conn.execute(
                "UPDATE holds SET settled_usd = ?, settled_at = ? WHERE run_id = ?", (actual, now, run_id)
            )
            conn.execute(
                "UPDATE runs SET cost_usd = ?, settled = 1, updated_at = ? WHERE run_id = ?", (actual, now, run_id)
            )

    def committed_usd(
        self, since_epoch: float, provider: str | None = None, exclude_run: str | None = None
    ) -> float:
        """Open holds + settled costs of holds made at/after `since_epoch` (optionally one provider).

        `exclude_run` leaves one run out: a resumed launch re-holding must not count itself twice.
        """
        sql = (
            "SELECT COALESCE(SUM(CASE WHEN settled_at IS NULL THEN held_usd ELSE settled_usd END), 0)"
            " FROM holds WHERE created_at >= ?"
        )
        args: list[Any] = [since_epoch]
        if provider is not None:
            sql += " AND provider = ?"
            args.append(provider)
        if exclude_run is not None:
            sql += " AND run_id != ?"
            args.append(exclude_run)
        return float(self._conn().execute(sql, args).fetchone()[0])

    def hold(self, run_id: str) -> dict[str, Any] | None:
        """The run's hold row: {run_id, provider, held_usd, created_at, settled_usd, settled_at}."""
        row = self._conn().execute("SELECT * FROM holds WHERE run_id = ?", (run_id,)).fetchone()
        return dict(row) if row else None

    def spend_by(self, group: str = "day") -> list[dict[str, Any]]:
        """Rows {key, provider, runs, cost_usd, held_usd} grouped by local day, month or provider.

        cost_usd sums settled costs, held_usd the holds still open. Newest key first for day/month.
        """
        if group not in ("day", "month", "provider"):
            raise LedgerError(f"cannot group spend by {group!r}: use day, month or provider")
        conn = self._conn()
        entries: list[tuple[float, str, float, float]] = []  # (created_at, provider, cost, held)
        for r in conn.execute("SELECT * FROM holds").fetchall():
            if r["settled_at"] is None:
                entries.append((r["created_at"], r["provider"], 0.0, r["held_usd"]))
            else:
                entries.append((r["created_at"], r["provider"], r["settled_usd"], 0.0))
        for r in conn.execute(
            "SELECT created_at, provider, cost_usd FROM runs WHERE run_id NOT IN (SELECT run_id FROM holds)"
        ).fetchall():
            entries.append((r["created_at"], r["provider"], r["cost_usd"] or 0.0, 0.0))
        groups: dict[tuple[str, str], dict[str, Any]] = {}
        for created, prov, cost, held in entries:
            if group == "provider":
                key = prov
            else:
                fmt = "%Y-%m-%d" if group == "day" else "%Y-%m"
                key = datetime.fromtimestamp(created).strftime(fmt)  # local time, as the caps are
            row = groups.setdefault(
                (key, prov), {"key": key, "provider": prov, "runs": 0, "cost_usd": 0.0, "held_usd": 0.0}
            )
            row["runs"] += 1
            row["cost_usd"] += cost
            row["held_usd"] += held
        rows = list(groups.values())
        if group == "provider":
            rows.sort(key=lambda r: r["provider"])
        else:
            rows.sort(key=lambda r: (r["key"], r["provider"]))
            rows.sort(key=lambda r: r["key"], reverse=True)
        return rows

    # ---- shutdown proofs (a hash chain) ------------------------------------------------------

    def last_proof_sha256(self) -> str | None:
        row = self._conn().execute("SELECT sha256 FROM proofs ORDER BY id DESC LIMIT 1").fetchone()
        return row["sha256"] if row else None

    def add_proof(self, run_id: str, sha256: str, path: str, prev_sha256: str | None) -> None:
        """Append a proof. `prev_sha256` must be the current chain head, so the chain never forks."""
        for name, value in (("sha256", sha256), ("prev_sha256", prev_sha256)):
            if value is not None and not _SHA256_RE.match(value):
                raise LedgerError(f"{name} must be 64 lower-case hex digits, got {value!r}")
        with self.transaction() as conn:
            row = conn.execute("SELECT sha256 FROM proofs ORDER BY id DESC LIMIT 1").fetchone()
            head = row["sha256"] if row else None
            if prev_sha256 != head:
                raise LedgerError(
                    f"proof for run {run_id!r} chains to {prev_sha256!r} but the ledger's last proof is"
                    f" {head!r}: rewrite the proof with the current last_proof_sha256()"
                )
            conn.execute(
                "INSERT INTO proofs (run_id, sha256, path, prev_sha256, created_at) VALUES (?, ?, ?, ?, ?)",
                (run_id, sha256, str(path), prev_sha256, time.time()),
            )

    def proofs(self, run_id: str | None = None) -> list[dict[str, Any]]:
        """Proof rows {run_id, sha256, path, prev_sha256, created_at} in chain order."""
        sql = "SELECT run_id, sha256, path, prev_sha256, created_at FROM proofs"
        args: tuple[Any, ...] = ()
        if run_id is not None:
            sql += " WHERE run_id = ?"
            args = (run_id,)
        return [dict(r) for r in self._conn().execute(sql + " ORDER BY id", args).fetchall()]
