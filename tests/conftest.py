"""Shared test set-up: every test gets its own GPURUN_HOME and runs directory, and the test run's
own interpreter first on PATH, so that no test (nor a command a test launches, as `python3 -c ...`
on the local sandbox) ever runs the machine's own python."""

from __future__ import annotations

import atexit
import gc
import os
import signal
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.postgres import ROOT_ENV, ledger_engine, make_root, pg_cluster, stop_shared_cluster  # noqa: F401

# Longest tests first (tests/durations.json), for pytest-xdist's `load` (the Makefile's PYTEST_ARGS).
pytest_plugins = ["tests.plugins.longest_first"]

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
# The benchmarks read their offline data from here (bench/data_files.py), in-process and in the
# processes the tests start.
os.environ.setdefault("GPURUN_DATA_DIR", str(SHARED_DATA))


def pytest_configure(config: pytest.Config) -> None:
    """The test run's PostgreSQL directory, made once by the pytest process that starts the workers
    (they inherit the variable); its cluster starts when a test first needs it (tests/fixtures/postgres.py).

    Each pytest-xdist worker leads a session of its own. Linux's scheduler (sched_autogroup, on by
    default) shares the CPU between sessions before processes: a detached job leads its own session
    (a run's trainer on the local sandbox or the loopback "instance"), so in one shared session all
    workers together got as much CPU as each such trainer, and a test that computes waited on
    trainers that only run out a budget window. A session each gives a worker the same share as a job."""
    if hasattr(config, "workerinput"):
        try:
            os.setsid()
        except OSError:  # a process-group leader may not start a session: it keeps the shared one
            pass
    if not hasattr(config, "workerinput") and not os.environ.get(ROOT_ENV):
        config._gpurun_pg_root = make_root()  # type: ignore[attr-defined]
        os.environ[ROOT_ENV] = str(config._gpurun_pg_root)  # type: ignore[attr-defined]


def pytest_collection_finish(session: pytest.Session) -> None:
    """What collection imported (torch, boto3 and moto, SQLAlchemy, Playwright) lives as long as the
    process: frozen, the run's full garbage collections no longer walk it, nor do the ones of the
    interpreter's exit, which took each worker ~1 CPU-s: 10 s of wall time at the suite's end."""
    gc.freeze()
    atexit.register(gc.freeze)  # and, at exit, what the tests left


def pytest_unconfigure(config: pytest.Config) -> None:
    root = getattr(config, "_gpurun_pg_root", None)
    if root is not None:  # every worker has finished: stop the shared cluster, remove its files
        stop_shared_cluster(root)
        os.environ.pop(ROOT_ENV, None)


@pytest.fixture(autouse=True)
def cpu_unless_cuda(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests mean the CPU, also on a machine with GPUs (a local run's recipe, a 2-rank DDP test,
    bitwise resumes): what they start sees no GPU, except a test marked `cuda`."""
    if request.node.get_closest_marker("cuda") is None:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


@pytest.fixture(autouse=True)
def gpurun_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path_factory.mktemp("gpurun_home")
    monkeypatch.setenv("GPURUN_HOME", str(home))
    monkeypatch.setenv("GPURUN_RUNS_DIR", str(home / "runs"))
    # Never a team's ledger from the developer's shell: the ledger_engine fixture picks the engine.
    monkeypatch.delenv("GPURUN_LEDGER", raising=False)
    monkeypatch.delenv("GPURUN_USER", raising=False)
    monkeypatch.setenv("PATH", os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    return home


def _started_under(home: Path) -> list[tuple[int, str]]:
    """(pid, command) of every live process whose environment has GPURUN_HOME=home: whatever a test
    started (a CLI, a local job, its trainer and watchdog), however detached. sshd is left alone: a
    listener a test restarted inherits the variable too, and its fixture stops it."""
    needle = f"GPURUN_HOME={home}".encode()
    found: list[tuple[int, str]] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            if needle not in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                continue
            if Path(f"/proc/{entry}/comm").read_text().startswith("sshd"):
                continue
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone, or not ours to read
            continue
        if "from multiprocessing." in cmd:  # the worker's own resource tracker / forkserver, reused later
            continue
        found.append((int(entry), cmd.strip()[:160]))
    return found


@pytest.fixture(autouse=True)
def nothing_outlives_its_test(request: pytest.FixtureRequest, gpurun_home: Path) -> Iterator[None]:
    """After the test (and its own clean-up fixtures, torn down before this one): SIGKILL whatever it
    started that still runs, with a warning naming it. A test that failed half-way may leave a guarded
    job training until a deadline an hour away; on 2 cores that job would slow every later test."""
    yield
    if not Path("/proc/self/environ").exists():
        return
    left = _started_under(gpurun_home)
    for _ in range(10):  # a second for what is on its way out (a guard writing its last event)
        if not left:
            return
        time.sleep(0.1)
        left = _started_under(gpurun_home)
    for pid, _ in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    if left:
        listed = "; ".join(f"{pid}: {cmd}" for pid, cmd in left)
        warnings.warn(f"{request.node.nodeid} left {len(left)} process(es) running, killed: {listed}", stacklevel=1)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not beside this checkout")
    return SHARED_DATA
