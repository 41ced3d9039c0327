"""RunPod reconciliation and audit: billed_cost from the billing history (REST v2 GET /v2/billing/pods)
and inventory from `myself { pods networkVolumes }`, through the real SDK/HTTP against the fake."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from providers.base import BilledCost, CredentialsError, InstanceSpec, Offer
from providers.common import HOURS_PER_MONTH
from providers.runpod import RunPodProvider
from providers.runpod import billing as runpod_billing
from providers.runpod.billing import NO_ROWS_FINAL_AFTER_S, SETTLE_S, bucket_window
from tests.fakes.runpod_api import FakeRunPodAPI
from tests.offer_helpers import pick_offer

PUBKEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHm0c2VjcmV0bm90cmVhbGx5YWtleWF0YWxs gpurun-run"
SECRET_ENV = "hf_SECRETTOKEN0123456789"
BILLING_OP = "GET /v2/billing/pods"


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeRunPodAPI]:
    api = FakeRunPodAPI(ssh_host="127.0.0.1", ssh_port=2222).start()
    monkeypatch.setenv("RUNPOD_API_BASE_URL", api.base_url)
    monkeypatch.delenv("RUNPOD_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    yield api
    api.stop()


def make(fake: FakeRunPodAPI, tmp_path: Path, **kw: object) -> RunPodProvider:
    opts: dict[str, object] = {"api_key": fake.api_key, "config_path": tmp_path / "none.toml",
                               "backoff_initial_s": 0.01, "backoff_max_s": 0.05, "request_timeout_s": 5,
                               "self_destruct_api_base": fake.base_url}
    opts.update(kw)
    return RunPodProvider(**opts)  # type: ignore[arg-type]


def run_pod(p: RunPodProvider, offer: Offer, run_id: str, live_s: float = 0.3) -> str:
    """Create the run's pod, let it live a moment, terminate it; its id."""
    inst = p.create(InstanceSpec(run_id=run_id, offer=offer, ssh_public_key=PUBKEY, env={"HF_TOKEN": SECRET_ENV}))
    time.sleep(live_s)
    p.terminate(inst.id)
    return inst.id


def expected_charge(fake: FakeRunPodAPI, pod_id: str) -> float:
    """The meter's GPU charge plus the pod's disks at $0.10/GB-month over the same billed seconds."""
    pod = fake.pods[pod_id]
    seconds = fake.billed_seconds(pod_id)
    disks = (pod.container_disk_gb + pod.volume_gb) * 0.10 / HOURS_PER_MONTH
    return fake.meter_usd(pod_id) + seconds * disks / 3600


def test_billed_cost_of_a_terminated_run_equals_the_fake_charge(fake: FakeRunPodAPI, tmp_path: Path) -> None:
    p = make(fake, tmp_path, volume_gb=5)
    offer = pick_offer(p.offers(gpu="H100"), "H100")
    start = time.time()
    first = run_pod(p, offer, "run-bill1")  # offer fallback: the run's first pod, then its second
    second = run_pod(p, offer, "run-bill1")
    other = run_pod(p, offer, "run-other")  # another run's pod: not counted
    end = time.time()

    cost = p.billed_cost("run-bill1", [first, second], start, end)
    assert isinstance(cost, BilledCost)
    assert cost.usd == pytest.approx(fake.billed_usd(first) + fake.billed_usd(second))
    assert cost.usd == pytest.approx(expected_charge(fake, first) + expected_charge(fake, second))
    assert fake.billed_usd(other) > 0 and other not in cost.details["pods"]
    assert "/v2/billing/pods" in cost.source and "totalAmount" in cost.source
    assert fake.count(BILLING_OP) == 2  # one pod-filtered query per pod
    rows = cost.details["pods"][first]["rows"]
    assert rows and rows[0]["diskAmount"] > 0 and rows[0]["gpuAmount"] > 0
    # The hour bucket the run ended in is still open: RunPod may still add to it.
    assert cost.complete is False and "not final" in cost.source

    _, hi = bucket_window(start, end)
    later = runpod_billing.billed_cost(p.client, [first, second], start, end, now=lambda: hi + SETTLE_S)
    assert later.complete is True and later.usd == pytest.approx(cost.usd)


def test_a_pod_spanning_hours_is_summed_over_its_buckets(fake: FakeRunPodAPI, tmp_path: Path) -> None:
    p = make(fake, tmp_path)
    pod = fake.add_pod("long-job", age_s=2.5 * 3600, volume_gb=20, stopped_s=600)  # fixed GPU amount
    now = time.time()
    cost = p.billed_cost("run-x", [pod.id], now - 3 * 3600, now)
    assert len(cost.details["pods"][pod.id]["rows"]) >= 3  # hourly buckets, one row each
    assert cost.usd == pytest.approx(fake.billed_usd(pod.id), rel=1e-5)  # the volume ticks on, slowly
    assert cost.complete is False


def test_lag_gives_no_figure_then_a_figure(fake: FakeRunPodAPI, tmp_path: Path) -> None:
    p = make(fake, tmp_path)
    offer = pick_offer(p.offers(gpu="4090"), "4090")
    fake.billing_lag_s = 3600  # the history has not caught up with the pod yet
    start = time.time()
    pod_id = run_pod(p, offer, "run-lag1")
    end = time.time()

    early = p.billed_cost("run-lag1", [pod_id], start, end)
    assert early.usd is None and early.complete is False
    assert f"no billing rows yet for pod(s) {pod_id}" in early.source
    assert early.details["pods"][pod_id] == {"usd": None, "rows": []}

    fake.billing_lag_s = 0
    late = p.billed_cost("run-lag1", [pod_id], start, end)
    assert late.usd == pytest.approx(expected_charge(fake, pod_id))

    # Still no rows a day after the run: final, with no figure (nothing left to wait for).
    fake.billing_lag_s = 3600
    given_up = runpod_billing.billed_cost(p.client, [pod_id], start, end,
                                          now=lambda: end + NO_ROWS_FINAL_AFTER_S + 1)
    assert given_up.usd is None and given_up.complete is True


def test_billing_factor_shows_through(fake: FakeRunPodAPI, tmp_path: Path) -> None:
    p = make(fake, tmp_path)
    offer = pick_offer(p.offers(gpu="4090"), "4090")
    start = time.time()
    pod_id = run_pod(p, offer, "run-fact1")
    end = time.time()
    plain = p.billed_cost("run-fact1", [pod_id], start, end).usd
    fake.billing_factor = 1.05
    marked_up = p.billed_cost("run-fact1", [pod_id], start, end).usd
    assert plain is not None and marked_up is not None
    assert marked_up / plain == pytest.approx(1.05)
    assert marked_up / expected_charge(fake, pod_id) == pytest.approx(1.05)


def test_billing_errors_are_classified_and_retried(fake: FakeRunPodAPI, tmp_path: Path) -> None:
    p = make(fake, tmp_path)
    pod = fake.add_pod("job", age_s=60, stopped_s=30)
    now = time.time()
    fake.fail_next(1, 503)
    assert p.billed_cost("run-x", [pod.id], now - 120, now).usd == pytest.approx(fake.billed_usd(pod.id))
    assert fake.count(BILLING_OP) == 2 and fake.count("503") == 1

    bad = make(fake, tmp_path, api_key="rpa_WRONGKEY0123456789")
    with pytest.raises(CredentialsError, match="401") as err:
        bad.billed_cost("run-x", [pod.id], now - 120, now)
    assert "WRONGKEY" not in str(err.value)
    pod_scoped = make(fake, tmp_path, api_key=fake.pod_api_key(pod.id))  # a pod's own key may not read billing
    with pytest.raises(CredentialsError, match="403"):
        pod_scoped.billed_cost("run-x", [pod.id], now - 120, now)


def test_inventory_lists_gpurun_foreign_stopped_pods_and_network_volumes(fake: FakeRunPodAPI,
                                                                         tmp_path: Path) -> None:
    p = make(fake, tmp_path, volume_gb=10)
    offer = pick_offer(p.offers(gpu="4090"), "4090")
    mine = p.create(InstanceSpec(run_id="run-inv1", offer=offer, ssh_public_key=PUBKEY))
    orphan = p.create(InstanceSpec(run_id="run-inv2", offer=offer, ssh_public_key=PUBKEY))
    fake.stop_pod(orphan.id)  # a gpurun pod left stopped: still pays for its volume
    gone = run_pod(p, offer, "run-inv3")  # terminated: bills nothing, not listed
    notebook = fake.add_pod("my-notebook", container_disk_gb=20, age_s=600)
    parked = fake.add_pod("old-finetune", volume_gb=50, age_s=7200, stopped_s=3600)
    bare = fake.add_pod("scratch", volume_gb=0, age_s=100, stopped_s=50)
    vol = fake.add_network_volume("datasets", 100)

    before = fake.count("myself")
    items = {b.id: b for b in p.inventory()}
    assert fake.count("myself") == before + 1  # one query for all of it
    assert set(items) == {mine.id, orphan.id, notebook.id, parked.id, bare.id, vol["id"]}
    assert gone not in items

    running = items[mine.id]
    assert (running.kind, running.state, running.run_id, running.provider) == ("pod", "RUNNING", "run-inv1", "runpod")
    gpu = fake.pods[mine.id].usd_per_hour
    assert running.usd_per_hour == pytest.approx(gpu + (40 + 10) * 0.10 / HOURS_PER_MONTH, abs=1e-5)

    assert items[notebook.id].run_id is None and items[notebook.id].state == "RUNNING"
    assert items[notebook.id].usd_per_hour == pytest.approx(0.69 + 20 * 0.10 / HOURS_PER_MONTH, abs=1e-5)

    stopped = items[parked.id]
    assert (stopped.state, stopped.run_id) == ("EXITED", None)
    assert stopped.usd_per_hour == pytest.approx(50 * 0.20 / HOURS_PER_MONTH, abs=1e-6)
    assert "stopped" in stopped.note and "volume" in stopped.note and "0.20/GB-month" in stopped.note
    assert items[orphan.id].run_id == "run-inv2" and items[orphan.id].state == "EXITED"
    assert items[orphan.id].usd_per_hour == pytest.approx(10 * 0.20 / HOURS_PER_MONTH, abs=1e-6)
    assert items[bare.id].usd_per_hour == 0.0 and "bills nothing" in items[bare.id].note

    nv = items[vol["id"]]
    assert (nv.kind, nv.name, nv.run_id) == ("volume", "datasets", None)
    assert nv.usd_per_hour == pytest.approx(100 * 0.07 / HOURS_PER_MONTH, abs=1e-6)
    assert "network volume" in nv.note and nv.raw["dataCenterId"] == "EU-RO-1"


def test_no_secret_in_billed_cost_or_inventory(fake: FakeRunPodAPI, tmp_path: Path) -> None:
    p = make(fake, tmp_path)
    offer = pick_offer(p.offers(gpu="4090"), "4090")
    start = time.time()
    ended = run_pod(p, offer, "run-sec1")
    live = p.create(InstanceSpec(run_id="run-sec2", offer=offer, ssh_public_key=PUBKEY,
                                 env={"HF_TOKEN": SECRET_ENV}))
    cost = p.billed_cost("run-sec1", [ended], start, time.time())
    items = p.inventory()
    assert any(b.id == live.id for b in items)
    text = json.dumps([cost.__dict__, [b.to_dict() for b in items]], default=str)
    for secret in [fake.api_key, SECRET_ENV, PUBKEY, *(pod.pod_key for pod in fake.pods.values())]:
        assert secret not in text
    # The pod's environment (user secrets, RunPod's pod-scoped key) is never even asked for.
    inventory_query = next(r["query"] for r in reversed(fake.requests) if "myself" in r["ops"])
    assert "env" not in inventory_query.split() and "dockerArgs" not in inventory_query


def test_fake_billing_answers_in_the_real_shape(fake: FakeRunPodAPI) -> None:
    """The fake's listPodBilling: window snapped to buckets, lastN, one record per pod per bucket,
    metadata totals, problem JSON (api-reference-v2/openapi.json)."""
    pod = fake.add_pod("a", age_s=30, stopped_s=10)  # stopped, no volume: its amounts are fixed
    fake.add_pod("b", age_s=30, stopped_s=10)
    url, auth = f"{fake.base_url}/v2/billing/pods", {"Authorization": f"Bearer {fake.api_key}"}
    body = requests.get(url, params={"startTime": "2026-01-01T10:17:00Z", "endTime": "2026-01-01T11:05:00Z",
                                     "bucketSize": "hour"}, headers=auth, timeout=5).json()
    assert body["metadata"]["query"]["startTime"] == "2026-01-01T10:00:00Z"
    assert body["metadata"]["query"]["endTime"] == "2026-01-01T12:00:00Z"
    assert body["records"] == [] and body["metadata"]["recordCount"] == 0  # no pod then
    body = requests.get(url, params={"lastN": "2", "bucketSize": "day"}, headers=auth, timeout=5).json()
    assert body["metadata"]["uniquePodCount"] == 2
    assert {r["podId"] for r in body["records"]} >= {pod.id}
    assert body["metadata"]["totals"]["totalAmount"] == pytest.approx(fake.billed_usd())
    one = requests.get(url, params={"podId": pod.id}, headers=auth, timeout=5).json()
    assert {r["podId"] for r in one["records"]} == {pod.id}
    refused = requests.get(url, params={"lastN": "2", "startTime": "2026-01-01T00:00:00Z"}, headers=auth, timeout=5)
    assert refused.status_code == 400 and refused.headers["Content-Type"] == "application/problem+json"
    assert requests.get(url, timeout=5).json()["status"] == 401
