"""Pulling a run's outputs home from node 0: on demand, every few minutes in the background while
the guard runs (a slow pull of a big checkpoint must never make the guard late for the stop time),
and a last time, with its own deadline: the time the switch acts.

Each pull is measured (bytes, seconds) into the run's link estimate (orchestrator/run/link.py):
when the final pull of the newest checkpoint would not fit in what the reserve leaves it, the
guard's stop time moves earlier (a `stop_moved` event; the first time, a `link_too_slow` warning
and notification saying what to do).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from orchestrator.run import bucket, link
from orchestrator.run.boot import reconnect
from orchestrator.run.context import RunContext
from orchestrator.run.nodes import NodeGroup
from orchestrator.run.stop_time import Steps, cut_at
from orchestrator.run.watch import Watch
from orchestrator.state.events import EventKind
from orchestrator.state.rows import Event
from orchestrator.transport.protocol import SyncResult, Transport
from orchestrator.transport.pull import Syncer
from trainer import contract
from trainer.recipes import human_bytes

FINAL_MARGIN_S = 1.0  # the final pull's own deadline, this much before the switch acts


def link_of(events: Iterable[Event]) -> tuple[link.LinkEstimate, float | None]:
    """The link estimate and the guard's moved stop time (None: the plan's) from a run's events:
    what a guard taking the run over, and `gpurun status`, start from."""
    estimate, moved = link.LinkEstimate(), None
    for e in events:
        if e.phase == EventKind.SYNC.value and not e.payload.get("final") and e.payload.get("seconds") is not None:
            for size, seconds in e.payload.get("samples") or [(e.payload.get("bytes") or 0, e.payload["seconds"])]:
                estimate.add(int(size), float(seconds))
            estimate.checkpoint_bytes = int(e.payload.get("checkpoint_bytes") or estimate.checkpoint_bytes)
        elif e.phase == EventKind.STOP_MOVED.value:
            moved = float(e.payload["stop_at_epoch"])
    return estimate, moved


def link_status(events: Iterable[Event], plan_stop: float | None) -> tuple[float | None, str]:
    """For `gpurun status`: the guard's stop time (moved earlier where the link needs it) and the
    link line ("sync 1.4 MB/s, final pull ~23 s"; "" before a pull has measured it)."""
    estimate, moved = link_of(events)
    stop = plan_stop if moved is None or plan_stop is None else min(plan_stop, moved)
    return stop, link.sync_line(estimate.rate_bps, estimate.final_pull_s)


def newest_checkpoint_bytes(ckpt_dir_manifest: dict[str, Any]) -> int:
    """What the final pull carries: the newest checkpoint plus its weights-only export (the one
    listed, else a sixth of the checkpoint: bf16 weights beside fp32 weights and AdamW's two moments)."""
    entries = ckpt_dir_manifest.get(contract.MANIFEST_ENTRIES) or []
    newest = int(entries[-1].get("bytes") or 0) if entries else 0
    exports = ckpt_dir_manifest.get(contract.MANIFEST_EXPORTS) or []
    return newest + (sum(int(e.get("bytes") or 0) for e in exports) if exports else newest // 6)


class Syncing:
    def __init__(self, ctx: RunContext, group: NodeGroup, watch: Watch) -> None:
        self.ctx, self.group, self.watch = ctx, group, watch
        self._periodic: Syncer | None = None
        self._uploads_seen = 0  # --checkpoints-to: the uploads of out/bucket.json already measured
        self.link, ctx.guard_stop_at = link_of(ctx.ledger.events(ctx.run_id))
        self._warned = any(e.phase == EventKind.LINK_TOO_SLOW.value for e in ctx.ledger.events(ctx.run_id))

    def head(self) -> Transport:
        """Node 0's transport (reconnected from the ledger when this controller did not create it)."""
        reconnect(self.ctx, self.group)
        transport = self.group.head.transport
        assert transport is not None
        return transport

    @property
    def to_bucket(self) -> bool:
        """--checkpoints-to: the instance uploads the checkpoints; home pulls bring the logs only."""
        return bool(self.ctx.options.checkpoints_to)

    def now(self, final: bool = False) -> SyncResult:
        until = self._periodic_deadline()
        if final and self.ctx.run.stop_at_epoch is not None:  # a failed run's last pull: until the switch acts
            until = self.ctx.watchdog_deadline() - FINAL_MARGIN_S
        result = self.head().pull(self.ctx.run_dir, deadline_epoch=until, checkpoints=not self.to_bucket)
        self._record(result, final)
        return result

    def _periodic_deadline(self) -> float | None:
        """A periodic pull ends by the stop time: after it the job writes its last checkpoint, and
        the link is the final pull's (a periodic one still moving an older file would only delay it)."""
        return self.ctx.stop_at()

    def last(self) -> None:
        """The final pull, ended by the time the switch acts (half the reserve past the plan's stop
        time), so that the teardown keeps the other half whatever the link does. A pull that does
        not finish is recorded as such (`complete: false`): the run's outcome reads it."""
        transport = self.head()
        until = self.ctx.watchdog_deadline()
        if self.to_bucket:  # the final upload first, leaving the logs' pull its usual time
            logs_s = max(3.0, 1.5 * self.link.overhead_s)
            done = bucket.wait_uploaded(self.ctx, transport, until - FINAL_MARGIN_S - logs_s)
            self.ctx.event(EventKind.BUCKET_FINAL, uploaded=done)
        try:
            result = cut_at(self.group.head, "the final sync", Steps("pulling the outputs"),
                            lambda: transport.pull(self.ctx.run_dir, deadline_epoch=until - FINAL_MARGIN_S,
                                                   checkpoints=not self.to_bucket), until)
        except Exception as exc:
            self.ctx.event(EventKind.SYNC, final=True, complete=False, error=f"{type(exc).__name__}: {exc}")
            raise
        finally:
            if self.to_bucket:
                bucket.remove_credentials(transport)
        self._record(result, final=True)

    def start(self) -> None:
        opts = self.ctx.options
        every = float(opts.sync_interval_s) if opts.sync_interval_s else self.ctx.provider.default_sync_interval_s
        self._periodic = Syncer(lambda: self.now(), every).start()

    def stop(self) -> None:
        if self._periodic is not None:
            self._periodic.stop()

    def _record(self, result: SyncResult, final: bool) -> None:
        """The sync event, with the seconds the pull took (its rate: the link estimate, `gpurun dashboard`)."""
        self.watch.heartbeat(force=True)
        size = self._checkpoint_bytes()
        samples = self._samples(result)
        self.ctx.event(EventKind.SYNC, final=final, files=result.files, bytes=result.bytes, method=result.method,
                       verified=result.checkpoints_verified, rejected=result.checkpoints_rejected,
                       seconds=round(result.seconds, 3), checkpoint_bytes=size, latest=result.latest,
                       latest_home=result.latest_home, complete=True, samples=samples)
        if not final:
            self._measure(samples, size)

    def _samples(self, result: SyncResult) -> list[tuple[int, float]]:
        """What measures the link the final checkpoint takes: this pull, or with a bucket the
        instance's uploads reported since the last pull."""
        if not self.to_bucket:
            return [(result.bytes, round(result.seconds, 3))]
        done = bucket.uploads(self.ctx.run_dir)
        new, self._uploads_seen = done[self._uploads_seen:], len(done)
        return [(int(u.get("bytes") or 0), float(u.get("seconds") or 0.0)) for u in new]

    def _checkpoint_bytes(self) -> int:
        try:
            if self.to_bucket:  # the bucket's view: the same entry shape as the manifest's
                state = json.loads((self.ctx.run_dir / bucket.STATE_PATH).read_text())
                return newest_checkpoint_bytes({contract.MANIFEST_ENTRIES: state.get("held") or [],
                                                contract.MANIFEST_EXPORTS: state.get("exports") or []})
            return newest_checkpoint_bytes(json.loads((self.ctx.run_dir / contract.MANIFEST_PATH).read_text()))
        except (OSError, ValueError, AttributeError):
            return self.link.checkpoint_bytes

    def _measure(self, samples: list[tuple[int, float]], size: int) -> None:
        """Fold the pull (or the uploads) into the link estimate; move the guard's stop time earlier
        when the final transfer would not fit (never later than the plan's, never back)."""
        for moved, seconds in samples:
            self.link.add(moved, seconds)
        self.link.checkpoint_bytes = size or self.link.checkpoint_bytes
        expected = self.link.final_pull_s
        self.ctx.sync_line = link.sync_line(self.link.rate_bps, expected)
        plan_stop = self.ctx.run.stop_at_epoch
        if plan_stop is None or expected is None:
            return
        switch_at, grace = self.ctx.watchdog_deadline(), self.ctx.grace_s()
        stop = link.stop_for(plan_stop, switch_at, grace, expected)
        window = link.pull_window_s(plan_stop, switch_at, grace)
        if stop < plan_stop and not self._warned:
            self._warned = True
            self._warn(expected, window)
        current = self.ctx.stop_at() or plan_stop
        if stop < current - 1.0:  # a second's change is noise: only a real move is recorded
            self.ctx.guard_stop_at = stop
            self.ctx.event(EventKind.STOP_MOVED, stop_at_epoch=stop, plan_stop_at_epoch=plan_stop,
                           final_pull_s=round(expected, 1), window_s=round(window, 1),
                           rate_bps=round(self.link.rate_bps or 0.0), checkpoint_bytes=self.link.checkpoint_bytes)

    def _warn(self, expected: float, window: float) -> None:
        rate = link.human_rate(self.link.rate_bps)
        size = human_bytes(self.link.checkpoint_bytes)
        message = (f"run {self.ctx.run_id}: the link home carries {rate}; the final checkpoint ({size}) needs"
                   f" ~{expected:.0f} s, the reserve leaves it {window:.0f} s: the guard stops training"
                   f" {expected - window:.0f} s early so that it comes home. To keep the training time: raise"
                   " reserve_s in budgets.yaml, keep fewer or smaller checkpoints (keep_checkpoints, the"
                   " weights-only export), or send checkpoints to a bucket (--checkpoints-to s3://...)")
        self.ctx.event(EventKind.LINK_TOO_SLOW, message=message, final_pull_s=round(expected, 1),
                       window_s=round(window, 1), rate_bps=round(self.link.rate_bps or 0.0),
                       checkpoint_bytes=self.link.checkpoint_bytes)
        self.ctx.notice("link_too_slow", message, final_pull_s=round(expected, 1), window_s=round(window, 1))
