"""A running controller's ledger writes survive the database going away (a shared server down, the
network cut), and nothing is lost.

`Ledger.keep_journal(run)` (the controller's RunContext calls it) makes the run's writes (phases,
events, run fields, instances) go to the database while it answers, and otherwise into
`ledger_outbox.jsonl` under the run directory, in order, each with the time it happened; the run's
reads answer from what was last read plus what is queued. The first call after a quiet spell
(`RETRY_S`, doubling up to a minute while it stays away) that finds the database back writes the queue out, oldest first, and goes on. The guard
keeps guarding meanwhile: its deadline and stop time are in the run it already holds, and the
on-instance switch never asks the ledger. A launch does not journal: its hold and run row are one
transaction, refused (LedgerUnavailable) when the database cannot be reached.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection

from orchestrator.state.db import Database
from orchestrator.state.endings import Ending
from orchestrator.state.phases import Phase
from orchestrator.state.rows import RUN_FIELDS, Event, InstanceRow, Run
from orchestrator.state.values import LedgerError, LedgerUnavailable, dumps, loads

OUTBOX = "ledger_outbox.jsonl"
RETRY_S = 5.0  # after a failure, the database is left alone this long (doubling while it stays away)
MAX_RETRY_S = 60.0
EXIT_WAIT_S = 60.0  # a controller that ends with writes queued waits this long for the database, then leaves them
F = TypeVar("F", bound=Callable[..., Any])


class Outbox:
    """Queued writes, one JSON line each, appended and fsynced before the caller goes on."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, entry: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(dumps(entry) + "\n")  # redacted like every payload the ledger keeps
            f.flush()
            os.fsync(f.fileno())

    def entries(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def drop_first(self, n: int) -> None:
        """Forget the first `n` entries (written out); the rest stay, atomically."""
        rest = self.entries()[n:]
        if not rest:
            self.path.unlink(missing_ok=True)
            return
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in rest), encoding="utf-8")
        os.replace(tmp, self.path)


class Journal:
    """One run's queue and its last known state."""

    def __init__(self, run: Run) -> None:
        self.outbox = Outbox(Path(run.run_dir) / OUTBOX)
        self.run = run
        self.events: list[Event] = []
        self.instances: list[InstanceRow] = []
        self.down_until = 0.0
        self.failures = 0  # in a row: the wait before the next try doubles, up to MAX_RETRY_S
        self.lock = threading.RLock()

    def failed(self) -> None:
        """The database did not answer: leave it alone a while (each call to a host that drops packets
        may block for the connect timeout, and the guard must keep its pace)."""
        self.failures += 1
        self.down_until = time.monotonic() + min(MAX_RETRY_S, RETRY_S * 2 ** (self.failures - 1))

    def queue(self, op: str, run_id: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        at = time.time()
        self.outbox.append({"op": op, "run_id": run_id, "args": list(args), "kwargs": kwargs, "at": at})
        self.apply(op, run_id, args, kwargs, at)

    def apply(self, op: str, run_id: str, args: tuple[Any, ...], kwargs: dict[str, Any], at: float) -> None:
        """Keep the last known state as the database has it (or will, once the queue is out)."""
        if op == "set_phase":
            self.run = replace(self.run, phase=Phase(args[0]), updated_at=at)
            self.events.append(Event(run_id, at, Phase(args[0]).value, kwargs))
        elif op == "record_event":
            self.events.append(Event(run_id, at, str(args[0]), kwargs))
        elif op == "update_run":
            fields = {k: v for k, v in kwargs.items() if k in RUN_FIELDS and k not in ("plan", "run_id", "phase")}
            if fields.get("ending") is None:
                fields.pop("ending", None)  # update_run keeps the ending it has when given none
            else:
                fields["ending"] = Ending(fields["ending"])
            plan = {**self.run.plan, **(kwargs.get("plan") or {})}
            self.run = replace(self.run, plan=plan, **fields)


def journaled(method: F) -> F:
    """A Ledger write for one run (its first argument) that a journaled run queues while the database is away."""
    @functools.wraps(method)
    def write(self: JournalStore, run_id: str, /, *args: Any, **kwargs: Any) -> Any:
        journal = self._journal(run_id)
        if journal is None:
            return method(self, run_id, *args, **kwargs)
        with journal.lock:
            if self._reachable(journal):
                try:
                    done = method(self, run_id, *args, **kwargs)
                    journal.apply(method.__name__, run_id, args, kwargs, time.time())
                    return done
                except LedgerUnavailable:
                    journal.failed()
            journal.queue(method.__name__, run_id, args, kwargs)
            return None

    return write  # type: ignore[return-value]


def remembered(field: str) -> Callable[[F], F]:
    """A Ledger read for one run that a journaled run answers from its last known state while the database is away."""
    def wrap(method: F) -> F:
        @functools.wraps(method)
        def read(self: JournalStore, run_id: str, /, *args: Any, **kwargs: Any) -> Any:
            journal = self._journal(run_id)
            if journal is None:
                return method(self, run_id, *args, **kwargs)
            with journal.lock:
                if self._reachable(journal):
                    try:
                        value = method(self, run_id, *args, **kwargs)
                        setattr(journal, field, value)
                        return value
                    except LedgerUnavailable:
                        journal.failed()
                value = getattr(journal, field)
                return list(value) if isinstance(value, list) else value

        return read  # type: ignore[return-value]

    return wrap


class JournalStore(Database):
    def keep_journal(self, run: Run) -> None:
        """From now on, `run`'s writes that cannot reach the database are queued under its run
        directory and written when it is back (a controller's runs; see the module's doc)."""
        journals = self.__dict__.setdefault("_journals", {})
        if run.run_id not in journals:
            journals[run.run_id] = Journal(run)
            self._reachable(journals[run.run_id])  # a queue left by an earlier controller goes out first
            try:  # what the run reads while the database is away starts from here (the egress meter: its syncs)
                self.events(run.run_id)  # type: ignore[attr-defined]
                self.instances(run.run_id)  # type: ignore[attr-defined]
            except LedgerUnavailable:
                pass
            if len(journals) == 1:
                atexit.register(self.flush_journals, EXIT_WAIT_S)

    def flush_journals(self, wait_s: float = 0.0) -> int:
        """Write every queue out now, retrying for up to `wait_s` while the database is away; how many
        writes still wait (they stay in their outbox for the run's next controller or teardown)."""
        end = time.monotonic() + wait_s
        while True:
            left = 0
            for journal in list(self.__dict__.get("_journals", {}).values()):
                with journal.lock:
                    journal.down_until = 0.0
                    self._reachable(journal)
                    left += len(journal.outbox.entries())
            if not left or time.monotonic() >= end:
                return left
            time.sleep(min(1.0, RETRY_S))

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """Database.transaction, after any queue waiting to go out: what was queued happened first."""
        if getattr(self._local, "depth", 0) == 0 and not getattr(self._local, "replaying", False):
            for journal in list(self.__dict__.get("_journals", {}).values()):
                if journal.outbox.path.exists():
                    with journal.lock:
                        journal.down_until = 0.0
                        self._reachable(journal)
        with super().transaction() as conn:
            yield conn

    def pending_writes(self, run_id: str) -> int:
        """How many of the run's writes wait in its outbox for the database."""
        journal = self._journal(run_id)
        return len(journal.outbox.entries()) if journal is not None else 0

    def _journal(self, run_id: str) -> Journal | None:
        if getattr(self._local, "depth", 0) > 0:
            return None  # inside a caller's transaction: it succeeds or fails as one
        return self.__dict__.get("_journals", {}).get(run_id)

    def _reachable(self, journal: Journal) -> bool:
        """Whether to ask the database now: not within RETRY_S of a failure, and the queue written out first."""
        if time.monotonic() < journal.down_until:
            return False
        entries = journal.outbox.entries()
        for done, entry in enumerate(entries):
            try:
                self._replay(entry)
            except LedgerUnavailable:
                journal.outbox.drop_first(done)
                journal.failed()
                return False
            except LedgerError as exc:  # refused now (e.g. a transition overtaken): kept as an event
                self._replay({"op": "record_event", "run_id": entry["run_id"], "at": entry["at"],
                              "args": ["error"], "kwargs": {"message": f"queued {entry['op']} refused: {exc}"}})
        if entries:
            journal.outbox.drop_first(len(entries))
        journal.failures = 0
        return True

    def _replay(self, entry: dict[str, Any]) -> None:
        op, run_id, args, kwargs = entry["op"], entry["run_id"], entry["args"], entry["kwargs"]
        raw = getattr(type(self), op).__wrapped__  # the write itself, not its journaling
        if op in ("set_phase", "record_event"):
            kwargs = {**kwargs, "at": entry["at"]}
        self._local.replaying = True
        try:
            raw(self, run_id, *args, **kwargs)
        finally:
            self._local.replaying = False
