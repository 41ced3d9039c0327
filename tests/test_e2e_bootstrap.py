"""Issue 22 end to end: a slow bootstrap on RunPod (the real CLI, the real `runpod` SDK, the GraphQL
fake, the loopback sshd as the pod), with the money held by each layer on its own.

The pod's `python3` is this module's wrapper (first on the sshd sessions' PATH): it runs a real
interpreter, except for the invocations named in HANG_ON, which hang until the test ends (as a
python check on a broken image, or a pip install of torch on a slow link, does for minutes):
- the controller killed while the python check hangs: the switch, armed in the first SSH session,
  ends the pod with the pod's own key at the deadline;
- the controller alive through a torch install that would not end: the run is cut at the stop time,
  torn down, verified, exit 6 with one line saying why;
- a trainer that never logs a step: the guard stops it at the stop time, and the run, having
  produced nothing, exits 6 saying so.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.state.endings import Exit
from orchestrator.state.ledger import Ledger
from orchestrator.state.rows import Run
from tests.e2e_helpers import (
    E2E,
    ENDLESS_TRAIN,
    e2e,  # noqa: F401  (fixture)
    event_names,
    ledger_instances,
    phases,
    proof_of,
    runpod_pod_self_destructing,
    wait_for,
)
from tests.fakes.runpod_api import DEFAULT_GPU_TYPES, FakeRunPodAPI
from tests.fixtures.sshd import SSHServer, _server

# 80 USD/h: a 1 USD cap buys 45 s; with the test budgets' 20 s reserve the guard stops at 25 s and
# the switch fires at 35 s after the create call.
PRICEY = {
    "id": "NVIDIA PRICEY 80GB", "displayName": "PRICEY", "memoryInGb": 80, "maxGpuCount": 8,
    "secureCloud": True, "communityCloud": False, "securePrice": 80.0, "communityPrice": None,
    "secureSpotPrice": None, "communitySpotPrice": None, "manufacturer": "Nvidia", "cudaCores": 1,
}
CAP_USD = 1.0

# The pod's python3 (and python): hangs on an invocation whose arguments contain HANG_ON's text
# (touching <dir>/hung so the test knows), else runs REAL's interpreter.
WRAPPER = """#!/bin/sh
d={dir}
pattern=$(cat "$d/HANG_ON")
case " $* " in
*"$pattern"*)
    touch "$d/hung"
    while [ ! -e "$d/release" ]; do sleep 0.5; done
    exit 1 ;;
esac
exec "$(cat "$d/REAL")" "$@"
"""


@pytest.fixture(scope="module")
def pod_python(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The wrapper's folder; a hung wrapper is released when the module's tests are done."""
    folder = tmp_path_factory.mktemp("pod-python")
    for name in ("python3", "python"):
        (folder / name).write_text(WRAPPER.format(dir=folder))
        (folder / name).chmod(0o755)
    try:
        yield folder
    finally:
        (folder / "release").touch()


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory, pod_python: Path) -> Iterator[SSHServer]:
    """The pod: the loopback sshd with the wrapper first on its sessions' PATH (e2e's sshd, here)."""
    yield from _server(tmp_path_factory.mktemp("sshd-slow"), path_first=(pod_python,))


def hang_on(folder: Path, pattern: str, real: str = sys.executable) -> None:
    (folder / "hung").unlink(missing_ok=True)
    (folder / "HANG_ON").write_text(pattern)
    (folder / "REAL").write_text(real)


@pytest.fixture
def runpod(e2e: E2E) -> Iterator[FakeRunPodAPI]:  # noqa: F811
    yield from runpod_pod_self_destructing(e2e, boot_delay_s=0.5, gpu_types=[*DEFAULT_GPU_TYPES, PRICEY],
                                           balance=100.0, spend_limit=200.0)


def launch_args(e2e: E2E, *extra: str) -> list[str]:  # noqa: F811
    return ["launch", "--provider", "runpod", "--gpu", "PRICEY", "--max-usd", str(CAP_USD), "--yes",
            "--budgets", str(e2e.budgets("runpod")), *extra]


def terminates(api: FakeRunPodAPI) -> list[dict]:
    return [r for r in api.requests if "podTerminate" in r["ops"]]


def the_run() -> Run:
    (run,) = Ledger().list_runs()
    return run


def test_controller_killed_during_a_hung_python_check_the_pod_ends_itself_at_the_deadline(
        e2e: E2E, runpod: FakeRunPodAPI, pod_python: Path) -> None:  # noqa: F811
    hang_on(pod_python, "")  # every python invocation hangs: the check never answers
    proc = e2e.popen(*launch_args(e2e, *ENDLESS_TRAIN))
    try:
        wait_for(lambda: (pod_python / "hung").exists(), 120, "bootstrap's python check on the pod")
    finally:
        proc.send_signal(signal.SIGKILL)  # the laptop closes mid-bootstrap
        proc.communicate(timeout=30)
    run = the_run()
    # The switch was armed in the first session, before the upload and the check that hangs.
    assert phases(run)[-1] == "ssh_ready" and "bootstrapped" not in phases(run), phases(run)
    (pod_id,) = ledger_instances()
    remote = e2e.remote_root / run.run_id
    assert (remote / "watchdog.armed").exists() and not (remote / "job.pid").exists()

    wait_for(lambda: runpod.pods[pod_id].gone, 120, "the pod's own self-destruct",
             diagnose=lambda: (remote / "watchdog.log").read_text())
    ends = terminates(runpod)
    assert ends and all(r["principal"] == "pod" for r in ends), ends  # its own key: no controller was left
    assert run.stop_at_epoch is not None and run.deadline_epoch is not None
    assert run.stop_at_epoch <= ends[0]["time"] < run.deadline_epoch  # at the switch's deadline, inside the cap
    assert (remote / "watchdog.reason").read_text().strip() == "deadline"
    assert runpod.meter_usd(pod_id) <= CAP_USD

    down = e2e.gpurun("teardown", run.run_id)  # a returning controller proves it gone
    assert down.returncode == 0, down.stdout + down.stderr
    assert proof_of(run)["verified"] is True


def test_a_torch_install_still_running_at_the_stop_time_is_cut_and_torn_down(
        e2e: E2E, runpod: FakeRunPodAPI, pod_python: Path, tmp_path: Path) -> None:  # noqa: F811
    bare = tmp_path / "bare"  # an image's python without torch (a throwaway venv, never the machine's)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    hang_on(pod_python, "-m pip install", real=str(bare / "bin" / "python3"))
    res = e2e.gpurun(*launch_args(e2e, *ENDLESS_TRAIN), timeout=300)

    assert res.returncode == Exit.RUN_FAILED, res.stdout + res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stdout + res.stderr, res.stderr
    assert ("bootstrap still installing numpy and torch at the stop time: use a PyTorch image or raise"
            " --max-usd") in lines[0], lines[0]
    assert (pod_python / "hung").exists()  # it was the install that hung
    run = the_run()
    assert run.end_reason == ("run failed: bootstrap still installing numpy and torch at the stop time: use a"
                              " PyTorch image or raise --max-usd")
    got = phases(run)
    assert got[-3:] == ["failed_ssh_ready", "terminating", "verified"], got
    assert "bootstrapped" not in got and "running" not in got
    # Cut at the stop time, by the controller (the user's key), before the switch had to act.
    (pod_id,) = ledger_instances()
    ends = terminates(runpod)
    assert ends and ends[0]["principal"] == "account", ends
    assert run.stop_at_epoch is not None and run.deadline_epoch is not None
    failed_at = next(e.time for e in Ledger().events(run.run_id) if e.phase == "failed_ssh_ready")
    assert run.stop_at_epoch <= failed_at <= ends[0]["time"] < run.deadline_epoch
    assert runpod.pods[pod_id].gone and runpod.meter_usd(pod_id) <= CAP_USD
    assert run.cost_usd is not None and run.cost_usd <= CAP_USD
    assert proof_of(run)["verified"] is True


def test_a_trainer_that_logs_no_step_before_the_stop_time_fails_the_run(
        e2e: E2E, runpod: FakeRunPodAPI, pod_python: Path) -> None:  # noqa: F811
    hang_on(pod_python, "-m trainer.launch")  # bootstrap passes; the trainer never gets to a step
    res = e2e.gpurun(*launch_args(e2e, *ENDLESS_TRAIN), timeout=300)

    assert res.returncode == Exit.RUN_FAILED, res.stdout + res.stderr
    run = the_run()
    assert run.end_reason is not None and run.end_reason.startswith(
        "run failed: nothing trained: no training step logged and no checkpoint saved before deadline"), run.end_reason
    assert "raise --max-usd" in run.end_reason
    assert "nothing trained" in res.stderr and "Traceback" not in res.stderr
    names = event_names(run)
    assert names.index("running") < names.index("stopping") < names.index("nothing_trained") < names.index(
        "verified"), names
    (pod_id,) = ledger_instances()
    assert runpod.pods[pod_id].gone and runpod.meter_usd(pod_id) <= CAP_USD
    card = (Path(run.run_dir) / "EVIDENCE.md").read_text()
    assert "nothing trained" in card
