# ruff: noqa: F811  (fixtures are imported and taken by name, as pytest does)
"""Issue 16 end to end: a spot run preempted mid-training resumes on a second instance, through the
real CLI and each provider's real SDK against its fake (RunPod GraphQL, DataCrunch REST, moto's EC2).

The test starts `gpurun launch --provider X --spot` in the background, waits (a hang guard only) until
a checkpoint of the job has come home and verifies, and then has the cloud take the instance back:
first the fake is told (the provider now reports the instance preempted), then the loopback
"instance" is powered off (`e2e_helpers.power_off`: the run's processes die, its disk is gone), so
the second instance starts empty and can only resume from the checkpoint gpurun pushes from home.
The assertions are on what happened and in which order, and on money, never on how long it took:
- the trainer on the second instance logs `resumed: checkpoints/<file> at step N`, the checkpoint
  and step the `resuming` event names, at or after what the test saw at home, and then finishes
  by max_iters (`stopped: max_iters`; the lost instance's log stays home as train.attempt-1.log);
- events: preempted -> the lost instance asked to go -> resuming -> verified, two creates, two jobs;
- the shutdown proof lists both instances, verified, with one attempt of cause "preempted";
- the provider's meter of both instances together is within --max-usd, and so is the run's cost.

Trainer settings: ckpt_interval_s=1 and --sync-interval 1 bring a checkpoint home within a few
seconds of the job's start. The resumed job ends by max_iters (not by the budget guard: the caps
buy minutes at these prices). MAX_ITERS is sized from the tiny preset's speed here (40-70 steps/s
on the 2-core machine, loaded or not; the first job was killed 100-200 steps in, also with two
CPU hogs running beside it: 500 is 2.5 times that) so that the first job is still training when the
test preempts it, and the second finishes the rest in seconds. Should the first job ever finish first, the test fails
saying so (checkpoint_home), never silently passes.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.state.ledger import Ledger
from orchestrator.state.phases import is_phase
from orchestrator.state.rows import Run
from providers.aws import elapsed_seconds
from providers.base import NOT_FOUND, TERMINATED
from tests.e2e_helpers import (
    E2E,
    assert_trained_and_synced,
    e2e,  # noqa: F401  (fixture)
    point_at_datacrunch_fake,
    power_off,
    proof_of,
    sshd,  # noqa: F401  (fixture)
    wait_for,
)
from tests.fakes.datacrunch_api import FakeDataCrunchAPI
from tests.fakes.runpod_api import FakeRunPodAPI
from tests.fixtures.moto_server import MotoAWS, moto_aws, moto_server  # noqa: F401  (fixtures)
from tests.test_aws_preemption import SPOT_TERMINATION, reclaim
from tests.test_e2e_aws import AWS_RULE, all_instances
from tests.test_e2e_runpod import fake  # noqa: F401  (fixture: the RunPod fake, pods on the loopback sshd)

MAX_ITERS = 500
TRAIN = ["--set", f"max_iters={MAX_ITERS}", "--set", "log_interval=50", "--set", "eval_interval=100000",
         "--set", "eval_iters=2", "--set", "ckpt_interval_s=1", "--set", "sample_tokens=10"]
HANG_GUARD_S = 240  # only stops a hung test; nothing is asserted about how long anything took


class Launch:
    """`gpurun launch` in the background, its output read as it comes (a full pipe would block it)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait(self) -> int:
        try:
            code = self.proc.wait(timeout=HANG_GUARD_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail(f"the launch did not end within {HANG_GUARD_S} s:\n{self.output[-4000:]}")
        self.reader.join(timeout=10)
        return code


@pytest.fixture
def background(e2e: E2E) -> Iterator[Callable[..., Launch]]:
    """Starts `gpurun ...` in the background; one still running when the test ends (it failed) is killed
    before the e2e fixture powers the "instance" off, so nothing of it outlives the test."""
    started: list[Launch] = []

    def start(*args: str) -> Launch:
        started.append(Launch(e2e.popen(*args)))
        return started[-1]

    yield start
    for launch in started:
        if launch.proc.poll() is None:
            launch.proc.kill()
            launch.proc.wait(timeout=30)


def checkpoint_home(launch: Launch) -> tuple[Run, str, int]:
    """Wait until a checkpoint of the running job has come home and verifies: (run, the instance it
    runs on, the checkpoint's step). Fails at once if the launch ends first (nothing was preempted)."""
    from trainer.manifest import latest_valid

    def seen() -> tuple[Run, str, int] | None:
        if launch.proc.poll() is not None:
            pytest.fail(f"the launch ended before the test preempted it:\n{launch.output[-4000:]}")
        ledger = Ledger()
        runs = ledger.list_runs()
        if not runs:
            return None
        run = runs[0]
        entry, _ = latest_valid(Path(run.run_dir) / "out" / "checkpoints")
        instances = ledger.instances(run.run_id)
        if entry is None or not instances:
            return None
        return run, instances[0].instance_id, int(entry.step)

    return wait_for(seen, HANG_GUARD_S, "a verified checkpoint at home", lambda: launch.output[-4000:])


def preempt_mid_training(e2e: E2E, launch: Launch, tell_the_cloud: Callable[[str], object]) -> tuple[str, str, int]:
    """The cloud takes the first instance back once a checkpoint is home: (run id, its id, the step seen)."""
    run, first, step = checkpoint_home(launch)
    tell_the_cloud(first)  # the provider reports it preempted ...
    power_off(e2e.remote_root / run.run_id)  # ... and the machine is off: the job dies, the disk is gone
    return run.run_id, first, step


def assert_resumed_and_proved(run_id: str, first: str, step_seen: int, max_usd: float,
                              output: str) -> tuple[Run, list[str], dict[str, Any]]:
    """Everything the issue asks of a preempted spot run, but the provider's own meter: returns the run,
    its two instance ids (the lost one first) and the lost attempt."""
    ledger = Ledger()
    run = ledger.resolve_run(run_id)
    assert run.phase == "verified" and run.job_exit_code == 0, (run.end_reason, run.error, output[-4000:])
    ids = [i.instance_id for i in ledger.instances(run_id)]
    assert len(ids) == 2 and ids[0] == first and ids[1] != first, ids

    # The order of events: preempted -> the lost instance asked to go -> resuming (on the second) -> verified.
    events = ledger.events(run_id)
    names = [e.phase for e in events]
    preempted = names.index("preempted")
    assert events[preempted].payload["instance_id"] == first
    asked = next(i for i, e in enumerate(events) if e.phase == "terminate_request"
                 and e.payload.get("instance_id", first) == first)
    second = names.index("creating", names.index("running"))  # the second create came after the first job
    resuming = names.index("resuming")
    assert preempted < asked < second < resuming < names.index("running", second) < names.index("verified"), names
    phases = [n for n in names if is_phase(n)]
    assert phases.count("creating") == 2 and phases.count("running") == 2 and phases[-1] == "verified", phases

    # The trainer on the second instance resumed from the checkpoint that came home, and finished.
    resumed = events[resuming].payload
    assert resumed["instance_id"] == ids[1] and resumed["checkpoint"] and resumed["step"] >= step_seen > 0, resumed
    out = Path(run.run_dir) / "out"
    log = (out / "train.log").read_text()
    assert f"resumed: checkpoints/{resumed['checkpoint']} at step {resumed['step']}" in log, log[-2000:]
    assert f"stopped: max_iters at step {MAX_ITERS}" in log, log[-2000:]
    assert_trained_and_synced(run, finished=True)
    lost_log = (out / "train.attempt-1.log").read_text()  # the lost instance's log, kept home
    assert "stopped:" not in lost_log, lost_log[-2000:]  # it died training: it never stopped on its own

    # The proof: both instances verified gone, the lost one as a preempted attempt; inside one cap.
    proof = proof_of(run)
    assert sorted(proof["instance_ids"]) == sorted(ids) and proof["verified"] is True, proof
    gone = {d["id"]: d["state"] in (TERMINATED, NOT_FOUND) for d in proof["final_describe"]}
    assert gone == {i: True for i in ids}, proof["final_describe"]
    assert proof["zero_match_listing"] == []
    (lost,) = proof["attempts"]
    assert lost["cause"] == "preempted" and lost["instance_id"] == first, lost
    assert 0 < lost["cost_usd"] and run.cost_usd is not None and lost["cost_usd"] < run.cost_usd <= max_usd
    return run, ids, lost


# ---- RunPod ---------------------------------------------------------------------------------------


def test_runpod_spot_run_preempted_mid_training_resumes_on_a_second_pod(e2e: E2E, fake: FakeRunPodAPI,
                                                                        background: Callable[..., Launch]) -> None:
    cap = 0.05  # the RTX 4090's community spot price, 0.2 USD/h: 15 minutes, far more than the run takes
    launch = background("launch", "--provider", "runpod", "--spot", "--gpu", "RTX 4090", "--max-usd", str(cap),
                        "--yes", "--budgets", str(e2e.budgets("runpod")), "--sync-interval", "1", *TRAIN)
    run_id, first, step = preempt_mid_training(e2e, launch, fake.preempt)
    code = launch.wait()
    assert code == 0, launch.output[-4000:]
    run, ids, lost = assert_resumed_and_proved(run_id, first, step, cap, launch.output)

    assert "Outbid" in lost["reason"] and fake.pods[first].ended_by == "platform"
    for pod_id in ids:
        pod = fake.pods[pod_id]
        assert pod.spot and pod.gone, pod_id
    assert fake.pods[ids[1]].ended_by == "account" and not fake.live_pods()
    assert fake.count("podRentInterruptable") == 2
    assert fake.meter_usd() <= cap, [fake.billed_seconds(p) for p in ids]


# ---- DataCrunch -----------------------------------------------------------------------------------


@pytest.fixture
def datacrunch(e2e: E2E) -> Iterator[FakeDataCrunchAPI]:
    from orchestrator.money.budgets_file import load_budgets, packaged_budgets_file

    # The meter bills as budgets.yaml does for DataCrunch (whole 10 minutes), so the cap is tested as planned.
    api = FakeDataCrunchAPI(billing=load_budgets(packaged_budgets_file()).billing_for("datacrunch"),
                            ip=e2e.sshd.host, ordered_s=0.2, provisioning_s=0.5).start()
    point_at_datacrunch_fake(e2e, api)
    try:
        yield api
    finally:
        api.stop()


def test_datacrunch_spot_run_preempted_mid_training_resumes_on_a_second_instance(
        e2e: E2E, datacrunch: FakeDataCrunchAPI, background: Callable[..., Launch]) -> None:
    # 1V100.6V at 0.13 USD/h spot, billed by whole 10 minutes: each instance bills 0.0217 USD, both
    # together 0.0433; what is left after the lost one still buys far more than the resumed job takes.
    cap = 0.1
    launch = background("launch", "--provider", "datacrunch", "--spot", "--gpu", "V100", "--max-usd", str(cap),
                        "--yes", "--budgets", str(e2e.budgets("datacrunch")), "--sync-interval", "1", *TRAIN)
    run_id, first, step = preempt_mid_training(e2e, launch, datacrunch.reclaim_spot)
    code = launch.wait()
    assert code == 0, launch.output[-4000:]
    run, ids, lost = assert_resumed_and_proved(run_id, first, step, cap, launch.output)

    for iid in ids:
        assert datacrunch.status_of(iid) == "discontinued" and datacrunch.meter(iid)["running"] is False, iid
    assert datacrunch.instances[first].reclaimed_at is not None  # the platform's, not our delete
    assert datacrunch.instances[ids[1]].reclaimed_at is None
    assert datacrunch.billed_volumes() == []  # the reclaimed one's disk did not stay behind billing either
    assert datacrunch.total_usd() <= cap, [datacrunch.meter(i) for i in ids]


# ---- AWS (moto) -----------------------------------------------------------------------------------


@pytest.fixture
def aws(e2e: E2E, moto_aws: MotoAWS) -> Iterator[Any]:
    import boto3

    e2e.env["GPURUN_SSH_OVERRIDE"] = f"{e2e.sshd.host}:{e2e.sshd.port}:{e2e.sshd.user}"
    yield boto3.client("ec2", region_name=moto_aws.region)


def test_aws_spot_run_preempted_mid_training_resumes_on_a_second_instance(
        e2e: E2E, aws: Any, moto_aws: MotoAWS, background: Callable[..., Launch]) -> None:
    # moto's spot price (0.00001 USD/h) + the 100 GB gp3 root volume: about 0.011 USD/h, 60 s minimum.
    cap = 0.05
    launch = background("launch", "--provider", "aws", "--spot", "--gpu", "g5.xlarge", "--max-usd", str(cap),
                        "--yes", "--budgets", str(e2e.budgets("aws")), "--sync-interval", "1", "--recipe", "smoke",
                        *TRAIN)  # the loopback instance trains the CPU smoke recipe: the egress planned is its

    def reclaimed(iid: str) -> None:
        # What EC2 does to a spot instance it takes back (moto never does): shutting-down, with the
        # Server.SpotInstanceTermination StateReason, in the same moto the CLI talks to over HTTP.
        reclaim(iid, moto_aws.region, "shutting-down", *SPOT_TERMINATION)

    run_id, first, step = preempt_mid_training(e2e, launch, reclaimed)
    # moto (unlike EC2) dates a terminated instance's end again at every later TerminateInstances, and
    # the final teardown asks once more for every instance of the run: read the lost one's end when
    # gpurun has retired it (the resume comes after that), which is what EC2 would keep saying.
    wait_for(lambda: launch.proc.poll() is not None or "resuming" in [e.phase for e in Ledger().events(run_id)],
             HANG_GUARD_S, "the resume", lambda: launch.output[-4000:])
    (retired,) = [d for d in all_instances(aws) if d["InstanceId"] == first]
    code = launch.wait()
    assert code == 0, launch.output[-4000:]
    run, ids, lost = assert_resumed_and_proved(run_id, first, step, cap, launch.output)

    assert "Server.SpotInstanceTermination" in lost["reason"]
    described = {d["InstanceId"]: d for d in all_instances(aws)}
    assert sorted(described) == sorted(ids) and retired["State"]["Name"] == "terminated"
    described[first] = retired
    meter = 0.0
    for iid in ids:
        desc = described[iid]
        assert desc["InstanceType"] == "g5.xlarge"
        assert desc["State"]["Name"] == "terminated" and desc.get("InstanceLifecycle") == "spot", desc
        hourly = float(next(t["Value"] for t in desc["Tags"] if t["Key"] == "gpurun:usd-per-hour"))
        meter += AWS_RULE.cost(elapsed_seconds(desc), hourly)  # LaunchTime to moto's termination time
    assert meter <= cap, meter
