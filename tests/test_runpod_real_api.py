"""RunPod behaviours of the real API that the provider must survive (each modelled in the fake from
RunPod's own source, cited there): stockStatus "None", REST v2's 429 with Retry-After, and an
account whose registered SSH keys RunPod injects into the pod. Through the real `runpod` SDK and
HTTP against tests/fakes/runpod_api.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from providers.base import Offer
from providers.runpod import RunPodProvider
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
