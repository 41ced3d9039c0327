"""DataCrunch reconciliation and audit: billed_cost and inventory, the real `verda` SDK against the fake."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from providers import get_provider
from providers.base import RUNNING, Billable, BillingRule, InstanceSpec
from providers.datacrunch import DataCrunchProvider
from providers.datacrunch.inventory import scrub
from tests.e2e_helpers import wait_for
from tests.fakes.datacrunch_api import FakeDataCrunchAPI
from tests.offer_helpers import pick_offer

PUBKEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGdjcHVydW4tdGVzdC1rZXk gpurun-test"
FAST = {"retry_wait_s": 0.01, "retry_max_wait_s": 0.05, "timeout_s": 2.0}
A100_PER_HOUR = 1.29  # 1A100.22V in the fake's instance types
NVME_PER_GB_MONTH = 0.2


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATACRUNCH_CLIENT_ID", "DATACRUNCH_CLIENT_SECRET", "DATACRUNCH_BASE_URL", "VERDA_CLIENT_ID",
                 "VERDA_CLIENT_SECRET", "VERDA_BASE_URL", "DATACRUNCH_LOCATION"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def fake() -> Iterator[FakeDataCrunchAPI]:
    api = FakeDataCrunchAPI(billing=BillingRule(1, 0, "test rule"), ordered_s=0.05, provisioning_s=0.1,
                            deleting_s=0.1, nvme_price_per_month_per_gb=NVME_PER_GB_MONTH).start()
    yield api
    api.stop()


@pytest.fixture
def dc(fake: FakeDataCrunchAPI) -> DataCrunchProvider:
    p = get_provider("datacrunch", client_id=fake.client_id, client_secret=fake.client_secret,
                     base_url=fake.base_url, location="FIN-03", **FAST)
    assert isinstance(p, DataCrunchProvider)
    return p


def _sdk(fake: FakeDataCrunchAPI) -> Any:
    from verda import VerdaClient

    return VerdaClient(fake.client_id, fake.client_secret, base_url=fake.base_url)


def _create(dc: DataCrunchProvider, run_id: str) -> str:
    offers = [o for o in dc.offers(gpu="A100") if o.instance_type == "1A100.22V" and o.region == "FIN-03"]
    return dc.create(InstanceSpec(run_id=run_id, offer=pick_offer(offers, "A100"), ssh_public_key=PUBKEY)).id


def _no_secret(fake: FakeDataCrunchAPI, blob: str) -> None:
    assert fake.client_secret not in blob
    for token in [*fake.tokens, *fake.refresh_tokens]:
        assert token not in blob


def test_billed_cost_is_not_available_and_says_what_was_checked(dc: DataCrunchProvider,
                                                                 fake: FakeDataCrunchAPI) -> None:
    iid = _create(dc, "run-bill1")
    wait_for(lambda: dc.get(iid).state == RUNNING, 10, "the instance running", every_s=0.05)
    dc.terminate(iid)
    wait_for(lambda: dc.get(iid).gone, 10, "the instance discontinued", every_s=0.05)
    cost = dc.billed_cost("run-bill1", [iid, "gone-id"], 1000.0, 2000.0)
    assert cost.usd is None and cost.complete is True
    assert cost.source.startswith("not available: the Verda API has no per-instance cost endpoint (checked:")
    # The rate the API states for the instance is kept as evidence, never summed into a figure.
    rates = {r["id"]: r for r in cost.details["instances"]}
    assert rates[iid]["price_per_hour"] == A100_PER_HOUR and rates[iid]["pricing"] == "FIXED_PRICE"
    assert rates["gone-id"] == {"id": "gone-id", "status": "not_found"}
    # No call reached for a billing route: there is none in the real API, so none in the fake.
    assert not [r for r in fake.requests if "bill" in r["path"] or "invoice" in r["path"]]
    _no_secret(fake, json.dumps(cost.details) + cost.source)


def test_inventory_lists_every_instance_and_volume_that_bills(dc: DataCrunchProvider,
                                                               fake: FakeDataCrunchAPI) -> None:
    ours = _create(dc, "run-aud1")
    foreign = fake.add_instance("jupyter-box", description=f"pasted: {fake.client_secret}", age_s=7200)
    orphan = fake.add_instance("gpurun-run-old1", age_s=86400)
    sdk = _sdk(fake)
    sdk.instances.action(orphan, "shutdown")  # offline: the real API's shutdown, still billing
    detached = sdk.volumes.create(type="NVMe", name="scratch", size=200, location="FIN-03").id
    trashed = sdk.volumes.create(type="NVMe", name="gpurun-run-old1-data", size=100, location="FIN-03").id
    sdk.volumes.delete_by_id(trashed, is_permanent=False)
    purged = sdk.volumes.create(type="HDD", name="gone-for-good", size=500, location="FIN-03").id
    sdk.volumes.delete_by_id(purged, is_permanent=True)
    assert purged in fake.purged and trashed in fake.trash  # the trash listing shows both

    rows = dc.inventory()
    by_id: dict[str, Billable] = {b.id: b for b in rows}

    mine = by_id[ours]
    assert (mine.kind, mine.run_id, mine.name) == ("instance", "run-aud1", "gpurun-run-aud1")
    assert mine.usd_per_hour == A100_PER_HOUR
    other = by_id[foreign]
    assert other.run_id is None and other.state == "running" and other.usd_per_hour == A100_PER_HOUR
    assert other.created_at is not None and "bills" in other.note
    off = by_id[orphan]
    assert (off.state, off.run_id, off.usd_per_hour) == ("offline", "run-old1", A100_PER_HOUR)
    assert "still bills" in off.note

    vol = by_id[detached]
    assert vol.kind == "volume" and vol.run_id is None and vol.state == "detached"
    assert vol.usd_per_hour == pytest.approx(200 * NVME_PER_GB_MONTH / 730)
    assert "permanently deleted" in vol.note
    trash = by_id[trashed]
    assert trash.state == "deleted (trash)" and trash.run_id == "run-old1" and "trash" in trash.note
    assert trash.usd_per_hour == pytest.approx(100 * NVME_PER_GB_MONTH / 730)
    assert purged not in by_id  # permanently deleted: listed in the trash, flagged, bills nothing

    os_vols = [b for b in rows if b.kind == "volume" and b.raw.get("is_os_volume")]
    assert {b.run_id for b in os_vols} == {"run-aud1", "run-old1", None}  # each instance's OS volume
    assert all("attached to" in b.note and b.usd_per_hour for b in os_vols)

    blob = json.dumps([b.to_dict() for b in rows])
    _no_secret(fake, blob)
    assert other.raw["description"] == "<redacted>"


def test_inventory_notes_each_instance_status_and_skips_what_is_gone(dc: DataCrunchProvider,
                                                                      fake: FakeDataCrunchAPI) -> None:
    # Caught half-way, however long the listing takes on a busy machine (the fake's defaults move a
    # provisioning instance on to running after 0.6 s, a deleting one to discontinued after 0.3 s).
    fake.provisioning_s = fake.deleting_s = 3600.0
    ids = {s: fake.add_instance(f"box-{s.replace('_', '-')}", status=s)
           for s in ("error", "no_capacity", "provisioning", "hibernating", "deleting", "discontinued")}
    rows = {b.id: b for b in dc.inventory() if b.kind == "instance"}
    assert ids["discontinued"] not in rows  # GET /instances lists non-deleted instances only
    assert "until deleted" in rows[ids["error"]].note and "no_capacity" in rows[ids["no_capacity"]].note
    assert rows[ids["provisioning"]].note.startswith("starting (provisioning)")
    assert rows[ids["deleting"]].usd_per_hour == A100_PER_HOUR
    hib = rows[ids["hibernating"]]
    assert hib.usd_per_hour is None and "volumes" in hib.note  # the instance stops, its volumes bill on


def test_inventory_volume_prices_in_both_spellings_and_when_unknown(dc: DataCrunchProvider,
                                                                      fake: FakeDataCrunchAPI) -> None:
    vid = fake.add_volume("old-data", 730)
    fake.volume_price_field = "monthly_per_gb"  # the legacy field the Go SDK still reads
    (row,) = [b for b in dc.inventory() if b.id == vid]
    assert row.usd_per_hour == pytest.approx(NVME_PER_GB_MONTH) and row.state == "detached"
    fake.fail_next(20, 503, path_prefix="/volume-types")
    (row,) = [b for b in dc.inventory() if b.id == vid]
    assert row.usd_per_hour is None and "price unknown" in row.note


def test_scrub_drops_secret_keys_and_values() -> None:
    raw = {"id": "x", "client_secret": "abc",
           "nested": [{"access_token": "t", "ok": "has s3cr3t-value inside"}]}
    assert scrub(raw, ["s3cr3t-value"]) == {"id": "x", "nested": [{"ok": "<redacted>"}]}
