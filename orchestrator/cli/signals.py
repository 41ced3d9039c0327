"""What a signal does to the run this process is attached to (docs/DESIGN.md, "The lifecycle": SIGTERM tears the run
down like `gpurun teardown`; SIGHUP hands it to a detached guard and never ends it).

The handlers never tear down themselves: once the guard runs (`Controller.deferring_signals`)
they only set a flag that the guard checks at each poll. Before that (create, boot, bootstrap)
SIGTERM unwinds the launch with `Terminated`, as Ctrl-C does with KeyboardInterrupt, and the
caller ends the run; SIGHUP waits for the guard's first poll to hand the run over.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from orchestrator.run.controller import Controller


class Terminated(BaseException):
    """SIGTERM before the guard took over: the launch unwinds to a teardown (like KeyboardInterrupt)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass
class Received:
    term: int | None = None  # SIGTERM came: the run is (being) torn down
    hup: bool = False  # SIGHUP came: the run goes to a detached guard unless it is already ending


def _off_the_terminal(log: Path) -> None:
    """A closed terminal fails every write (EIO): from now on this process writes to its log."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    for target in (1, 2):
        if os.isatty(target):
            os.dup2(fd, target)
    os.close(fd)


@contextmanager
def attached(controller: Controller, handoff_on_hup: bool = True) -> Iterator[Received]:
    """While the block runs: SIGTERM ends the run; SIGHUP hands it to a detached guard
    (handoff_on_hup) or is ignored (a detached guard has no terminal to lose)."""
    got = Received()

    def on_term(signum: int, _frame: FrameType | None) -> None:
        got.term = signum
        if controller.deferring_signals:
            controller.request_stop(signal.Signals(signum).name)
        else:
            raise Terminated(signum)

    def on_hup(_signum: int, _frame: FrameType | None) -> None:
        got.hup = True
        _off_the_terminal(controller.run_dir / "controller.log")
        controller.request_handoff()

    old_term = signal.signal(signal.SIGTERM, on_term)
    old_hup = signal.signal(signal.SIGHUP, on_hup if handoff_on_hup else signal.SIG_IGN)
    try:
        yield got
    finally:
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGHUP, old_hup)
