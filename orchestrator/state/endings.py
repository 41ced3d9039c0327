"""What gpurun's exit status tells a script (the README lists these). One home for every code.

A run's end is recorded twice on its ledger row: `ending`, one of `Ending` (what kind of end), and
`end_reason`, the human message that starts with that ending's words. `for_run` turns the typed
ending into the launch's exit status without guessing from free text.
"""

from __future__ import annotations

import signal
from enum import Enum, IntEnum


class Exit(IntEnum):
    OK = 0  # the job succeeded (or the budget guard stopped it cleanly) and the instance is verified gone
    REFUSED = 2  # bad input or a refusal: nothing was created, nothing spent (or a command failed outright)
    NOT_VERIFIED = 3  # termination could not be verified: the instance may still be billing
    JOB_FAILED = 4  # the job exited non-zero; the instance is verified gone, outputs are home
    STALLED = 5  # no progress for the stall window: stopped, synced, verified gone
    RUN_FAILED = 6  # the run broke before its job could end (boot, SSH, bootstrap, a lost instance); verified gone
    UNOWNED_BILLING = 7  # `gpurun audit`: something bills that no open run owns (a gpurun orphan, or not gpurun's)


class Ending(str, Enum):
    """Why a run ended (the ledger's runs.ending); its end_reason starts with the value."""

    JOB_ENDED = "job ended"  # by itself; its exit status decides between OK and JOB_FAILED
    DEADLINE = "deadline"  # the budget guard stopped it at the stop time: a clean end
    STALLED = "stalled"  # no new step / output for the stall window
    REQUESTED = "teardown requested"  # `gpurun teardown`, Ctrl-C, SIGTERM
    LOST = "lost the instance"  # the guard could not watch it any more
    RUN_FAILED = "run failed"  # create, boot, SSH or bootstrap failed
    DATA_FAILED = "data preparation failed"  # the recipe's data phase exited non-zero (its log: data.log)
    RESUMED = "guard resumed"  # a guard finished a run whose controller died mid-way
    PREEMPTED = "preempted"  # the provider took the (spot) instance back and the run could not resume

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


def for_run(ending: Ending | None, job_exit_code: int | None) -> Exit:
    """The exit status of a launch whose run is verified gone, from how the run ended (Run.ending)."""
    if ending is Ending.STALLED:
        return Exit.STALLED
    if ending in (Ending.LOST, Ending.RUN_FAILED, Ending.DATA_FAILED, Ending.PREEMPTED):
        return Exit.RUN_FAILED
    if ending is Ending.JOB_ENDED and job_exit_code != 0:  # None: killed before it could say
        return Exit.JOB_FAILED
    return Exit.OK


def by_signal(signum: int | signal.Signals) -> int:
    """The shell's convention for a run ended because gpurun got a signal (SIGTERM: 143, SIGINT: 130)."""
    return 128 + int(signum)
