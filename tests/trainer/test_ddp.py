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

# The speedrun's switches with Muon, whose Newton-Schulz work the ranks share (trainer/muon.py).
SPEEDRUN = ["--rotary", "--qk-norm", "--relu2", "--zero-init", "--rmsnorm", "--untied-head", "--logit-softcap", "30",
            "--bias", "false", "--optimizer", "muon", "--lr", "0.008", "--embed-lr", "0.3", "--grad-clip", "0"]


@pytest.mark.parametrize("options", [[], SPEEDRUN], ids=["adamw", "speedrun-muon"])
def test_ddp_two_ranks_match_single_process(tmp_path: Path, options: list[str]) -> None:
    if shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists():
        pytest.skip("torchrun not installed")
    # Same global batch: 2 ranks x 1 micro-step vs 1 process x 2 micro-steps of 4 sequences.
    args = [*FAST, "--grad-accum", "2", "--max-iters", "12", "--log-interval", "1", "--eval-interval", "6",
            "--eval-iters", "2", "--dropout", "0", *options]
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


def test_two_nodes_rendezvous_at_node_0_and_rank_0_writes_on_node_0(tmp_path: Path) -> None:
    """`trainer.launch --nnodes 2` takes torchrun's static-rendezvous flags (the same command line runs
    under torchrun on every node; the two launchers do not mix: torchrun's agents also meet in the
    store): two nodes train as one world of 2 (gloo, CPU), rank 0 on node 0."""
    from trainer.launch import free_port

    port = free_port()
    args = [*FAST, "--max-iters", "8", "--log-interval", "1", "--eval-interval", "4", "--eval-iters", "1"]
    common = ["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "static",
              "--rdzv-endpoint", f"127.0.0.1:{port}"]
    node0 = [sys.executable, "-m", "trainer.launch", *common, "--node-rank", "0", *args,
             "--out-dir", str(tmp_path / "node0")]
    node1 = [sys.executable, "-m", "trainer.launch", *common, "--node-rank", "1", *args,
             "--out-dir", str(tmp_path / "node1")]
    procs = [subprocess.Popen(c, cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for c in (node0, node1)]
    try:
        outs = [p.communicate(timeout=120)[0] for p in procs]  # a hang guard, not a timing
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    log = (tmp_path / "node0" / "train.log").read_text()
    assert "world_size: 2" in log and "stopped: max_iters at step 8" in log
    assert manifest.verify_checkpoints(tmp_path / "node0" / "checkpoints") == (["ckpt-000008.pt"], [])
    assert not (tmp_path / "node1" / "checkpoints").exists()  # only rank 0 (node 0) writes


def test_launcher_refuses_a_node_rank_outside_the_group_in_one_line(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "trainer.launch", "--nnodes", "2", "--node-rank", "2",
                          "--rdzv-endpoint", "10.0.0.1:29500"], cwd=REPO, env=env(), capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.strip().splitlines() == ["error: --node-rank 2 must be in 0..1 (--nnodes 2)"]
    res = subprocess.run([sys.executable, "-m", "trainer.launch", "--nnodes", "2"], cwd=REPO, env=env(),
                         capture_output=True, text=True)
    assert res.returncode == 2 and "node 0's HOST:PORT" in res.stderr
