# ruff: noqa: F811  (the provider tests' `fake` fixture is imported and taken by name, as pytest does)
"""RunPod preemption: `get` reads an interruptible pod the platform stopped as preempted (and nothing else).

The real `runpod` SDK talks HTTP to the GraphQL fake (tests/fakes/runpod_api.py), which takes spot pods
back on request (`preempt`) or on a knob (`preempt_after_s`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from providers.base import NOT_FOUND, RUNNING, STOPPED, InstanceSpec, Offer
from providers.runpod import RunPodProvider
from providers.runpod.preemption import preemption_reason
from tests.e2e_helpers import wait_for
from tests.fakes.runpod_api import FakeRunPodAPI
from tests.offer_helpers import pick_offer
from tests.test_runpod_provider import PUBKEY, fake  # noqa: F401  (fixture)


def make(fake: FakeRunPodAPI, tmp_path: Path, **kw: Any) -> RunPodProvider:
    return RunPodProvider(api_key=fake.api_key, config_path=tmp_path / "none.toml", backoff_initial_s=0.01,
                          backoff_max_s=0.05, request_timeout_s=5, self_destruct_api_base=fake.base_url, **kw)


def offer(p: RunPodProvider, spot: bool) -> Offer:
    return pick_offer(p.offers(gpu="4090", spot=spot), "4090")


def launch(p: RunPodProvider, spot: bool, run_id: str) -> str:
    return p.create(InstanceSpec(run_id=run_id, offer=offer(p, spot), ssh_public_key=PUBKEY)).id


def test_preempted_spot_pod_reads_preempted_and_stops_gpu_billing(fake: FakeRunPodAPI,
                                                                  tmp_path: Path) -> None:
    p = make(fake, tmp_path, volume_gb=10)
    pod_id = launch(p, spot=True, run_id="spot-pre1")
    before = p.get(pod_id)
    assert before.state == RUNNING and before.preempted == ""

    fake.preempt(pod_id)
    inst = p.get(pod_id)
    # The pod stays (stopped, its volume kept): the state is what RunPod reports, the reason one line.
    assert inst.state == STOPPED and inst.ssh is None
    assert inst.raw["podType"] == "INTERRUPTABLE" and inst.raw["lastStatusChange"].startswith("Outbid: ")
    assert "interruptible pod" in inst.preempted and pod_id in inst.preempted and "\n" not in inst.preempted
    assert [i.preempted for i in p.list_owned()] == [inst.preempted]
    pod = fake.pods[pod_id]
    assert pod.ended_by == "platform" and pod.terminated_by is None and fake.count("podTerminate") == 0
    # GPU billing ended at the reclaim; only the volume bills now, at the stopped rate, while the pod exists.
    assert pod.ended == pod.stopped_at and fake.meter_usd(pod_id) == fake.meter_usd(pod_id)
    assert p.account()["current_spend_usd_per_hour"] == 0
    (billable,) = p.inventory()
    assert billable.state == "EXITED" and billable.usd_per_hour == pytest.approx(10 * 0.20 / 730, abs=1e-6)
    # Tearing it down afterwards is ours, and the reclaim stays recorded as the platform's.
    p.terminate(pod_id)
    assert p.get(pod_id).state == NOT_FOUND and pod.ended_by == "platform" and pod.terminated_by == "account"


def test_reclaim_text_is_not_required(fake: FakeRunPodAPI, tmp_path: Path) -> None:
    """RunPod does not publish the lastStatusChange wording of a reclaim: another one reads the same."""
    p = make(fake, tmp_path)
    pod_id = launch(p, spot=True, run_id="spot-pre2")
    fake.preempt(pod_id, text="Exited by Runpod")
    assert "Exited by Runpod" in p.get(pod_id).preempted


def test_pods_we_stop_are_not_preempted(fake: FakeRunPodAPI, tmp_path: Path) -> None:
    p = make(fake, tmp_path)
    on_demand = launch(p, spot=False, run_id="od-stop1")
    spot = launch(p, spot=True, run_id="spot-stop1")
    with pytest.raises(ValueError, match="on-demand"):
        fake.preempt(on_demand)  # RunPod does not take reserved pods back
    for pod_id in (on_demand, spot):
        p.stop(pod_id)
        inst = p.get(pod_id)
        assert inst.state == STOPPED and inst.preempted == "", inst.raw["lastStatusChange"]
        assert fake.pods[pod_id].ended_by == "account"


def test_our_own_terminate_is_not_preempted(fake: FakeRunPodAPI, tmp_path: Path) -> None:
    p = make(fake, tmp_path)
    pod_id = launch(p, spot=True, run_id="spot-term1")
    fake.sticky_terminate(2)  # answers OK, keeps running for two polls
    p.terminate(pod_id)
    seen = [p.get(pod_id) for _ in range(3)]
    assert [i.state for i in seen] == [RUNNING, RUNNING, NOT_FOUND]
    assert [i.preempted for i in seen] == ["", "", ""]
    assert fake.pods[pod_id].ended_by == "account" and fake.pods[pod_id].terminated_by == "account"


def test_preempt_after_s_takes_spot_pods_back_after_they_run(fake: FakeRunPodAPI, tmp_path: Path) -> None:
    fake.boot_delay_s = 0.3
    fake.preempt_after_s = 0.5
    p = make(fake, tmp_path)
    spot = launch(p, spot=True, run_id="spot-knob1")
    on_demand = launch(p, spot=False, run_id="od-knob1")
    inst = wait_for(lambda: (i := p.get(spot)).preempted and i, 30, "the spot pod preempted")
    assert inst.state == STOPPED
    # Dated when it was due (boot, then N seconds running), not when it was next looked at.
    pod = fake.pods[spot]
    assert pod.ended == pytest.approx(pod.started + 0.3 + 0.5) and fake.billed_seconds(spot) == 1
    other = p.get(on_demand)
    assert other.state == RUNNING and other.preempted == ""
    # A spot pod whose terminate we already sent is ours, not reclaimed.
    fake.preempt_after_s = None
    late = launch(p, spot=True, run_id="spot-knob2")
    fake.sticky_terminate(50)
    p.terminate(late)
    fake.preempt_after_s = 0.0
    assert p.get(late).preempted == "" and fake.pods[late].desired_status == "RUNNING"


@pytest.mark.parametrize(("pod", "preempted"), [
    ({"podType": "INTERRUPTABLE", "desiredStatus": "EXITED", "lastStatusChange": "Outbid: Wed"}, True),
    ({"podType": "INTERRUPTABLE", "desiredStatus": "TERMINATED"}, True),
    ({"interruptible": True, "desiredStatus": "EXITED"}, True),  # REST v1's spelling of the same pod
    ({"podType": "INTERRUPTABLE", "desiredStatus": "RUNNING", "runtime": None}, False),  # booting
    ({"podType": "INTERRUPTABLE", "desiredStatus": "EXITED",
      "lastStatusChange": "Exited by user: Wed"}, False),  # the account stopped it (gpurun, console)
    ({"podType": "INTERRUPTABLE", "desiredStatus": "EXITED",
      "lastStatusChange": "Exited by RunPod: Insufficient balance"}, False),  # a money stop, not a reclaim
    ({"podType": "RESERVED", "desiredStatus": "EXITED", "lastStatusChange": "Exited by Runpod: Wed"}, False),
    (None, False),
])
def test_preemption_reason(pod: dict[str, Any] | None, preempted: bool) -> None:
    assert bool(preemption_reason(pod)) is preempted
