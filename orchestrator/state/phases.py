"""The run lifecycle of docs/DESIGN.md ("The lifecycle") as data: the phases, and which phase may follow which.

The ledger refuses any transition not listed here (`Ledger.set_phase`), so a bug that jumps from
ssh_ready to verified, or marks a run verified without passing through terminating, fails loudly
instead of leaving a run that claims to be gone. docs/ARCHITECTURE.md embeds `lifecycle_diagram()`
(tests/test_phases.py keeps the two equal).
"""

from __future__ import annotations

from enum import Enum

FAILED_PREFIX = "failed_"


class TransitionError(ValueError):
    """A phase change the lifecycle does not allow (the ledger turns it into a LedgerError)."""


class Phase(str, Enum):
    """A run's phase; the value is what the ledger stores. failed_X = it failed while in X."""

    PLANNED = "planned"
    CREATING = "creating"
    BOOTING = "booting"
    SSH_READY = "ssh_ready"
    BOOTSTRAPPED = "bootstrapped"
    PREPARING_DATA = "preparing_data"
    RUNNING = "running"
    STOPPING = "stopping"
    SYNCING_FINAL = "syncing_final"
    TERMINATING = "terminating"
    VERIFIED = "verified"
    FAILED_PLANNED = "failed_planned"
    FAILED_CREATING = "failed_creating"
    FAILED_BOOTING = "failed_booting"
    FAILED_SSH_READY = "failed_ssh_ready"
    FAILED_BOOTSTRAPPED = "failed_bootstrapped"
    FAILED_PREPARING_DATA = "failed_preparing_data"
    FAILED_RUNNING = "failed_running"
    FAILED_STOPPING = "failed_stopping"
    FAILED_SYNCING_FINAL = "failed_syncing_final"
    FAILED_TERMINATING = "failed_terminating"

    def __str__(self) -> str:  # f-strings and click show the stored name, not "Phase.RUNNING"
        return self.value

    def __format__(self, spec: str) -> str:  # format() too, on every Python version
        return format(self.value, spec)

    def is_failed(self) -> bool:
        return self.value.startswith(FAILED_PREFIX)

    def is_open(self) -> bool:
        """Not yet verified gone: the run may still hold an instance (and money)."""
        return self is not Phase.VERIFIED

    def is_job(self) -> bool:
        """The job may still be running on the instance (logs, sync and a graceful stop make sense)."""
        return self in JOB_PHASES

    @property
    def failure(self) -> Phase:
        """failed_<self>. A failed phase or verified has none (ValueError)."""
        if self.is_failed() or self is Phase.VERIFIED:
            raise ValueError(f"{self.value} cannot fail: it is already failed or the end")
        return Phase(FAILED_PREFIX + self.value)

    @property
    def failed_in(self) -> Phase | None:
        """For failed_X, the phase X it failed in; None for a phase that is not a failure."""
        return Phase(self.value[len(FAILED_PREFIX):]) if self.is_failed() else None


#: The phases in lifecycle order, failures last.
MAIN_PHASES: tuple[Phase, ...] = tuple(p for p in Phase if not p.is_failed())
FAILED_PHASES: tuple[Phase, ...] = tuple(p for p in Phase if p.is_failed())
#: Where the job may still run: from the first SSH contact until the final sync is done.
JOB_PHASES: frozenset[Phase] = frozenset(
    {Phase.SSH_READY, Phase.BOOTSTRAPPED, Phase.PREPARING_DATA, Phase.RUNNING, Phase.STOPPING,
     Phase.SYNCING_FINAL}
)

# The happy path; bootstrapped may skip preparing_data (a recipe without data to prepare).
_FORWARD: dict[Phase, tuple[Phase, ...]] = {
    Phase.PLANNED: (Phase.CREATING,),
    Phase.CREATING: (Phase.BOOTING,),
    Phase.BOOTING: (Phase.SSH_READY,),
    Phase.SSH_READY: (Phase.BOOTSTRAPPED,),
    Phase.BOOTSTRAPPED: (Phase.PREPARING_DATA, Phase.RUNNING),
    Phase.PREPARING_DATA: (Phase.RUNNING,),
    Phase.RUNNING: (Phase.STOPPING,),
    Phase.STOPPING: (Phase.SYNCING_FINAL,),
    Phase.SYNCING_FINAL: (Phase.TERMINATING,),
    Phase.TERMINATING: (Phase.VERIFIED,),
    Phase.VERIFIED: (),
}


def _transitions() -> dict[Phase, frozenset[Phase]]:
    allowed: dict[Phase, set[Phase]] = {p: set(_FORWARD.get(p, ())) for p in Phase}
    # Offer fallback: a failed boot, or a create refused for capacity, tries the next offer.
    allowed[Phase.BOOTING].add(Phase.CREATING)
    allowed[Phase.CREATING].add(Phase.CREATING)
    # Preemption: the provider took the instance back; the run resumes on the next offer.
    allowed[Phase.RUNNING].add(Phase.CREATING)
    allowed[Phase.PREPARING_DATA].add(Phase.CREATING)
    for p in Phase:
        if not p.is_open():
            continue  # verified is the end
        if not p.is_failed():
            allowed[p].add(p.failure)
        # Teardown may be asked in any open phase (`gpurun teardown` of a booting run, Ctrl-C, a
        # failure); terminating -> terminating is a teardown retried after a crash.
        allowed[p].add(Phase.TERMINATING)
        if p.is_job():
            # Stop the job gracefully; from stopping/syncing_final that is a resumed finish.
            allowed[p].add(Phase.STOPPING)
    allowed[Phase.TERMINATING].add(Phase.FAILED_TERMINATING)
    return {p: frozenset(targets) for p, targets in allowed.items()}


#: ALLOWED_TRANSITIONS[a] = the phases that may follow a.
ALLOWED_TRANSITIONS: dict[Phase, frozenset[Phase]] = _transitions()


def parse(name: str | Phase) -> Phase:
    """The Phase named `name`; ValueError (one line) for anything else."""
    try:
        return Phase(name)
    except ValueError:
        raise ValueError(
            f"unknown phase {name!r}: use one of {', '.join(p.value for p in MAIN_PHASES)} or failed_<phase>"
        ) from None


def is_phase(name: str) -> bool:
    return name in Phase._value2member_map_


def can_go(src: str | Phase, dst: str | Phase) -> bool:
    return parse(dst) in ALLOWED_TRANSITIONS[parse(src)]


def check_transition(src: str | Phase, dst: str | Phase) -> Phase:
    """Return `dst` as a Phase, or raise TransitionError("cannot go from A to B")."""
    a, b = parse(src), parse(dst)
    if b not in ALLOWED_TRANSITIONS[a]:
        raise TransitionError(f"cannot go from {a.value} to {b.value}")
    return b


def _happy_path() -> list[str]:
    """The forward chain; a phase that may be skipped (bootstrapped -> running) is shown in brackets."""
    steps, here = [Phase.PLANNED.value], Phase.PLANNED
    while _FORWARD[here]:
        nexts = _FORWARD[here]
        if len(nexts) == 2 and _FORWARD[nexts[0]] == (nexts[1],):
            steps.append(f"[{nexts[0].value} ->] {nexts[1].value}")
            here = nexts[1]
        else:
            steps.append(nexts[0].value)
            here = nexts[0]
    return steps


def lifecycle_diagram(width: int = 100) -> str:
    """ALLOWED_TRANSITIONS as text: the happy path, then each phase and every phase that may follow it."""
    lines = [""]
    for step in _happy_path():
        joined = f"{lines[-1]} -> {step}" if lines[-1] else step
        if len(joined) > width:
            lines.append(f"        -> {step}")
        else:
            lines[-1] = joined
    lines.append("")
    rows: list[tuple[str, frozenset[Phase]]] = [(p.value, ALLOWED_TRANSITIONS[p]) for p in MAIN_PHASES]
    failed_targets = {ALLOWED_TRANSITIONS[p] for p in FAILED_PHASES}
    if len(failed_targets) == 1:  # every failure leads to the same place: one line for all
        rows.append((FAILED_PREFIX + "<phase>", failed_targets.pop()))
    else:
        rows += [(p.value, ALLOWED_TRANSITIONS[p]) for p in FAILED_PHASES]
    column = max(len(name) for name, _ in rows)
    order = list(Phase)
    for name, targets in rows:
        shown = ", ".join(p.value for p in sorted(targets, key=order.index)) or "nothing (the end)"
        lines.append(f"{name:<{column}}  -> {shown}")
    return "\n".join(lines) + "\n"
