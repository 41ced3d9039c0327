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
from dataclasses import replace
from pathlib import Path

from orchestrator.errors import RunFailed
from orchestrator.plan.launch import LaunchError, LaunchOptions, offer_label
from orchestrator.plan.record import RunRecord, is_orphan
from orchestrator.run import provisioning
from orchestrator.run import teardown as teardown_mod
from orchestrator.state.ledger import Ledger
from orchestrator.transport.protocol import Transport
from orchestrator.transport.pull import Syncer
from providers.base import Instance
from trainer.manifest import MANIFEST_NAME, latest_valid


class Controller(provisioning.Controller):
    """What recovery needs of orchestrator.run.controller.Controller (which imports this module)."""

    syncer: Syncer | None
    transport: Transport | None

    def instance_ids(self) -> list[str]: ...
    def sync_now(self) -> object: ...
    def record_end(self, reason: str) -> None: ...
    def bootstrap_instance(self, instance: Instance) -> None: ...
    def start_after_bootstrap(self) -> None: ...


def home_checkpoint(run_dir: Path) -> tuple[Path, dict[str, object]] | None:
    """The newest checkpoint at home that verifies, and its manifest entry (None: none came home)."""
    entry, _ = latest_valid(run_dir / "out" / "checkpoints")
    if entry is None:
        return None
    return run_dir / "out" / "checkpoints" / entry.file, entry.__dict__


def resume_after_preemption(ctl: Controller, reason: str) -> bool:
    """Steps 1-4 of the module's docstring. False (the end reason recorded) when the run cannot go on."""
    run_id = ctl.run.run_id
    lost = ctl.instance_ids()[-1]
    ctl.ledger.record_event(run_id, "preempted", instance_id=lost, reason=reason)
    if ctl.syncer is not None:
        ctl.syncer.stop()
    if ctl.transport is not None:
        # After a notice the machine still answers for a moment: the checkpoint the job just wrote
        # comes home first (a reclaimed machine does not answer: what the periodic pulls brought stays).
        try:
            ctl.sync_now()
        except Exception as exc:  # noqa: BLE001 - best effort: the instance may be gone already
            ctl.ledger.record_event(run_id, "error", message=f"sync before resuming: {type(exc).__name__}: {exc}")
        ctl.transport.close()
        ctl.transport = None
    started = ctl.run.clock_start_epoch or time.time()
    retired = teardown_mod.retire(ctl.ledger, ctl.provider, run_id, lost)
    cost = ctl.allowance.attempt_cost_at(retired.verified_at - started)
    ctl.record_failed_attempt({
        "attempt": len(ctl.record.attempts) + 1, "cause": "preempted", "offer": offer_label(ctl.offer),
        "instance_type": ctl.offer.instance_type, "region": ctl.offer.region,
        "usd_per_hour": ctl.offer.total_usd_per_hour, "instance_id": lost, "reason": reason,
        "created_at": started, "gone_at": retired.verified_at, "cost_usd": cost,
        "terminate_requests": [r.__dict__ for r in retired.requests], "final_describe": retired.final_describe,
    })
    keep_attempt_logs(Path(ctl.run.run_dir), len(ctl.record.attempts))
    checkpoint = home_checkpoint(Path(ctl.run.run_dir))
    try:
        instance = provisioning.provision(ctl, resume=True)
    except RunFailed as exc:
        ctl.record_end(f"{reason}; not resumed: {exc}")
        return False
    ctl.bootstrap_instance(instance)
    if checkpoint is not None:
        push_checkpoint(ctl, *checkpoint)
    ctl.ledger.record_event(run_id, "resuming", instance_id=instance.id,
                            checkpoint=None if checkpoint is None else checkpoint[0].name,
                            step=None if checkpoint is None else checkpoint[1]["step"])
    ctl.start_after_bootstrap()
    return True


def keep_attempt_logs(run_dir: Path, attempt: int | str) -> None:
    """The lost instance's (or the earlier run's) train.log / metrics.jsonl / job.log / EVIDENCE.md
    stay as *.attempt-N.* (or *.<run id>.*): the next instance's pulls bring files of the same names."""
    tag = f"attempt-{attempt}" if isinstance(attempt, int) else str(attempt)
    for rel in ("out/train.log", "out/metrics.jsonl", "job.log", "EVIDENCE.md"):
        path = run_dir / rel
        if path.exists():
            path.rename(path.with_name(f"{path.stem}.{tag}{path.suffix}"))


def push_checkpoint(ctl: Controller, path: Path, entry: dict[str, object]) -> None:
    """The checkpoint and a manifest naming only it, to the new instance's out/checkpoints."""
    assert ctl.transport is not None
    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp) / MANIFEST_NAME
        manifest.write_text(json.dumps({"latest": entry["file"], "checkpoints": [entry]}, indent=2))
        ctl.transport.push_files([path, manifest], "out/checkpoints")  # the manifest last: the file is whole


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
    if home_checkpoint(Path(run.run_dir)) is None:
        raise LaunchError(f"run {run.run_id} has no complete checkpoint at home ({run.run_dir}/out/checkpoints):"
                          " nothing to resume from")
    old = RunRecord.of_run(run).options
    return replace(old, max_usd=max_usd, max_boot_usd=max_boot_usd, resume_run=run.run_id)


def resume_earlier_run(ctl: Controller) -> None:
    """A `--resume RUN` launch, its instance bootstrapped: the earlier run's logs kept under its id,
    and its last checkpoint pushed, so the trainer starts from that step."""
    earlier = ctl.run.plan.get("resumed_from") or ""
    keep_attempt_logs(Path(ctl.run.run_dir), earlier)
    checkpoint = home_checkpoint(Path(ctl.run.run_dir))
    if checkpoint is None:
        raise RunFailed(f"the checkpoint of run {earlier} is gone from {ctl.run.run_dir}: nothing to resume from")
    push_checkpoint(ctl, *checkpoint)
    ctl.ledger.record_event(ctl.run.run_id, "resuming", resumed_from=earlier, checkpoint=checkpoint[0].name,
                            step=checkpoint[1]["step"])

