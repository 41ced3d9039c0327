"""The local provider and its transport: real processes, real process groups, real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.plan.launch import make_plan
from orchestrator.plan.options import LaunchOptions
from orchestrator.run.bootstrap import BootstrapError, bootstrap, ensure_packages
from orchestrator.state.ledger import Ledger
from orchestrator.transport.factory import open_transport
from orchestrator.transport.local import JOB_NICENESS, LocalTransport
from providers import UnknownProviderError, get_provider
from providers.base import InstanceSpec, LocalSandbox, ProviderError, TorchOnImage
from providers.local import LocalProvider, pgid_alive, visible_indices


def _spec(provider: LocalProvider, run_id: str = "20260101-000000-abcd") -> InstanceSpec:
    return InstanceSpec(run_id=run_id, offer=provider.offers()[0])


def _wait(predicate, timeout: float = 60.0) -> bool:  # a hang guard for a busy machine, not a timing assertion
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_registry_resolves_local_and_refuses_unknown() -> None:
    assert isinstance(get_provider("local", usd_per_hour=1.5), LocalProvider)
    with pytest.raises(UnknownProviderError, match="unknown provider 'nope': choose one of"):
        get_provider("nope")


def test_negative_price_is_refused() -> None:
    with pytest.raises(ProviderError, match="usd-per-hour"):
        LocalProvider(usd_per_hour=-1)


def test_offer_carries_configured_price() -> None:
    offer = LocalProvider(usd_per_hour=1.2).offers()[0]
    assert offer.usd_per_hour == 1.2 and offer.provider == "local"
    assert offer.price_source.startswith("configured")


def test_create_is_idempotent_and_listed(tmp_path: Path) -> None:
    provider = LocalProvider(root=tmp_path)
    first = provider.create(_spec(provider))
    again = provider.create(_spec(provider))
    assert first.id == again.id and first.state == "running"
    assert [i.id for i in provider.list_owned()] == [first.id]
    assert provider.list_run("20260101-000000-abcd")[0].id == first.id


def test_multi_node_runs_get_a_sandbox_per_node_all_on_loopback(tmp_path: Path) -> None:
    provider = LocalProvider(root=tmp_path)
    provider.check_nodes(3)  # accepted: the nodes are sandboxes on this machine
    run = "20260101-000000-mnod"
    nodes = [provider.create(InstanceSpec(run_id=run, offer=provider.offers()[0], node_rank=r, nodes=3))
             for r in range(3)]
    assert [n.id for n in nodes] == [f"local-{run}", f"local-{run}-n1", f"local-{run}-n2"]  # node 0 as before
    assert len({n.raw["sandbox"] for n in nodes}) == 3
    assert [n.name for n in nodes] == [f"gpurun-{run}", f"gpurun-{run}-n1", f"gpurun-{run}-n2"]
    assert {n.private_ip for n in nodes} == {"127.0.0.1"} and {n.run_id for n in nodes} == {run}
    again = provider.create(InstanceSpec(run_id=run, offer=provider.offers()[0], node_rank=1, nodes=3))
    assert again.id == nodes[1].id  # idempotent per node
    assert sorted(i.id for i in provider.list_run(run)) == sorted(n.id for n in nodes)
    provider.terminate(nodes[1].id)
    assert _wait(lambda: provider.get(nodes[1].id).gone)
    assert provider.get(nodes[0].id).state == "running"  # one node's end is its own
    # A single-node run keeps its one id and sandbox.
    assert provider.create(_spec(provider)).id == "local-20260101-000000-abcd"


def test_terminate_kills_every_group_and_get_waits_for_the_last_process(tmp_path: Path) -> None:
    provider = LocalProvider(root=tmp_path)
    inst = provider.create(_spec(provider))
    transport = LocalTransport(Path(inst.raw["sandbox"]))
    (Path(transport.root) / "code").mkdir()
    pid = transport.start_detached("job", "sleep 300")
    # A grandchild in the same group must die too.
    transport.start_detached("other", "sh -c 'sleep 300 & wait'")
    assert transport.job_state("job").running and pgid_alive(pid)

    response = provider.terminate(inst.id)
    assert len(response["killed_process_groups"]) == 2
    assert _wait(lambda: provider.get(inst.id).state == "terminated")
    assert not pgid_alive(pid)
    assert provider.list_run("20260101-000000-abcd") == []
    # Terminating again is "already gone", not an error.
    assert provider.terminate(inst.id)["result"].startswith("terminate requested")
    assert provider.get("local-unknown-run").state == "not_found"


def test_detached_work_runs_below_the_guards_priority(tmp_path: Path) -> None:
    # The instance is this machine: a job using every core must never make the guard late.
    provider = LocalProvider(root=tmp_path)
    inst = provider.create(_spec(provider))
    transport = LocalTransport(Path(inst.raw["sandbox"]))
    pid = transport.start_detached("job", "sleep 300")
    try:
        mine = os.getpriority(os.PRIO_PROCESS, 0)
        assert os.getpriority(os.PRIO_PROCESS, pid) == min(19, mine + JOB_NICENESS) > mine or mine == 19
    finally:
        provider.terminate(inst.id)


def test_detached_job_reports_exit_code_and_takes_signals(tmp_path: Path) -> None:
    provider = LocalProvider(root=tmp_path)
    inst = provider.create(_spec(provider))
    transport = LocalTransport(Path(inst.raw["sandbox"]))
    (Path(transport.root) / "code").mkdir()
    transport.start_detached("quick", "exit 7")
    assert _wait(lambda: not transport.job_state("quick").running)
    assert transport.job_state("quick").exit_code == 7

    # The job says when its trap is set: a SIGTERM before that would find no trap (a race, not a bug).
    script = "trap 'echo got-term > ../trapped; exit 0' TERM; echo ready > ../ready; while true; do sleep 0.1; done"
    transport.start_detached("job", f"sh -c \"{script}\"")
    assert _wait(lambda: (Path(transport.root) / "ready").exists())
    assert transport.job_state("job").running
    transport.signal("job", signal.SIGTERM)
    assert _wait(lambda: not transport.job_state("job").running)
    assert (Path(transport.root) / "trapped").read_text().strip() == "got-term"
    assert transport.job_state("job").exit_code == 0


def test_self_destruct_command_spares_the_watchdog_and_kills_the_job(tmp_path: Path) -> None:
    provider = LocalProvider(root=tmp_path)
    inst = provider.create(_spec(provider))
    transport = LocalTransport(Path(inst.raw["sandbox"]))
    (Path(transport.root) / "code").mkdir()
    job = transport.start_detached("job", "sleep 300")
    command = provider.self_destruct_command(inst)
    transport.start_detached("watchdog", f"sh -c {__import__('shlex').quote(command)}; sleep 1")
    assert _wait(lambda: not pgid_alive(job))
    assert _wait(lambda: provider.get(inst.id).state == "terminated")


def test_a_gpu_the_local_machine_lacks_is_refused_at_plan_time(tmp_path: Path) -> None:
    # `--provider local --gpu H100` used to be ignored silently; the plan now refuses it in one line.
    with pytest.raises(ProviderError, match=r"no offer for GPU 'H100'.*available"):
        make_plan(LaunchOptions(provider="local", gpu="H100", max_usd=0.02, usd_per_hour=1.2,
                                runs_dir=str(tmp_path)))
    assert Ledger().list_runs() == []


def test_the_sandbox_runs_jobs_with_the_controllers_own_interpreter(tmp_path: Path) -> None:
    provider = LocalProvider(root=tmp_path)
    inst = provider.create(_spec(provider))
    access = provider.access(inst)
    assert isinstance(access, LocalSandbox) and access.python == sys.executable
    facts = provider.image_facts(None, provider.offers()[0])
    assert facts.torch is TorchOnImage.CARRIED and not facts.installs  # the test venv has torch; never installs
    transport = open_transport(access, run_id=inst.run_id or "", instance_id=inst.id, ledger=Ledger())
    info = bootstrap(transport)
    assert info.python == sys.executable and info.torch_version and info.installed == []


def test_a_named_interpreter_without_torch_is_never_installed_into(tmp_path: Path) -> None:
    bare = tmp_path / "bare"  # a throwaway venv without torch, numpy or even pip
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    python = str(bare / "bin" / "python3")
    transport = LocalTransport(tmp_path / "box", python=python)
    transport.wait_ready(5)
    with pytest.raises(BootstrapError, match="never installs into an interpreter it did not create"):
        bootstrap(transport)
    with pytest.raises(BootstrapError, match="lacks tiktoken"):
        ensure_packages(transport, python, ["tiktoken"])
    assert not list(bare.glob("lib/python*/site-packages/*torch*"))  # nothing was installed there


def test_cuda_visible_devices_narrows_the_local_gpus_as_cuda_reads_it() -> None:
    uuids = ["GPU-aaaa-1111", "GPU-bbbb-2222", "GPU-cccc-3333"]
    assert visible_indices("", uuids) == []
    assert visible_indices("-1", uuids) == []  # the usual way to hide them all
    assert visible_indices("2,0", uuids) == [2, 0]
    assert visible_indices("1,7,0", uuids) == [1]  # CUDA stops at the first entry naming no GPU
    assert visible_indices("GPU-bbbb", uuids) == [1]  # a UUID prefix


def test_an_empty_cuda_visible_devices_makes_the_local_offer_a_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    (offer,) = LocalProvider().offers()
    assert offer.gpu == "cpu" and offer.gpu_count == 0 and offer.instance_type == "local-cpu"


def test_a_job_that_ends_while_it_is_looked_at_is_ended_with_its_status_not_killed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The job writes its exit status, then exits: a look that finds it gone reads the status after.
    transport = LocalTransport(tmp_path)
    (tmp_path / "job.pid").write_text("4242\n")

    def ends_now(pid: int, sig: int) -> None:
        (tmp_path / "job.exit").write_text("0\n")  # it ended between the looks
        raise ProcessLookupError(pid)

    monkeypatch.setattr(os, "kill", ends_now)
    state = transport.job_state("job")
    assert not state.running and state.exit_code == 0 and state.pid == 4242
