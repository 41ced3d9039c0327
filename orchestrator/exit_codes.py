"""What gpurun's exit status tells a script (the README lists these). One home for every code."""

from __future__ import annotations

import signal
from enum import IntEnum


class Exit(IntEnum):
    OK = 0  # the job succeeded (or the budget guard stopped it cleanly) and the instance is verified gone
    REFUSED = 2  # bad input or a refusal: nothing was created, nothing spent (or a command failed outright)
    NOT_VERIFIED = 3  # termination could not be verified: the instance may still be billing
    JOB_FAILED = 4  # the job exited non-zero; the instance is verified gone, outputs are home
    STALLED = 5  # no progress for the stall window: stopped, synced, verified gone
    RUN_FAILED = 6  # the run broke before its job could end (boot, SSH, bootstrap, a lost instance); verified gone


def by_signal(signum: int | signal.Signals) -> int:
    """The shell's convention for a run ended because gpurun got a signal (SIGTERM: 143, SIGINT: 130)."""
    return 128 + int(signum)
