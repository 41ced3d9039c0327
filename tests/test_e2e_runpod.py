"""Issue 5 end to end: `gpurun` on RunPod, through the real CLI, the real `runpod` SDK talking to the
GraphQL fake (tests/fakes/runpod_api.py), the real trainer on the loopback sshd and real rsync."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.state.ledger import Ledger
from tests.e2e_helpers import (
    E2E,
    ENDLESS_TRAIN,
    REPO,
    SHORT_TRAIN,
    assert_one_line_error,
    assert_trained_and_synced,
    e2e,  # noqa: F401  (fixture)
    event,
    kill_processes_under,
    ledger_instances,
    only_run,
    phases,
    proof_of,
    sshd,  # noqa: F401  (fixture)
)
from tests.fakes.runpod_api import DEFAULT_GPU_TYPES, FakeRunPodAPI
from tests.fixtures.sshd import SSHServer, sshd_fn  # noqa: F401  (fixture)

# A GPU priced so that 1 USD buys 44 s: the budget guard, not the trainer, ends the run.
PRICEY = {
    "id": "NVIDIA PRICEY 80GB", "displayName": "PRICEY", "memoryInGb": 80, "maxGpuCount": 8,
    "secureCloud": True, "communityCloud": False, "securePrice": 80.0, "communityPrice": None,
    "secureSpotPrice": None, "communitySpotPrice": None, "manufacturer": "Nvidia", "cudaCores": 1,
}


@pytest.fixture
def fake(e2e: E2E) -> Iterator[FakeRunPodAPI]:  # noqa: F811
    api = FakeRunPodAPI(ssh_host=e2e.sshd.host, ssh_port=e2e.sshd.port, boot_delay_s=1.0,
                        # 100 USD: RunPod deploys only with credit for an hour of the pod (PRICEY: 80).
                        gpu_types=[*DEFAULT_GPU_TYPES, PRICEY], balance=100.0, spend_limit=200.0).start()
    e2e.env.update({
        "RUNPOD_API_BASE_URL": api.base_url,
        "RUNPOD_API_KEY": api.api_key,
        "HOME": str(e2e.tmp / "home"),  # no real ~/.runpod/config.toml
    })
    try:
        yield api
    finally:
        api.stop()


def launch(e2e: E2E, *extra: str, max_usd: str = "3",  # noqa: F811
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return e2e.gpurun("launch", "--provider", "runpod", "--max-usd", max_usd, "--yes",
                      "--budgets", str(e2e.budgets("runpod")), "--sync-interval", "3", *extra, env=env)


def test_launch_trains_syncs_terminates_and_proves(e2e: E2E, fake: FakeRunPodAPI) -> None:  # noqa: F811
    res = launch(e2e, *SHORT_TRAIN)
    assert res.returncode == 0, res.stdout + res.stderr
    run = only_run()
    assert run.phase == "verified" and run.cost_usd is not None and run.cost_usd <= 3
    assert_trained_and_synced(run, finished=True)

    (pod_id,) = ledger_instances()
    assert fake.pods[pod_id].gone and not fake.live_pods()
    assert fake.meter_usd() <= 3
    assert fake.count("podFindAndDeployOnDemand") == 1 and fake.count("podTerminate") >= 1

    proof = proof_of(run)
    assert proof["verified"] is True and proof["provider"] == "runpod"
    assert proof["instance_ids"] == [pod_id]
    # The provider's own last word: `pod` answered null, and the run's listing is empty.
    (final,) = proof["final_describe"]
    assert final["state"] == "not_found" and final["raw"] == {"pod": None}
    assert proof["zero_match_listing"] == []
    assert any(r["instance_id"] == pod_id for r in proof["terminate_requests"])
    assert "stopping" in phases(run) and phases(run)[-1] == "verified"
    assert (Path(run.run_dir) / "EVIDENCE.md").exists()


def test_price_that_makes_the_cap_bite_stops_with_a_checkpoint(e2e: E2E, fake: FakeRunPodAPI) -> None:  # noqa: F811
    # 80 USD/h: 1.5 USD buys 67 s; the guard stops the job at 47 s, leaving the 20 s reserve (time
    # enough for the trainer to start and checkpoint on a busy machine).
    res = launch(e2e, "--gpu", "PRICEY", *ENDLESS_TRAIN, max_usd="1.5")
    assert res.returncode == 0, res.stdout + res.stderr
    run = only_run()
    assert run.phase == "verified" and run.cost_usd is not None and run.cost_usd <= 1.5
    assert "deadline" in event(run, "stopping").payload["reason"]
    manifest = assert_trained_and_synced(run, finished=False)
    assert manifest["checkpoints"], manifest
    (pod_id,) = ledger_instances()
    pod = fake.pods[pod_id]
    assert pod.usd_per_hour == 80.0 and pod.gone
    assert fake.meter_usd(pod_id) <= 1.5, f"billed {fake.billed_seconds(pod_id)} s at 80 USD/h"
    assert proof_of(run)["verified"] is True


def test_terminate_that_leaves_the_pod_running_is_retried_until_gone(e2e: E2E,  # noqa: F811
                                                                     fake: FakeRunPodAPI) -> None:
    fake.sticky_terminate(3)  # the first podTerminate answers OK and the pod keeps running 3 polls
    res = launch(e2e, *SHORT_TRAIN)
    assert res.returncode == 0, res.stdout + res.stderr
    run = only_run()
    (pod_id,) = ledger_instances()
    assert fake.pods[pod_id].terminate_requests >= 2, "verification must have asked again"
    proof = proof_of(run)
    assert len([r for r in proof["terminate_requests"] if r["instance_id"] == pod_id]) >= 2
    assert proof["final_describe"][0]["state"] == "not_found" and proof["zero_match_listing"] == []
    # The first terminate "succeeded" and did nothing; the proof holds the later answer: pod null.
    first = proof["terminate_requests"][0]
    assert first["response"]["already_gone"] is False and "errors" not in str(first["response"]["response"])
    assert fake.meter_usd() <= 3


def test_terminate_that_never_takes_exits_non_zero_without_a_proof(e2e: E2E,  # noqa: F811
                                                                   fake: FakeRunPodAPI) -> None:
    fake.sticky_terminate(10**6)
    res = launch(e2e, *SHORT_TRAIN, env={"GPURUN_VERIFY_TIMEOUT_S": "6"})
    assert res.returncode == 3, res.stdout + res.stderr
    assert "NOT VERIFIED" in res.stderr and "still not terminated" in res.stderr, res.stderr
    run = only_run()
    assert run.phase == "failed_terminating"
    assert not (Path(run.run_dir) / "shutdown_proof.json").exists()
    assert Ledger().proofs(run.run_id) == []
    (pod_id,) = ledger_instances()
    assert not fake.pods[pod_id].gone and fake.pods[pod_id].terminate_requests >= 2

    # Once the provider lets go, `gpurun teardown` finishes the job and proves it.
    fake.pods[pod_id].sticky_polls = 1
    down = e2e.gpurun("teardown", run.run_id)
    assert down.returncode == 0, down.stdout + down.stderr
    assert fake.pods[pod_id].gone and proof_of(Ledger().resolve_run(run.run_id))["verified"] is True


def test_wrong_api_key_is_one_line_and_creates_nothing(e2e: E2E, fake: FakeRunPodAPI) -> None:  # noqa: F811
    res = e2e.gpurun("launch", "--provider", "runpod", "--max-usd", "3", "--yes",
                     env={"RUNPOD_API_KEY": "rpa_WRONGKEY0123456789"})
    assert_one_line_error(res, "RunPod", "API key")
    assert "rpa_WRONGKEY" not in res.stdout + res.stderr  # the key is never echoed
    assert fake.pods == {} and fake.count("podFindAndDeployOnDemand") == 0
    assert Ledger().list_runs() == [] and ledger_instances() == []


def test_offers_lists_the_fakes_gpus_with_price_and_what_the_budget_buys(e2e: E2E,  # noqa: F811
                                                                         fake: FakeRunPodAPI) -> None:
    res = e2e.gpurun("offers", "--provider", "runpod")
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    assert "2.00 USD buys" in out
    storage = 40 * 0.10 / 730  # the default 40 GB container disk at 0.10 USD/GB-month
    rows = {"RTX 4090": 0.34, "RTX A4000": 0.17, "H100 SXM": 2.99, "PRICEY": 80.0}
    for gpu, price in rows.items():
        line = next((ln for ln in out.splitlines() if f" {gpu} " in f" {ln} "), None)
        assert line is not None, f"{gpu} missing from:\n{out}"
        assert f"{price:.4f}" in line, line
        hours = int(2.00 * 3600 / (price + storage)) / 3600  # whole seconds, per-second billing
        assert f"{hours:.2f} h" in line, (line, hours)


def test_first_offer_out_of_stock_at_deploy_lands_on_the_next(e2e: E2E, fake: FakeRunPodAPI) -> None:  # noqa: F811
    # stockStatus says High on both clouds; the community machine is gone by the time we deploy.
    fake.refuse_deploy("NVIDIA GeForce RTX 4090", "COMMUNITY")
    res = launch(e2e, "--gpu", "RTX 4090", *SHORT_TRAIN)
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout + res.stderr
    assert "runpod (community)" in out and "RTX 4090, secure)" in out, out  # the plan shows the offer and its fallback
    run = only_run()
    assert run.phase == "verified" and run.cost_usd is not None and run.cost_usd <= 3
    assert_trained_and_synced(run, finished=True)
    (pod_id,) = ledger_instances()  # the refused deploy made no pod
    assert fake.pods[pod_id].cloud_type == "SECURE" and fake.pods[pod_id].gone
    assert fake.count("podFindAndDeployOnDemand") == 2 and not fake.live_pods()
    failed = event(run, "attempt_failed").payload
    assert "no machine free" in str(failed), failed
    assert fake.meter_usd() <= 3


# An account with SSH keys of its own registered (console Settings -> SSH Public Keys): RunPod puts
# THOSE in the pod's PUBLIC_KEY, and SSH_PUBLIC_KEY is the per-pod override
# (docs.runpod.io/pods/configuration/use-ssh). The fake's model is in tests/fakes/runpod_api.py.
ACCOUNT_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE5vdFRoZVJ1bnNLZXlCdXRUaGVVc2Vyc093bjAx me@laptop"


@pytest.fixture
def pod_keys_only(tmp_path: Path, sshd_fn: SSHServer, gpurun_home: Path) -> Iterator[tuple[E2E, FakeRunPodAPI]]:  # noqa: F811
    """The e2e world, except that the run's key is NOT pre-authorized on the loopback sshd: its
    authorized_keys starts empty and holds only what the fake's pods write there, as the image's start
    script would (runpod/containers container-template/start.sh). SSH works only if the key got in."""
    authorized = sshd_fn.dir / "authorized_keys"
    authorized.write_text("")
    remote_root = tmp_path / "instance"
    remote_root.mkdir()
    world = E2E(tmp=tmp_path, sshd=sshd_fn, remote_root=remote_root, env={
        "PYTHONPATH": str(REPO), "COLUMNS": "200", "GPURUN_REMOTE_ROOT": str(remote_root),
        "GPURUN_VERIFY_TIMEOUT_S": "60",
        "GPURUN_SELF_DESTRUCT_CMD": f"date +%s > {remote_root}/self_destruct.ran",
    })
    api = FakeRunPodAPI(ssh_host=sshd_fn.host, ssh_port=sshd_fn.port, boot_delay_s=1.0,
                        account_ssh_keys=[ACCOUNT_KEY], authorized_keys_file=authorized).start()
    world.env.update({"RUNPOD_API_BASE_URL": api.base_url, "RUNPOD_API_KEY": api.api_key,
                      "HOME": str(tmp_path / "home")})
    try:
        yield world, api
    finally:
        api.stop()
        kill_processes_under(remote_root)


def test_runs_key_reaches_a_pod_of_an_account_with_registered_keys(
        pod_keys_only: tuple[E2E, FakeRunPodAPI]) -> None:
    from orchestrator.transport.keys import run_key

    world, fake = pod_keys_only
    res = launch(world, *SHORT_TRAIN)
    assert res.returncode == 0, res.stdout + res.stderr
    (pod_id,) = ledger_instances()
    pod = fake.pods[pod_id]
    authorized = (world.sshd.dir / "authorized_keys").read_text().splitlines()
    run_public = run_key().public_line.strip()
    # The pod's start wrote the run's key (not only the account's) and that is what let gpurun in.
    assert run_public in pod.authorized_keys and run_public in authorized, authorized
    assert pod.env["SSH_PUBLIC_KEY"] == run_public
    run = only_run()
    assert run.phase == "verified" and run.cost_usd is not None and run.cost_usd <= 3
    assert_trained_and_synced(run, finished=True)
    assert pod.gone and not fake.live_pods() and fake.meter_usd() <= 3
