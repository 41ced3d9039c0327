"""DataCrunch spot preemption (issue 16): `get` sets `preempted` for a spot instance the platform took back,
never for our own delete nor an on-demand instance. The real `verda` SDK talks HTTP to the local fake."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from providers import get_provider
from providers.base import (
    NOT_FOUND,
    RUNNING,
    STOPPING,
    TERMINATED,
    BillingRule,
    Instance,
    InstanceSpec,
)
from providers.datacrunch import DataCrunchProvider
from tests.e2e_helpers import wait_for
from tests.fakes.datacrunch_api import FakeDataCrunchAPI
from tests.offer_helpers import pick_offer

PUBKEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGdjcHVydW4tdGVzdC1rZXk gpurun-test"
FAST = {"retry_wait_s": 0.01, "retry_max_wait_s": 0.05, "timeout_s": 2.0}
HANG_GUARD_S = 20.0  # only stops a hung test; the assertions are on what happened, not how fast


@pytest.fixture
def fake() -> Iterator[FakeDataCrunchAPI]:
    api = FakeDataCrunchAPI(billing=BillingRule(1, 0, "test rule"), ordered_s=0.05, provisioning_s=0.15,
                            deleting_s=0.15).start()
    yield api
    api.stop()


def _provider(fake: FakeDataCrunchAPI) -> DataCrunchProvider:
    p = get_provider("datacrunch", client_id=fake.client_id, client_secret=fake.client_secret,
                     base_url=fake.base_url, **FAST)
    assert isinstance(p, DataCrunchProvider)
    return p


@pytest.fixture
def dc(fake: FakeDataCrunchAPI) -> DataCrunchProvider:
    return _provider(fake)


def _create(dc: DataCrunchProvider, run_id: str, *, spot: bool) -> Instance:
    offer = pick_offer(dc.offers(gpu="H100", spot=spot), "H100")
    assert offer.spot is spot
    return dc.create(InstanceSpec(run_id=run_id, offer=offer, ssh_public_key=PUBKEY, volume_gb=10))


def _running(dc: DataCrunchProvider, iid: str) -> Instance:
    return wait_for(lambda: (i := dc.get(iid)).state == RUNNING and i, HANG_GUARD_S, f"{iid} running",
                    every_s=0.02)


def test_reclaimed_spot_reads_preempted_then_404_still_preempted(dc: DataCrunchProvider,
                                                                 fake: FakeDataCrunchAPI) -> None:
    inst = _create(dc, "run-spot", spot=True)
    assert _running(dc, inst.id).preempted == ""  # a running spot instance is not preempted
    fake.reclaim_spot(inst.id)
    got = dc.get(inst.id)
    assert got.state == TERMINATED and got.raw["status"] == "discontinued" and got.raw["is_spot"] is True
    assert got.preempted.startswith("DataCrunch spot instance") and "\n" not in got.preempted
    assert got.boot_failure == ""
    assert fake.instances[inst.id].delete_requests == 0 and fake.billed_volumes() == []
    # Later the API forgets it (404): this provider saw it run as spot and never deleted it.
    fake.forget_discontinued_after_s = 0.0
    gone = dc.get(inst.id)
    assert gone.state == NOT_FOUND and "404" in gone.preempted


def test_a_fresh_provider_reads_a_reclaimed_spot_as_preempted_from_the_api_alone(
        dc: DataCrunchProvider, fake: FakeDataCrunchAPI) -> None:
    inst = _create(dc, "run-spot2", spot=True)
    _running(dc, inst.id)
    fake.reclaim_spot(inst.id)
    other = _provider(fake)  # a guard or a resumed controller: no memory of this instance
    assert other.get(inst.id).preempted
    fake.forget_discontinued_after_s = 0.0
    assert other.get(inst.id).preempted == ""  # a 404 of an id it never saw: it cannot say


def test_our_own_delete_never_reads_preempted(dc: DataCrunchProvider, fake: FakeDataCrunchAPI) -> None:
    inst = _create(dc, "run-own", spot=True)
    _running(dc, inst.id)
    assert dc.terminate(inst.id)["accepted"]
    seen = []

    def gone() -> bool:
        got = dc.get(inst.id)
        seen.append((got.state, got.preempted))
        return got.gone

    wait_for(gone, HANG_GUARD_S, "our delete to end")
    assert {s for s, _ in seen} <= {STOPPING, TERMINATED} and TERMINATED in {s for s, _ in seen}
    assert all(p == "" for _, p in seen)
    assert fake.instances[inst.id].delete_requests == 1 and fake.instances[inst.id].reclaimed_at is None
    fake.forget_discontinued_after_s = 0.0
    assert dc.get(inst.id).preempted == ""


def test_on_demand_never_reads_preempted(dc: DataCrunchProvider, fake: FakeDataCrunchAPI) -> None:
    from verda import VerdaClient

    inst = _create(dc, "run-od", spot=False)
    _running(dc, inst.id)
    with pytest.raises(ValueError, match="on-demand"):
        fake.reclaim_spot(inst.id)  # the platform only reclaims spot
    # Deleted by someone else (the console, another tool): gone without our delete, yet not a preemption.
    console = VerdaClient(fake.client_id, fake.client_secret, base_url=fake.base_url)
    console.instances.action(inst.id, "delete")
    got = wait_for(lambda: (i := dc.get(inst.id)).gone and i, HANG_GUARD_S, "the console's delete to end")
    assert got.raw["is_spot"] is False and got.preempted == ""


def test_spot_order_discontinued_before_it_ran_is_a_boot_failure_not_a_preemption(
        dc: DataCrunchProvider, fake: FakeDataCrunchAPI) -> None:
    fake.provisioning_s = 60.0  # it stays provisioning: it never runs
    inst = _create(dc, "run-boot", spot=True)
    assert dc.get(inst.id).raw["status"] in ("ordered", "provisioning")
    fake.reclaim_spot(inst.id)
    got = dc.get(inst.id)
    assert got.preempted == "" and "before it ever ran" in got.boot_failure


def test_preempt_after_s_reclaims_running_spot_instances_only(dc: DataCrunchProvider,
                                                              fake: FakeDataCrunchAPI) -> None:
    from verda import VerdaClient

    fake.preempt_after_s = 4.0  # room for a loaded machine's polls to see it running first
    spot = _create(dc, "run-knob", spot=True)
    ondemand = _create(dc, "other-run", spot=False)
    assert _running(dc, spot.id).preempted == ""
    got = wait_for(lambda: (i := dc.get(spot.id)).preempted and i, HANG_GUARD_S, "the knob's reclaim")
    assert got.state == TERMINATED
    rec = fake.instances[spot.id]
    assert rec.reclaimed_at is not None and rec.delete_requests == 0 and rec.status == "discontinued"
    # What the real SDK reads for it: status discontinued, still is_spot / contract SPOT.
    sdk = VerdaClient(fake.client_id, fake.client_secret, base_url=fake.base_url).instances.get_by_id(spot.id)
    assert (sdk.status, sdk.is_spot, sdk.contract) == ("discontinued", True, "SPOT")
    assert rec.body["os_volume_id"] in fake.purged  # its on_spot_discontinue: delete_permanently
    # The on-demand instance in the same account runs on, untouched.
    od = _running(dc, ondemand.id)
    assert od.state == RUNNING and od.preempted == "" and fake.instances[ondemand.id].reclaimed_at is None
