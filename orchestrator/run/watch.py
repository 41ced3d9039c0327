"""The guard's one watch loop: follow the data phase or the job until it needs the controller.

Each poll looks, in order, at the stop time, a stop asked (SIGTERM, Ctrl-C), a handoff asked
(SIGHUP), the provider's word on a spot instance, the heartbeat, the other nodes, and then what is
watched; an instance that cannot be watched five polls running is lost (torn down, not left
billing). It returns a typed `Stop`: the run ends (and why), the data is ready, or a handoff.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass
from functools import partial

from orchestrator.run.context import RunContext
from orchestrator.run.job import DATA_JOB, JOB, DataFailed, data_failure, data_probe, probe, workers_preparing
from orchestrator.run.nodes import NodeGroup
from orchestrator.run.progress import StallWatch
from orchestrator.run.stop import End, Stop, StopKind, Watched
from orchestrator.run.stop_time import CutOff, Steps, within
from orchestrator.run.watchdog import heartbeat, heartbeat_interval_s, read_reason
from orchestrator.state.endings import Ending
from orchestrator.state.events import EventKind
from orchestrator.transport.protocol import Transport
from trainer import contract

POLL_S = 1.0
PREEMPT_CHECK_S = 30.0  # how often the guard asks the provider whether it took a spot instance back
NODES_CHECK_S = 10.0  # how often the guard looks at a multi-node run's other nodes' jobs
LOST_AFTER = 5  # polls in a row that could not watch the instance
SPOT_NOTICE_FILE = "spot.notice"  # written on the instance when the provider warns of a reclaim
DATA_NOTE = " (while preparing the data)"


@dataclass
class Requests:
    """What a signal asked of the guard; it acts at its next poll (orchestrator/cli/signals.py)."""

    stop: bool = False
    cause: str = ""  # what asked for the stop: "SIGTERM"
    handoff: bool = False


class Watch:
    def __init__(self, ctx: RunContext, group: NodeGroup, requests: Requests) -> None:
        self.ctx, self.group, self.requests = ctx, group, requests
        self._beat_at = float("-inf")  # time.monotonic() of the last heartbeat

    def follow(self, watched: Watched) -> Stop:
        opts, ctx = self.ctx.options, self.ctx
        transport = self.group.head.transport
        assert transport is not None
        stall = StallWatch(opts.stall_minutes * 60, by_step=watched is Watched.JOB and not opts.command, now=time.time())
        note = DATA_NOTE if watched is Watched.DATA else ""
        errors, checked = 0, {"asked": time.time(), "nodes": time.time()}
        while True:
            if (asked := self._asked(note)) is not None:
                return asked
            stop_at = ctx.stop_at()
            try:
                # A poll over a crawling link must not make the guard late: it is cut at the stop time.
                poll = partial(self._poll, watched, transport, stall, note, checked)
                look = poll() if stop_at is None else within(stop_at, "the watch", Steps("polling"), poll)
                if look is not None:
                    return look
                errors = 0
            except CutOff:
                continue  # the stop time came mid-poll: _asked ends the run now
            except DataFailed:
                raise
            except Exception as exc:  # an instance we cannot watch is torn down, not left billing
                errors += 1
                ctx.event(EventKind.ERROR, message=f"{type(exc).__name__}: {exc}")
                if preempted := self.preempted():  # unreachable because the provider took it back
                    return Stop.ended(End.because(Ending.PREEMPTED, preempted + note))
                if errors >= LOST_AFTER:
                    return Stop.ended(End.because(Ending.LOST, f"{type(exc).__name__}: {exc}"))
            time.sleep(POLL_S)

    def _poll(self, watched: Watched, transport: Transport, stall: StallWatch, note: str,
              checked: dict[str, float]) -> Stop | None:
        """One poll: the provider's word on a spot instance, the heartbeat, the other nodes, then
        what is watched (None: nothing to act on)."""
        if self.ctx.offer.spot and time.time() - checked["asked"] >= PREEMPT_CHECK_S:
            checked["asked"] = time.time()
            if preempted := self.preempted():
                return Stop.ended(End.because(Ending.PREEMPTED, preempted + note))
        self.heartbeat()
        if self.group.workers and watched is Watched.JOB and time.time() - checked["nodes"] >= NODES_CHECK_S:
            checked["nodes"] = time.time()
            if failed := self._failed_node():
                return Stop.ended(failed)
        return self._look_job(transport, stall) if watched is Watched.JOB else self._look_data(transport, stall)

    def _asked(self, note: str) -> Stop | None:
        stop_at = self.ctx.stop_at()
        if stop_at is not None and time.time() >= stop_at:
            early = (self.ctx.run.stop_at_epoch or stop_at) - stop_at
            why = f" ({early:.0f} s before the plan's stop time, so that the final checkpoint comes home)" \
                if early >= 1 else ""
            return Stop.ended(End.because(Ending.DEADLINE, "budget guard" + why + note))
        if self.ctx.allowance.egress_usd_per_gb and self._egress_spent_the_cap():
            return Stop.ended(End.because(Ending.DEADLINE, "budget guard: the pulls home went past the egress"
                                          " reserve, and the rest of the cap is needed to stop" + note))
        if self.requests.stop:
            return Stop.ended(End.noted(Ending.REQUESTED, self.requests.cause))
        if self.requests.handoff:
            return Stop(StopKind.HANDOFF)
        return None

    def _egress_spent_the_cap(self) -> bool:
        """More was pulled home than the plan reserved, so much that running on to the end of the
        reserve (stop, final sync, teardown) would bill past the cap: the run stops now."""
        return self.ctx.spent_usd(at=time.time() + self.ctx.allowance.reserve_s) > self.ctx.allowance.max_usd

    def _look_job(self, transport: Transport, stall: StallWatch) -> Stop | None:
        ctx = self.ctx
        state = transport.job_state(JOB)
        if not state.running:
            if ctx.offer.spot and (preempted := self.preempted() or self._spot_notice(transport)):
                return Stop.ended(End.because(Ending.PREEMPTED, preempted))  # the machine goes, not the job
            end = End.job_ended(state.exit_code)
            if state.exit_code != 0 and self.group.workers and (worker := self._failed_node()) is not None:
                # The head polls every second, the workers every NODES_CHECK_S: a worker's death shows
                # first as node 0's collective failing. Both ended; the worker's is the one to name.
                return Stop.ended(worker.then(f"node 0's job ended too (exit {state.exit_code})"))
            if state.exit_code == 0 and not ctx.options.command and probe(transport).end_reason == contract.END_DEADLINE:
                end = End.because(Ending.DEADLINE, "the trainer stopped itself at the guard's stop time")
            if read_reason(transport) == "stalled":  # the switch stopped it while we were away
                end = End.because(Ending.STALLED, "stopped by the on-instance switch (no progress, no controller)")
            return Stop.ended(end)
        seen = probe(transport)
        ctx.report(ctx.status(**seen.metrics))
        ctx.notifier.cap_crossed(ctx.run_id, ctx.spent_usd(), ctx.allowance.max_usd)
        if stall.look(seen, time.time()):
            return Stop.ended(End.because(Ending.STALLED, f"no new {stall.what} for {ctx.options.stall_minutes:g} min"))
        return None

    def _look_data(self, transport: Transport, stall: StallWatch) -> Stop | None:
        ctx, head = self.ctx, self.group.head
        state = transport.job_state(DATA_JOB)
        if state.pid is None and not state.running:  # a controller died before starting it
            transport.start_detached(DATA_JOB, head.job["prepare"], env={"PYTHONUNBUFFERED": "1"})
            return None
        seen = data_probe(transport, head.job["data_dir"])
        if not state.running:
            if state.exit_code != 0 and ctx.offer.spot and (preempted := self.preempted()):
                return Stop.ended(End.because(Ending.PREEMPTED, preempted + DATA_NOTE))  # the machine went
            if state.exit_code != 0:
                raise DataFailed(data_failure(ctx, head, state.exit_code))
            if waiting := workers_preparing(ctx, self.group):
                ctx.report(ctx.status(data=f"node 0 ready; node(s) {', '.join(map(str, waiting))} preparing"))
                return None
            ctx.event(EventKind.DATA_READY, data_dir=head.job["data_dir"],
                      **{k: seen.progress.get(k) for k in ("tokens", "message")})
            return Stop(StopKind.DATA_READY)
        ctx.report(ctx.status(data=seen.line))
        if stall.look_mark(seen.mark, time.time()):
            return Stop.ended(End.because(
                Ending.STALLED, f"no data preparation progress for {ctx.options.stall_minutes:g} min"))
        return None

    def _failed_node(self) -> End | None:
        """Why a worker node can no longer carry its part (None while all can): its job ended with an
        error, or its instance is gone. Node 0's ranks would otherwise wait in a collective until
        the stall window; the run ends now, and the worker's exit status is the job's."""
        for node in self.group.workers:
            try:
                state = node.transport.job_state(JOB) if node.transport is not None else None
            except Exception:  # noqa: BLE001 - unreachable now: the provider says whether it is still there
                state = None
            if state is not None:
                if not state.running and state.exit_code != 0:
                    self.group.failed_exit = state.exit_code if state.exit_code is not None else -9
                    return End.job_ended(state.exit_code, f" on node {node.rank}, instance {node.instance.id}")
                continue
            try:
                inst = self.ctx.provider.get(node.instance.id)
            except Exception:  # noqa: BLE001 - the next check asks again
                continue
            if inst.gone:
                return End.because(Ending.LOST, f"node {node.rank} (instance {inst.id}) is {inst.state}")
        return None

    def preempted(self) -> str:
        """The provider's word that it took the instance back ("" when it did not, or cannot say)."""
        try:
            return self.ctx.provider.get(self.ctx.ledger.instances(self.ctx.run_id)[-1].instance_id).preempted
        except Exception:  # noqa: BLE001 - asking is best effort: the guard's own checks go on
            return ""

    def _spot_notice(self, transport: Transport) -> str:
        """The provider's reclaim warning, seen on the instance (the job checkpointed and stopped on it)."""
        res = transport.run(f"cat {shlex.quote(transport.root + '/' + SPOT_NOTICE_FILE)} 2>/dev/null", timeout_s=30)
        return f"the provider's spot interruption notice: {res.stdout.strip()[:200]}" if res.stdout.strip() else ""

    def heartbeat(self, force: bool = False) -> None:
        """Touch every node's heartbeat so its switch leaves idle and stalled runs to this controller.
        Rate-limited (several per window) unless forced; a failure is only a missed beat."""
        opts = self.ctx.options
        every = heartbeat_interval_s(opts.idle_minutes * 60, opts.stall_minutes * 60)
        now = time.monotonic()
        if not self.group.nodes or self.group.head.transport is None or (not force and now - self._beat_at < every):
            return
        self._beat_at = now
        for t in self.group.transports():
            try:
                heartbeat(t)
            except Exception:  # noqa: BLE001 - a missed beat: the guard's poll reports a lost node
                pass
