# ruff: noqa: F811  (fixtures are imported and taken by name, as pytest does)
"""DataCrunch (Verda) multi-node runs (issue 18, `gpurun launch --nodes N`): every node of a run in
node 0's location, named gpurun-<run id>-n<rank> and read back as the run's everywhere (list_owned,
list_run, the audit's inventory), each node created once; `private_ip` is the instance's `ip`, its
public address, the only one the instances API gives.

The real `verda` SDK talking HTTP to the local fake API (tests/fakes/datacrunch_api.py).
"""

from __future__ import annotations

import time

import pytest

from providers.base import (
    RUNNING,
    InstanceSpec,
    NoCapacityError,
    ProviderError,
    owned_name,
)
from providers.datacrunch import DataCrunchProvider
from tests.fakes.datacrunch_api import FakeDataCrunchAPI

# The provider tests' own set-up: a clean environment, the fake, the provider on it.
from tests.test_datacrunch_provider import PUBKEY, _clean_env, dc, fake  # noqa: F401  (fixtures)


def spec(dc: DataCrunchProvider, run_id: str, rank: int, nodes: int = 2, region: str = "FIN-01") -> InstanceSpec:
    """The spec the controller gives node `rank`: the same offer (1A100.22V in `region`) for every node."""
    offer = next(o for o in dc.offers(gpu="A100") if o.instance_type == "1A100.22V" and o.region == region)
    return InstanceSpec(run_id=run_id, offer=offer, ssh_public_key=PUBKEY, owner="tester",
                        node_rank=rank, nodes=nodes)


def wait_running(dc: DataCrunchProvider, iid: str, limit_s: float = 5.0) -> None:
    end = time.time() + limit_s
    while time.time() < end:
        if dc.get(iid).state == RUNNING:
            return
        time.sleep(0.05)
    raise AssertionError(f"{iid} never ran")


def test_datacrunch_accepts_multi_node_runs(dc: DataCrunchProvider) -> None:
    for n in (1, 2, 4):
        dc.check_nodes(n)


def test_two_nodes_in_one_location_named_and_listed_as_the_run(dc: DataCrunchProvider,
                                                              fake: FakeDataCrunchAPI) -> None:
    n0 = dc.create(spec(dc, "dc-mn", 0))
    n1 = dc.create(spec(dc, "dc-mn", 1))
    assert n0.id != n1.id
    assert (n0.name, n1.name) == ("gpurun-dc-mn", "gpurun-dc-mn-n1")
    assert owned_name(n1.name) == ("dc-mn", 1) and n0.run_id == n1.run_id == "dc-mn"
    creates = [c for c in fake.creates if c["hostname"].startswith("gpurun-dc-mn")]
    assert [c["location_code"] for c in creates] == ["FIN-01", "FIN-01"]
    assert [c["hostname"] for c in creates] == ["gpurun-dc-mn", "gpurun-dc-mn-n1"]
    assert creates[1]["description"].endswith("node 1 of 2")
    # One ssh key for the run, shared by its nodes (cleanup deletes it by the run's name).
    assert creates[0]["ssh_key_ids"] == creates[1]["ssh_key_ids"] and len(fake.ssh_keys) == 1

    assert sorted(i.id for i in dc.list_run("dc-mn")) == sorted([n0.id, n1.id])
    assert sorted(i.id for i in dc.list_owned() if i.run_id == "dc-mn") == sorted([n0.id, n1.id])
    # The audit (inventory) counts both nodes and their volumes as the run's.
    rows = [b for b in dc.inventory() if b.name.startswith("gpurun-dc-mn")]
    assert {b.kind for b in rows} == {"instance", "volume"} and len(rows) == 4
    assert {b.run_id for b in rows} == {"dc-mn"}

    # private_ip: the instance's `ip` (public: the instances API has no private address).
    wait_running(dc, n0.id)
    wait_running(dc, n1.id)
    got0, got1 = dc.get(n0.id), dc.get(n1.id)
    assert got0.private_ip == fake.ip and got1.private_ip == fake.ip
    assert got0.private_ip == got0.raw["ip"] and got0.ssh is not None and got0.ssh.host == got0.private_ip


def test_workers_follow_node_0s_location_whatever_the_offer_says(dc: DataCrunchProvider,
                                                                 fake: FakeDataCrunchAPI) -> None:
    n0 = dc.create(spec(dc, "dc-mn-loc", 0, region="FIN-03"))
    # A worker's spec naming another location still goes where node 0 is.
    n1 = dc.create(spec(dc, "dc-mn-loc", 1, region="FIN-01"))
    assert {dc.get(n0.id).raw["location"], dc.get(n1.id).raw["location"]} == {"FIN-03"}


def test_each_node_is_created_once(dc: DataCrunchProvider, fake: FakeDataCrunchAPI) -> None:
    n0 = dc.create(spec(dc, "dc-mn-idem", 0))
    n1 = dc.create(spec(dc, "dc-mn-idem", 1))
    assert dc.create(spec(dc, "dc-mn-idem", 1)).id == n1.id  # a resumed controller asks again
    assert dc.create(spec(dc, "dc-mn-idem", 0)).id == n0.id
    assert len([c for c in fake.creates if c["hostname"].startswith("gpurun-dc-mn-idem")]) == 2


def test_a_worker_with_no_room_in_node_0s_location_is_no_capacity_and_leaves_node_0(
    dc: DataCrunchProvider, fake: FakeDataCrunchAPI
) -> None:
    s0, s1 = spec(dc, "dc-mn-full", 0), spec(dc, "dc-mn-full", 1)  # the plan's offer, as the controller keeps it
    n0 = dc.create(s0)
    fake.availability["FIN-01"].remove("1A100.22V")  # sold out there after node 0 (still in FIN-03)
    with pytest.raises(NoCapacityError) as exc:
        dc.create(s1)
    text = str(exc.value)
    assert "\n" not in text and "FIN-01" in text and "node 1" in text and "node 0" in text
    assert [i.id for i in dc.list_run("dc-mn-full")] == [n0.id]  # node 0 untouched
    assert [c["hostname"] for c in fake.creates] == ["gpurun-dc-mn-full"]  # no order for the worker


def test_a_refused_worker_create_deletes_only_what_it_made(dc: DataCrunchProvider, fake: FakeDataCrunchAPI) -> None:
    n0 = dc.create(spec(dc, "dc-mn-refused", 0))
    # In stock by the availability call, refused by the create itself (capacity taken meanwhile).
    fake.refuse_create_where.add("1A100.22V@FIN-01")
    with pytest.raises(NoCapacityError):
        dc.create(spec(dc, "dc-mn-refused", 1))
    assert [i.id for i in dc.list_run("dc-mn-refused")] == [n0.id]
    assert fake.status_of(n0.id) not in ("deleting", "discontinued")


def test_a_worker_needs_node_0(dc: DataCrunchProvider, fake: FakeDataCrunchAPI) -> None:
    with pytest.raises(ProviderError) as exc:
        dc.create(spec(dc, "dc-mn-orphan", 1))
    assert "node 0" in str(exc.value) and fake.creates == []


def test_cleanup_removes_the_runs_key_after_every_node(dc: DataCrunchProvider, fake: FakeDataCrunchAPI) -> None:
    ids = [dc.create(spec(dc, "dc-mn-clean", r)).id for r in range(2)]
    for iid in ids:
        wait_running(dc, iid)
        dc.terminate(iid)
    gone = dc.cleanup("dc-mn-clean")
    assert any(g.startswith("ssh_key:") for g in gone) and fake.ssh_keys == {}


def test_worker_names_parse_back_to_the_run() -> None:
    assert owned_name("gpurun-abc-123-n3") == ("abc-123", 3)
    assert owned_name("gpurun-abc-123") == ("abc-123", 0)
    from providers.datacrunch.inventory import _run_id_of_volume

    assert _run_id_of_volume("gpurun-abc-123-n3-os", None) == "abc-123"
    assert _run_id_of_volume("gpurun-abc-123-data", None) == "abc-123"
    assert _run_id_of_volume("someone-elses", None) is None
