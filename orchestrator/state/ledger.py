"""The ledger: every run, instance, phase change, card hold and shutdown proof, in SQLite or PostgreSQL.

The lifecycle writes its intent here BEFORE acting (write-ahead), so a controller killed at any
point can be resumed or torn down by a later command. A phase moves only along
`orchestrator.state.phases.ALLOWED_TRANSITIONS` (`set_phase` refuses anything else). This module
holds the runs and their events; the database and its transactions are `state.db` (the engine
`state.engine`), the tables `state.tables` (migrated by `state.schema`), and instances, holds and
proofs their own stores (`state.instances`, `state.holds`, `state.proofs`).

Nothing secret is stored: JSON payloads (events, plans, instance info) and error texts go through
`orchestrator.redact.redact` first.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Connection, func, insert, select, update

from orchestrator import settings
from orchestrator.redact import redact
from orchestrator.state import phases
from orchestrator.state.db import BUSY_TIMEOUT_S, Database, default_home, ensure_home
from orchestrator.state.endings import Ending
from orchestrator.state.events import EventKind
from orchestrator.state.holds import HoldStore
from orchestrator.state.instances import InstanceStore
from orchestrator.state.journal import JournalStore, journaled, remembered
from orchestrator.state.phases import Phase, TransitionError
from orchestrator.state.proofs import ProofStore
from orchestrator.state.rows import RUN_FIELDS, Event, InstanceRow, Run, run_from_row
from orchestrator.state.schema import SCHEMA_VERSION
from orchestrator.state.tables import events, holds, runs
from orchestrator.state.values import LedgerError, LedgerUnavailable, check_usd, dumps, loads

# Importable from here as before: callers name orchestrator.state.ledger for all of these.
__all__ = ["BUSY_TIMEOUT_S", "SCHEMA_VERSION", "Database", "Event", "InstanceRow", "Ledger", "LedgerError",
           "LedgerUnavailable", "Run", "default_home", "ensure_home"]

# The phase changes only through set_phase, which checks the transition and writes its event.
_UPDATABLE = frozenset(RUN_FIELDS) - {"run_id", "phase"}
_CLOSED_PHASES = tuple(p.value for p in Phase if not p.is_open())
_REDACTED_TEXT = ("error", "end_reason", "billed_source")
_NEWEST_FIRST = (runs.c.created_at.desc(), runs.c.run_id.desc())
ME = object()  # create_run's default person: whoever runs this process (settings.person)


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


class Ledger(JournalStore, InstanceStore, HoldStore, ProofStore, Database):
    """The ledger (SQLite file, or a team's PostgreSQL). Safe to share between threads and processes."""

    # ---- runs --------------------------------------------------------------------------------

    def create_run(self, run_id: str, provider: str, max_usd: float, plan: dict[str, Any], run_dir: str, *,
                   person: str | None | object = ME, pool: str | None = None) -> Run:
        """A new run in phase planned. `person`: who launched it (default: whoever the run's hold
        names, taken by the launch just before, else GPURUN_USER / the login name; None for an orphan
        nobody owns); `pool`: the budgets.yaml pool it holds against (default: its hold's)."""
        max_usd = check_usd("max_usd", max_usd)
        now = time.time()
        with self.transaction() as conn:
            if conn.execute(select(runs.c.run_id).where(runs.c.run_id == run_id)).first():
                raise LedgerError(f"run {run_id!r} already exists in the ledger: pick another run id")
            held = conn.execute(select(holds.c.person, holds.c.pool).where(holds.c.run_id == run_id)).first()
            if person is ME:
                who = held.person if held is not None and held.person else settings.person()
                pool = pool if pool is not None or held is None else held.pool
            else:
                who = person
            conn.execute(insert(runs).values(
                run_id=run_id, provider=provider, phase="planned", created_at=now, updated_at=now, max_usd=max_usd,
                run_dir=str(run_dir), plan=dumps(plan or {}), person=who, pool=pool))
            self._insert_event(conn, run_id, now, "planned", True, {"max_usd": max_usd, "provider": provider})
        run = self.get_run(run_id)
        assert run is not None
        return run

    @remembered("run")
    def get_run(self, run_id: str) -> Run | None:
        with self.reading() as conn:
            row = conn.execute(select(runs).where(runs.c.run_id == run_id)).mappings().first()
        return run_from_row(row) if row else None

    def resolve_run(self, ref: str | None) -> Run:
        """The run `ref` names: its id, a unique prefix of it, or (None) the newest run."""
        with self.reading() as conn:
            if ref is None:
                row = conn.execute(select(runs).order_by(*_NEWEST_FIRST).limit(1)).mappings().first()
                if row is None:
                    raise LedgerError("no runs in the ledger yet (start one with `gpurun launch`)")
                return run_from_row(row)
            row = conn.execute(select(runs).where(runs.c.run_id == ref)).mappings().first()
            if row is not None:
                return run_from_row(row)
            # startswith(autoescape): % and _ in `ref` are literal; a case-sensitive match on both engines.
            rows = conn.execute(select(runs).where(runs.c.run_id.startswith(ref, autoescape=True))
                                .order_by(*_NEWEST_FIRST)).mappings().all()
        rows = [r for r in rows if r["run_id"].startswith(ref)]  # SQLite's LIKE ignores ASCII case
        if not rows:
            raise LedgerError(f"no run matches {ref!r} (see `gpurun status`)")
        if len(rows) > 1:
            shown = ", ".join(r["run_id"] for r in rows[:5]) + (", ..." if len(rows) > 5 else "")
            raise LedgerError(f"{ref!r} is ambiguous: it matches {shown} (give more of the run id)")
        return run_from_row(rows[0])

    def list_runs(self, open_only: bool = False, person: str | None = None) -> list[Run]:
        """Every run, newest first (`open_only`: not yet verified gone; `person`: launched by them)."""
        query = select(runs)
        if open_only:
            query = query.where(runs.c.phase.not_in(_CLOSED_PHASES))
        if person is not None:
            query = query.where(runs.c.person == person)
        with self.reading() as conn:
            rows = conn.execute(query.order_by(*_NEWEST_FIRST)).mappings().all()
        return [run_from_row(r) for r in rows]

    @journaled
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
            plan = conn.execute(select(runs.c.plan).where(runs.c.run_id == run_id)).scalar()
            if plan is None:
                raise LedgerError(f"no run {run_id!r} in the ledger (see `gpurun status`)")
            values = {name: _column_value(name, value, plan) for name, value in fields_.items()}
            values.setdefault("updated_at", time.time())
            conn.execute(update(runs).where(runs.c.run_id == run_id).values(**values))

    # ---- events ------------------------------------------------------------------------------

    @staticmethod
    def _insert_event(
        conn: Connection, run_id: str, when: float, phase: str, is_phase: bool, payload: dict[str, Any]
    ) -> None:
        conn.execute(insert(events).values(run_id=run_id, time=when, phase=phase, is_phase=int(is_phase),
                                           payload=dumps(payload)))

    @journaled
    def set_phase(self, run_id: str, phase: str | Phase, *, at: float | None = None, **payload: Any) -> None:
        """Move the run to `phase` and record the event; a transition the lifecycle does not allow
        (orchestrator.state.phases.ALLOWED_TRANSITIONS) is refused with LedgerError and changes nothing.
        `at`: when it happened, for a change written late (a controller's queue, `state.journal`)."""
        target = _check_phase(phase)
        phase = target.value
        now = time.time() if at is None else float(at)
        with self.transaction() as conn:
            current = conn.execute(select(runs.c.phase).where(runs.c.run_id == run_id)).scalar()
            if current is None:
                raise LedgerError(f"no run {run_id!r} in the ledger (see `gpurun status`)")
            try:  # read and write in one transaction: two controllers cannot both pass the check
                phases.check_transition(current, target)
            except TransitionError as exc:
                raise LedgerError(f"run {run_id}: {exc}") from None
            self._insert_event(conn, run_id, now, phase, True, payload)
            values: dict[str, Any] = {"phase": phase, "updated_at": now}
            if target.is_failed() and payload.get("error") is not None:
                values["error"] = redact(str(payload["error"]))
            conn.execute(update(runs).where(runs.c.run_id == run_id).values(**values))

    @journaled
    def record_event(self, run_id: str, kind: EventKind | str, *, at: float | None = None, **payload: Any) -> None:
        """Record a non-phase event (a plain str kind is still accepted while callers move to EventKind).
        `at`: when it happened, for an event written late (a controller's queue, `state.journal`)."""
        kind = kind.value if isinstance(kind, EventKind) else kind
        if phases.is_phase(kind):
            raise LedgerError(f"{kind!r} is a phase: record it with set_phase so timings stay right")
        if not kind:
            raise LedgerError("an event needs a kind, e.g. 'sync' or 'guard'")
        with self.transaction() as conn:
            self._require_run(conn, run_id)
            self._insert_event(conn, run_id, time.time() if at is None else float(at), kind, False, payload)

    @remembered("events")
    def events(self, run_id: str) -> list[Event]:
        query = select(events.c.run_id, events.c.time, events.c.phase, events.c.payload)
        with self.reading() as conn:
            rows = conn.execute(query.where(events.c.run_id == run_id).order_by(events.c.id)).all()
        return [Event(r.run_id, r.time, r.phase, loads(r.payload)) for r in rows]

    def timings(self, run_id: str) -> list[tuple[str, float, float]]:
        """(phase, start epoch, seconds in it) for each phase event, in order.

        A phase lasts until the next phase event; the last one until now while the run is open,
        or until the run's last event of any kind once it is closed.
        """
        with self.reading() as conn:
            run = self.get_run(run_id)
            if run is None:
                raise LedgerError(f"no run {run_id!r} in the ledger (see `gpurun status`)")
            rows = conn.execute(select(events.c.phase, events.c.time)
                                .where(events.c.run_id == run_id, events.c.is_phase == 1).order_by(events.c.id)).all()
            last = conn.execute(select(func.max(events.c.time)).where(events.c.run_id == run_id)).scalar()
        if not rows:
            return []
        end = time.time() if run.open else last
        out: list[tuple[str, float, float]] = []
        for i, row in enumerate(rows):
            stop = rows[i + 1].time if i + 1 < len(rows) else end
            out.append((row.phase, row.time, max(0.0, stop - row.time)))
        return out
