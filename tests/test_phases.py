"""The Phase enum and its allowed transitions (docs/DESIGN.md, "The lifecycle"), and the diagram in the docs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from orchestrator.state.phases import (
    ALLOWED_TRANSITIONS,
    FAILED_PHASES,
    JOB_PHASES,
    MAIN_PHASES,
    Phase,
    TransitionError,
    can_go,
    check_transition,
    is_phase,
    lifecycle_diagram,
    parse,
)

REPO = Path(__file__).resolve().parent.parent
CHAIN = ("planned", "creating", "booting", "ssh_ready", "bootstrapped", "preparing_data", "running", "stopping",
         "syncing_final", "terminating", "verified")


def test_the_phases_are_designs() -> None:
    assert tuple(p.value for p in MAIN_PHASES) == CHAIN
    assert {p.value for p in FAILED_PHASES} == {f"failed_{p}" for p in CHAIN if p != "verified"}
    assert str(Phase.SSH_READY) == "ssh_ready" and f"{Phase.RUNNING}" == "running"
    assert Phase.RUNNING == "running" and "running" in JOB_PHASES  # stored and compared as the plain name
    assert parse("failed_booting") is Phase.FAILED_BOOTING
    for bad in ("runing", "failed_verified", "failed_", ""):
        assert not is_phase(bad)
        with pytest.raises(ValueError, match="unknown phase"):
            parse(bad)


def test_helpers() -> None:
    assert [p for p in Phase if not p.is_open()] == [Phase.VERIFIED]
    assert Phase.FAILED_TERMINATING.is_open() and Phase.FAILED_TERMINATING.is_failed()
    assert not Phase.TERMINATING.is_failed()
    assert Phase.BOOTING.failure is Phase.FAILED_BOOTING
    assert Phase.FAILED_BOOTING.failed_in is Phase.BOOTING and Phase.BOOTING.failed_in is None
    for cannot_fail in (Phase.VERIFIED, Phase.FAILED_RUNNING):
        with pytest.raises(ValueError):
            _ = cannot_fail.failure
    assert {p.value for p in JOB_PHASES} == {"ssh_ready", "bootstrapped", "preparing_data", "running", "stopping",
                                              "syncing_final"}
    assert all(p.is_job() for p in JOB_PHASES) and not Phase.BOOTING.is_job()


def test_forward_chain_and_fallback() -> None:
    for a, b in zip(CHAIN, CHAIN[1:], strict=False):
        assert can_go(a, b), (a, b)
    assert can_go("bootstrapped", "running")  # no data to prepare
    assert can_go("booting", "creating")  # offer fallback
    assert check_transition("ssh_ready", "bootstrapped") is Phase.BOOTSTRAPPED


def test_failure_and_teardown_edges() -> None:
    for p in Phase:
        if p.is_open() and not p.is_failed():
            assert can_go(p, p.failure)
        if p.is_open():
            assert can_go(p, "terminating"), p  # teardown may be asked in any open phase
    for p in FAILED_PHASES:
        assert ALLOWED_TRANSITIONS[p] == {Phase.TERMINATING}
    for p in JOB_PHASES:
        assert can_go(p, "stopping")
    for p in ("planned", "creating", "booting", "terminating", "failed_running"):
        assert not can_go(p, "stopping")
    assert ALLOWED_TRANSITIONS[Phase.TERMINATING] == {Phase.TERMINATING, Phase.VERIFIED, Phase.FAILED_TERMINATING}
    assert ALLOWED_TRANSITIONS[Phase.VERIFIED] == frozenset()


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        ("ssh_ready", "verified"),  # the example: never verified without terminating
        ("planned", "verified"),
        ("failed_booting", "verified"),
        ("failed_running", "running"),
        ("failed_running", "failed_running"),
        ("verified", "terminating"),
        ("running", "bootstrapped"),
        ("planned", "failed_creating"),
        ("planned", "planned"),
    ],
)
def test_refused(src: str, dst: str) -> None:
    assert not can_go(src, dst)
    with pytest.raises(TransitionError, match=f"^cannot go from {src} to {dst}$"):
        check_transition(src, dst)


def test_diagram_lists_every_phase_and_edge() -> None:
    text = lifecycle_diagram()
    rows = dict(re.findall(r"^(\S+)\s+-> (.*)$", text, re.M)[1:])  # the first match is the happy path
    for p in MAIN_PHASES:
        shown = rows[p.value]
        assert set(filter(None, shown.split(", "))) - {"nothing (the end)"} == {t.value for t in ALLOWED_TRANSITIONS[p]}
    assert rows["failed_<phase>"] == "terminating"


def test_architecture_doc_embeds_the_diagram() -> None:
    doc = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    match = re.search(r"<!-- lifecycle-diagram:start -->\n```\n(.*?)```\n<!-- lifecycle-diagram:end -->", doc, re.S)
    assert match, "docs/ARCHITECTURE.md lost its lifecycle-diagram block"
    assert match.group(1) == lifecycle_diagram(), (
        "docs/ARCHITECTURE.md's lifecycle diagram differs from orchestrator.state.phases: paste lifecycle_diagram()"
    )
