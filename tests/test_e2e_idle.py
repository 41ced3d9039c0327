"""Issue 12 end to end: with the controller gone, the on-instance switch ends a run long before the money
deadline when its job has ended (idle) or makes no progress (stalled), through each provider's REAL
self-destruct path (not the GPURUN_SELF_DESTRUCT_CMD hook): RunPod's script reads the pod's own id and
key from "PID 1's environment" (a file the fake writes, RUNPOD_PID1_ENVIRON) and posts podTerminate to
the fake; DataCrunch's deletes the instance through the fake's REST API with the credential file.

The real CLI in a subprocess, SIGKILLed once the job has started; the loopback sshd is the instance."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.state.ledger import Ledger
from orchestrator.state.rows import Run
from providers.base import BillingRule
from tests.e2e_helpers import (
    E2E,
    e2e,  # noqa: F401  (fixture)
    ledger_instances,
    phases,
    point_at_datacrunch_fake,
    proof_of,
    runpod_pod_self_destructing,
    sshd,  # noqa: F401  (fixture)
    started_job_run_id,
    wait_for,
)
from tests.fakes.datacrunch_api import FakeDataCrunchAPI
from tests.fakes.runpod_api import FakeRunPodAPI

CAP_USD = 3.0
WINDOW_MIN = "0.1"  # 6 s: --idle-minutes and --stall-minutes take fractions


def real_self_destruct(e2e: E2E) -> None:  # noqa: F811
    """This test runs the provider's own self-destruct: its API calls go to the fake, nowhere else."""
    e2e.env.pop("GPURUN_SELF_DESTRUCT_CMD")


def launch_and_kill_the_controller(e2e: E2E, *args: str) -> Run:  # noqa: F811
    """`gpurun launch ...`, SIGKILLed as soon as the ledger says the job started (the switch was armed
    at bootstrap, before it): from then on only the instance's own switch acts."""
    proc = e2e.popen("launch", "--max-usd", str(CAP_USD), "--yes", *args)
    ledger = Ledger()

    try:
        run_id = wait_for(lambda: started_job_run_id(ledger), 120, "the job's start in the ledger")
    finally:
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
    run = ledger.resolve_run(run_id)
    assert "stopping" not in phases(run), out  # the controller never acted: what follows is the switch
    return run


def remote_of(e2e: E2E, run: Run) -> Path:  # noqa: F811
    return e2e.remote_root / run.run_id


def watchdog_log(remote: Path) -> str:
    path = remote / "watchdog.log"
    return path.read_text() if path.exists() else ""


def teardown_proves_it_gone(e2e: E2E, run: Run) -> dict[str, Any]:  # noqa: F811
    """A returning controller finds the instance already gone and writes the proof."""
    down = e2e.gpurun("teardown", run.run_id)
    assert down.returncode == 0, down.stdout + down.stderr
    assert Ledger().resolve_run(run.run_id).phase == "verified"
    proof = proof_of(run)
    assert proof["verified"] is True and proof["zero_match_listing"] == []
    return proof


# ---- RunPod: the job ends by itself, the controller is gone: idle ---------------------------------------


@pytest.fixture
def runpod(e2e: E2E) -> Iterator[FakeRunPodAPI]:  # noqa: F811
    yield from runpod_pod_self_destructing(e2e, boot_delay_s=0.5)


def test_runpod_pod_destroys_itself_once_its_job_ended_and_no_controller_is_seen(
    e2e: E2E, runpod: FakeRunPodAPI  # noqa: F811
) -> None:
    run = launch_and_kill_the_controller(
        e2e, "--provider", "runpod", "--budgets", str(e2e.budgets("runpod")), "--idle-minutes", WINDOW_MIN,
        "--", "sh", "-c", "sleep 2; echo done")
    (pod_id,) = ledger_instances()
    pod = runpod.pods[pod_id]
    remote = remote_of(e2e, run)
    wait_for(lambda: pod.gone, 90, f"the pod's own self-destruct; watchdog.log: {watchdog_log(remote)}")

    terminates = [r for r in runpod.requests if "podTerminate" in r["ops"]]
    assert terminates and all(r["principal"] == "pod" for r in terminates), terminates  # the pod's own key
    destroyed_at = terminates[0]["time"]
    assert run.stop_at_epoch is not None and run.deadline_epoch is not None
    # Long before the money deadline (hours away at this price): even before the guard's stop time.
    assert destroyed_at < run.stop_at_epoch < run.deadline_epoch
    # The job ran to its end and its outputs were on disk, kept, until the pod went.
    assert (remote / "job.exit").read_text().strip() == "0"
    assert (remote / "job.log").read_text() == "done\n"
    assert (remote / "job.log").stat().st_mtime <= (remote / "job.exit").stat().st_mtime < destroyed_at
    assert (remote / "watchdog.reason").read_text().strip() == "idle"
    assert "reason: idle" in watchdog_log(remote)
    # The meter stopped with the pod: a small fraction of the cap.
    assert runpod.meter_usd(pod_id) < CAP_USD / 100

    proof = teardown_proves_it_gone(e2e, run)
    assert proof["final_describe"][0]["state"] == "not_found"


# ---- DataCrunch: a silent job, the controller is gone: stalled, then idle ------------------------------


@pytest.fixture
def datacrunch(e2e: E2E) -> Iterator[FakeDataCrunchAPI]:  # noqa: F811
    api = FakeDataCrunchAPI(billing=BillingRule(1, 0, "test: per second"), ip=e2e.sshd.host,
                            ordered_s=0.3, provisioning_s=1.0).start()
    real_self_destruct(e2e)
    point_at_datacrunch_fake(e2e, api)
    try:
        yield api
    finally:
        api.stop()


def test_datacrunch_stalled_job_is_stopped_and_the_instance_deletes_itself(
    e2e: E2E, datacrunch: FakeDataCrunchAPI  # noqa: F811
) -> None:
    budgets = e2e.budgets("datacrunch", billing={"increment_s": 1, "minimum_s": 0, "source": "test: per second"})
    run = launch_and_kill_the_controller(
        e2e, "--provider", "datacrunch", "--budgets", str(budgets),
        "--stall-minutes", WINDOW_MIN, "--idle-minutes", WINDOW_MIN, "--", "sh", "-c", "sleep 100000")
    (iid,) = ledger_instances()
    remote = remote_of(e2e, run)
    wait_for(lambda: datacrunch.status_of(iid) == "discontinued", 90,
             f"the instance's own delete; watchdog.log: {watchdog_log(remote)}")

    deletes = [r for r in datacrunch.calls("PUT", "/instances") if r["action"] == "delete"]
    assert deletes and deletes[0]["status"] == 202, deletes
    deleted_at = deletes[0]["time"]
    assert run.stop_at_epoch is not None and deleted_at < run.stop_at_epoch  # long before the money ran out
    # The silent job was SIGTERMed (it could checkpoint) before the instance went.
    assert (remote / "job.exit").read_text().strip() == "143"
    assert (remote / "job.exit").stat().st_mtime < deleted_at
    assert (remote / "watchdog.reason").read_text().strip() == "stalled"
    log = watchdog_log(remote)
    assert log.index("stalled: job.log has not changed") < log.index("sent SIGTERM to job job")
    assert log.index("sent SIGTERM to job job") < log.index("running the self-destruct command")
    meter = datacrunch.meter(iid)
    assert meter["running"] is False and meter["usd"] < CAP_USD / 100

    proof = teardown_proves_it_gone(e2e, run)
    assert proof["final_describe"][0]["raw"]["status"] == "discontinued"
