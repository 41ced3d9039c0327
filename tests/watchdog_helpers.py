"""Test helpers that steer a running dead-man's switch (production arms it with `install_watchdog`
and ends it with the instance)."""

from __future__ import annotations

import math
import signal

from orchestrator.run.watchdog import NAME, _wait_armed, read_deadline
from orchestrator.transport.protocol import Transport


def move_deadline_earlier(transport: Transport, new_deadline: float, ack_timeout_s: float = 10.0) -> int:
    """Bring the deadline forward; returns it once the watchdog holds it."""
    current = read_deadline(transport)
    if current is None:
        raise RuntimeError(f"no watchdog deadline under {transport.root}: install_watchdog first")
    new = math.floor(new_deadline)
    if new > current:
        raise ValueError(f"the watchdog deadline can only move earlier: {new} is after the current {current}")
    if new < current:
        transport.write_file(f"{transport.root}/watchdog.deadline", f"{new}\n", 0o644)
    _wait_armed(transport, new, ack_timeout_s)
    return new


def disarm_watchdog(transport: Transport) -> None:
    """Stop the switch so that it outlives no test."""
    try:
        transport.signal(NAME, signal.SIGTERM)
    except (ProcessLookupError, RuntimeError):
        pass  # not running: nothing to disarm
