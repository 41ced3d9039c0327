"""Errors the controller's modules share (kept apart so that they import each other in one direction)."""

from __future__ import annotations


class RunFailed(Exception):
    """The run could not go on; it has been (or must be) torn down."""


class BootFailed(RunFailed):
    """This attempt will not boot (no capacity, lost while booting, never reachable in its window):
    another offer may (offer fallback, orchestrator.run.provisioning)."""


class VerifyFailed(Exception):
    """Termination could not be verified: the instance may still be billing."""
