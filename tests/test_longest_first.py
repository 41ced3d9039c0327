"""The suite's own scheduling aid (tests/plugins/longest_first.py): longest first, measured, kept."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tests.plugins.longest_first import KEPT_S, DurationRecorder, load_durations, longest_first


@dataclass
class Item:
    nodeid: str


@dataclass
class Report:
    nodeid: str
    duration: float


def test_the_measured_longest_go_first_and_the_unmeasured_keep_their_order() -> None:
    items = [Item("a"), Item("b"), Item("long"), Item("c"), Item("longer"), Item("medium")]
    longest_first(items, {"long": 40.0, "longer": 80.0, "c": 0.01, "medium": 2.0})  # type: ignore[arg-type]
    assert [i.nodeid for i in items] == ["longer", "long", "medium", "a", "b", "c"]


def test_a_stored_run_sums_the_phases_keeps_the_long_ones_and_the_tests_it_did_not_run(tmp_path: Path) -> None:
    path = tmp_path / "durations.json"
    path.write_text(json.dumps({"other": 12.0, "e2e": 3.0}))
    recorder = DurationRecorder(path)
    for nodeid, seconds in (("e2e", 0.5), ("e2e", 30.0), ("e2e", 1.25), ("unit", 0.01), ("unit", 0.02)):
        recorder.pytest_runtest_logreport(Report(nodeid, seconds))  # type: ignore[arg-type]
    recorder.pytest_sessionfinish(None)  # type: ignore[arg-type]
    assert load_durations(path) == {"e2e": 31.75, "other": 12.0}
    assert all(v >= KEPT_S for v in load_durations(path).values())


def test_the_committed_durations_name_tests_that_exist() -> None:
    """A renamed long test would silently lose its place: the file is refreshed with `make durations`."""
    known = load_durations()
    assert len(known) > 100
    root = Path(__file__).resolve().parent.parent
    missing = [k for k in known if not (root / k.split("::")[0]).is_file()]
    assert missing == []
