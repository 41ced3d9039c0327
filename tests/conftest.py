"""Shared test set-up: every test gets its own GPURUN_HOME and runs directory, and the test run's
own interpreter first on PATH, so that no test (nor a command a test launches, as `python3 -c ...`
on the local sandbox) ever runs the machine's own python."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


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
    monkeypatch.setenv("PATH", os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    return home


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not beside this checkout")
    return SHARED_DATA
