"""Why a run stops, typed: what the watch loop, a failed phase or a person asks, and the words kept.

The ledger keeps the `Ending` in its own column and the whole sentence as `end_reason` (what the
terminal, `gpurun status` and the evidence card show); nothing reads an ending back out of words.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from orchestrator.state.endings import Ending


@dataclass(frozen=True)
class End:
    """How a run ended: the typed ending and the sentence that says it ("deadline: budget guard")."""

    ending: Ending
    reason: str
    exit_code: int | None = None  # the job's own exit status, for Ending.JOB_ENDED (None: killed)

    @classmethod
    def because(cls, ending: Ending, detail: str) -> End:
        """`<ending>: <detail>`, e.g. "stalled: no new step for 10 min"."""
        return cls(ending, f"{ending}: {detail}")

    @classmethod
    def noted(cls, ending: Ending, note: str = "") -> End:
        """`<ending> (<note>)`, e.g. "teardown requested (SIGTERM)", "job ended (exit 1)"."""
        return cls(ending, f"{ending} ({note})" if note else str(ending))

    @classmethod
    def job_ended(cls, exit_code: int | None, where: str = "") -> End:
        """The job ended by itself: "job ended (exit 1)", "job ended (killed, no exit status on node 1 ...)"."""
        status = "killed, no exit status" if exit_code is None else f"exit {exit_code}"
        return cls(Ending.JOB_ENDED, f"{Ending.JOB_ENDED} ({status}{where})", exit_code)

    @property
    def job_failed(self) -> bool:
        return self.ending is Ending.JOB_ENDED and self.exit_code != 0

    def then(self, more: str) -> End:
        """The same ending with what happened next: "preempted: ...; not resumed: ..."."""
        return End(self.ending, f"{self.reason}; {more}", self.exit_code)


class Watched(Enum):
    """What the watch loop follows."""

    DATA = "data"  # the recipe's data phase
    JOB = "job"  # the job itself


class StopKind(Enum):
    ENDED = "ended"  # the run ends: `end` says why
    DATA_READY = "data_ready"  # the data phase finished on every node: start the job
    HANDOFF = "handoff"  # a SIGHUP asked that a detached guard go on with the run


@dataclass(frozen=True)
class Stop:
    """What the watch loop returns."""

    kind: StopKind
    end: End | None = None

    @classmethod
    def ended(cls, end: End) -> Stop:
        return cls(StopKind.ENDED, end)
