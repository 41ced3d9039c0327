"""The learning-rate schedules: the maths, the config key, and a deadline run on an injected clock
(the WSD decay ends at the trainer's own stop, the stop is evaluated, resume continues the same curve)."""

from __future__ import annotations

import math
import random
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.trainer.helpers import FAST, records
from trainer import data
from trainer.config import ConfigError, load_config, validate
from trainer.schedule import (
    Schedule,
    ScheduleState,
    cosine_lr,
    skip_eval,
    training_seconds_left,
    wsd_factor,
    wsd_lr,
)
from trainer.train import StopRequest, Trainer, lr_at

T0 = 2_000_000_000.0  # the injected clock's start: far from now, so nothing can read the real clock by accident
DT = 0.1  # every training step takes exactly this long on the injected clock; nothing else takes time


def test_wsd_is_stable_then_decays_with_1_minus_sqrt_to_min_lr() -> None:
    assert wsd_factor(0.0, 0.2) == wsd_factor(0.8, 0.2) == 1.0
    assert wsd_factor(0.85, 0.2) == pytest.approx(1 - math.sqrt(0.25))
    assert wsd_factor(1.0, 0.2) == wsd_factor(1.7, 0.2) == 0.0
    assert wsd_lr(500, 0.5, 1e-3, 1e-4, 100, 0.2) == 1e-3
    assert wsd_lr(500, 1.0, 1e-3, 1e-4, 100, 0.2) == pytest.approx(1e-4)
    assert wsd_lr(0, 0.0, 1e-3, 1e-4, 100, 0.2) == pytest.approx(1e-3 / 101)  # warmup
    # A budget too short for the warmup: the decay wins from where the warmup got to.
    assert wsd_lr(50, 1.0, 1e-3, 1e-4, 100, 0.2) == pytest.approx(1e-4)


def test_cosine_is_unchanged() -> None:
    cfg = load_config(["--lr", "1e-3", "--min-lr", "1e-4", "--warmup-iters", "10", "--max-iters", "110"])
    assert lr_at(cfg, 0) == pytest.approx(1e-3 / 11)
    assert lr_at(cfg, 60) == pytest.approx(1e-4 + 0.5 * (1e-3 - 1e-4))
    assert lr_at(cfg, 110) == cosine_lr(500, 1e-3, 1e-4, 10, 110) == 1e-4


def test_auto_is_wsd_by_time_with_a_deadline_else_cosine() -> None:
    base = ["--max-iters", "1000", "--warmup-iters", "0", "--lr", "1e-3", "--min-lr", "1e-4"]
    plain = Schedule.from_config(load_config(base))
    assert (plain.kind, plain.by_time) == ("cosine", False)
    timed = Schedule.from_config(load_config([*base, "--deadline-epoch", str(T0)]))
    assert (timed.kind, timed.by_time, timed.decay_frac) == ("wsd", True, 0.2)
    forced = Schedule.from_config(load_config([*base, "--deadline-epoch", str(T0), "--lr-schedule", "cosine"]))
    assert (forced.kind, forced.by_time) == ("cosine", False)

    # wsd without a deadline: by steps over max_iters, min_lr on the last step.
    steps = Schedule.from_config(load_config([*base, "--lr-schedule", "wsd", "--lr-decay-frac", "0.3"]))
    fresh = ScheduleState()
    assert steps.lr_at(699, fresh) == 1e-3 > steps.lr_at(700, fresh) > steps.lr_at(998, fresh)
    assert steps.lr_at(999, fresh) == pytest.approx(1e-4)

    # By time: progress is training seconds (plus this step) over the projected total; steps still bound it.
    state = ScheduleState(train_s=79.0, step_s=1.0, total_s=100.0)
    assert timed.progress(10, state) == pytest.approx(0.8) and timed.lr_at(10, state) == 1e-3
    state.observe(10.0, left_s=10.0)  # 89 s done, 10 left, step estimate 2.8 s: the decay is under way
    assert state.total_s == pytest.approx(99.0) and state.step_s == pytest.approx(2.8)
    assert 1e-4 < timed.lr_at(11, state) < 1e-3
    assert timed.lr_at(999, ScheduleState()) == pytest.approx(1e-4)  # max_iters before the deadline


def test_time_left_counts_the_pauses_of_evals_and_checkpoints() -> None:
    # 0.1 s steps; a 1 s time-based checkpoint every 4 s of training: 0.25 s of pause per training second.
    assert training_seconds_left(125.0, 0.1, 0, 0, 0.0, rate=0.25) == pytest.approx(100.0)
    assert training_seconds_left(-3.0, 0.1, 0, 0, 0.0, rate=0.25) == 0.0
    # A 5 s eval every 100 steps (10 s of training), at step 90: 10 steps (1 s) to the eval, then what it leaves.
    assert training_seconds_left(17.0, 0.1, 90, 100, 5.0) == pytest.approx(12.0)  # not 17 / 1.5 on average
    # An eval that would leave less than an interval of training is skipped: the stop's eval is near.
    assert training_seconds_left(8.0, 0.1, 90, 100, 5.0) == pytest.approx(8.0)
    assert skip_eval(7.0, 5.0, 0.0, 100, 0.1) and not skip_eval(15.0, 5.0, 0.0, 100, 0.1)
    assert skip_eval(15.0, 5.0, 1.0, 100, 0.1)  # with a checkpoint at the same step it no longer fits
    # Step-interval checkpoints are never skipped: 1 s every 50 steps.
    assert training_seconds_left(8.0, 0.1, 90, 0, 0.0, 50, 1.0) == pytest.approx(6.0)  # at steps 100 and 150
    # Far ahead, an average share: 5 s per 10 s of training.
    assert training_seconds_left(1500.0, 0.1, 0, 100, 5.0, exact_events=0) == pytest.approx(1000.0)
    assert training_seconds_left(1500.0, 0.1, 0, 100, 5.0) == pytest.approx(1000.0, abs=10.0)  # exact events


def test_schedule_state_round_trips_and_old_checkpoints_start_fresh() -> None:
    state = ScheduleState(train_s=12.5, step_s=0.25, total_s=40.0, eval_s=1.5, ckpt_s=None)
    assert ScheduleState.from_dict(state.to_dict()) == state
    assert ScheduleState.from_dict(None) == ScheduleState()


@pytest.mark.parametrize("flags, message", [
    (["--lr-schedule", "linear"], "lr_schedule must be one of auto, cosine, wsd"),
    (["--lr-decay-frac", "0"], "lr_decay_frac must be in (0, 1]"),
    (["--lr-decay-frac", "1.5"], "lr_decay_frac must be in (0, 1]"),
])
def test_bad_schedule_keys_are_refused_without_torch_work(flags: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate(None, flags)


def test_schedule_keys_from_a_file(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("lr_schedule: wsd\nlr_decay_frac: 0.3\n")
    cfg = validate(str(f), [])
    assert (cfg.lr_schedule, cfg.lr_decay_frac) == ("wsd", 0.3)
    assert load_config([]).lr_schedule == "auto"


# ---- a deadline run on an injected clock ---------------------------------------------------------


class TickClock:
    """Wall-clock time that moves only when a training step runs: T0 + ticks * DT."""

    def __init__(self, ticks: int) -> None:
        self.ticks = ticks

    def __call__(self) -> float:
        return T0 + self.ticks * DT


class ClockedTrainer(Trainer):
    def __init__(self, argv: list[str], clock: TickClock, signal_after: int | None = None) -> None:
        super().__init__(load_config(["--device", "cpu", *argv]), StopRequest(), clock=clock)
        self.tick = clock
        self.signal_after = signal_after

    def train_step(self, *args: Any, **kwargs: Any) -> Any:
        loss = super().train_step(*args, **kwargs)
        self.tick.ticks += 1
        if self.signal_after is not None and args[3] + 1 == self.signal_after:
            self.stop.signum = signal.SIGTERM  # the guard's SIGTERM, arriving during this step
        return loss


@pytest.fixture
def text_data(tmp_path: Path) -> Path:
    """Fixed char-level shards, shared by every run of a test (the built-in corpus may change meanwhile)."""
    rng = random.Random(0)
    words = ["the", "budget", "guard", "stops", "a", "run", "at", "its", "deadline", "with", "decayed", "weights"]
    data.prepare_text(" ".join(rng.choice(words) for _ in range(6000)), tmp_path / "data", "char", None)
    return tmp_path / "data"


def deadline_argv(out: Path, data_dir: Path) -> list[str]:
    # ~60 steps of 0.1 s before the stop; the stop keeps 1.5 steps, a checkpoint (~0.5 s), the margin.
    return [*FAST, "--out-dir", str(out), "--data-dir", str(data_dir), "--dropout", "0.1", "--log-interval", "1", "--warmup-iters", "5",
            "--lr", "2e-3", "--min-lr", "2e-4", "--max-iters", "100000", "--eval-interval", "20",
            "--eval-iters", "2", "--deadline-margin-s", "1", "--deadline-epoch", str(T0 + 8.0)]


def curve(out: Path) -> dict[int, tuple[float, float]]:
    return {r["step"]: (r["loss"], r["lr"]) for r in records(out, "step")}


def test_deadline_wsd_decays_to_min_lr_at_the_stop_and_resumes_bitwise(tmp_path: Path, text_data: Path) -> None:
    straight = tmp_path / "straight"
    assert ClockedTrainer(deadline_argv(straight, text_data), TickClock(0)).run() == 0
    full = curve(straight)
    last = max(full)
    assert 50 <= last <= 70 and sorted(full) == list(range(1, last + 1))
    lrs = [full[s][1] for s in range(1, last + 1)]
    # warmup, a stable phase at lr, then a decay over about the last 20 % that reaches min_lr on the last step
    assert lrs[:5] == sorted(lrs[:5]) and lrs[4] < 2e-3
    stable = [s for s in range(1, last + 1) if full[s][1] == 2e-3]
    assert stable and stable[0] == 6 and 0.7 * last <= stable[-1] <= 0.85 * last
    decay = lrs[stable[-1]:]
    assert decay == sorted(decay, reverse=True)
    assert lrs[-1] == pytest.approx(2e-4, rel=1e-6) and records(straight, "end")[0]["lr"] == lrs[-1]
    # The stop is evaluated: an eval record at the stop step, its val loss in the end record.
    (end,) = records(straight, "end")
    assert end["reason"] == "deadline" and end["step"] == last
    final = records(straight, "eval")[-1]
    assert final["step"] == last and end["val_loss"] == final["val_loss"]
    # The periodic eval at step 60 is skipped: less than an interval before the stop, whose eval comes anyway.
    assert [e["step"] for e in records(straight, "eval")] == [0, 20, 40, last] and last > 60
    assert records(straight, "checkpoint")[-1]["step"] == last
    assert "lr schedule: wsd" in (straight / "train.log").read_text()

    # The same run, stopped by a signal at step 25 and resumed (the clock goes on from there).
    parted = tmp_path / "parted"
    assert ClockedTrainer(deadline_argv(parted, text_data), TickClock(0), signal_after=25).run() == 0
    assert records(parted, "end")[0] == {**records(parted, "end")[0], "reason": "signal", "step": 25}
    assert ClockedTrainer(deadline_argv(parted, text_data), TickClock(25)).run() == 0
    assert "resumed: checkpoints/ckpt-000025.pt at step 25" in (parted / "train.log").read_text()
    assert curve(parted) == full  # bitwise: the same losses and learning rates, step by step
    assert records(parted, "end")[-1] == {**end, "time": records(parted, "end")[-1]["time"]}


def test_stopped_before_its_first_step_evaluates_nothing(tmp_path: Path, text_data: Path) -> None:
    out = tmp_path / "out"
    argv = [*deadline_argv(out, text_data)[:-1], str(T0 - 5)]
    assert ClockedTrainer(argv, TickClock(0)).run() == 0
    (end,) = records(out, "end")
    assert end == {"type": "end", "reason": "deadline", "step": 0, "time": end["time"]}
    assert [e["step"] for e in records(out, "eval")] == [0]
