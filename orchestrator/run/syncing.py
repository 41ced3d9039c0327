"""Pulling a run's outputs home from node 0: on demand, every few minutes in the background while
the guard runs (a slow pull of a big checkpoint must never make the guard late for the stop time),
and a last time, ended by the time the switch acts."""

from __future__ import annotations

import time

from orchestrator.run.boot import reconnect
from orchestrator.run.context import RunContext
from orchestrator.run.nodes import NodeGroup
from orchestrator.run.stop_time import Steps, cut_at
from orchestrator.run.watch import Watch
from orchestrator.state.events import EventKind
from orchestrator.transport.protocol import SyncResult, Transport
from orchestrator.transport.pull import Syncer


class Syncing:
    def __init__(self, ctx: RunContext, group: NodeGroup, watch: Watch) -> None:
        self.ctx, self.group, self.watch = ctx, group, watch
        self._periodic: Syncer | None = None

    def head(self) -> Transport:
        """Node 0's transport (reconnected from the ledger when this controller did not create it)."""
        reconnect(self.ctx, self.group)
        transport = self.group.head.transport
        assert transport is not None
        return transport

    def now(self, final: bool = False) -> SyncResult:
        started = time.monotonic()
        result = self.head().pull(self.ctx.run_dir)
        self._record(result, final, time.monotonic() - started)
        return result

    def last(self) -> None:
        """The final pull, ended by the time the switch acts (half the reserve past the stop time), so
        that the teardown keeps the other half whatever the link does."""
        transport = self.head()
        started = time.monotonic()
        result = cut_at(self.group.head, "the final sync", Steps("pulling the outputs"),
                        lambda: transport.pull(self.ctx.run_dir), self.ctx.watchdog_deadline())
        self._record(result, True, time.monotonic() - started)

    def start(self) -> None:
        opts = self.ctx.options
        every = float(opts.sync_interval_s) if opts.sync_interval_s else self.ctx.provider.default_sync_interval_s
        self._periodic = Syncer(lambda: self.now(), every).start()

    def stop(self) -> None:
        if self._periodic is not None:
            self._periodic.stop()

    def _record(self, result: SyncResult, final: bool, seconds: float) -> None:
        """The sync event; `seconds` the pull took, so that its rate shows (`gpurun dashboard`)."""
        self.watch.heartbeat(force=True)
        self.ctx.event(EventKind.SYNC, final=final, files=result.files, bytes=result.bytes, method=result.method,
                       seconds=round(seconds, 3),
                       verified=result.checkpoints_verified, rejected=result.checkpoints_rejected)
