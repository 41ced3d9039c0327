"""The work on a run's nodes: the data phase and the job, started, probed and stopped on every node.

Node 0 starts first (its rank 0 hosts the rendezvous the others connect to) and is the one probed:
its rank 0 writes the step lines and the checkpoints.
"""

from __future__ import annotations

import math
import shlex
import signal
import time
from collections.abc import Callable
from typing import Any

from orchestrator import settings
from orchestrator.errors import RunFailed
from orchestrator.plan.job import JOB_CONFIG
from orchestrator.run.bootstrap import trainer_command
from orchestrator.run.context import RunContext
from orchestrator.run.nodes import Node, NodeGroup, group_env, rendezvous_address
from orchestrator.run.progress import (
    DataProbe,
    Probe,
    data_probe_command,
    parse_data_probe,
    parse_probe,
    probe_command,
)
from orchestrator.run.setup import DATA_JOB, DATA_SOURCE_DIR
from orchestrator.run.stop import End
from orchestrator.state.events import EventKind
from orchestrator.state.phases import Phase
from orchestrator.transport.protocol import Transport
from trainer import contract

JOB = "job"  # the job's detached name on every node (job.pid, job.exit, job.log)
DATA_FAILED = "data preparation failed"  # the leading words of a failed data phase's detail
_UNBUFFERED = {"PYTHONUNBUFFERED": "1"}


class DataFailed(RunFailed):
    """`python -m trainer.data prepare` exited non-zero on a node; the message is its line."""


def quietly(action: Callable[[], object]) -> None:
    """Best effort on a worker node: a node that does not answer is the teardown's to end."""
    try:
        action()
    except Exception:  # noqa: BLE001
        pass


def start_data(ctx: RunContext, group: NodeGroup) -> bool:
    """Start the data phase when the recipe has one; False when there is none, or its data is
    already READY (prepared by an earlier attempt on this instance): training starts at once."""
    head = group.head
    assert head.transport is not None
    job = head.job
    if not job.get("prepare"):
        return False
    if head.transport.run(f"test -f {shlex.quote(job['data_dir'] + '/' + contract.READY)}", timeout_s=30).ok:
        ctx.event(EventKind.DATA_REUSED, data_dir=job["data_dir"])
        return False
    ctx.phase(Phase.PREPARING_DATA, command=job["prepare"], data_dir=job["data_dir"], recipe=job["recipe"])
    pid = head.transport.start_detached(DATA_JOB, job["prepare"], env=_UNBUFFERED)
    ctx.event(EventKind.DATA_STARTED, pid=pid)
    for node in group.workers:  # every node prepares its own copy: the nodes share no disk
        if node.transport is not None and node.job.get("prepare"):
            node_pid = node.transport.start_detached(DATA_JOB, node.job["prepare"], env=_UNBUFFERED)
            ctx.event(EventKind.NODE_DATA_STARTED, rank=node.rank, pid=node_pid)
    return True


def workers_preparing(ctx: RunContext, group: NodeGroup) -> list[int]:
    """The worker nodes still preparing their data (DataFailed for one whose preparer failed)."""
    waiting = []
    for node in group.workers:
        if node.transport is None or not node.job.get("prepare"):
            continue
        state = node.transport.job_state(DATA_JOB)
        if state.running:
            waiting.append(node.rank)
        elif state.exit_code != 0:
            raise DataFailed(f"node {node.rank}: " + data_failure(ctx, node, state.exit_code))
    return waiting


def data_failure(ctx: RunContext, node: Node, exit_code: int | None) -> str:
    """The detail of a failed prepare: its exit status and its last line (contract: ONE stderr
    line saying what failed and how to fix it; the log has stdout and stderr together)."""
    transport = node.transport
    assert transport is not None
    tail = transport.run(f"tail -n 20 {shlex.quote(transport.root + '/' + DATA_JOB + '.log')}", timeout_s=30).stdout
    lines = [ln.strip() for ln in tail.splitlines() if ln.strip()]
    line = lines[-1] if lines else "no output"
    if ctx.options.data_from:  # name the user's directory, not the copy uploaded from it
        line = line.replace(f"{transport.root}/{DATA_SOURCE_DIR}", ctx.options.data_from)
    status = "killed, no exit status" if exit_code is None else f"exit {exit_code}"
    return f"{DATA_FAILED} ({status}): {line}"


def probe(transport: Transport) -> Probe:
    """The job's log size and last step line, read on the node (cheap: one command)."""
    return parse_probe(transport.run(probe_command(transport.root), timeout_s=10).stdout)


def data_probe(transport: Transport, data_dir: str) -> DataProbe:
    command = data_probe_command(transport.root, data_dir, f"{DATA_JOB}.log")
    return parse_data_probe(transport.run(command, timeout_s=10).stdout)


def job_command(ctx: RunContext, group: NodeGroup, node: Node) -> str:
    """The job's command line on `node`."""
    opts = ctx.options
    if opts.command:
        return shlex.join(opts.command)
    args = list(opts.trainer_args)
    if node.job.get("config_file"):
        args = ["--config", JOB_CONFIG, *args]
    # The trainer's own deadline is the guard's stop time: it plans its learning-rate decay, the
    # final checkpoint and the final eval to end just before it (lr_schedule auto), so what comes
    # home is a finished model; the guard's SIGTERM at stop_at and the watchdog's are backstops.
    assert ctx.run.stop_at_epoch is not None and node.transport is not None
    args += ["--deadline-epoch", f"{math.floor(ctx.run.stop_at_epoch)}"]
    # One rank per GPU; an instance without GPUs runs --gpus CPU ranks (gloo), e.g. to test DDP.
    gpus = group.gpu_count or max(1, opts.gpus)
    rendezvous: dict[str, Any] = {}
    if opts.nodes > 1:
        rendezvous = dict(nodes=opts.nodes, node_rank=node.rank,
                          rdzv_endpoint=f"{rendezvous_address(group.head.instance)}:{settings.rdzv_port()}")
    return trainer_command(gpus, args, python=node.python, out_dir=f"{node.transport.root}/{contract.OUT_DIR}", **rendezvous)


def _job_env(ctx: RunContext, group: NodeGroup, rank: int) -> dict[str, str]:
    env = dict(_UNBUFFERED)
    if ctx.options.nodes > 1:
        addresses = [str(n.get("private_ip") or "") for n in sorted(ctx.record.nodes, key=lambda n: n["rank"])]
        env.update(group_env(addresses, rank, group.gpu_count or max(1, ctx.options.gpus), settings.rdzv_port()))
    return env


def start_job(ctx: RunContext, group: NodeGroup) -> None:
    """The job on every node, node 0 first; then the `started` notification."""
    head = group.head
    assert head.transport is not None
    command = job_command(ctx, group, head)
    ctx.phase(Phase.RUNNING, command=command)
    pid = head.transport.start_detached(JOB, command, env=_job_env(ctx, group, 0))
    for node in group.workers:
        if node.transport is None:
            raise RunFailed(f"node {node.rank} (instance {node.instance.id}) does not answer: the job cannot"
                            " start on every node")
        node_pid = node.transport.start_detached(JOB, job_command(ctx, group, node), env=_job_env(ctx, group, node.rank))
        ctx.event(EventKind.NODE_JOB_STARTED, rank=node.rank, pid=node_pid)
    ctx.event(EventKind.JOB_STARTED, pid=pid)
    ctx.notice("started", f"run {ctx.run_id} started on {ctx.offer.instance_type}; the guard stops it"
               f" at {time.strftime('%H:%M:%S', time.localtime(ctx.run.stop_at_epoch or 0))}",
               instance_type=ctx.offer.instance_type, usd_per_hour=ctx.offer.total_usd_per_hour,
               stop_at_epoch=ctx.run.stop_at_epoch, deadline_epoch=ctx.run.deadline_epoch)


def _stop_within(transport: Transport, name: str, grace_s: float) -> bool:
    """SIGTERM already sent: wait up to `grace_s` for `name` to end; True when it did."""
    limit = time.time() + grace_s
    while transport.job_state(name).running and time.time() < limit:
        time.sleep(0.5)
    return not transport.job_state(name).running


def stop_job(ctx: RunContext, group: NodeGroup, end: End) -> None:
    """Stop the data phase and the job on every node (SIGTERM, the grace, SIGKILL); keep the job's
    exit status (a worker's that failed first decides: node 0's ranks only stopped because of it)."""
    head = group.head.transport
    assert head is not None
    ctx.phase(Phase.STOPPING, reason=end.reason)
    for node in group.workers:  # a stop during the data phase: every node's preparer
        if node.transport is not None and node.job.get("prepare"):
            quietly(lambda t=node.transport: t.job_state(DATA_JOB).running and t.signal(DATA_JOB, signal.SIGTERM))
    if group.head.job.get("prepare") and head.job_state(DATA_JOB).running:
        head.signal(DATA_JOB, signal.SIGTERM)  # no checkpoint to wait for
        if not _stop_within(head, DATA_JOB, ctx.grace_s()):
            head.signal(DATA_JOB, signal.SIGKILL)
    workers = [n.transport for n in group.workers if n.transport is not None]
    if head.job_state(JOB).running:
        # Every node hears it (the ranks agree on the step to stop at); node 0's rank 0 checkpoints.
        for t in (head, *workers):
            quietly(lambda t=t: t.signal(JOB, signal.SIGTERM))  # the trainer checkpoints and exits 0
        if not _stop_within(head, JOB, ctx.grace_s()):
            ctx.event(EventKind.JOB_KILLED, after_s=ctx.grace_s())
            head.signal(JOB, signal.SIGKILL)
    for t in workers:  # a worker still running once node 0 is done has nothing left to give
        quietly(lambda t=t: t.job_state(JOB).running and t.signal(JOB, signal.SIGKILL))
    state = head.job_state(JOB)
    if not state.running:  # its own status: the launch's exit code, `status` and the card show it
        code = group.failed_exit if group.failed_exit is not None else state.exit_code
        ctx.ledger.update_run(ctx.run_id, job_exit_code=code)
