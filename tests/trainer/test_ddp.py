"""Two-process DDP (gloo, real torchrun) against one process on the same global batch."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.trainer.helpers import FAST, REPO, env, records, run_trainer, step_losses
from trainer import manifest


def test_ddp_two_ranks_match_single_process(tmp_path: Path) -> None:
    if shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists():
        pytest.skip("torchrun not installed")
    # Same global batch: 2 ranks x 1 micro-step vs 1 process x 2 micro-steps of 4 sequences.
    args = [*FAST, "--grad-accum", "2", "--max-iters", "12", "--log-interval", "1", "--eval-interval", "6",
            "--eval-iters", "2", "--dropout", "0"]
    single = tmp_path / "single"
    one = run_trainer(*args, "--out-dir", str(single))
    assert one.returncode == 0, one.stderr

    ddp = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "-m", "trainer.train", *args, "--out-dir", str(ddp)]
    two = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=240)
    assert two.returncode == 0, two.stderr[-3000:]
    log = (ddp / "train.log").read_text()
    assert "world_size: 2" in log and "stopped: max_iters at step 12" in log

    a, b = step_losses(single), step_losses(ddp)
    assert sorted(a) == sorted(b) == list(range(1, 13))
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-4, abs=1e-5), step
    assert a[12] < a[1]  # it trained
    for ea, eb in zip(records(single, "eval"), records(ddp, "eval"), strict=True):
        assert eb["val_loss"] == pytest.approx(ea["val_loss"], rel=1e-4)
    assert manifest.verify_checkpoints(ddp / "checkpoints") == (["ckpt-000012.pt"], [])


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return sorted(int(c) for c in path.read_text().split()) if path.exists() else []


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs /proc")
def test_signal_to_one_rank_stops_all_ranks_cleanly(tmp_path: Path) -> None:
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "trainer.launch", "--nproc-per-node", "2", *FAST, "--out-dir", str(out),
           "--max-iters", "1000000", "--log-interval", "5"]
    launcher = subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 90
    while time.time() < deadline and max(step_losses(out), default=0) < 20:
        time.sleep(0.1)
    ranks = _children(launcher.pid)
    assert len(ranks) == 2
    os.kill(ranks[1], signal.SIGUSR1)  # only the non-master rank hears it
    stdout, stderr = launcher.communicate(timeout=90)
    assert launcher.returncode == 0, stderr[-3000:]
    end = records(out, "end")
    assert len(end) == 1 and end[0]["reason"] == "signal"
    assert f"stopped: signal at step {end[0]['step']}" in stdout
    ok, bad = manifest.verify_checkpoints(out / "checkpoints")
    assert ok[-1] == f"ckpt-{end[0]['step']:06d}.pt" and bad == []
