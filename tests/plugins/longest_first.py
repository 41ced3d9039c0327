"""The suite's tests in order of their measured length, longest first, for pytest-xdist's `load`.

On 2 cores the suite is CPU-bound and some 60 tests run a whole launch (15-100 s each). Handed
out in file order they land wherever the order puts them, and the last of them run alone at the
end while the other workers wait. Longest first (with `--dist load --maxschedchunk 1`, one test at a
time to whichever worker is free) is the greedy schedule that keeps every worker busy to the end.

tests/durations.json holds the wall time in seconds (setup, call and teardown) of each test that took
at least KEPT_S in a whole-suite run; any other test counts as UNKNOWN_S and keeps its file order
behind them. Refresh it after adding long tests:

    make durations        # runs the suite with --store-durations
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

DURATIONS_FILE = Path(__file__).resolve().parent.parent / "durations.json"
KEPT_S = 1.0  # shorter tests are left out of the file: their order hardly matters
UNKNOWN_S = 0.5  # most new tests are unit tests; a long one is measured on the next refresh


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--store-durations", action="store_true",
                     help=f"write each test's wall time to {DURATIONS_FILE.name} when the run ends")


def load_durations(path: Path = DURATIONS_FILE) -> dict[str, float]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): float(v) for k, v in data.items()} if isinstance(data, dict) else {}


def longest_first(items: list[pytest.Item], known: dict[str, float]) -> None:
    """Sort in place, longest first; the sort is stable, so equal ones keep their file order."""
    items.sort(key=lambda item: -known.get(item.nodeid, UNKNOWN_S))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    longest_first(items, load_durations())


class DurationRecorder:
    """Sums each test's phases as their reports reach the controlling process (xdist's too)."""

    def __init__(self, path: Path = DURATIONS_FILE) -> None:
        self.path = path
        self.seconds: dict[str, float] = {}

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.seconds[report.nodeid] = self.seconds.get(report.nodeid, 0.0) + report.duration

    @pytest.hookimpl
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        merged = {**load_durations(self.path), **{k: round(v, 2) for k, v in self.seconds.items()}}
        kept = {k: v for k, v in sorted(merged.items()) if v >= KEPT_S}
        self.path.write_text(json.dumps(kept, indent=0) + "\n")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--store-durations") and not hasattr(config, "workerinput"):
        config.pluginmanager.register(DurationRecorder(), "longest_first_recorder")
