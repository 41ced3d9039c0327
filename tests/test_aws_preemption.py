"""AWS spot preemption (issue 16): `get` says when EC2 took a spot instance back (StateReason, else
the spot request's status) and never for our own termination or a launch that never booted; the
on-instance watch (providers/scripts/aws_spot_notice.sh) turns EC2's two-minute notice in the
instance metadata into ROOT/spot.notice and a signal to the job's process group.

The real boto3 against moto's server; what moto does not do (interrupt a spot instance, describe
its spot request) is put into moto's backend or answered at the boto3 boundary in the real shapes.
The metadata service is a local HTTP server that answers like IMDSv2.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from providers.aws import AWSProvider
from providers.base import STOPPING, TERMINATED
from tests.e2e_helpers import wait_for as shared_wait_for
from tests.fixtures.moto_server import MotoAWS, moto_aws, moto_server  # noqa: F401  (fixtures)
from tests.test_aws_capacity import answer, provider, pubkey, spec_for  # noqa: F401  (pubkey: a fixture)

SCRIPT = Path(__file__).resolve().parents[1] / "providers" / "scripts" / "aws_spot_notice.sh"

# ------------------------------------------------------------------ 1. `get` after the fact

# What real EC2 describes after a spot interruption (StateReason; the codes and their meaning:
# https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_StateReason.html).
SPOT_TERMINATION = ("Server.SpotInstanceTermination", "Server.SpotInstanceTermination: Spot instance termination")


def reclaim(instance_id: str, region: str, state: str, code: str, message: str,
            request_id: str | None = None) -> None:
    """Put a state and StateReason (and the SpotInstanceRequestId real EC2 describes for a spot
    instance) on a moto instance: moto never interrupts a spot instance, nor links it to a request."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ec2.models import ec2_backends
    from moto.ec2.models.instances import StateReason

    inst = ec2_backends[DEFAULT_ACCOUNT_ID][region].get_instance(instance_id)
    inst._state.name = state
    inst._state.code = {"shutting-down": 32, "terminated": 48, "stopping": 64, "stopped": 80}[state]
    inst.state_reason = StateReason(message, code)
    if request_id:
        inst.spot_instance_request_id = request_id


def reclaim_after(after_s: float, instance_id: str, region: str, state: str = "shutting-down",
                  code: str = SPOT_TERMINATION[0], message: str = SPOT_TERMINATION[1]) -> threading.Timer:
    """The timed knob: EC2 takes the spot instance back `after_s` seconds from now (moto has no clock
    of its own for it), with the reason real EC2 describes; `reclaim` is the on-request one."""
    timer = threading.Timer(after_s, reclaim, args=(instance_id, region, state, code, message))
    timer.daemon = True
    timer.start()
    return timer


def spot_request_answers(p: AWSProvider, status: str | None, error_code: str = "") -> list[dict]:
    """Answer DescribeSpotInstanceRequests (moto keeps no request for RunInstances' spot) with the
    real output shape, or the real error; returns the requests seen."""
    def reply(params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if error_code:
            return 403, {"Error": {"Code": error_code, "Message": "You are not authorized to perform this operation."}}
        rid = params.get("SpotInstanceRequestId.1", "sir-?")
        return 200, {"SpotInstanceRequests": [{
            "SpotInstanceRequestId": rid, "State": "closed", "Type": "one-time",
            # The code's meaning, as "Spot request status codes" words it:
            # https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/spot-request-status.html
            "Status": {"Code": status, "Message": "Your Spot Instance was terminated because there is no Spot "
                       "capacity available that matches your request."},
        }]}

    return answer(p.ec2, "before-call.ec2.DescribeSpotInstanceRequests", reply)


def test_a_spot_instance_ec2_reclaimed_is_preempted(moto_aws: MotoAWS, pubkey: str) -> None:  # noqa: F811
    p = provider()
    inst = p.create(spec_for(p, "aws-reclaim", pubkey, gpu="L40S", spot=True))
    assert p.get(inst.id).preempted == ""  # running
    reclaim(inst.id, moto_aws.region, "shutting-down", *SPOT_TERMINATION)
    got = p.get(inst.id)
    assert got.state == STOPPING and not got.gone  # the state stays what EC2 says: gone only when terminated
    assert "Server.SpotInstanceTermination" in got.preempted and inst.id in got.preempted
    assert "\n" not in got.preempted and got.boot_failure == ""
    reclaim(inst.id, moto_aws.region, "terminated", *SPOT_TERMINATION)
    got = p.get(inst.id)
    assert got.state == TERMINATED and got.preempted
    # list_owned reads the same StateReason (no extra call per instance).
    assert [i.preempted for i in p.list_owned() if i.id == inst.id] == [got.preempted]


def test_a_timed_reclaim_lands_on_its_own_and_get_reports_it(moto_aws: MotoAWS, pubkey: str) -> None:  # noqa: F811
    p = provider()
    inst = p.create(spec_for(p, "aws-timed", pubkey, gpu="L40S", spot=True))
    assert p.get(inst.id).preempted == ""
    timer = reclaim_after(0.2, inst.id, moto_aws.region)  # nothing more is asked of EC2: its clock runs
    timer.join(timeout=30)  # a hang guard only
    assert "Server.SpotInstanceTermination" in p.get(inst.id).preempted


def test_the_spot_request_status_says_when_the_state_reason_does_not(moto_aws: MotoAWS, pubkey: str) -> None:  # noqa: F811
    p = provider()
    inst = p.create(spec_for(p, "aws-reqstatus", pubkey, gpu="L40S", spot=True))
    seen = spot_request_answers(p, "instance-terminated-no-capacity")
    assert p.get(inst.id).preempted == "" and seen == []  # running: no request look-up
    reclaim(inst.id, moto_aws.region, "terminated", "", "", request_id="sir-0123abcd")
    got = p.get(inst.id)
    assert "instance-terminated-no-capacity" in got.preempted and inst.id in got.preempted
    assert got.raw["spot_request_status"]["Code"] == "instance-terminated-no-capacity"
    assert [s.get("SpotInstanceRequestId.1") for s in seen] == ["sir-0123abcd"]


@pytest.mark.parametrize("status", ["instance-terminated-by-user", "marked-for-termination", "fulfilled"])
def test_a_spot_request_status_that_is_no_interruption_is_not_a_preemption(
    moto_aws: MotoAWS, pubkey: str, status: str  # noqa: F811
) -> None:
    p = provider()
    inst = p.create(spec_for(p, "aws-notreclaimed", pubkey, gpu="L40S", spot=True))
    spot_request_answers(p, status)
    reclaim(inst.id, moto_aws.region, "terminated", "", "", request_id="sir-0123abcd")
    assert p.get(inst.id).preempted == ""


def test_an_unreadable_spot_request_leaves_get_working(moto_aws: MotoAWS, pubkey: str) -> None:  # noqa: F811
    p = provider()
    inst = p.create(spec_for(p, "aws-noperm", pubkey, gpu="L40S", spot=True))
    spot_request_answers(p, None, error_code="UnauthorizedOperation")
    reclaim(inst.id, moto_aws.region, "terminated", "", "", request_id="sir-0123abcd")
    got = p.get(inst.id)
    assert got.state == TERMINATED and got.preempted == ""


def test_our_own_terminate_is_no_preemption(moto_aws: MotoAWS, pubkey: str) -> None:  # noqa: F811
    p = provider()
    inst = p.create(spec_for(p, "aws-ourterm", pubkey, gpu="L40S", spot=True))
    seen = spot_request_answers(p, "instance-terminated-no-capacity")  # even if the request said so
    p.terminate(inst.id)
    got = p.get(inst.id)
    assert got.state == TERMINATED and got.preempted == ""  # moto: Client.UserInitiatedShutdown
    assert got.raw["state_reason"]["Code"] == "Client.UserInitiatedShutdown"
    # The dead-man's switch's `shutdown -h` (InstanceInitiatedShutdownBehavior=terminate) is ours too.
    reclaim(inst.id, moto_aws.region, "terminated", "Client.InstanceInitiatedShutdown",
            "Client.InstanceInitiatedShutdown: Instance initiated shutdown", request_id="sir-0123abcd")
    assert p.get(inst.id).preempted == ""
    assert seen == []  # a StateReason that says who ended it needs no request look-up


def test_a_launch_that_never_booted_is_a_boot_failure_not_a_preemption(
    moto_aws: MotoAWS, pubkey: str  # noqa: F811
) -> None:
    p = provider()
    inst = p.create(spec_for(p, "aws-noboot-spot", pubkey, gpu="L40S", spot=True))
    reclaim(inst.id, moto_aws.region, "terminated", "Server.InsufficientInstanceCapacity",
            "Server.InsufficientInstanceCapacity: Insufficient capacity.")
    got = p.get(inst.id)
    assert got.boot_failure and got.preempted == ""


# ------------------------------------------------------------- 2. the notice on the instance


@dataclass
class Imds:
    """IMDSv2 as the spot notice page describes it: a token from PUT /latest/api/token (the TTL
    header required), GET .../spot/instance-action with that token: 404 until EC2 marks the
    instance, then the notice's JSON; a GET without the token is refused (HttpTokens=required)."""
    url: str = ""
    notice: dict[str, str] | None = None
    token: str = "AQAEAtoken-gpurun-test=="
    log: list[tuple[str, str, int]] = field(default_factory=list)  # (method, path, status)

    def gets(self) -> int:
        return sum(1 for m, p, _ in self.log if m == "GET" and p.endswith("/spot/instance-action"))


@pytest.fixture
def imds() -> Iterator[Imds]:
    state = Imds()

    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: str = "") -> None:
            state.log.append((self.command, self.path, status))
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_PUT(self) -> None:  # noqa: N802  (http.server's name)
            if self.path != "/latest/api/token":
                return self._send(404)
            if not self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                return self._send(400)  # real IMDS: the TTL header is required
            self._send(200, state.token)

        def do_GET(self) -> None:  # noqa: N802
            if self.headers.get("X-aws-ec2-metadata-token") != state.token:
                return self._send(401)
            if self.path != "/latest/meta-data/spot/instance-action" or state.notice is None:
                return self._send(404)
            self._send(200, json.dumps(state.notice))

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    shared_wait_for(check, timeout_s, what, every_s=0.05)  # a hang guard only (tests/e2e_helpers.py)


def tool_path(tmp_path: Path, fetcher: str) -> str:
    """A PATH with only what the script needs and ONE way to fetch: each fallback is really run."""
    found = shutil.which(fetcher) if fetcher != "python3" else sys.executable
    if not found:
        pytest.skip(f"{fetcher} is not installed here")
    bin_dir = tmp_path / f"bin-{fetcher}"
    bin_dir.mkdir()
    for tool in ("sh", "cat", "mv", "sleep", "date", "grep"):
        (bin_dir / tool).symlink_to(shutil.which(tool) or pytest.fail(f"no {tool}"))
    (bin_dir / fetcher).symlink_to(found)
    return str(bin_dir)


# The job: a process group leader and a child in its group, each recording the signal it got.
JOB_LEADER = r"""
root=$1
sh -c 'trap "echo USR1 > \"$0/child.got\"; exit 0" USR1; while :; do sleep 0.05; done' "$root" &
trap 'echo USR1 > "$root/leader.got"; wait; exit 0' USR1
echo $$ > "$root/job.pid"
while :; do sleep 0.05; done
"""


def start_job(root: Path) -> subprocess.Popen[bytes]:
    job = subprocess.Popen(["sh", "-c", JOB_LEADER, "job", str(root)], start_new_session=True)
    wait_for(lambda: (root / "job.pid").exists(), "job.pid")
    return job


def start_watch(root: Path, imds: Imds, path: str | None = None, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "GPURUN_IMDS_URL": imds.url, "GPURUN_SPOT_POLL_S": "0.05"}
    if path:
        env["PATH"] = path
    return subprocess.Popen(["sh", str(SCRIPT), str(root), *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def stop(proc: subprocess.Popen[Any], *, group: bool = False) -> None:
    """End what a test started: the job's whole group (its own session), or the watch alone."""
    if group:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    elif proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


NOTICE = {"action": "terminate", "time": "2026-12-01T10:02:00Z"}


@pytest.mark.parametrize("fetcher", ["curl", "wget", "python3"])
def test_the_notice_is_recorded_once_and_the_jobs_process_group_signalled(
    tmp_path: Path, imds: Imds, fetcher: str
) -> None:
    path = tool_path(tmp_path, fetcher)
    job = start_job(tmp_path)
    watch = start_watch(tmp_path, imds, path)
    try:
        wait_for(lambda: imds.gets() >= 3, "three polls")  # 404s: no notice yet, nothing done
        assert not (tmp_path / "spot.notice").exists() and not (tmp_path / "leader.got").exists()
        assert watch.poll() is None
        imds.notice = NOTICE
        out, _ = watch.communicate(timeout=30)
        assert watch.returncode == 0, out
        assert json.loads((tmp_path / "spot.notice").read_text()) == NOTICE
        job.wait(timeout=30)  # the job's own trap ended it
        assert (tmp_path / "leader.got").read_text().strip() == "USR1"
        assert (tmp_path / "child.got").read_text().strip() == "USR1"  # the whole process group
        assert "sent SIGUSR1" in out and fetcher in out
        # Every read carried the session token: none was refused.
        assert all(status != 401 for _, _, status in imds.log) and ("PUT", "/latest/api/token", 200) in imds.log
    finally:
        stop(watch)
        stop(job, group=True)


def test_a_notice_before_the_job_started_signals_it_once_it_has(tmp_path: Path, imds: Imds) -> None:
    imds.notice = NOTICE
    watch = start_watch(tmp_path, imds)
    job: subprocess.Popen[bytes] | None = None
    try:
        wait_for(lambda: (tmp_path / "spot.notice").exists(), "spot.notice")
        assert watch.poll() is None  # still waiting for a job to tell
        job = start_job(tmp_path)
        out, _ = watch.communicate(timeout=30)
        assert watch.returncode == 0 and "sent SIGUSR1" in out, out
        job.wait(timeout=30)
        assert (tmp_path / "leader.got").exists()
    finally:
        stop(watch)
        if job:
            stop(job, group=True)


def test_a_job_that_already_ended_is_not_signalled(tmp_path: Path, imds: Imds) -> None:
    (tmp_path / "job.pid").write_text("999999\n")
    (tmp_path / "job.exit").write_text("0\n")
    imds.notice = NOTICE
    out = subprocess.run(["sh", str(SCRIPT), str(tmp_path)], capture_output=True, text=True, timeout=30,
                         env={**os.environ, "GPURUN_IMDS_URL": imds.url, "GPURUN_SPOT_POLL_S": "0.05"})
    assert out.returncode == 0 and "nothing to signal" in out.stdout, out.stdout
    assert json.loads((tmp_path / "spot.notice").read_text()) == NOTICE


def test_the_signal_and_job_name_are_arguments_and_bad_ones_are_refused(tmp_path: Path, imds: Imds) -> None:
    env = {**os.environ, "GPURUN_IMDS_URL": imds.url, "GPURUN_SPOT_POLL_S": "0.05"}
    for args in ([str(tmp_path / "absent")], [str(tmp_path), "../x"], [str(tmp_path), "job", "KILL"]):
        got = subprocess.run(["sh", str(SCRIPT), *args], capture_output=True, text=True, timeout=30, env=env)
        assert got.returncode == 2, (args, got.stdout)
    (tmp_path / "train.pid").write_text("999999\n")
    (tmp_path / "train.exit").write_text("0\n")
    imds.notice = NOTICE
    got = subprocess.run(["sh", str(SCRIPT), str(tmp_path), "train", "TERM"], capture_output=True, text=True,
                         timeout=30, env=env)
    assert got.returncode == 0 and "job train already ended" in got.stdout, got.stdout
