"""The ledger's rows as Python values: a run, an event, an instance."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from orchestrator.state.endings import Ending
from orchestrator.state.phases import Phase
from orchestrator.state.values import loads


@dataclass
class Run:
    run_id: str
    provider: str
    phase: Phase  # a str Enum: comparing with "verified" and f-strings keep working
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
    end_reason: str | None = None  # why the run ended, in words (`ending` is its kind)
    job_exit_code: int | None = None  # the job's own exit status, once it has ended
    # Reconciliation: what the provider itself says the run cost (None: not asked, or no figure),
    # where that figure comes from, whether it is final, and when it was last asked.
    billed_usd: float | None = None
    billed_source: str | None = None
    billed_complete: bool | None = None
    reconciled_at: float | None = None
    ending: Ending | None = None  # how the run ended, once it has (None: still going, or unknown)
    person: str | None = None  # who launched it (GPURUN_USER); None: a run from before schema 5, or an orphan
    pool: str | None = None  # the budgets.yaml pool whose caps it held against (None: the account's only)

    def __post_init__(self) -> None:
        self.phase = Phase(self.phase)
        if self.ending is not None:
            self.ending = Ending(self.ending)

    @property
    def open(self) -> bool:
        return self.phase.is_open()

    @property
    def failed(self) -> bool:
        return self.phase.is_failed()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Event:
    run_id: str
    time: float
    phase: str  # a phase name, or the kind of a non-phase event (orchestrator.state.events.EventKind)
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


RUN_FIELDS = tuple(f.name for f in fields(Run))


def run_from_row(row: Mapping[str, Any]) -> Run:
    data = dict(row)
    data["settled"] = bool(data["settled"])
    data["plan"] = loads(data["plan"])
    if data.get("billed_complete") is not None:
        data["billed_complete"] = bool(data["billed_complete"])
    return Run(**data)


def instance_from_row(row: Mapping[str, Any]) -> InstanceRow:
    return InstanceRow(
        run_id=row["run_id"],
        provider=row["provider"],
        instance_id=row["instance_id"],
        state=row["state"],
        info=loads(row["info"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        host_key_type=row["host_key_type"],
        host_key=row["host_key"],
    )
