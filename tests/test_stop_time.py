"""orchestrator.run.stop_time: work on the instance ends by its time limit, saying what it was doing."""

from __future__ import annotations

import threading
import time

import pytest

from orchestrator.errors import RunFailed
from orchestrator.run.stop_time import CutOff, Steps, Work, hint_for, within


def test_work_done_in_time_gives_its_result() -> None:
    assert within(time.time() + 60, "bootstrap", Steps("x"), lambda: 42) == 42


def test_work_still_going_at_the_limit_is_cut_with_its_step_and_what_to_do() -> None:
    release = threading.Event()
    steps = Steps("uploading the code")

    def install() -> None:
        steps("installing torch", Work.INSTALLING)
        release.wait(60)  # a pip install that would not end

    try:
        with pytest.raises(CutOff) as cut:
            within(time.time() + 0.5, "bootstrap", steps, install)
    finally:
        release.set()
    assert str(cut.value) == "bootstrap still installing torch at the stop time: use a PyTorch image or raise --max-usd"
    assert isinstance(cut.value, RunFailed)  # the CLI's "run failed" line and exit 6


def test_a_limit_already_past_cuts_at_once() -> None:
    release = threading.Event()
    with pytest.raises(CutOff, match="still looking for python"):
        within(time.time() - 1, "bootstrap", Steps("looking for python"), lambda: release.wait(60))
    release.set()


def test_an_error_of_the_work_is_its_own() -> None:
    def broken() -> None:
        raise ValueError("no python >= 3.9")

    with pytest.raises(ValueError, match="no python"):
        within(time.time() + 60, "bootstrap", Steps("x"), broken)


def test_hints() -> None:
    assert hint_for(Work.INSTALLING) == "use a PyTorch image or raise --max-usd"
    assert "raise --max-usd" in hint_for(Work.OTHER)
    steps = Steps("uploading the code")
    steps("installing the code's own tool")  # words alone say nothing: the kind of work decides
    assert steps.work is Work.OTHER
