"""Create a run's node group, wait for each node to run and answer, arm its switch; reconnect later.

The money clock starts at the create call. Each node is booted the same way: polled until the
provider says it runs and gives access, then reached (SSH) by the attempt's boot window, then its
dead-man's switch goes on in that first session, before the upload and bootstrap (which can be
slow): from there every node ends itself at the deadline with this controller gone.
"""

from __future__ import annotations

import os
import time

from orchestrator import settings
from orchestrator.errors import BootFailed, RunFailed
from orchestrator.run.context import RunContext
from orchestrator.run.nodes import Node, NodeGroup, worker_root
from orchestrator.run.stop_time import Steps, cut_at
from orchestrator.run.watchdog import install_watchdog
from orchestrator.state.events import EventKind
from orchestrator.state.phases import Phase
from orchestrator.transport.factory import open_transport
from orchestrator.transport.keys import run_key
from orchestrator.transport.protocol import Transport
from providers.base import Access, Instance, InstanceSpec
from trainer import contract

POLL_S = 1.0
RECONNECT_S = 30.0  # how long a controller loaded from the ledger waits for a node to answer


def spec(ctx: RunContext, node_rank: int) -> InstanceSpec:
    return InstanceSpec(
        run_id=ctx.run_id, offer=ctx.offer,
        ssh_public_key=run_key().public_line if ctx.provider.needs_ssh_key else "",
        image=ctx.options.image, attempt=len(ctx.record.attempts) + 1, node_rank=node_rank, nodes=ctx.options.nodes,
    )


def create_head(ctx: RunContext, group: NodeGroup) -> Instance:
    """Start the money clock and create node 0 of the current offer (NoCapacityError: none)."""
    clock = ctx.allowance.with_clock_start(time.time())  # deadlines are fixed before the create call
    ctx.ledger.update_run(ctx.run_id, clock_start_epoch=clock.clock_start_epoch, deadline_epoch=clock.deadline_epoch,
                          stop_at_epoch=clock.stop_at_epoch, usd_per_hour=ctx.options.group_usd_per_hour(ctx.offer),
                          controller_pid=os.getpid())
    ctx.record.allowance = clock  # the record's allowance carries this attempt's clock, as the row does
    ctx.save_record("allowance")
    ctx.phase(Phase.CREATING, instance_type=ctx.offer.instance_type, deadline_epoch=clock.deadline_epoch,
              **({"nodes": ctx.options.nodes} if ctx.options.nodes > 1 else {}))
    group.nodes = []
    instance = ctx.provider.create(spec(ctx, node_rank=0))
    ctx.ledger.add_instance(ctx.run_id, ctx.provider.name, instance.id, instance.state, instance.raw)
    group.nodes.append(Node(0, instance))
    return instance


def create_workers(ctx: RunContext, group: NodeGroup) -> None:
    """Nodes 1..N-1, right after node 0 (BootFailed when one is refused: the attempt then tears down
    every node it made)."""
    for rank in range(1, ctx.options.nodes):
        try:
            inst = ctx.provider.create(spec(ctx, node_rank=rank))
        except Exception as exc:  # noqa: BLE001 - capacity, quota, an API error: the group cannot form
            raise BootFailed(f"node {rank} of {ctx.options.nodes} could not be created:"
                             f" {type(exc).__name__}: {exc}") from exc
        ctx.ledger.add_instance(ctx.run_id, ctx.provider.name, inst.id, inst.state, inst.raw)
        group.nodes.append(Node(rank, inst))


def boot_and_connect(ctx: RunContext, group: NodeGroup, until: float) -> None:
    """Every node running and answering by `until`, its switch armed; BootFailed if one will not."""
    for node in group.nodes:
        if node.rank == 0:
            ctx.phase(Phase.BOOTING, instance_id=node.instance.id)
        node.instance, access = _wait_running(ctx, node, until)
        transport = _open(ctx, node, access)
        try:
            transport.wait_ready(timeout_s=max(5.0, until - time.time()))
        except Exception as exc:  # noqa: BLE001 - whatever the transport raises, this attempt failed
            transport.close()
            raise BootFailed(f"{node.label} runs but never answered: {type(exc).__name__}: {exc}") from exc
        node.transport = transport  # only a reachable node has outputs worth a final sync
        arm_switch(ctx, node)
        if node.rank == 0:
            ctx.phase(Phase.SSH_READY, root=transport.root, watchdog_deadline=ctx.watchdog_deadline())
        else:
            ctx.event(EventKind.NODE_READY, rank=node.rank, instance_id=node.instance.id, root=transport.root,
                      watchdog_deadline=ctx.watchdog_deadline())
    if group.workers:  # node 0's private address, for the rendezvous and a guard that takes over
        ctx.record.nodes = group.records()
        ctx.save_record("nodes")


def _wait_running(ctx: RunContext, node: Node, until: float) -> tuple[Instance, Access]:
    while True:
        inst = ctx.provider.get(node.instance.id)
        ctx.ledger.update_instance(inst.id, state=inst.state)
        if inst.boot_failure:
            raise BootFailed(f"{node.label} will not boot: {inst.boot_failure}")
        if inst.gone:
            raise BootFailed(f"{node.label} went away while booting ({inst.state})")
        access = ctx.provider.access(inst)
        if inst.state == "running" and access is not None:
            return inst, access
        if time.time() > until:
            raise BootFailed(f"{node.label} still {inst.state} at the end of its boot window"
                             f" ({until - (ctx.run.clock_start_epoch or until):.0f} s)")
        time.sleep(POLL_S)


def _open(ctx: RunContext, node: Node, access: Access | None) -> Transport:
    if access is None:
        raise RunFailed(f"{node.label} is not reachable (the provider gives no access to it yet)")
    root = {} if node.rank == 0 else {"root": worker_root(ctx.run_id, node.rank)}
    return open_transport(access, run_id=ctx.run_id, instance_id=node.instance.id, ledger=ctx.ledger, **root)


def self_destruct_command(ctx: RunContext, instance: Instance) -> str:
    # GPURUN_SELF_DESTRUCT_CMD replaces the provider's command where the "instance" is a machine
    # that must survive (the tests' loopback sshd); docs/ARCHITECTURE.md lists it as a test hook.
    return settings.self_destruct_cmd() or ctx.provider.self_destruct_command(instance)


def arm_switch(ctx: RunContext, node: Node) -> None:
    """The dead-man's switch on one node: works with this controller gone. It fires between the
    guard's stop time and the money deadline, leaving half the reserve for the self-destruct to
    land. Its idle and stall rules start once the job starts (a worker has no stall rule: the
    steps are logged on node 0); a recipe's data phase is named to it after bootstrap."""
    opts, transport, instance = ctx.options, node.transport, node.instance
    assert transport is not None
    stall = node.rank == 0

    def arm() -> None:
        for path, content, mode in ctx.provider.self_destruct_files(instance):
            transport.write_file(path, content, mode)
        install_watchdog(
            transport, deadline_epoch=ctx.watchdog_deadline(), grace_s=ctx.grace_s(),
            self_destruct_cmd=self_destruct_command(ctx, instance),
            # With this controller gone, an ended job's instance must not idle, nor a stalled job run on.
            idle_s=opts.idle_minutes * 60, stall_s=opts.stall_minutes * 60 if stall else None,
            progress_file=contract.METRICS_PATH if stall and not opts.command else "job.log",
        )

    assert ctx.run.stop_at_epoch is not None
    cut_at(node, "arming the switch", Steps("arming the dead-man's switch"), arm, ctx.run.stop_at_epoch)


def reconnect(ctx: RunContext, group: NodeGroup) -> NodeGroup:
    """The group of a controller that did not create it (a detached guard, `gpurun teardown`), from
    the ledger. Node 0 must answer (RunFailed); a worker that does not is left to the teardown,
    which terminates and verifies every instance of the run."""
    if group.nodes and group.head.transport is not None:
        return group
    rows = ctx.ledger.instances(ctx.run_id)
    if not rows:
        raise RunFailed("the run has no instance")
    found = ctx.record.bootstrap or {}
    group.gpu_count = group.gpu_count or int(found.get("gpu_count") or 0)
    entries = sorted(ctx.record.nodes, key=lambda n: n["rank"]) or [{"rank": 0, "instance_id": rows[-1].instance_id}]
    if not group.nodes:
        for entry in entries:  # node 0 of a multi-node run, else the newest attempt's instance
            python = found.get("python") if entry["rank"] == 0 else entry.get("python")
            job = ctx.record.job if entry["rank"] == 0 else entry.get("job")
            group.nodes.append(Node(entry["rank"], ctx.provider.get(entry["instance_id"]),
                                    python=str(python or "python3"), job=dict(job or {})))
    for node in group.nodes:
        if node.transport is None:
            _reconnect(ctx, node)
    return group


def _reconnect(ctx: RunContext, node: Node) -> None:
    inst = node.instance = ctx.provider.get(node.instance.id)
    if inst.gone:
        if node.rank == 0:
            raise RunFailed(f"instance {inst.id} is already {inst.state}")
        return
    access = ctx.provider.access(inst)
    if node.rank == 0:
        node.transport = _open(ctx, node, access)
        node.transport.wait_ready(timeout_s=RECONNECT_S)
        return
    if access is None:
        return
    transport = _open(ctx, node, access)
    try:
        transport.wait_ready(timeout_s=RECONNECT_S)
        node.transport = transport
    except Exception as exc:  # noqa: BLE001 - reported; teardown still ends it
        transport.close()
        ctx.event(EventKind.ERROR, message=f"node {node.rank}: {exc}")
