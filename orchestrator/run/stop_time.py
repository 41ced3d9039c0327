"""Every phase ends by the stop time: a piece of work on the instance that is still running when
the guard's stop time comes is cut off, and the run ends through the normal teardown inside the
reserve (docs/BUDGET.md, "Every phase ends by the stop time").

The work runs in a worker thread; the calling (main) thread waits for it in short slices, so the
stop time and the signals (SIGTERM, Ctrl-C, SIGHUP) reach the controller whatever the instance is
doing: a python check that hangs, a pip install of torch, an upload over a crawling link. The
worker touches only the transport; the caller records what it returns.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from enum import Enum
from typing import TypeVar

from orchestrator.errors import RunFailed
from orchestrator.run.nodes import Node

T = TypeVar("T")
WAIT_SLICE_S = 0.5  # how often the waiting thread looks at the clock (and lets a signal in)


class CutOff(RunFailed):
    """A phase still running at its time limit; the message is the run's one-line reason."""


class Work(Enum):
    """What kind of work a step is, which decides what a cut advises."""
    INSTALLING = "installing"  # a package install: the image lacks what the job needs
    OTHER = "other"


HINTS = {
    Work.INSTALLING: "use a PyTorch image or raise --max-usd",
    Work.OTHER: "raise --max-usd (the budget ran out before training began), or see why the instance is slow",
}


class Steps:
    """What a phase is doing now ("installing torch") and what kind of work that is, named by the
    work as it goes, so that a cut says where the time went and what to do about it."""

    def __init__(self, first: str, work: Work = Work.OTHER) -> None:
        self.now = first
        self.work = work

    def __call__(self, step: str, work: Work = Work.OTHER) -> None:
        self.now = step
        self.work = work


def hint_for(work: Work) -> str:
    """What to do about a phase that ran out of time doing `work`."""
    return HINTS[work]


def within(until_epoch: float, phase: str, steps: Steps, work: Callable[[], T]) -> T:
    """`work()`'s result, or CutOff("<phase> still <step> at the stop time: <hint>") once
    `until_epoch` passes with it unfinished. The abandoned worker is left to the teardown: the
    caller closes the transport it used and terminates the instance under it."""
    box: dict[str, object] = {}
    done = threading.Event()

    def run() -> None:
        try:
            box["value"] = work()
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread as it is
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, name=f"gpurun-{phase}", daemon=True).start()
    while not done.wait(timeout=max(0.0, min(WAIT_SLICE_S, until_epoch - time.time()))):
        if time.time() >= until_epoch:
            raise CutOff(f"{phase} still {steps.now} at the stop time: {hint_for(steps.work)}")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


def cut_at(node: Node, phase: str, steps: Steps, work: Callable[[], T], until_epoch: float) -> T:
    """`work` (the node's transport only: no ledger) cut off at `until_epoch` (CutOff); a cut
    abandons the node's transport, which the teardown then no longer uses."""
    try:
        return within(until_epoch, phase, steps, work)
    except CutOff:
        node.close()
        raise
