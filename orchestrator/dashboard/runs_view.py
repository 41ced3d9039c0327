"""The runs page's lines: one per run of the ledger, every figure taken where `gpurun status` and
`gpurun cost` take it (run.status.spent_usd and last_step, the reconciliation's flag).

A run whose row cannot be shown (a launch record torn, a number that is not one) becomes an error
line naming the run and what is wrong; a ledger that cannot be listed at all, one error line for the
page. Nothing here raises to the server.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from orchestrator.money.reconcile import Reconciliation
from orchestrator.plan.record import RunRecord, is_orphan
from orchestrator.run.handoff import controller_alive
from orchestrator.run.status import last_step, spent_usd
from orchestrator.run.syncing import link_status
from orchestrator.state.events import EventKind
from orchestrator.state.ledger import Ledger
from orchestrator.state.rows import Event, Run
from providers.common import one_line


class State(str, Enum):
    """What a person must know first about a run: is its machine proven gone?"""

    VERIFIED = "verified"  # verified gone, with its shutdown proof
    OPEN = "open"  # going, and a live controller (the launch or its guard) watches it
    NOT_VERIFIED = "NOT VERIFIED"  # failed, or open with nobody watching: it may still bill

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class SyncEntry:
    time: float
    files: int
    bytes: int
    seconds: float | None  # how long the pull took (a sync event written before it kept none)
    method: str
    final: bool
    rejected: list[str]

    @property
    def bytes_per_s(self) -> float | None:
        return self.bytes / self.seconds if self.seconds else None


@dataclass(frozen=True)
class RunLine:
    run_id: str
    person: str
    provider: str
    gpu: str
    phase: str
    state: State
    spent_usd: float
    max_usd: float
    stop_in_s: float | None  # to the guard's stop time, while open
    step: int | None
    loss: float | None
    tokens_per_s: float | None
    last_sync: SyncEntry | None
    syncs: int
    billed: Reconciliation
    controller: bool  # a live controller watches it

    @property
    def teardown(self) -> str:
        return f"gpurun teardown {self.run_id}"

    @property
    def spent_fraction(self) -> float:
        return min(1.0, self.spent_usd / self.max_usd) if self.max_usd > 0 else 0.0


@dataclass(frozen=True)
class ErrorLine:
    run_id: str
    error: str


def state_of(run: Run) -> tuple[State, bool]:
    """(the run's state, whether a live controller watches it)."""
    if not run.open:
        return State.VERIFIED, False
    alive = controller_alive(run)
    return (State.OPEN if alive and not run.failed else State.NOT_VERIFIED), alive


def sync_history(events: list[Event]) -> list[SyncEntry]:
    """Every pull home the run's events record, oldest first."""
    out = []
    for e in events:
        if e.phase != EventKind.SYNC.value:
            continue
        p = e.payload
        seconds = p.get("seconds")
        out.append(SyncEntry(e.time, int(p.get("files") or 0), int(p.get("bytes") or 0),
                             None if seconds is None else float(seconds), str(p.get("method") or ""),
                             bool(p.get("final")), [str(x) for x in p.get("rejected") or []]))
    return out


def gpu_of(run: Run) -> str:
    if is_orphan(run):
        return "-"
    offer = RunRecord.of_run(run).offer
    return f"{offer.gpu} x{offer.gpu_count}" if offer.gpu_count else offer.gpu  # the local provider: "cpu"


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def line_of(ledger: Ledger, run: Run, now: float) -> RunLine:
    """The run's line; raises whatever its row makes impossible (run_lines turns that into an error line)."""
    state, alive = state_of(run)
    step = last_step(run)
    events = ledger.events(run.run_id)
    syncs = sync_history(events)
    stop_at, _ = link_status(events, run.stop_at_epoch)  # moved earlier where the link home needs it
    return RunLine(
        run_id=run.run_id, person=str(getattr(run, "person", None) or "-"), provider=run.provider,
        gpu=gpu_of(run), phase=str(run.phase), state=state, spent_usd=float(spent_usd(run, now)),
        max_usd=float(run.max_usd),
        stop_in_s=(float(stop_at) - now) if run.open and stop_at else None,
        step=None if step.get("step") is None else int(step["step"]), loss=_number(step.get("loss")),
        tokens_per_s=_number(step.get("tokens_per_s")), last_sync=syncs[-1] if syncs else None,
        syncs=len(syncs), billed=Reconciliation.of_run(run), controller=alive,
    )


def _one_line(exc: BaseException) -> str:
    return one_line(f"{type(exc).__name__}: {exc}")


def run_lines(ledger: Ledger, now: float) -> tuple[list[RunLine | ErrorLine], str]:
    """(a line per run, newest first; "" or why the ledger could not be listed)."""
    try:
        runs = ledger.list_runs()
    except Exception as exc:  # noqa: BLE001 - a ledger row this gpurun cannot read: say so, keep serving
        return [], f"the ledger's runs cannot be read: {_one_line(exc)}"
    lines: list[RunLine | ErrorLine] = []
    for run in runs:
        try:
            lines.append(line_of(ledger, run, now))
        except Exception as exc:  # noqa: BLE001 - one malformed row is an error line, not a dead page
            lines.append(ErrorLine(str(getattr(run, "run_id", "?")), f"this run's row cannot be shown: {_one_line(exc)}"))
    return lines, ""
