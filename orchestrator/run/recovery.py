"""Spot and preemption: when the provider takes the instance back, resume the run on the next offer
from its last checkpoint, inside the same cap.

The guard sees the preemption (`Instance.preempted`, asked when the job or the instance stops
answering, and every PREEMPT_CHECK_S on a spot offer). Then:
1. the lost instance is terminated and verified gone (`teardown.retire`: a reclaimed spot machine
   may linger stopped, with a disk that bills), and its billed time joins the run's spend as an
   attempt of kind "preempted";
2. the newest complete checkpoint that came home (verified by its SHA-256 against the manifest) is
   what the next instance starts from;
3. the plan's offers are tried again in order, the same offer first (spot again, or on-demand after
   it with --spot-fallback), each with what is left of --max-usd (`provisioning.provision(resume=
   True)`): recovery is refused, and the run ends with that reason, when what is left cannot buy the
   minimum useful runtime;
4. the lost instance's logs stay home as out/train.attempt-N.log, metrics.attempt-N.jsonl,
   job.attempt-N.log; the new instance is bootstrapped (code, config, a new dead-man's switch with
   the new deadline),
   the checkpoint is pushed to its out/checkpoints, the recipe's data is prepared again, and the
   job starts with resume=auto: the trainer logs `resumed: checkpoints/<file> at step N`.
The run keeps its id: every attempt is an instance row of it, and the final shutdown proof lists
each one verified gone.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from orchestrator.errors import RunFailed
from orchestrator.plan.options import LaunchError, LaunchOptions
from orchestrator.plan.record import RunRecord, is_orphan
from orchestrator.run import bucket
from orchestrator.run import teardown as teardown_mod
from orchestrator.run.attempts import Attempt, Cause
from orchestrator.run.context import RunContext
from orchestrator.run.nodes import NodeGroup
from orchestrator.run.provisioning import provision, record_attempt
from orchestrator.run.stop import End
from orchestrator.state.events import EventKind
from orchestrator.state.ledger import Ledger
from orchestrator.transport.bucket import BucketDest, newest_in_bucket
from orchestrator.transport.protocol import Transport
from trainer import contract
from trainer.manifest import MANIFEST_NAME, latest_valid


@dataclass
class Checkpoint:
    """The newest complete checkpoint at home and its manifest entry."""

    path: Path
    entry: dict[str, object]


def home_checkpoint(run_dir: Path) -> Checkpoint | None:
    """The newest checkpoint at home that verifies, and its manifest entry (None: none came home)."""
    entry, _ = latest_valid(run_dir / contract.CHECKPOINTS_PATH)
    if entry is None:
        return None
    return Checkpoint(run_dir / contract.CHECKPOINTS_PATH / entry.file, entry.__dict__)


def reprovision(ctx: RunContext, group: NodeGroup, end: End) -> Checkpoint | End | None:
    """Steps 1-3 of the module's docstring, the lost group already closed and its last outputs
    pulled by the controller: the lost instance retired and counted, its logs kept, a new group
    provisioned. The checkpoint to resume from (None: none came home), or the End of a run that
    cannot go on."""
    lost = ctx.ledger.instances(ctx.run_id)[-1].instance_id
    ctx.event(EventKind.PREEMPTED, instance_id=lost, reason=end.reason)
    started = ctx.run.clock_start_epoch or time.time()
    retired = teardown_mod.retire(ctx.ledger, ctx.provider, ctx.run_id, lost)
    record_attempt(ctx, Attempt(len(ctx.record.attempts) + 1, Cause.PREEMPTED, ctx.offer, lost, end.reason, started,
                                retired.verified_at, ctx.allowance.attempt_cost_at(retired.verified_at - started),
                                {"terminate_requests": [r.__dict__ for r in retired.requests],
                                 "final_describe": retired.final_describe}))
    keep_attempt_logs(ctx.run_dir, len(ctx.record.attempts))
    checkpoint = home_checkpoint(ctx.run_dir)
    try:
        provision(ctx, group, resume=True)
    except RunFailed as exc:
        return end.then(f"not resumed: {exc}")
    return checkpoint


def keep_attempt_logs(run_dir: Path, attempt: int | str) -> None:
    """The lost instance's (or the earlier run's) train.log / metrics.jsonl / job.log / EVIDENCE.md
    stay as *.attempt-N.* (or *.<run id>.*): the next instance's pulls bring files of the same names."""
    tag = f"attempt-{attempt}" if isinstance(attempt, int) else str(attempt)
    for rel in (contract.TRAIN_LOG_PATH, contract.METRICS_PATH, "job.log", "EVIDENCE.md"):
        path = run_dir / rel
        if path.exists():
            path.rename(path.with_name(f"{path.stem}.{tag}{path.suffix}"))


def push_checkpoint(transport: Transport, checkpoint: Checkpoint) -> None:
    """The checkpoint and a manifest naming only it, to the new instance's out/checkpoints."""
    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp) / MANIFEST_NAME
        manifest.write_text(json.dumps({contract.MANIFEST_LATEST: checkpoint.entry["file"], contract.MANIFEST_ENTRIES: [checkpoint.entry]},
                                       indent=2))
        transport.push_files([checkpoint.path, manifest], contract.CHECKPOINTS_PATH)  # the manifest last: the file is whole


# ---- gpurun launch --resume RUN -------------------------------------------------------------------


def resume_options(ledger: Ledger, run_ref: str, max_usd: float | None, max_boot_usd: float | None) -> LaunchOptions:
    """The launch options of a `--resume RUN`: the run's own, a new budget, the run to continue.
    LaunchError (one line) for a run that is still open, was adopted by sweep, or has no checkpoint."""
    run = ledger.resolve_run(run_ref)
    if run.open:
        raise LaunchError(f"run {run.run_id} is still open ({run.phase}): let it end, or `gpurun teardown"
                          f" {run.run_id}`, then resume it")
    if is_orphan(run):
        raise LaunchError(f"run {run.run_id} was adopted by `gpurun sweep`: it has no launch to resume")
    old = RunRecord.of_run(run).options
    in_bucket = old.checkpoints_to and newest_in_bucket(BucketDest.parse(old.checkpoints_to).for_run(run.run_id),
                                                       old.endpoint_url)
    if home_checkpoint(Path(run.run_dir)) is None and not in_bucket:
        raise LaunchError(f"run {run.run_id} has no complete checkpoint at home ({run.run_dir}/{contract.CHECKPOINTS_PATH}):"
                          " nothing to resume from")
    return replace(old, max_usd=max_usd, max_boot_usd=max_boot_usd, resume_run=run.run_id)


def resume_earlier_run(ctx: RunContext, transport: Transport, python: str | None = None) -> None:
    """A `--resume RUN` launch, its instance bootstrapped: the earlier run's logs kept under its id,
    and its last checkpoint pushed (or, when it went to a bucket, fetched by the instance from
    there), so the trainer starts from that step."""
    earlier = ctx.record.resumed_from or ""
    keep_attempt_logs(ctx.run_dir, earlier)
    if ctx.options.checkpoints_to and python is not None:  # the earlier run's checkpoints are in its bucket
        src = BucketDest.parse(ctx.options.checkpoints_to).for_run(earlier)
        entry = bucket.fetch_on_instance(ctx, transport, python, src)
        ctx.event(EventKind.RESUMING, resumed_from=earlier, checkpoint=entry["file"], step=entry["step"], source=src.url)
        return
    checkpoint = home_checkpoint(ctx.run_dir)
    if checkpoint is None:
        raise RunFailed(f"the checkpoint of run {earlier} is gone from {ctx.run_dir}: nothing to resume from")
    push_checkpoint(transport, checkpoint)
    ctx.event(EventKind.RESUMING, resumed_from=earlier, checkpoint=checkpoint.path.name, step=checkpoint.entry["step"])

