"""RunPod behaviours of the real API that the provider must survive (each modelled in the fake from
RunPod's own source, cited there): stockStatus "None", REST v2's 429 with Retry-After, and an
account whose registered SSH keys RunPod injects into the pod. Through the real `runpod` SDK and
HTTP against tests/fakes/runpod_api.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from providers.base import InstanceSpec, Offer, ProviderError, TransientProviderError
from providers.runpod import RunPodProvider
from providers.runpod.api import retry_after_seconds
from providers.runpod.catalog import stock_level
from tests.fakes.runpod_api import FakeRunPodAPI
from tests.offer_helpers import pick_offer

PUBKEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHm0c2VjcmV0bm90cmVhbGx5YWtleWF0YWxs gpurun-run"
RTX4090 = "NVIDIA GeForce RTX 4090"


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeRunPodAPI]:
    api = FakeRunPodAPI(ssh_host="127.0.0.1", ssh_port=2222).start()
    monkeypatch.setenv("RUNPOD_API_BASE_URL", api.base_url)
    monkeypatch.delenv("RUNPOD_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no real ~/.runpod/config.toml
    yield api
    api.stop()


def make(fake: FakeRunPodAPI, tmp_path: Path, **kw: object) -> RunPodProvider:
    opts: dict[str, object] = {"api_key": fake.api_key, "config_path": tmp_path / "none.toml",
                               "backoff_initial_s": 0.01, "backoff_max_s": 0.05, "request_timeout_s": 5,
                               "self_destruct_api_base": fake.base_url}
    opts.update(kw)
    return RunPodProvider(**opts)  # type: ignore[arg-type]


def _by_cloud(offers: list[Offer], gpu_id: str) -> dict[str, Offer]:
    return {o.details["cloud_type"]: o for o in offers if o.instance_type == gpu_id}


# ------------------------------------------------------------------ item 10: stockStatus "None"


def test_stock_status_none_string_is_out_of_stock(fake: FakeRunPodAPI, tmp_path: Path) -> None:
    # RunPod's docs list stockStatus values "High, Medium, Low, and None": the fake answers the
    # STRING "None" where nothing can be placed. It must read as out of stock, never as available.
    p = make(fake, tmp_path)
    fake.set_stock_status(RTX4090, "COMMUNITY", "None")
    fake.set_stock_status(RTX4090, "SECURE", "Medium")
    by = _by_cloud(p.offers(gpu="4090"), RTX4090)
    assert by["COMMUNITY"].available is False and by["COMMUNITY"].details["stock_status"] is None
    assert by["COMMUNITY"].details["stock_status_reported"] == "None"  # the wire value, as answered
    assert by["SECURE"].available is True and by["SECURE"].details["stock_status"] == "Medium"
    # The plan never picks the cloud that has nothing, though it is the cheaper one (0.34 < 0.69).
    assert by["COMMUNITY"].total_usd_per_hour < by["SECURE"].total_usd_per_hour
    assert pick_offer(p.offers(gpu="4090"), "4090").details["cloud_type"] == "SECURE"


def test_stock_status_null_is_out_of_stock_too(fake: FakeRunPodAPI, tmp_path: Path) -> None:
    fake.out_of_stock_status = None  # a JSON null instead of the string
    fake.set_stock_status(RTX4090, "ALL", None)
    by = _by_cloud(make(fake, tmp_path).offers(gpu="4090"), RTX4090)
    assert not by["COMMUNITY"].available and not by["SECURE"].available


@pytest.mark.parametrize("value, level", [("High", "High"), ("Medium", "Medium"), ("Low", "Low"),
                                          ("LOW", "Low"), ("None", None), ("none", None), (None, None),
                                          ("", None), ("Unavailable", None), (0, None)])
def test_stock_level_reads_only_a_level_as_in_stock(value: object, level: str | None) -> None:
    assert stock_level(value) == level


def test_offers_say_egress_is_free_and_where_that_is_written(fake: FakeRunPodAPI, tmp_path: Path) -> None:
    offers = make(fake, tmp_path).offers()
    assert offers
    for o in offers:
        assert o.egress_usd_per_gb == 0.0
        assert o.egress_source.startswith("free: ") and "docs.runpod.io/pods/pricing" in o.egress_source
        assert "no fees for data ingress or egress" in o.egress_source


# ------------------------------------------------------------------ item 11: REST v2 429 + Retry-After


class VirtualClock:
    """The client's sleep and clock, and the fake's rate-limit clock: time passes only by sleeping."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds


def _on_virtual_clock(p: RunPodProvider, fake: FakeRunPodAPI) -> VirtualClock:
    vc = VirtualClock()
    p.client.sleep, p.client.clock, fake.clock = vc.sleep, vc.now, vc.now
    return vc


def _billing_requests(fake: FakeRunPodAPI) -> list[dict[str, object]]:
    return [r for r in fake.requests if "GET /v2/billing/pods" in r["ops"]]


def _a_pod(p: RunPodProvider) -> str:
    inst = p.create(InstanceSpec(run_id="run-rl1", offer=pick_offer(p.offers(gpu="4090"), "4090"),
                                 ssh_public_key=PUBKEY))
    p.terminate(inst.id)
    return inst.id


def test_429_waits_its_retry_after_then_asks_again(fake: FakeRunPodAPI, tmp_path: Path) -> None:
    p = make(fake, tmp_path)
    pod_id = _a_pod(p)
    vc = _on_virtual_clock(p, fake)
    fake.rate_limit_next(1, retry_after_s=12)
    cost = p.billed_cost("run-rl1", [pod_id], 0.0, 1.0)
    first, second = _billing_requests(fake)
    # Order of events: a 429 asking for 12 s, the client's 12 s wait, then the answer.
    assert (first["status"], first["retry_after"], second["status"]) == (429, 12, 200)
    assert vc.sleeps == [12]
    assert second["clock"] >= first["clock"] + 12  # it came after the window, not inside it
    assert cost.details["pods"][pod_id] is not None


def test_429_window_that_holds_is_waited_out_each_time(fake: FakeRunPodAPI, tmp_path: Path) -> None:
    p = make(fake, tmp_path)
    pod_id = _a_pod(p)
    vc = _on_virtual_clock(p, fake)
    fake.rate_limit_next(2, retry_after_s=30)  # two windows in a row, 30 s each
    p.billed_cost("run-rl1", [pod_id], 0.0, 1.0)
    assert [r["status"] for r in _billing_requests(fake)] == [429, 429, 200]
    assert vc.sleeps == [30, 30] and sum(vc.sleeps) <= p.client.policy.retry_deadline_s


def test_429_whose_wait_would_pass_the_calls_bound_gives_up_without_waiting(fake: FakeRunPodAPI,
                                                                           tmp_path: Path) -> None:
    p = make(fake, tmp_path, retry_deadline_s=90)
    pod_id = _a_pod(p)
    vc = _on_virtual_clock(p, fake)
    fake.rate_limit_next(3, retry_after_s=40)  # 40 + 40 fit in 90 s; a third 40 does not
    with pytest.raises(TransientProviderError) as info:
        p.billed_cost("run-rl1", [pod_id], 0.0, 1.0)
    assert vc.sleeps == [40, 40] and sum(vc.sleeps) <= 90  # never slept past the bound
    assert [r["status"] for r in _billing_requests(fake)] == [429, 429, 429]
    msg = str(info.value)
    assert "Retry-After" in msg and "gave up" in msg and "\n" not in msg and fake.api_key not in msg

    fake.requests.clear()
    fake.rate_limit_next(1, retry_after_s=600)  # longer than the whole bound: not even one wait
    vc.sleeps.clear()
    vc.t += 3600  # past the window left open above
    with pytest.raises(TransientProviderError):
        p.billed_cost("run-rl1", [pod_id], 0.0, 1.0)
    assert vc.sleeps == [] and [r["status"] for r in _billing_requests(fake)] == [429]


def test_retry_after_is_read_as_integer_seconds() -> None:
    assert retry_after_seconds("12") == 12 and retry_after_seconds(" 0 ") == 0
    for junk in (None, "", "soon", "-3", "nan", "inf", "Wed, 21 Oct 2026 07:28:00 GMT"):
        assert retry_after_seconds(junk) is None, junk


# ------------------------------------------------------------------ item 4: an account with SSH keys

ACCOUNT_KEYS = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE5vdFRoZVJ1bnNLZXlCdXRUaGVVc2Vyc093bjAx me@laptop",
                "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQDvdGhlcmtleW9mdGhldXNlcg== me@desktop"]


@pytest.mark.parametrize("account_keys", [ACCOUNT_KEYS, []], ids=["account-has-keys", "no-keys"])
@pytest.mark.parametrize("kept", [False, True], ids=["graphql-replaces", "rest-v2-keeps"])
@pytest.mark.parametrize("image", ["runpod/pytorch:2.4.0-py3.11-cuda12.4.1-devel-ubuntu22.04",
                                   "nvcr.io/nvidia/pytorch:24.05-py3"], ids=["runpod-image", "custom-image"])
def test_runs_key_reaches_authorized_keys_whatever_the_account_has(
        fake: FakeRunPodAPI, tmp_path: Path, account_keys: list[str], kept: bool, image: str) -> None:
    # RunPod injects the account's registered keys into PUBLIC_KEY; SSH_PUBLIC_KEY overrides them
    # for one pod (docs.runpod.io/pods/configuration/use-ssh). Whichever reading of a request's own
    # PUBLIC_KEY holds (kept or replaced), the run's key must be in root's authorized_keys.
    fake.account_ssh_keys, fake.request_public_key_kept = account_keys, kept
    p = make(fake, tmp_path)
    inst = p.create(InstanceSpec(run_id="run-key1", offer=pick_offer(p.offers(gpu="4090"), "4090"),
                                 ssh_public_key=PUBKEY, image=image))
    pod = fake.pods[inst.id]
    assert PUBKEY in pod.authorized_keys and pod.sshd_started
    assert pod.start_ssh and pod.env["SSH_PUBLIC_KEY"] == PUBKEY and pod.env["PUBLIC_KEY"] == PUBKEY


def test_account_keys_replace_a_requests_public_key_in_the_fake(fake: FakeRunPodAPI, tmp_path: Path) -> None:
    # The model, on its own: without SSH_PUBLIC_KEY the account's keys are what the pod authorizes.
    fake.account_ssh_keys = ACCOUNT_KEYS
    p = make(fake, tmp_path)
    offer = pick_offer(p.offers(gpu="4090"), "4090")
    fake._create({"name": "x", "imageName": "runpod/base:0.4", "gpuTypeId": offer.instance_type,
                  "cloudType": "SECURE", "startSsh": True, "ports": "22/tcp",
                  "env": [{"key": "PUBLIC_KEY", "value": PUBKEY}]}, spot=False)
    (pod,) = fake.live_pods()
    assert pod.authorized_keys == ACCOUNT_KEYS and PUBKEY not in pod.authorized_keys


def test_ssh_key_env_from_the_user_is_refused(fake: FakeRunPodAPI, tmp_path: Path) -> None:
    p = make(fake, tmp_path)
    offer = pick_offer(p.offers(gpu="4090"), "4090")
    with pytest.raises(ProviderError, match="SSH_PUBLIC_KEY is set by gpurun"):
        p.create(InstanceSpec(run_id="run-key2", offer=offer, ssh_public_key=PUBKEY,
                              env={"SSH_PUBLIC_KEY": ACCOUNT_KEYS[0]}))
    assert fake.pods == {}
