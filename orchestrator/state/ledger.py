"""The ledger: every run, instance, phase change, card hold and shutdown proof, in SQLite.

The lifecycle writes its intent here BEFORE acting (write-ahead), so a controller killed at any
point can be resumed or torn down by a later command. A phase moves only along
`orchestrator.state.phases.ALLOWED_TRANSITIONS` (`set_phase` refuses anything else). This module
holds the runs and their events; the file and its transactions are `state.db`, the tables
`state.schema`, and instances, holds and proofs their own stores (`state.instances`,
`state.holds`, `state.proofs`).

Nothing secret is stored: JSON payloads (events, plans, instance info) and error texts go through
`orchestrator.redact.redact` first.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from orchestrator.redact import redact
from orchestrator.state import phases
from orchestrator.state.db import BUSY_TIMEOUT_S, Database, default_home, ensure_home
from orchestrator.state.endings import Ending
from orchestrator.state.events import EventKind
from orchestrator.state.holds import HoldStore
from orchestrator.state.instances import InstanceStore
from orchestrator.state.phases import Phase, TransitionError
from orchestrator.state.proofs import ProofStore
from orchestrator.state.rows import RUN_FIELDS, Event, InstanceRow, Run, run_from_row
from orchestrator.state.schema import SCHEMA_VERSION
from orchestrator.state.values import LedgerError, check_usd, dumps, loads

# Importable from here as before: callers name orchestrator.state.ledger for all of these.
__all__ = ["BUSY_TIMEOUT_S", "SCHEMA_VERSION", "Database", "Event", "InstanceRow", "Ledger", "LedgerError",
           "Run", "default_home", "ensure_home"]

# The phase changes only through set_phase, which checks the transition and writes its event.
_UPDATABLE = frozenset(RUN_FIELDS) - {"run_id", "phase"}
_CLOSED_PHASES = tuple(p.value for p in Phase if not p.is_open())
_REDACTED_TEXT = ("error", "end_reason", "billed_source")


def _check_phase(phase: str) -> Phase:
    try:
        return phases.parse(phase)
    except ValueError as exc:
        raise LedgerError(str(exc)) from None


def _check_ending(ending: Ending | str | None) -> str | None:
    if ending is None:
        return None
    try:
        return Ending(ending).value
    except ValueError:
        raise LedgerError(f"unknown ending {ending!r}: use one of {', '.join(e.value for e in Ending)}") from None


def _column_value(name: str, value: Any, stored_plan: str) -> Any:
    """What update_run writes into column `name` for `value`."""
    if name == "plan":
        merged = loads(stored_plan)
        merged.update(value or {})
        return dumps(merged)
    if name in ("settled", "billed_complete") and value is not None:
        return int(bool(value))
    if name in _REDACTED_TEXT and value is not None:
        return redact(str(value))
    if name == "ending":
        return _check_ending(value)
    return value


class Ledger(InstanceStore, HoldStore, ProofStore, Database):
    """SQLite ledger under GPURUN_HOME. Safe to share between threads and processes."""

    # ---- runs --------------------------------------------------------------------------------

    def create_run(self, run_id: str, provider: str, max_usd: float, plan: dict[str, Any], run_dir: str) -> Run:
        max_usd = check_usd("max_usd", max_usd)
        now = time.time()
        with self.transaction() as conn:
            if conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone():
                raise LedgerError(f"run {run_id!r} already exists in the ledger: pick another run id")
            conn.execute(
                "INSERT INTO runs (run_id, provider, phase, created_at, updated_at, max_usd, run_dir, plan)"
                " VALUES (?, ?, 'planned', ?, ?, ?, ?, ?)",
                (run_id, provider, now, now, max_usd, str(run_dir), dumps(plan or {})),
            )
            self._insert_event(conn, run_id, now, "planned", True, {"max_usd": max_usd, "provider": provider})
        run = self.get_run(run_id)
        assert run is not None
        return run

    def get_run(self, run_id: str) -> Run | None:
        row = self._conn().execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return run_from_row(row) if row else None

    def resolve_run(self, ref: str | None) -> Run:
        """The run `ref` names: its id, a unique prefix of it, or (None) the newest run."""
        conn = self._conn()
        if ref is None:
            row = conn.execute("SELECT * FROM runs ORDER BY created_at DESC, rowid DESC LIMIT 1").fetchone()
            if row is None:
                raise LedgerError("no runs in the ledger yet (start one with `gpurun launch`)")
            return run_from_row(row)
        row = conn.execute("SELECT * FROM runs WHERE run_id = ?", (ref,)).fetchone()
        if row is not None:
            return run_from_row(row)
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
        return run_from_row(rows[0])

    def list_runs(self, open_only: bool = False) -> list[Run]:
        sql = "SELECT * FROM runs"
        args: tuple[str, ...] = ()
        if open_only:
            sql += f" WHERE phase NOT IN ({', '.join('?' * len(_CLOSED_PHASES))})"
            args = _CLOSED_PHASES
        sql += " ORDER BY created_at DESC, rowid DESC"
        return [run_from_row(r) for r in self._conn().execute(sql, args).fetchall()]

    def update_run(self, run_id: str, /, *, ending: Ending | None = None, **fields_: Any) -> None:
        """Set run fields (not the phase: see set_phase). `ending` is how the run ended; `end_reason`
        stays the human message ("deadline: budget guard")."""
        if "phase" in fields_:
            raise LedgerError("the phase changes only through set_phase (it checks the transition)")
        unknown = sorted(set(fields_) - _UPDATABLE)
        if unknown:
            raise LedgerError(f"cannot update run field(s) {', '.join(unknown)}: not a field, or run_id")
        if fields_.get("end_reason") is not None and ending is None:
            raise LedgerError("an end_reason is recorded with its ending (orchestrator.state.endings.Ending)")
        if ending is not None:
            fields_["ending"] = ending
        with self.transaction() as conn:
            row = conn.execute("SELECT plan FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is None:
                raise LedgerError(f"no run {run_id!r} in the ledger (see `gpurun status`)")
            values = {name: _column_value(name, value, row["plan"]) for name, value in fields_.items()}
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
            (run_id, when, phase, int(is_phase), dumps(payload)),
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
                    (phase, now, redact(str(payload["error"])), run_id),
                )
            else:
                conn.execute("UPDATE runs SET phase = ?, updated_at = ? WHERE run_id = ?", (phase, now, run_id))

    def record_event(self, run_id: str, kind: EventKind | str, **payload: Any) -> None:
        """Record a non-phase event (a plain str kind is still accepted while callers move to EventKind)."""
        kind = kind.value if isinstance(kind, EventKind) else kind
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
        return [Event(r["run_id"], r["time"], r["phase"], loads(r["payload"])) for r in rows]

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
