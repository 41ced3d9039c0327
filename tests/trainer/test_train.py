"""The training loop end to end: learning, the output contract, signals, deadline, resume, corruption."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.trainer.helpers import FAST, REPO, env, records, run_trainer, step_losses, trainer_cmd
from trainer import contract, manifest, sample
from trainer.train import main


def during(recorded: float, before: float, after: float) -> bool:
    """A record's time (rounded to ms by the trainer) lies between two readings of the clock."""
    return round(before, 3) <= recorded <= round(after, 3)


def test_loss_falls_on_tiny_shakespeare(tmp_path: Path, shared_data: Path) -> None:
    out = tmp_path / "out"
    argv = [
        "--text-file", str(shared_data / "tinyshakespeare" / "input.txt"), "--out-dir", str(out),
        "--threads", "1", "--model", "tiny", "--batch-size", "16", "--max-iters", "150", "--lr", "6e-3",
        "--warmup-iters", "10", "--eval-interval", "75", "--eval-iters", "10", "--log-interval", "50",
        "--ckpt-interval-s", "0", "--sample-tokens", "100", "--progress", "off",
    ]
    before = time.time()
    assert main(argv) == 0
    after = time.time()
    evals = records(out, "eval")
    assert [e["step"] for e in evals] == [0, 75, 150]
    assert evals[0]["val_loss"] > 4.0  # ~ln(65) at initialisation
    assert evals[-1]["val_loss"] < 2.7 and evals[-1]["val_loss"] < evals[0]["val_loss"] - 1.4
    # The trainer contract the controller reads (trainer/contract.py; docs/ARCHITECTURE.md).
    log = (out / "train.log").read_text()
    assert "device: cpu\n" in log and re.search(r"^parameters: \d+\.\d\dM$", log, re.M)
    assert re.search(r"^step 0050 \| loss \d\.\d{4} \| lr \S+ \| tok/s \d+ \| mfu n/a \| elapsed \d+\.\ds$", log, re.M)
    assert re.search(r"^eval step 0150 \| train \d\.\d{4} \| val \d\.\d{4}$", log, re.M)
    assert re.search(r"^checkpoint: checkpoints/ckpt-000150\.pt sha256 [0-9a-f]{64}$", log, re.M)
    assert log.rstrip().endswith("stopped: max_iters at step 150")
    hw = json.loads((out / "hardware.json").read_text())
    assert hw["device"] == "cpu" and hw["world_size"] == 1 and hw["dtype"] == "float32" and "torch" in hw
    step = records(out, "step")[-1]
    assert set(step) == {*contract.STEP_FIELDS, contract.TYPE, contract.TIME}
    (end,) = records(out, "end")
    assert end == {"type": "end", "reason": "max_iters", "step": 150, "time": end["time"]}
    assert during(end["time"], before, after)
    assert manifest.verify_checkpoints(out / "checkpoints") == (["ckpt-000150.pt"], [])
    text = (out / "sample.txt").read_text()
    assert len(text) == 101
    # trainer.sample decodes with the meta the checkpoint carries.
    assert sample.main(["--ckpt", str(out), "--max-new-tokens", "20"]) == 0


def test_sigterm_then_resume_matches_uninterrupted_run(tmp_path: Path) -> None:
    common = [*FAST, "--log-interval", "1", "--dropout", "0.1", "--warmup-iters", "10", "--lr-decay-iters", "300"]
    interrupted = tmp_path / "interrupted"
    proc = subprocess.Popen(
        trainer_cmd(*common, "--out-dir", str(interrupted), "--max-iters", "100000"),
        cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.time() + 60
    while time.time() < deadline and max(step_losses(interrupted), default=0) < 30:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    first = step_losses(interrupted)
    stopped = max(first)
    assert 30 <= stopped < 100000
    assert f"stopped: signal at step {stopped}" in stdout
    assert records(interrupted, "end")[0]["reason"] == "signal"
    ok, bad = manifest.verify_checkpoints(interrupted / "checkpoints")
    assert ok == [f"ckpt-{stopped:06d}.pt"] and bad == []

    total = stopped + 25
    resumed = run_trainer(*common, "--out-dir", str(interrupted), "--max-iters", str(total))
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed: checkpoints/ckpt-{stopped:06d}.pt at step {stopped}" in resumed.stdout
    straight = tmp_path / "straight"
    full = run_trainer(*common, "--out-dir", str(straight), "--max-iters", str(total))
    assert full.returncode == 0, full.stderr

    expected = step_losses(straight)
    got = step_losses(interrupted)  # the metrics file holds both halves
    assert sorted(got) == list(range(1, total + 1)) == sorted(expected)
    assert got == expected  # bitwise: same floats, step by step


def test_deadline_stops_in_time_with_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    # In this process (torch is imported already, so the steps start within a second or two, also on a
    # busy machine: the test needs steps before the deadline); the trainer trains until the deadline
    # stops it, so the window is also what the test costs.
    deadline = time.time() + 15
    assert main([*FAST, "--out-dir", str(out), "--max-iters", "10000000", "--log-interval", "100",
                 "--deadline-epoch", str(deadline), "--deadline-margin-s", "1"]) == 0
    end = records(out, "end")[0]
    assert end["reason"] == "deadline" and end["step"] > 0
    assert f"stopped: deadline at step {end['step']}" in capsys.readouterr().out
    m = manifest.read_manifest(out / "checkpoints")
    assert m["checkpoints"][-1]["step"] == end["step"] and m["checkpoints"][-1]["time"] < deadline
    assert manifest.verify_checkpoints(out / "checkpoints")[1] == []
    # Order of events: the steps, then the last checkpoint, then the end, all before the deadline ...
    steps, ckpt = records(out, "step"), records(out, "checkpoint")[-1]
    assert steps[-1]["step"] <= ckpt["step"] == end["step"]
    assert steps[0]["time"] <= steps[-1]["time"] <= ckpt["time"] <= end["time"] < deadline
    # ... and the stop came late in the window, not at once: it trained longer than it left unused.
    assert end["time"] - steps[0]["time"] > deadline - end["time"]


def test_deadline_already_passed_still_exits_cleanly(tmp_path: Path) -> None:
    out = tmp_path / "out"
    before = time.time()
    assert main([*FAST, "--out-dir", str(out), "--deadline-epoch", str(before - 5)]) == 0
    after = time.time()
    (end,) = records(out, "end")
    assert end == {"type": "end", "reason": "deadline", "step": 0, "time": end["time"]}
    assert during(end["time"], before, after)


def test_corrupted_checkpoints_are_detected_never_loaded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    ckpts = out / "checkpoints"
    base = [*FAST, "--out-dir", str(out), "--ckpt-interval", "10", "--log-interval", "10", "--keep-checkpoints", "3"]
    assert main([*base, "--max-iters", "30"]) == 0
    assert manifest.verify_checkpoints(ckpts) == ([f"ckpt-0000{s}.pt" for s in (10, 20, 30)], [])

    raw = bytearray((ckpts / "ckpt-000030.pt").read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one flipped bit, same size
    (ckpts / "ckpt-000030.pt").write_bytes(bytes(raw))
    with open(ckpts / "ckpt-000020.pt", "r+b") as f:
        f.truncate(1000)
    assert manifest.verify_checkpoints(ckpts) == (["ckpt-000010.pt"], ["ckpt-000020.pt", "ckpt-000030.pt"])

    # Sampling from the corrupted file is refused with a clear error.
    capsys.readouterr()
    assert sample.main(["--ckpt", str(ckpts / "ckpt-000030.pt")]) == 2
    assert "sha256 mismatch" in capsys.readouterr().err

    # Auto-resume reports both and falls back to the newest good one.
    assert main([*base, "--max-iters", "40"]) == 0
    printed = capsys.readouterr().out
    assert "checkpoint: rejected checkpoints/ckpt-000020.pt (truncated" in printed
    assert "checkpoint: rejected checkpoints/ckpt-000030.pt (sha256 mismatch" in printed
    assert "resumed: checkpoints/ckpt-000010.pt at step 10" in printed
    ok, bad = manifest.verify_checkpoints(ckpts)
    assert ok == [f"ckpt-0000{s}.pt" for s in (20, 30, 40)] and bad == []

    # With nothing valid left the trainer refuses rather than silently starting over.
    for f in ckpts.glob("ckpt-*.pt"):
        with open(f, "r+b") as fh:
            fh.truncate(10)
    assert main([*base, "--max-iters", "50"]) == 2
    assert "all are corrupted" in capsys.readouterr().err


def test_progress_bar_only_on_a_terminal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from trainer.runlog import RunLog

    plain = RunLog(tmp_path / "a", enabled=True, progress="auto", total_steps=10)  # captured: not a tty
    plain.progress(5, 2.0)
    plain.line("step 0005 | loss 2.0000")
    plain.close()
    assert capsys.readouterr().out == "step 0005 | loss 2.0000\n"
    bar = RunLog(tmp_path / "b", enabled=True, progress="on", total_steps=10)
    bar.progress(5, 2.0)
    bar.line("eval step 0005")
    bar.close()
    out = capsys.readouterr().out
    assert out.startswith("\r[###############...............] 5/10 loss 2.0000\r\033[K") and out.endswith("eval step 0005\n")
    assert (tmp_path / "b" / "train.log").read_text() == "eval step 0005\n"  # the log file never gets the bar


def test_the_trainer_leaves_its_heap_to_the_os(tmp_path: Path) -> None:
    # What lives at exit is frozen, so the interpreter's last collections skip it: the first atexit
    # handler registered runs last, after the trainer's own, and sees the frozen heap.
    probe = ("import atexit, gc, runpy, sys\n"
             "atexit.register(lambda: print('FROZEN', gc.get_freeze_count() > 0, flush=True))\n"
             f"sys.argv = ['trainer.train', *{[*FAST, '--max-iters', '2', '--out-dir', str(tmp_path / 'out')]!r}]\n"
             "runpy.run_module('trainer.train', run_name='__main__')\n")
    res = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env(), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "FROZEN True" in res.stdout, res.stdout + res.stderr
    assert records(tmp_path / "out", "end")[0]["reason"] == "max_iters"
