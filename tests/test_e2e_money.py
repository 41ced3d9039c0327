"""Issue 15 end to end, through the real CLI: the provider's own figure beside the estimate (RunPod's
billing history in its fake, AWS Cost Explorer in moto, late), notifications of a local run to a real
HTTP receiver, and `gpurun audit` over everything billing on a RunPod account."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.state.ledger import Ledger
from tests.e2e_helpers import E2E, e2e, event_names, ledger_instances, only_run, sshd  # noqa: F401
from tests.fakes.runpod_api import FakeRunPodAPI
from tests.test_launch_local import gpurun as local_gpurun
from tests.test_notify import Receiver, receiver  # noqa: F401  (fixture)

QUICK_JOB = ["--", "python3", "-c", "print('trained')"]


@pytest.fixture
def runpod(e2e: E2E) -> Iterator[FakeRunPodAPI]:  # noqa: F811
    api = FakeRunPodAPI(ssh_host=e2e.sshd.host, ssh_port=e2e.sshd.port, boot_delay_s=0.5, balance=100.0,
                        spend_limit=200.0).start()
    e2e.env.update({"RUNPOD_API_BASE_URL": api.base_url, "RUNPOD_API_KEY": api.api_key,
                    "HOME": str(e2e.tmp / "home")})
    try:
        yield api
    finally:
        api.stop()


def test_a_runpod_charge_off_the_estimate_is_flagged_on_the_card_and_in_cost(
        e2e: E2E, runpod: FakeRunPodAPI, tmp_path: Path) -> None:  # noqa: F811
    runpod.billing_factor = 1.5  # RunPod's history charges half as much again as its listed rates
    (tmp_path / "job").mkdir()
    res = e2e.gpurun("launch", "--provider", "runpod", "--gpu", "RTX 4090", "--max-usd", "3", "--yes",
                     "--budgets", str(e2e.budgets("runpod")), "--workdir", str(tmp_path / "job"), *QUICK_JOB)
    assert res.returncode == 0, res.stdout + res.stderr
    run = only_run()
    (pod_id,) = ledger_instances()
    assert run.billed_usd == pytest.approx(runpod.billed_usd(pod_id))  # RunPod's own figure, as its API said
    assert run.billed_source and "billing" in run.billed_source.lower()
    assert "reconciled" in event_names(run)
    card = (Path(run.run_dir) / "EVIDENCE.md").read_text()
    assert "| provider's figure |" in card and "differs from the estimate by +" in card
    cost = e2e.gpurun("cost")
    assert cost.returncode == 0 and "differs from the estimate by +" in cost.stdout, cost.stdout


def test_audit_lists_orphans_foreign_pods_and_stopped_volumes_and_exits_7(
        e2e: E2E, runpod: FakeRunPodAPI) -> None:  # noqa: F811
    orphan = runpod.add_pod("gpurun-20250101-000000-dead", age_s=7200)  # a run this ledger never knew
    foreign = runpod.add_pod("my-notebook", age_s=3600)
    stopped = runpod.add_pod("old-experiment", volume_gb=100, age_s=86400, stopped_s=3600)
    res = e2e.gpurun("audit", "--provider", "runpod")
    assert res.returncode == 7, res.stdout + res.stderr
    out = res.stdout
    for pod in (orphan, foreign, stopped):
        assert pod.id in out, out
    lines = {pod.id: next(ln for ln in out.splitlines() if pod.id in ln) for pod in (orphan, foreign, stopped)}
    assert "gpurun orphan" in lines[orphan.id] and "gpurun sweep --provider runpod" in out
    assert "not gpurun's" in lines[foreign.id]
    assert "volume" in out and "3 not owned by an open run" in out.replace("\n", " ")


def notify_budgets(tmp_path: Path, url: str, timeout_s: float = 5) -> Path:
    path = tmp_path / "budgets-notify.yaml"
    path.write_text("per_run_default_usd: 1\nper_run_max_usd: 5\ndaily_usd: null\nmonthly_usd: null\n"
                    "providers:\n  local:\n    billing: {increment_s: 1, minimum_s: 0, source: test}\n"
                    "    reserve_s: 20\n    min_runtime_s: 5\n"
                    f"notify:\n  webhook: {url}\n  timeout_s: {timeout_s}\n")
    return path


SECRET_PATH = "/hook/T0/B0/s3cr3t-w3bh00k"


def test_a_local_runs_events_reach_the_receiver_in_order_without_secrets(
        tmp_path: Path, receiver: Receiver) -> None:  # noqa: F811
    budgets = notify_budgets(tmp_path, receiver.url(SECRET_PATH))
    # 0.05 USD at 3.6 USD/h buys 50 s: a job that sleeps longer is stopped by the guard at 30 s, past
    # half the cap (the on-instance switch, 5 s later, never gets there first).
    res = local_gpurun("launch", "--max-usd", "0.05", "--usd-per-hour", "3.6", "--yes", "--budgets", str(budgets),
                       "--", "python3", "-c", "import time; time.sleep(90)", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    events = receiver.events()
    assert events[0] == "started" and events[-1] == "verified", events
    assert events.index("cap_50") < events.index("deadline") < events.index("verified"), events
    bodies = [json.loads(b) for p, _, b in receiver.bodies]
    assert {b["run_id"] for b in bodies} == {only_run().run_id}
    everything = json.dumps(bodies) + (Path(only_run().run_dir) / "EVIDENCE.md").read_text()
    assert "s3cr3t-w3bh00k" not in everything
    assert not [e for e in Ledger().events(only_run().run_id) if "s3cr3t" in json.dumps(e.payload)]


def test_a_hanging_receiver_does_not_delay_the_guards_stop(tmp_path: Path, receiver: Receiver) -> None:  # noqa: F811
    receiver.hold.set()  # every delivery hangs until the test lets it go
    budgets = notify_budgets(tmp_path, receiver.url("/hook/hang"), timeout_s=2)
    # 0.05 USD buys 50 s, 30 s of it before the guard's stop: the python/CUDA check of bootstrap took
    # over 15 s once on a loaded 2-core CI machine.
    res = local_gpurun("launch", "--max-usd", "0.05", "--usd-per-hour", "3.6", "--yes", "--budgets", str(budgets),
                       "--", "python3", "-c", "import time; time.sleep(60)", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    run = only_run()
    # The run went its whole way, to verified, while no delivery had been answered.
    assert run.phase == "verified" and receiver.bodies == []
    assert "deadline" in (run.end_reason or "")
    failed = [e.payload["event"] for e in Ledger().events(run.run_id) if e.phase == "notify_failed"]
    assert failed and failed[0] == "started"


def test_offers_tell_the_cloud_types_apart_with_their_stock(e2e: E2E, runpod: FakeRunPodAPI) -> None:  # noqa: F811
    res = e2e.gpurun("offers", "--provider", "runpod", "--gpu", "RTX 4090")
    assert res.returncode == 0, res.stdout + res.stderr
    rows = [ln for ln in res.stdout.splitlines() if "RTX 4090" in ln]
    assert len(rows) == 2 and len(set(rows)) == 2, res.stdout  # no two identical rows
    assert any("secure" in r for r in rows) and any("community" in r for r in rows)
    assert all(any(word in r for word in ("High", "Medium", "Low", "none")) for r in rows), rows
