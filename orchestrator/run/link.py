"""The link home, measured: what each periodic pull moved and how long it took, the rate that
gives, how long the final pull of the newest checkpoint will take, and the stop time that leaves
it room (docs/BUDGET.md, "The reserve, sized from what is measured").

The final pull has from the moment the job has checkpointed (the grace after the stop) until the
on-instance switch acts (half the reserve past the plan's stop time): the instance is gone then,
with whatever had not come home. A link too slow for that window moves the guard's stop time
earlier by the difference, never later than the plan's. Pure arithmetic: the syncer feeds it
(orchestrator/run/syncing.py), the guard reads the stop time, `status` and the live view the figures.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trainer.recipes import human_bytes

MIN_SAMPLE_BYTES = 64 * 1024  # a pull that moved less says more about the round trips than the rate
SAMPLES = 5  # the newest pulls the rate is taken over (the link changes; old pulls say less)
SAFETY = 1.25  # the final pull is planned for this much slower than measured
MARGIN_S = 2.0  # between the final pull's planned end and the switch


@dataclass(frozen=True)
class PullSample:
    bytes: int
    seconds: float


@dataclass
class LinkEstimate:
    samples: list[PullSample] = field(default_factory=list)
    checkpoint_bytes: int = 0  # the newest checkpoint (plus its weights-only export): what the final pull carries

    def add(self, moved_bytes: int, seconds: float) -> None:
        self.samples = [*self.samples, PullSample(int(moved_bytes), float(seconds))][-4 * SAMPLES:]

    def _informative(self) -> list[PullSample]:
        return [s for s in self.samples if s.bytes >= MIN_SAMPLE_BYTES and s.seconds > 0][-SAMPLES:]

    @property
    def rate_bps(self) -> float | None:
        """Bytes a second over the newest informative pulls (their fixed costs included: a low
        figure, so that the plan for the final pull errs late, never early)."""
        got = self._informative()
        if not got:
            return None
        return sum(s.bytes for s in got) / sum(s.seconds for s in got)

    @property
    def overhead_s(self) -> float:
        """A pull's fixed cost (connection, manifest, hashing): the quickest pull seen."""
        return min((s.seconds for s in self.samples), default=0.0)

    @property
    def final_pull_s(self) -> float | None:
        """How long the final pull is expected to take (None: nothing measured yet)."""
        rate = self.rate_bps
        if rate is None or self.checkpoint_bytes <= 0:
            return None
        return self.overhead_s + SAFETY * self.checkpoint_bytes / rate


def stop_for(plan_stop: float, switch_at: float, grace_s: float, final_pull_s: float | None) -> float:
    """The guard's stop time: the plan's, or earlier by as much as the final pull needs beyond the
    window the reserve leaves it (stop, grace for the job's checkpoint, pull, margin, switch)."""
    if final_pull_s is None:
        return plan_stop
    return min(plan_stop, switch_at - MARGIN_S - grace_s - final_pull_s)


def pull_window_s(plan_stop: float, switch_at: float, grace_s: float) -> float:
    """The time the reserve leaves the final pull when the guard stops at the plan's stop time."""
    return max(0.0, switch_at - plan_stop - grace_s - MARGIN_S)


def human_rate(rate_bps: float | None) -> str:
    return "-" if rate_bps is None else human_bytes(rate_bps) + "/s"


def sync_line(rate_bps: float | None, final_pull_s: float | None) -> str:
    """What the live view and `status` show: "sync 1.4 MB/s, final pull ~23 s"."""
    if rate_bps is None:
        return ""
    return f"sync {human_rate(rate_bps)}" + (f", final pull ~{final_pull_s:.0f} s" if final_pull_s is not None else "")
