"""RunPodProvider: the real `runpod` SDK talking HTTP to the GraphQL fake in tests/fakes/runpod_api.py."""

from __future__ import annotations

import base64
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.money.budgets_file import load_budgets
from orchestrator.plan.launch import make_plan
from orchestrator.plan.options import LaunchOptions
from orchestrator.state.ledger import Ledger
from providers.base import (
    NOT_FOUND,
    PENDING,
    RUNNING,
    BillingRule,
    CredentialsError,
    Instance,
    InstanceSpec,
    NoCapacityError,
    Offer,
    ProviderError,
    TransientProviderError,
)
from providers.common import HOURS_PER_MONTH
from providers.runpod import CONTAINER_DISK_USD_PER_GB_MONTH, DEFAULT_IMAGE, RunPodProvider
from providers.runpod.self_destruct import script_text
from tests.conftest import REPO
from tests.e2e_helpers import wait_for
from tests.fakes.runpod_api import FakeRunPodAPI
from tests.offer_helpers import pick_offer

# The billing rule the plan puts on a RunPod offer: budgets.yaml is the one place it lives.
RUNPOD_BILLING = load_budgets(REPO / "budgets.yaml").billing_for("runpod")

PUBKEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHm0c2VjcmV0bm90cmVhbGx5YWtleWF0YWxs gpurun-run"


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeRunPodAPI]:
    api = FakeRunPodAPI(ssh_host="127.0.0.1", ssh_port=2222).start()
    monkeypatch.setenv("RUNPOD_API_BASE_URL", api.base_url)
    monkeypatch.delenv("RUNPOD_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no real ~/.runpod/config.toml
    yield api
    api.stop()


def make(fake: FakeRunPodAPI, tmp_path: Path, **kw: object) -> RunPodProvider:
    opts: dict[str, object] = {
        "api_key": fake.api_key,
        "config_path": tmp_path / "none.toml",
        "backoff_initial_s": 0.01,
        "backoff_max_s": 0.05,
        "request_timeout_s": 5,
        "self_destruct_api_base": fake.base_url,
    }
    opts.update(kw)
    return RunPodProvider(**opts)  # type: ignore[arg-type]


def spec(offer: Offer, run_id: str = "run-abc1", **kw: object) -> InstanceSpec:
    return InstanceSpec(run_id=run_id, offer=offer, ssh_public_key=PUBKEY, **kw)  # type: ignore[arg-type]


def test_import_is_lazy() -> None:
    code = "import sys, providers.runpod, providers; print('runpod' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("load", ["import_runpod()", "api._import_whole_package()"])
def test_sdk_import_leaves_root_logger_alone(load: str) -> None:
    # runpod 1.12 calls logging.basicConfig(level=INFO) on import; the provider undoes it.
    code = (f"import logging, providers.runpod as r; from providers.runpod import api; r.{load}; "
            "root = logging.getLogger(); print(len(root.handlers), root.level)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.stdout.split() == ["0", str(30)]


# The parts of the package's __init__ the control plane never uses (runpod 1.12: the serverless
# worker, the CLI, the endpoint client) and what they pull in, py-cpuinfo's subprocess included.
NOT_FOR_THE_CONTROL_PLANE = ("runpod.serverless", "runpod.cli", "runpod.endpoint", "aiohttp", "fastapi",
                             "paramiko", "cpuinfo")


def test_the_sdk_loads_its_control_plane_alone() -> None:
    code = ("import sys, providers.runpod as r; rp = r.import_runpod(); import runpod\n"
            "from runpod.api.graphql import run_graphql_query\n"
            "print(runpod is rp, all(callable(getattr(rp, n)) for n in "
            "('create_pod', 'get_pod', 'get_pods', 'stop_pod', 'terminate_pod')), rp.error.QueryError.__name__)\n"
            f"print(*sorted(m for m in sys.modules if m.startswith({NOT_FOR_THE_CONTROL_PLANE!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.split("\n")[:2] == ["True True QueryError", ""], out.stdout


def test_an_sdk_of_another_layout_is_imported_whole(tmp_path: Path) -> None:
    """No runpod/api/ctl_commands.py (a future SDK): the package as it is, and no half-loaded modules."""
    pkg = tmp_path / "runpod"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("api_key = None\nWHOLE = True\ndef get_pods():\n    return []\n")
    code = ("import sys, providers.runpod as r; rp = r.import_runpod()\n"
            "print(getattr(rp, 'WHOLE', False), sorted(m for m in sys.modules if m.startswith('runpod')))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO, env=env)
    assert out.stdout.strip() == "True ['runpod']", out.stdout


def test_offers_have_live_prices_and_storage(fake: FakeRunPodAPI, tmp_path: Path) -> None:
    p = make(fake, tmp_path)
    offers = p.offers()
    by = {(o.instance_type, o.details["cloud_type"]): o for o in offers}
    assert by[("NVIDIA GeForce RTX 4090", "SECURE")].usd_per_hour == pytest.approx(0.69)
    assert by[("NVIDIA GeForce RTX 4090", "COMMUNITY")].usd_per_hour == pytest.approx(0.34)
    assert ("NVIDIA H100 80GB HBM3", "COMMUNITY") not in by  # not offered on community cloud
    o = by[("NVIDIA GeForce RTX 4090", "COMMUNITY")]
    assert o.price_is_live and o.gpu == "RTX 4090" and o.memory_gb == 24 and not o.spot
    assert o.extra_usd_per_hour == pytest.approx(40 * CONTAINER_DISK_USD_PER_GB_MONTH / HOURS_PER_MONTH, rel=1e-3)
    assert o.billing == BillingRule()  # a placeholder: the plan sets it from budgets.yaml
    assert [x.total_usd_per_hour for x in offers] == sorted(x.total_usd_per_hour for x in offers)
    assert pick_offer(offers, "rtx 4090") is o  # the cheaper cloud wins

    two = make(fake, tmp_path, container_disk_gb=20, volume_gb=100).offers(gpu="4090", count=2)
    assert {x.gpu for x in two} == {"RTX 4090"}
    assert min(x.usd_per_hour for x in two) == pytest.approx(0.68)
    assert two[0].extra_usd_per_hour == pytest.approx((20 * 0.10 + 100 * 0.10) / 730, rel=1e-3)

    spot = p.offers(gpu="H100", spot=True)
    assert len(spot) == 1 and spot[0].spot and spot[0].details["bid_per_gpu"] == pytest.approx(1.75)

    fake.stock["NVIDIA H100 80GB HBM3"] = 0
    assert not any(x.available for x in p.offers(gpu="H100"))
    with pytest.raises(ProviderError, match="no offer for GPU"):
        pick_offer(p.offers(gpu="H100"), "H100")


def test_create_is_idempotent_and_sends_ssh_settings(fake: FakeRunPodAPI, tmp_path: Path) -> None:
    p = make(fake, tmp_path)
    offer = pick_offer(p.offers(), "4090")
    inst = p.create(spec(offer))
    assert inst.run_id == "run-abc1" and inst.name == "gpurun-run-abc1" and inst.created_at
    again = p.create(spec(offer))
    assert again.id == inst.id
    assert fake.count("podFindAndDeployOnDemand") == 1 and len(fake.live_pods()) == 1
    pod = fake.pods[inst.id]
    assert pod.env["PUBLIC_KEY"] == PUBKEY and pod.image == DEFAULT_IMAGE
    assert pod.cloud_type == "COMMUNITY" and pod.container_disk_gb == 40 and pod.volume_gb == 0
    query = next(r["query"] for r in fake.requests if "podFindAndDeployOnDemand" in r["ops"])
    for part in ('ports: "22/tcp"', "startSsh: true", "supportPublicIp: true", 'name: "gpurun-run-abc1"'):
        assert part in query


def test_create_retried_after_lost_answer_makes_one_pod(fake: FakeRunPodAPI, tmp_path: Path) -> None:
    p = make(fake, tmp_path)
    offer = pick_offer(p.offers(), "4090")
    fake.lose_answer("podFindAndDeployOnDemand", 502)  # the pod is made, the client sees a 502
    inst = p.create(spec(offer))
    assert [x.id for x in fake.live_pods()] == [inst.id]
    assert fake.count("podFindAndDeployOnDemand") == 1  # found by name, not created twice
    assert "502" in fake.ops()


def test_no_capacity_is_one_clear_error_not_retried(fake: FakeRunPodAPI, tmp_path: Path) -> None:
    p = make(fake, tmp_path)
    offer = pick_offer(p.offers(), "4090")
    fake.stock["NVIDIA GeForce RTX 4090"] = 0
    with pytest.raises(ProviderError, match="no machine free") as info:
        p.create(spec(offer))
    assert not isinstance(info.value, TransientProviderError)
    assert fake.count("podFindAndDeployOnDemand") == 1 and fake.live_pods() == []


def test_runtime_null_then_ssh_endpoint(fake: FakeRunPodAPI, tmp_path: Path) -> None:
    fake.boot_delay_s = 0.6
    p = make(fake, tmp_path)
    inst = p.create(spec(pick_offer(p.offers(), "4090")))
    assert inst.state == PENDING and inst.ssh is None and p.ssh_endpoint(inst) is None
    # The order (pending, then running) is the test; wait_for's timeout is only a hang guard.
    cur = wait_for(lambda: (i := p.get(inst.id)).state == RUNNING and i, 60, "the pod to come up")
    ep = p.ssh_endpoint(cur)
    assert ep is not None and (ep.host, ep.port, ep.user) == ("127.0.0.1", 2222, "root")  # not 10.0.0.7


def test_terminate_get_not_found_and_second_terminate(fake: FakeRunPodAPI, tmp_path: Path) -> None:
    p = make(fake, tmp_path)
    inst = p.create(spec(pick_offer(p.offers(), "4090")))
    first = p.terminate(inst.id)
    assert first["already_gone"] is False and "podTerminate" in first["response"]["data"]
    gone = p.get(inst.id)
    assert gone.state == NOT_FOUND and gone.gone
    second = p.terminate(inst.id)
    assert second["already_gone"] is True and "not found" in str(second["response"])
    assert p.list_owned() == [] and p.list_run("run-abc1") == []


def test_list_owned_only_gpurun_pods(fake: FakeRunPodAPI, tmp_path: Path) -> None:
    p = make(fake, tmp_path)
    offer = pick_offer(p.offers(), "4090")
    a = p.create(spec(offer, run_id="run-one"))
    b = p.create(spec(offer, run_id="run-two"))
    import runpod  # someone else's pod in the same account, made with the SDK directly

    runpod.api_key = fake.api_key
    runpod.create_pod(name="my-notebook", image_name="runpod/stack", gpu_type_id="NVIDIA RTX A4000",
                      cloud_type="COMMUNITY")
    owned = p.list_owned()
    assert {(i.id, i.run_id) for i in owned} == {(a.id, "run-one"), (b.id, "run-two")}
    assert len(fake.live_pods()) == 3
    assert [i.id for i in p.list_run("run-two")] == [b.id]


def test_sticky_terminate_is_seen_by_a_verify_loop(fake: FakeRunPodAPI, tmp_path: Path) -> None:
    p = make(fake, tmp_path)
    inst = p.create(spec(pick_offer(p.offers(), "4090")))
    fake.sticky_terminate(polls=3)
    assert p.terminate(inst.id)["already_gone"] is False  # "OK", but the pod keeps running
    states = []
    for _ in range(10):
        states.append(p.get(inst.id).state)
        if states[-1] == NOT_FOUND:
            break
    assert states == [RUNNING, RUNNING, RUNNING, NOT_FOUND]
    assert fake.pods[inst.id].gone


@pytest.mark.parametrize("json_body", [False, True])
def test_5xx_is_retried(fake: FakeRunPodAPI, tmp_path: Path, json_body: bool) -> None:
    p = make(fake, tmp_path)
    fake.fail_next(2, 503, json_body=json_body)
    assert p.offers()
    assert fake.ops() == ["503", "503", "gpuTypes"]


def test_5xx_retries_are_bounded(fake: FakeRunPodAPI, tmp_path: Path) -> None:
    p = make(fake, tmp_path, max_attempts=3)
    fake.fail_next(10, 502)
    with pytest.raises(TransientProviderError, match="gave up"):
        p.offers()
    assert fake.ops() == ["502"] * 3


def test_slow_answer_times_out_and_is_retried(fake: FakeRunPodAPI, tmp_path: Path) -> None:
    p = make(fake, tmp_path, request_timeout_s=0.5)
    fake.delay_next(1, 30.0)  # far longer than the bound: the answer comes from the retry
    assert p.get("doesnotexist1").state == NOT_FOUND
    # Two requests, and the first is still unanswered (its ops are recorded once it answers).
    assert [r["ops"] for r in fake.requests] == [[], ["pod"]]


@pytest.mark.parametrize("status", [401, 403])
def test_rejected_key_is_credentials_error_without_retry(fake: FakeRunPodAPI, tmp_path: Path,
                                                        status: int) -> None:
    if status == 401:
        p = make(fake, tmp_path, api_key="rpa_WRONGKEY0000000000")
    else:
        p = make(fake, tmp_path)
        fake.fail_next(5, 403)
    with pytest.raises(CredentialsError) as info:
        p.offers()
    assert len(fake.requests) == 1
    assert "WRONGKEY" not in str(info.value) and fake.api_key not in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_credentials_and_config_file(fake: FakeRunPodAPI, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    p = make(fake, tmp_path, api_key=None)
    with pytest.raises(CredentialsError, match="RUNPOD_API_KEY"):
        p.check_credentials()
    offer = Offer(provider="runpod", gpu="RTX 4090", gpu_count=1, instance_type="NVIDIA GeForce RTX 4090",
                  usd_per_hour=0.34, details={"cloud_type": "COMMUNITY"})
    with pytest.raises(CredentialsError):
        p.create(spec(offer))
    assert fake.requests == []

    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[default]\napi_key = "{fake.api_key}"\n')
    make(fake, tmp_path, api_key=None, config_path=cfg).check_credentials()
    assert make(fake, tmp_path, api_key=None, config_path=cfg).offers()

    monkeypatch.setenv("RUNPOD_API_KEY", fake.api_key)
    assert make(fake, tmp_path, api_key=None).offers()

    with pytest.raises(CredentialsError, match="unexpected characters"):
        make(fake, tmp_path, api_key="rpa_abc\nX-Evil: 1").check_credentials()


@pytest.mark.parametrize(
    "change, field",
    [
        ({"env": {"FOO": 'x" }, { key: "EVIL", value: "1'}}, "env value of FOO"),
        ({"env": {"FOO": "line1\nline2"}}, "env value of FOO"),
        ({"env": {"BAD KEY": "v"}}, "env key"),
        ({"env": {"A": "brace } here"}}, "env value of A"),
        ({"image": 'runpod/pytorch", dockerArgs: "rm -rf /'}, "image"),
        ({"image": "runpod/pytorch\\evil"}, "image"),
        ({"ssh_public_key": 'ssh-ed25519 AAAA" evil'}, "env value of PUBLIC_KEY"),
    ],
)
def test_injection_is_rejected_before_any_call(fake: FakeRunPodAPI, tmp_path: Path, change: dict,
                                               field: str) -> None:
    p = make(fake, tmp_path)
    offer = Offer(provider="runpod", gpu="RTX 4090", gpu_count=1, instance_type="NVIDIA GeForce RTX 4090",
                  usd_per_hour=0.34, details={"cloud_type": "COMMUNITY"})
    s = spec(offer)
    for k, v in change.items():
        setattr(s, k, v)
    with pytest.raises(ProviderError) as info:
        p.create(s)
    assert field in str(info.value)
    assert fake.requests == [] and fake.pods == {}


def test_injection_in_gpu_id_cloud_and_run_id(fake: FakeRunPodAPI, tmp_path: Path) -> None:
    p = make(fake, tmp_path)
    bad_gpu = Offer(provider="runpod", gpu="x", gpu_count=1, instance_type='RTX"){ evil }',
                    usd_per_hour=1.0, details={"cloud_type": "SECURE"})
    with pytest.raises(ProviderError, match="GPU type id"):
        p.create(spec(bad_gpu))
    bad_cloud = Offer(provider="runpod", gpu="x", gpu_count=1, instance_type="NVIDIA GeForce RTX 4090",
                      usd_per_hour=1.0, details={"cloud_type": "SECURE, name: x"})
    with pytest.raises(ProviderError, match="cloud type"):
        p.create(spec(bad_cloud))
    good = Offer(provider="runpod", gpu="x", gpu_count=1, instance_type="NVIDIA GeForce RTX 4090",
                 usd_per_hour=1.0, details={"cloud_type": "SECURE"})
    with pytest.raises(ProviderError, match="run id"):
        p.create(spec(good, run_id='Bad"Id'))
    with pytest.raises(ProviderError, match="pod id"):
        p.get('abc"}) { evil')
    with pytest.raises(ProviderError, match="pod id"):
        p.terminate("abc\n")
    with pytest.raises(ProviderError, match="image"):
        make(fake, tmp_path, image='a"b')
    assert fake.requests == []


def test_spot_create_uses_pod_rent_interruptable(fake: FakeRunPodAPI, tmp_path: Path) -> None:
    p = make(fake, tmp_path)
    offer = pick_offer(p.offers(gpu="4090", spot=True), "4090")
    assert offer.spot and offer.usd_per_hour == pytest.approx(0.2)
    inst = p.create(spec(offer, run_id="spot-run"))
    pod = fake.pods[inst.id]
    assert pod.spot and pod.usd_per_hour == pytest.approx(0.2) and pod.env["PUBLIC_KEY"] == PUBKEY
    assert fake.count("podRentInterruptable") == 1 and fake.count("podFindAndDeployOnDemand") == 0
    assert p.create(spec(offer, run_id="spot-run")).id == inst.id
    low = Offer(provider="runpod", gpu="RTX 4090", gpu_count=1, instance_type="NVIDIA GeForce RTX 4090",
                usd_per_hour=0.01, spot=True, details={"cloud_type": "COMMUNITY", "bid_per_gpu": 0.01})
    with pytest.raises(ProviderError, match="minimum bid"):
        p.create(spec(low, run_id="spot-low"))


def test_account_and_spend_check(fake: FakeRunPodAPI, tmp_path: Path) -> None:
    fake.initial_balance = 1.20
    p = make(fake, tmp_path)
    acct = p.account()
    assert acct["balance_usd"] == pytest.approx(1.20) and acct["spend_limit_usd_per_hour"] == 80.0
    with pytest.raises(ProviderError) as info:
        p.check_spend(3, 0.69)
    assert str(info.value) == ("RunPod balance 1.20 USD cannot cover --max-usd 3: add funds or lower "
                               "the budget")
    assert p.check_spend(1.0, 0.69) is None
    fake.spend_limit = 0.5
    with pytest.raises(ProviderError) as info:
        p.check_spend(1.0, 0.69)
    assert str(info.value) == ("RunPod spend limit 0.5 USD/h would be exceeded (0 already running + 0.69): "
                               "raise the limit in the RunPod console or stop other pods")
    # What already runs counts: 0.3 USD/h elsewhere + 0.3 for this launch is over a 0.5 limit.
    p.check_spend(1.0, 0.3)
    fake.other_spend_per_hr = 0.3
    with pytest.raises(ProviderError, match=r"spend limit 0.5 USD/h would be exceeded \(0.3 already"):
        p.check_spend(1.0, 0.3)


def test_plan_refuses_a_price_over_the_spend_limit(fake: FakeRunPodAPI, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # The bug: plan never passed the price, so the spend-limit check never ran.
    monkeypatch.setenv("RUNPOD_API_KEY", fake.api_key)
    fake.spend_limit = 0.30  # the cheapest RTX 4090 costs 0.34 USD/h + storage
    opts = LaunchOptions(provider="runpod", max_usd=2.0, gpu="RTX 4090", budgets=str(REPO / "budgets.yaml"))
    with pytest.raises(ProviderError) as info:
        make_plan(opts)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("RunPod spend limit 0.3 USD/h would be exceeded"), msg
    assert fake.pods == {} and fake.count("podFindAndDeployOnDemand") == 0
    assert Ledger().list_runs() == []

    fake.spend_limit = 80.0  # the same launch under a limit it fits is planned
    plan = make_plan(opts)
    assert plan.offer.gpu == "RTX 4090" and plan.offer.billing == RUNPOD_BILLING
    assert fake.pods == {}


def test_launch_disk_gb_sizes_and_prices_the_container_disk(fake: FakeRunPodAPI, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # The bug: `gpurun launch --provider runpod --disk-gb 50` passed disk_gb, which RunPodProvider
    # did not take (TypeError); and create sent the spec's default 40 GB, not what the plan priced.
    monkeypatch.setenv("RUNPOD_API_KEY", fake.api_key)
    for disk in (50, 20):  # above and below InstanceSpec's default of 40
        opts = LaunchOptions(provider="runpod", max_usd=2.0, gpu="RTX 4090", disk_gb=disk,
                             budgets=str(REPO / "budgets.yaml"))
        plan = make_plan(opts)
        storage = disk * CONTAINER_DISK_USD_PER_GB_MONTH / HOURS_PER_MONTH
        assert plan.offer.extra_usd_per_hour == pytest.approx(storage, rel=1e-3)  # the price follows it
        assert plan.offer.details["container_disk_gb"] == disk
        # The spec the lifecycle builds: run id, offer, key, image; no disk size of its own.
        inst = plan.provider.create(InstanceSpec(run_id=f"run-disk{disk}", offer=plan.offer, ssh_public_key=PUBKEY))
        assert fake.pods[inst.id].container_disk_gb == disk
        query = next(r["query"] for r in reversed(fake.requests) if "podFindAndDeployOnDemand" in r["ops"])
        assert f"containerDiskInGb: {disk}" in query
    with pytest.raises(ProviderError, match="--disk-gb must be at least 1 GB"):
        LaunchOptions(provider="runpod", disk_gb=0).provider_options()


def test_meter_bills_per_second_from_create_to_terminate(fake: FakeRunPodAPI, tmp_path: Path) -> None:
    p = make(fake, tmp_path)
    offer = pick_offer(p.offers(gpu="H100"), "H100")
    before_create = time.monotonic()
    inst = p.create(spec(offer))
    time.sleep(1.2)  # the pod lives at least this long
    p.terminate(inst.id)
    after_terminate = time.monotonic()
    billed = fake.billed_seconds(inst.id)
    # Per second, rounded up, over a window that lies inside [create call, terminate answer]
    # and holds the 1.2 s the pod lived: bounded by the test's own events, not a fixed number.
    assert 2 <= billed <= math.ceil(after_terminate - before_create)
    cost = fake.meter_usd(inst.id)
    assert cost == pytest.approx(billed * 2.99 / 3600)
    time.sleep(1.1)
    assert fake.meter_usd(inst.id) == cost  # stopped at terminate
    # budgets.yaml's rule for RunPod (per second, no minimum) prices what the meter billed.
    assert (RUNPOD_BILLING.increment_s, RUNPOD_BILLING.minimum_s) == (1, 0)
    assert RUNPOD_BILLING.cost(billed, offer.usd_per_hour) == pytest.approx(cost)


def test_self_destruct_command_content(fake: FakeRunPodAPI, tmp_path: Path) -> None:
    p = make(fake, tmp_path, self_destruct_api_base=None)
    inst = p.create(spec(pick_offer(p.offers(), "4090")))
    cmd = p.self_destruct_command(inst)
    assert cmd.startswith("sh -c ")
    assert "/proc/1/environ" in cmd and "RUNPOD_POD_ID" in cmd and "RUNPOD_API_KEY" in cmd
    assert "https://api.runpod.io/graphql" in cmd and fake.base_url not in cmd
    assert fake.api_key not in cmd and "podTerminate" in cmd
    assert "--config -" in cmd  # the pod key goes to curl on stdin, not argv
    # The packaged script, word for word; the values are its arguments, not pasted into it.
    assert shlex.split(cmd) == ["sh", "-c", script_text(), "gpurun-self-destruct", "/proc/1/environ",
                                "https://api.runpod.io/graphql", inst.id]
    odd = p.self_destruct_command(Instance(id="a'b; rm", provider="runpod", state=RUNNING))
    assert shlex.split(odd)[-1] == ""  # an id that is not a pod id is not passed on


def _environ_file(tmp_path: Path, pod_id: str, key: str) -> Path:
    env = tmp_path / "pid1-environ"
    env.write_bytes(b"PATH=/usr/bin\0RUNPOD_POD_ID=" + pod_id.encode() + b"\0RUNPOD_API_KEY="
                    + key.encode() + b"\0HOME=/root\0")
    return env


@pytest.mark.parametrize("tool", ["curl", "python3"])
def test_self_destruct_command_terminates_the_pod(fake: FakeRunPodAPI, tmp_path: Path, tool: str) -> None:
    if not shutil.which(tool):
        pytest.skip(f"{tool} is not installed")
    p = make(fake, tmp_path)
    inst = p.create(spec(pick_offer(p.offers(), "4090")))
    env_file = _environ_file(tmp_path, inst.id, fake.pod_api_key(inst.id))
    p2 = make(fake, tmp_path, pid1_environ_path=str(env_file))
    # Only the tools the command may use: proves the python3 path works where curl is missing.
    bindir = tmp_path / f"bin-{tool}"
    bindir.mkdir()
    for exe in ("sh", "tr", "sed", "head", "sleep", tool):
        found = shutil.which(exe)
        assert found, exe
        (bindir / exe).symlink_to(os.path.realpath(found) if exe != "python3" else sys.executable)
    env = {"PATH": str(bindir)}
    out = subprocess.run(["/bin/sh", "-c", p2.self_destruct_command(inst)], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "terminate requested" in out.stdout
    assert fake.pods[inst.id].gone and p.get(inst.id).state == NOT_FOUND
    auth = [r for r in fake.requests if "podTerminate" in r["ops"]]
    assert len(auth) == 1
    # Run again: the pod is gone, which the script treats as success.
    again = subprocess.run(["/bin/sh", "-c", p2.self_destruct_command(inst)], env=env, capture_output=True,
                           text=True, timeout=60)
    assert again.returncode == 0 and "already gone" in again.stdout


def test_self_destruct_without_pod_env_fails_clearly(fake: FakeRunPodAPI, tmp_path: Path) -> None:
    env_file = tmp_path / "empty-environ"
    env_file.write_bytes(b"PATH=/usr/bin\0")
    p = make(fake, tmp_path, pid1_environ_path=str(env_file))
    out = subprocess.run(["/bin/sh", "-c", p.self_destruct_command(Instance(id="abc", provider="runpod",
                                                                               state=RUNNING))],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "RUNPOD_POD_ID" in out.stderr


# ------------------------------------------------------------------ issue 13: the real API


def _by_cloud(offers: list[Offer], gpu_id: str) -> dict[str, Offer]:
    return {o.details["cloud_type"]: o for o in offers if o.instance_type == gpu_id}


def test_offers_read_stock_status_per_cloud_type(fake: FakeRunPodAPI, tmp_path: Path) -> None:
    # The bug: stock was inferred from one lowestPrice across both clouds; RunPod reports stockStatus
    # per cloud type (lowestPrice(input: {gpuCount, secureCloud: true|false})).
    p = make(fake, tmp_path)
    fake.set_stock_status("NVIDIA GeForce RTX 4090", "COMMUNITY", None)
    fake.set_stock_status("NVIDIA GeForce RTX 4090", "SECURE", "Low")
    by = _by_cloud(p.offers(gpu="4090"), "NVIDIA GeForce RTX 4090")
    assert set(by) == {"SECURE", "COMMUNITY"}  # one offer per cloud type, each with its own stock
    assert not by["COMMUNITY"].available and by["COMMUNITY"].details["stock_status"] is None
    assert by["SECURE"].available and by["SECURE"].details["stock_status"] == "Low"
    assert (by["SECURE"].region, by["COMMUNITY"].region) == ("secure", "community")
    query = next(r["query"] for r in fake.requests if "gpuTypes" in r["ops"])
    assert "secureCloud: true" in query and "secureCloud: false" in query and "stockStatus" in query
    # The plan's pick is the cloud that has stock, and create honours its cloud type.
    offer = pick_offer(p.offers(gpu="4090"), "4090")
    assert offer.details["cloud_type"] == "SECURE"
    inst = p.create(spec(offer))
    assert fake.pods[inst.id].cloud_type == "SECURE"
    assert "cloudType: SECURE" in next(r["query"] for r in fake.requests if "podFindAndDeployOnDemand" in r["ops"])


def test_deploy_refused_for_capacity_is_no_capacity_error(fake: FakeRunPodAPI, tmp_path: Path) -> None:
    # stockStatus said High, the machine went between the query and the deploy: RunPod answers
    # "There are no longer any instances available ..."; the controller must be able to try the next offer.
    p = make(fake, tmp_path)
    by = _by_cloud(p.offers(gpu="4090"), "NVIDIA GeForce RTX 4090")
    assert by["COMMUNITY"].available and by["SECURE"].available
    fake.refuse_deploy("NVIDIA GeForce RTX 4090", "COMMUNITY")
    with pytest.raises(NoCapacityError) as info:
        p.create(spec(by["COMMUNITY"]))
    msg = str(info.value)
    assert "\n" not in msg and "NVIDIA GeForce RTX 4090" in msg and "COMMUNITY" in msg, msg
    assert fake.count("podFindAndDeployOnDemand") == 1 and fake.live_pods() == []  # no retry, nothing billing
    # The next offer (same GPU, other cloud type) lands.
    inst = p.create(spec(by["SECURE"]))
    assert [x.id for x in fake.live_pods()] == [inst.id] and fake.pods[inst.id].cloud_type == "SECURE"


def test_spot_deploy_refused_for_capacity_is_no_capacity_error(fake: FakeRunPodAPI, tmp_path: Path) -> None:
    p = make(fake, tmp_path)
    offer = pick_offer(p.offers(gpu="4090", spot=True), "4090")
    fake.refuse_deploy("NVIDIA GeForce RTX 4090")
    with pytest.raises(NoCapacityError, match="spot"):
        p.create(spec(offer, run_id="spot-cap"))
    assert fake.live_pods() == []


def test_credit_for_one_hour_is_checked_at_plan_time(fake: FakeRunPodAPI, tmp_path: Path) -> None:
    # RunPod deploys only with "at least one hour's worth of credits" (docs.runpod.io/accounts-billing/billing).
    fake.initial_balance = 0.50
    p = make(fake, tmp_path)
    by = _by_cloud(p.offers(gpu="4090"), "NVIDIA GeForce RTX 4090")
    p.check_launchable(by["COMMUNITY"])  # 0.34 USD/h + storage: one hour fits in 0.50
    with pytest.raises(ProviderError) as info:
        p.check_launchable(by["SECURE"])
    hourly = by["SECURE"].total_usd_per_hour
    assert str(info.value) == (
        f"RunPod balance 0.50 USD is below one hour of 1x RTX 4090 SECURE ({hourly:.2f} USD/h), which RunPod "
        f"requires to deploy (https://docs.runpod.io/accounts-billing/billing): add funds or pick a cheaper GPU")
    # A cap below one hour does not get around it: check_spend says the same.
    with pytest.raises(ProviderError, match=r"below one hour of this pod \(0.69 USD/h\)"):
        p.check_spend(0.40, 0.69)
    assert fake.pods == {}


def test_deploy_refused_for_credit_is_classified(fake: FakeRunPodAPI, tmp_path: Path) -> None:
    # If the plan-time check is skipped or the balance moved, RunPod itself refuses the deploy.
    p = make(fake, tmp_path)
    offer = _by_cloud(p.offers(gpu="H100"), "NVIDIA H100 80GB HBM3")["SECURE"]
    fake.initial_balance = 1.0  # under one hour of 2.99 USD/h
    with pytest.raises(ProviderError) as info:
        p.create(spec(offer))
    assert not isinstance(info.value, (NoCapacityError, TransientProviderError))
    msg = str(info.value)
    assert "\n" not in msg and "one hour" in msg and "add funds" in msg, msg
    assert fake.count("podFindAndDeployOnDemand") == 1 and fake.pods == {}


def test_plan_skips_an_offer_the_balance_cannot_deploy(fake: FakeRunPodAPI, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNPOD_API_KEY", fake.api_key)
    fake.initial_balance = 0.50
    fake.set_stock_status("NVIDIA GeForce RTX 4090", "COMMUNITY", None)  # only the 0.69 secure one is left
    opts = LaunchOptions(provider="runpod", max_usd=0.45, gpu="RTX 4090", budgets=str(REPO / "budgets.yaml"))
    with pytest.raises(ProviderError, match=r"^RunPod balance 0.50 USD is below one hour of 1x RTX 4090 SECURE"):
        make_plan(opts)
    fake.set_stock_status("NVIDIA GeForce RTX 4090", "COMMUNITY", "Medium")
    plan = make_plan(opts)
    assert plan.offer.details["cloud_type"] == "COMMUNITY"
    assert fake.pods == {}


def test_spot_offers_are_labelled_and_rented_through_one_function(fake: FakeRunPodAPI, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import providers.runpod.instance as instance_module
    from providers.runpod import spot

    p = make(fake, tmp_path)
    offers = p.offers(gpu="4090", spot=True)
    assert offers and all("podRentInterruptable" in o.details["api"] and "2027" in o.details["api"]
                          for o in offers)
    assert all("api" not in o.details for o in p.offers(gpu="4090"))  # on-demand is the SDK's create_pod
    calls: list[str] = []

    def counted(*args: object, **kw: object) -> dict:
        calls.append(str(kw["name"]))
        return spot.rent_interruptable(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(instance_module, "rent_interruptable", counted)
    inst = p.create(spec(pick_offer(offers, "4090"), run_id="spot-one"))
    assert calls == ["gpurun-spot-one"] and fake.pods[inst.id].spot
    query = next(r["query"] for r in fake.requests if "podRentInterruptable" in r["ops"])
    assert "minVcpuCount: 4" in query and "minMemoryInGb: 24" in query


def _start_script(docker_args: str) -> str:
    encoded = re.search(r"echo ([A-Za-z0-9+/=]+) \| base64 -d", docker_args)
    assert encoded, docker_args
    return base64.b64decode(encoded.group(1)).decode()


CUSTOM_IMAGE = "pytorch/pytorch:2.4.0-cuda12.4-cudnn9-runtime"


def test_custom_image_gets_a_start_command_that_opens_ssh(fake: FakeRunPodAPI, tmp_path: Path) -> None:
    # The bug: an image without RunPod's start script never starts sshd, so the pod bills and SSH
    # never opens. RunPod's docs give the start command (docs.runpod.io/pods/configuration/use-ssh).
    p = make(fake, tmp_path, image=CUSTOM_IMAGE)
    offer = pick_offer(p.offers(gpu="4090"), "4090")
    inst = p.create(spec(offer))
    pod = fake.pods[inst.id]
    assert pod.image == CUSTOM_IMAGE and pod.env["PUBLIC_KEY"] == PUBKEY and pod.start_ssh
    script = _start_script(pod.docker_args)
    for part in ("openssh-server", "rsync", '"$PUBLIC_KEY" >> /root/.ssh/authorized_keys', "ssh-keygen -A",
                 "PasswordAuthentication=no", "RUNPOD_API_KEY"):
        assert part in script, part
    assert PUBKEY not in pod.docker_args  # the key travels once, in PUBLIC_KEY
    subprocess.run(["sh", "-n", "-c", script], check=True)  # valid POSIX sh
    assert pod.sshd_started
    query = next(r["query"] for r in fake.requests if "podFindAndDeployOnDemand" in r["ops"])
    assert f'dockerArgs: "{pod.docker_args}"' in query and '"' not in pod.docker_args

    # RunPod's own images keep their start script (dockerArgs would replace it).
    default = make(fake, tmp_path).create(spec(offer, run_id="run-dflt"))
    assert fake.pods[default.id].docker_args == "" and fake.pods[default.id].sshd_started
    # The image given per launch (InstanceSpec.image) decides too.
    per_launch = make(fake, tmp_path).create(spec(offer, run_id="run-img2", image=CUSTOM_IMAGE))
    assert fake.pods[per_launch.id].docker_args and fake.pods[per_launch.id].sshd_started
    # ssh_setup="image" trusts the image: what the old code did, and such a pod never opens SSH.
    trusted = make(fake, tmp_path, image=CUSTOM_IMAGE, ssh_setup="image").create(spec(offer, run_id="run-trust"))
    assert fake.pods[trusted.id].docker_args == "" and not fake.pods[trusted.id].sshd_started
    with pytest.raises(ProviderError, match="ssh_setup"):
        make(fake, tmp_path, ssh_setup="maybe")


def test_spot_pod_of_custom_image_gets_the_start_command(fake: FakeRunPodAPI, tmp_path: Path) -> None:
    p = make(fake, tmp_path, image=CUSTOM_IMAGE)
    inst = p.create(spec(pick_offer(p.offers(gpu="4090", spot=True), "4090"), run_id="spot-img"))
    assert "openssh-server" in _start_script(fake.pods[inst.id].docker_args) and fake.pods[inst.id].sshd_started


def test_pods_ask_for_a_sane_host(fake: FakeRunPodAPI, tmp_path: Path) -> None:
    # RunPod's default is 1 vCPU / 1 GB (create_pod); SkyPilot asks 4 vCPUs and the GPU's memory per GPU.
    p = make(fake, tmp_path)
    offer = _by_cloud(p.offers(gpu="4090", count=2), "NVIDIA GeForce RTX 4090")["COMMUNITY"]
    assert (offer.details["min_vcpu_count"], offer.details["min_memory_gb"]) == (8, 48)
    inst = p.create(spec(offer))
    pod = fake.pods[inst.id]
    assert (pod.min_vcpu_count, pod.min_memory_gb) == (8, 48)
    query = next(r["query"] for r in fake.requests if "podFindAndDeployOnDemand" in r["ops"])
    assert "minVcpuCount: 8" in query and "minMemoryInGb: 48" in query
    gpu_query = next(r["query"] for r in fake.requests if "gpuTypes" in r["ops"])
    assert "minVcpuCount: 8" in gpu_query  # stock is read for a host we would accept

    # Community 4090 hosts with 2 vCPUs per GPU: no stock for our minimum, and a deploy is refused.
    fake.host_spec[("NVIDIA GeForce RTX 4090", "COMMUNITY")] = (2, 64)
    by = _by_cloud(p.offers(gpu="4090"), "NVIDIA GeForce RTX 4090")
    assert not by["COMMUNITY"].available and by["SECURE"].available
    with pytest.raises(NoCapacityError, match="2x NVIDIA GeForce RTX 4090 in COMMUNITY cloud with 8 vCPUs / 48 GB"):
        p.create(spec(offer, run_id="run-small"))
    # RAM is not part of the stock read (it differs per type): the deploy is where it is refused.
    fake.host_spec[("NVIDIA GeForce RTX 4090", "COMMUNITY")] = (8, 16)
    assert _by_cloud(p.offers(gpu="4090"), "NVIDIA GeForce RTX 4090")["COMMUNITY"].available
    with pytest.raises(NoCapacityError):
        p.create(spec(_by_cloud(p.offers(gpu="4090"), "NVIDIA GeForce RTX 4090")["COMMUNITY"], run_id="run-ram"))
    assert len(fake.live_pods()) == 1
    # The minimums are options.
    small = make(fake, tmp_path, min_vcpu_per_gpu=2, min_ram_gb_per_gpu=16)
    ok = small.create(spec(_by_cloud(small.offers(gpu="4090"), "NVIDIA GeForce RTX 4090")["COMMUNITY"],
                           run_id="run-tiny"))
    assert (fake.pods[ok.id].min_vcpu_count, fake.pods[ok.id].min_memory_gb) == (2, 16)


def test_multi_node_runs_are_refused_in_one_line_naming_what_to_do(fake: FakeRunPodAPI, tmp_path: Path) -> None:
    p = make(fake, tmp_path)
    p.check_nodes(1)  # a single-node run is fine
    with pytest.raises(ProviderError) as exc:
        p.check_nodes(2)
    text = str(exc.value)
    assert "\n" not in text and text.startswith("--nodes 2: RunPod")
    assert "Instant Clusters" in text and "--provider aws or datacrunch" in text and "drop --nodes" in text
    assert fake.requests == []  # a plan-time refusal: nothing asked of the API
