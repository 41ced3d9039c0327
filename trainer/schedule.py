"""The learning-rate schedule: cosine over steps, or warmup -> stable -> decay (WSD) ending at the deadline.

Torch-free: pure functions plus `ScheduleState`, what a time-driven schedule has measured, which the
trainer saves in every checkpoint. The LR of a step is a function of (config, step, state) only, and
the state changes only through `ScheduleState.observe` with values all ranks agreed on, so DDP ranks
use the same LR and a resumed run continues the same curve given the same measured times.

WSD (warmup-stable-decay): warm up over `warmup_iters` steps, hold `lr`, then decay to `min_lr` over
the last `lr_decay_frac` of the run with the (1 - sqrt) shape. Hägele et al. 2024, "Scaling Laws and
Compute-Optimal Training Beyond Fixed Training Durations" (arXiv:2405.18392): a constant LR with a
cooldown of ~20 % of the steps matches a cosine that knew the run's length, and the 1-sqrt cooldown
beats a linear one; MiniCPM (Hu et al. 2024, arXiv:2404.06395) decays over ~10 %. We take 20 %
(`lr_decay_frac`); docs/PERFORMANCE.md measures it against a budget-stopped cosine.

With a deadline, "the run" is measured in training seconds: the decay ends when the trainer's own
deadline guard will stop the job (the deadline minus one final eval + checkpoint, the margin and a
step), projected each step from the wall-clock time left, the measured step time and the pauses that
periodic evals and checkpoints will take. Steps bound it too: a run that will reach `max_iters`
before the deadline decays by steps.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

SCHEDULES = ("auto", "cosine", "wsd")
# How wsd decays: "sqrt" (1 - sqrt, Hägele et al.) or "linear", the modded-nanogpt records' warmdown
# (get_lr: "linear warmdown" to 0 over the last warmdown_iters, e.g. 1308 of 4578 steps in record #8).
DECAY_SHAPES = ("sqrt", "linear")
STEP_EMA = 0.2  # weight of the newest step in the step-time estimate


def warmup_lr(it: int, lr: float, warmup_iters: int) -> float:
    """Linear warmup over the first warmup_iters steps, then lr."""
    if it < warmup_iters:
        return lr * (it + 1) / (warmup_iters + 1)
    return lr


def cosine_lr(it: int, lr: float, min_lr: float, warmup_iters: int, decay_iters: int) -> float:
    """Linear warmup, then cosine decay from lr to min_lr at decay_iters, then min_lr."""
    if it < warmup_iters:
        return warmup_lr(it, lr, warmup_iters)
    if it >= decay_iters:
        return min_lr
    ratio = (it - warmup_iters) / max(1, decay_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def wsd_factor(progress: float, decay_frac: float, shape: str = "sqrt") -> float:
    """1 during the stable phase, then (1 - sqrt) or linearly down to 0 at progress 1 (the last decay_frac)."""
    start = 1.0 - decay_frac
    if progress <= start:
        return 1.0
    if progress >= 1.0:
        return 0.0
    done = (progress - start) / decay_frac
    return 1.0 - (done if shape == "linear" else math.sqrt(done))


def wsd_lr(it: int, progress: float, lr: float, min_lr: float, warmup_iters: int, decay_frac: float,
           shape: str = "sqrt") -> float:
    """WSD at `progress` (0..1 of the run); a run too short to finish its warmup decays from where it is."""
    decayed = min_lr + (lr - min_lr) * wsd_factor(progress, decay_frac, shape)
    return min(warmup_lr(it, lr, warmup_iters), decayed)


def skip_eval(wall_left_s: float, eval_s: float, other_pause_s: float, eval_interval: int, step_s: float,
              rate: float = 0.0) -> bool:
    """Skip a periodic eval that would leave less than one eval interval of training before the
    deadline stop: the stop's own eval comes within that interval anyway, and an eval that might eat
    the rest of the time would make the projected end (and so the LR) jump back and forth."""
    return wall_left_s - eval_s - other_pause_s < eval_interval * step_s * (1.0 + rate)


def training_seconds_left(wall_left_s: float, step_s: float, step: int, eval_every: int, eval_s: float,
                          ckpt_every: int = 0, ckpt_s: float = 0.0, rate: float = 0.0,
                          exact_events: int = 64) -> float:
    """Training seconds that fit in wall_left_s of wall-clock time after step `step`.

    Evals every `eval_every` steps (eval_s each; skipped as `skip_eval` says, as the trainer does),
    checkpoints every `ckpt_every` steps (ckpt_s each), and `rate` seconds of pause per training
    second for time-interval checkpoints. The next `exact_events` pauses are placed where they fall;
    beyond them an average rate stands in.
    """
    budget, trained, cur = wall_left_s, 0.0, step
    periods = [n for n in (eval_every, ckpt_every) if n > 0]
    if step_s <= 0 or budget <= 0:
        return max(0.0, budget) / (1.0 + rate)
    for _ in range(exact_events if periods else 0):
        nxt = min((cur // n + 1) * n for n in periods)
        need = (nxt - cur) * step_s * (1.0 + rate)
        if need >= budget:
            return trained + budget / (1.0 + rate)
        budget -= need
        trained += (nxt - cur) * step_s
        cur = nxt
        pause = ckpt_s if ckpt_every and nxt % ckpt_every == 0 else 0.0
        if eval_every and nxt % eval_every == 0 and not skip_eval(budget, eval_s, pause, eval_every, step_s, rate):
            pause += eval_s
        budget -= pause
        if budget <= 0:
            return trained
    average = rate + (eval_s / (eval_every * step_s) if eval_every else 0.0) + (
        ckpt_s / (ckpt_every * step_s) if ckpt_every else 0.0)
    return trained + budget / (1.0 + average)


def ema(previous: float | None, dt: float) -> float:
    """Smoothed step time. The first step carries warm-up (and compilation): later ones pull it down."""
    return dt if previous is None else (1 - STEP_EMA) * previous + STEP_EMA * dt


@dataclass
class ScheduleState:
    """What the schedule has measured; saved in checkpoints. Times in seconds."""

    train_s: float = 0.0  # training time so far: steps only, eval and checkpoint pauses left out
    step_s: float | None = None  # smoothed step time
    total_s: float | None = None  # projected training time at the deadline stop: the decay ends there
    eval_s: float | None = None  # last measured eval
    ckpt_s: float | None = None  # last measured checkpoint

    def observe(self, dt: float, left_s: float | None) -> None:
        """After a step of dt training seconds, with left_s training seconds projected to remain."""
        self.train_s += dt
        self.step_s = ema(self.step_s, dt)
        if left_s is not None:
            self.total_s = self.train_s + max(0.0, left_s)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> ScheduleState:
        """From a checkpoint's "schedule" entry; a checkpoint from before it has none (fresh state)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (d or {}).items() if k in names})


@dataclass(frozen=True)
class Schedule:
    kind: str  # cosine | wsd (auto resolved)
    by_time: bool  # wsd ending at the deadline, by training time
    lr: float
    min_lr: float
    warmup_iters: int
    decay_iters: int  # cosine: lr_decay_iters or max_iters
    max_iters: int
    decay_frac: float
    decay_shape: str = "sqrt"

    @classmethod
    def from_config(cls, cfg: Any) -> Schedule:
        """From a TrainConfig: auto is wsd by time when the run has a deadline, else cosine."""
        deadline = cfg.deadline_epoch is not None
        kind = ("wsd" if deadline else "cosine") if cfg.lr_schedule == "auto" else cfg.lr_schedule
        return cls(kind=kind, by_time=kind == "wsd" and deadline, lr=cfg.lr, min_lr=cfg.min_lr,
                   warmup_iters=cfg.warmup_iters, decay_iters=cfg.lr_decay_iters or cfg.max_iters,
                   max_iters=cfg.max_iters, decay_frac=cfg.lr_decay_frac,
                   decay_shape=getattr(cfg, "lr_decay_shape", "sqrt"))

    def progress(self, step: int, state: ScheduleState) -> float:
        """How far the run will be at the END of step `step` (0-based): by steps, or by training time."""
        p = (step + 1) / self.max_iters
        if self.by_time and state.total_s is not None and state.step_s is not None:
            p = max(p, (state.train_s + state.step_s) / state.total_s if state.total_s > 0 else 1.0)
        return p

    def lr_at(self, step: int, state: ScheduleState) -> float:
        if self.kind == "cosine":
            return cosine_lr(step, self.lr, self.min_lr, self.warmup_iters, self.decay_iters)
        return wsd_lr(step, self.progress(step, state), self.lr, self.min_lr, self.warmup_iters, self.decay_frac,
                      self.decay_shape)

    def describe(self) -> str:
        warm = f"warmup {self.warmup_iters} steps"
        if self.kind == "cosine":
            return f"cosine: {warm}, to min_lr {self.min_lr:.2e} at step {self.decay_iters}"
        end = "the deadline stop (by training time) or max_iters" if self.by_time else f"step {self.max_iters}"
        return (f"wsd: {warm}, stable at {self.lr:.2e}, decay ({'linear' if self.decay_shape == 'linear' else '1-sqrt'}) over the last "
                f"{100 * self.decay_frac:.0f}% to min_lr {self.min_lr:.2e} at {end}")
