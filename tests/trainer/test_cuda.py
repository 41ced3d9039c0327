"""The trainer on a CUDA GPU: what a first GPU run depends on, each test a few seconds on tiny configs.

Skipped without CUDA (collected and skipped on CPU machines and in CI); bench/device_check.py runs
them on a lent GPU (docs/PERFORMANCE.md, "The device check"). bf16/fp16 kernels, atomics in the
backward passes and cuBLAS make GPU runs reproducible only within a tolerance, not bitwise: a resume
is checked against a straight run step by step within LOSS_TOL, which still catches the failures that
matter (a restart from scratch, lost optimizer moments, batches from the wrong step: each moves the
loss by more than that).
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.nn import functional as F

from tests.trainer.helpers import REPO, env, records, step_losses
from trainer import checkpoint, hardware
from trainer.model import GPT
from trainer.presets import GPTConfig
from trainer.train import main, native_bf16

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.cuda,  # conftest hides the GPU from what a test starts unless it is marked cuda
]

LOSS_TOL = 1e-2  # relative and absolute, per logged step; the tiny model's losses are ~3 to 4.7

# A tiny model (2 layers, 64 wide, T=64) on the built-in char-level corpus, every step logged.
TINY = [
    "--device", "cuda", "--model", "tiny", "--batch-size", "8", "--eval-interval", "0", "--ckpt-interval-s", "0",
    "--sample-tokens", "0", "--progress", "off", "--log-interval", "1", "--warmup-iters", "5", "--lr", "3e-3",
    # Fixed, so that runs of different max_iters follow the same LR curve.
    "--lr-decay-iters", "40",
]


def train(out: Path, *args: str) -> None:
    assert main([*TINY, "--out-dir", str(out), *args]) == 0


def saved(path: Path) -> dict[str, Any]:
    """A checkpoint (a file, or an out dir's newest valid one), checked against its manifest; its
    model state must carry no torch.compile (`_orig_mod.`) or DDP (`module.`) prefix."""
    ckpt = checkpoint.load_file(checkpoint.resolve(path), "cpu")
    prefixed = [k for k in ckpt["model"] if k.startswith(("_orig_mod.", "module."))]
    assert not prefixed, f"wrapped-module keys in the checkpoint: {prefixed[:3]}"
    return ckpt


def assert_close_losses(got: dict[int, float], expected: dict[int, float]) -> None:
    assert sorted(got) == sorted(expected)
    for step, loss in sorted(expected.items()):
        assert math.isfinite(got[step]), f"step {step}: loss {got[step]}"
        assert got[step] == pytest.approx(loss, rel=LOSS_TOL, abs=LOSS_TOL), f"step {step}"


def split_and_straight(tmp: Path, args: list[str], half: int = 10, total: int = 20) -> tuple[Path, Path]:
    """The max_iters stop, then a resume in the same out dir, against one straight run of `total` steps."""
    split, straight = tmp / "split", tmp / "straight"
    train(split, *args, "--max-iters", str(half))
    train(split, *args, "--max-iters", str(total))
    assert f"resumed: checkpoints/ckpt-{half:06d}.pt at step {half}" in (split / "train.log").read_text()
    train(straight, *args, "--max-iters", str(total))
    assert sorted(step_losses(split)) == list(range(1, total + 1))
    assert_close_losses(step_losses(split), step_losses(straight))
    return split, straight


def steps_logged(out: Path) -> int:
    """The last logged step of a run still writing metrics.jsonl (a half-written last line is skipped)."""
    try:
        lines = (out / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    last = 0
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if row.get("type") == "step":
            last = max(last, int(row["step"]))
    return last


def test_a_tiny_model_learns_in_bf16(tmp_path: Path) -> None:
    out = tmp_path / "out"
    train(out, "--dtype", "bfloat16", "--batch-size", "16", "--lr", "6e-3", "--lr-decay-iters", "200",
          "--max-iters", "200", "--log-interval", "25", "--eval-interval", "200", "--eval-iters", "5")
    log = (out / "train.log").read_text()
    assert "device: cuda\n" in log and "dtype: bfloat16\n" in log and "cuda_name: " in log
    hw = json.loads((out / "hardware.json").read_text())
    assert hw["device"] == "cuda" and hw["dtype"] == "bfloat16" and hw["gpu_name"]
    first, last = records(out, "eval")[0], records(out, "eval")[-1]
    assert (first["step"], last["step"]) == (0, 200)
    # ~4.6 (ln of the char vocabulary) at init; the same model on CPU reaches ~3.0 in 200 steps.
    assert last["val_loss"] < first["val_loss"] - 1.0, (first, last)
    assert all(math.isfinite(v) for v in step_losses(out).values())
    ckpt = saved(out)
    assert ckpt["step"] == 200 and ckpt["scaler"] == {}  # bf16 needs no GradScaler
    assert all(t.dtype == torch.float32 for t in ckpt["model"].values())  # autocast: fp32 master weights


SPEEDRUN = ["--rotary", "--qk-norm", "--relu2", "--zero-init", "--rmsnorm", "--untied-head", "--logit-softcap", "30",
            "--bias", "false", "--optimizer", "muon", "--lr", "0.008", "--embed-lr", "0.3", "--grad-clip", "0"]


def test_speedrun_options_with_muon_compile_learn_and_resume_with_the_final_val_in_bf16(tmp_path: Path) -> None:
    # Muon's Newton-Schulz in bf16 on the GPU (trainer/muon.py), the switches under torch.compile,
    # its state through a resume, and the sequential final evaluation.
    split, _ = split_and_straight(tmp_path, [*SPEEDRUN, "--dtype", "bfloat16", "--compile", "--final-val-tokens", "2000"])
    (rec,) = records(split, "final_val")[-1:]
    assert rec["tokens"] == 2000 and rec["step"] == 20 and math.isfinite(rec["val_loss"])
    losses = step_losses(split)
    assert losses[20] < losses[1] - 0.5
    assert set(saved(split)["optimizer"]) == {"adamw", "muon"}


def test_sigterm_then_resume_matches_a_straight_run_in_bf16(tmp_path: Path) -> None:
    # Dropout on: the CUDA RNG state must come back with the checkpoint too.
    common = ["--dtype", "bfloat16", "--dropout", "0.1"]
    interrupted, straight = tmp_path / "interrupted", tmp_path / "straight"
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainer.train", *TINY, *common, "--out-dir", str(interrupted),
         "--max-iters", "100000"],
        cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None and steps_logged(interrupted) < 20:
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr[-3000:]
    stopped = max(step_losses(interrupted))
    assert 20 <= stopped < 100000 and f"stopped: signal at step {stopped}" in stdout
    assert saved(interrupted)["step"] == stopped

    total = stopped + 10
    train(interrupted, *common, "--max-iters", str(total))
    assert f"resumed: checkpoints/ckpt-{stopped:06d}.pt at step {stopped}" in (interrupted / "train.log").read_text()
    train(straight, *common, "--max-iters", str(total))
    got = step_losses(interrupted)
    assert sorted(got) == list(range(1, total + 1))
    assert_close_losses(got, step_losses(straight))


def test_a_compiled_run_resumes_and_its_checkpoint_loads_strictly_into_a_fresh_gpt(tmp_path: Path) -> None:
    torch._dynamo.reset()  # earlier tests' compiled graphs must not count against the recompile limit
    split, _ = split_and_straight(tmp_path, ["--dtype", "bfloat16", "--dropout", "0.0", "--compile"])
    ckpt = saved(split)
    assert ckpt["train_config"]["compile"] is True and ckpt["step"] == 20
    fresh = GPT(GPTConfig.from_dict(ckpt["model_config"]))
    fresh.load_state_dict(ckpt["model"], strict=True)
    idx = torch.randint(0, fresh.config.vocab_size, (2, 16))
    _, loss = fresh(idx, idx)
    assert loss is not None and math.isfinite(loss.item())


def test_fp16_with_its_grad_scaler_resumes_from_its_own_checkpoint(tmp_path: Path) -> None:
    split, straight = split_and_straight(tmp_path, ["--dtype", "float16", "--dropout", "0.0"])
    mid = saved(split / "checkpoints" / "ckpt-000010.pt")
    assert mid["scaler"].get("scale", 0) > 0  # an enabled scaler's state, not {}
    # Restored, not restarted: the scale and its growth tracker went on as in the straight run.
    assert saved(split)["scaler"] == saved(straight)["scaler"]
    assert "dtype: float16\n" in (split / "train.log").read_text()


def test_fp16_resumes_from_a_bf16_checkpoint_whose_scaler_state_is_empty(tmp_path: Path) -> None:
    out = tmp_path / "out"
    train(out, "--dtype", "bfloat16", "--dropout", "0.0", "--max-iters", "10")
    assert saved(out)["scaler"] == {}
    train(out, "--dtype", "float16", "--dropout", "0.0", "--max-iters", "20")
    log = (out / "train.log").read_text()
    assert "resumed: checkpoints/ckpt-000010.pt at step 10" in log and "dtype: float16\n" in log
    losses = step_losses(out)
    assert sorted(losses) == list(range(1, 21)) and all(math.isfinite(v) for v in losses.values())
    # It went on from the bf16 model (~3.5 after 10 steps), not from a fresh one (~4.6).
    assert losses[11] < losses[1] - 0.3 and abs(losses[11] - losses[10]) < 0.3, losses
    last = saved(out)
    assert last["step"] == 20 and last["scaler"].get("scale", 0) > 0


def test_launch_one_rank_nccl_with_grad_accum_matches_one_process(tmp_path: Path) -> None:
    args = ["--dtype", "bfloat16", "--dropout", "0.0", "--grad-accum", "2", "--max-iters", "12"]
    single, launched = tmp_path / "single", tmp_path / "launched"
    train(single, *args)
    result = subprocess.run(
        [sys.executable, "-m", "trainer.launch", "--nproc-per-node", "1", *TINY, *args, "--out-dir", str(launched)],
        cwd=REPO, env=dict(env(), NCCL_DEBUG="INFO"), capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "NCCL" in result.stdout + result.stderr  # the rank joined an NCCL process group (NCCL_DEBUG lines)
    log = (launched / "train.log").read_text()
    assert "world_size: 1\n" in log and "device: cuda\n" in log and "x 2 accum" in log
    assert "stopped: max_iters at step 12" in log
    assert_close_losses(step_losses(launched), step_losses(single))
    assert saved(launched)["world_size"] == 1


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want).norm() / want.norm())


def test_gpt2_shaped_attention_runs_forward_and_backward_on_the_flash_backend_in_bf16() -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.manual_seed(0)
    b, h, t, d = 4, 12, 1024, 64  # GPT-2 124M: 12 heads of 64 at T=1024
    q, k, v = (torch.randn(b, h, t, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    grad = torch.randn(b, h, t, d, device="cuda", dtype=torch.bfloat16)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):  # flash only: raises if it cannot take these inputs
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        out.backward(grad)
    ref_in = [x.detach().float().requires_grad_() for x in (q, k, v)]
    with sdpa_kernel(SDPBackend.MATH):
        ref = F.scaled_dot_product_attention(*ref_in, is_causal=True)
        ref.backward(grad.float())
    assert _relative_error(out, ref) < 2e-2
    for x, r in zip((q, k, v), ref_in, strict=True):
        assert x.grad is not None and r.grad is not None
        assert _relative_error(x.grad, r.grad) < 2e-2

    # The model's own attention (one GPT-2 block, T=1024) under autocast, as training runs it.
    model = GPT(GPTConfig(block_size=1024, vocab_size=50304, n_layer=1, n_head=12, n_embd=768, dropout=0.0)).cuda()
    idx = torch.randint(0, 50304, (4, 1024), device="cuda")
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION), torch.autocast("cuda", dtype=torch.bfloat16):
        _, loss = model(idx, idx, return_logits=False)
        assert loss is not None
        loss.backward()
    weight_grad = model.transformer.h[0].attn.c_attn.weight.grad
    assert math.isfinite(loss.item()) and weight_grad is not None and bool(torch.isfinite(weight_grad).all())


def test_the_gpu_has_a_known_peak_for_mfu() -> None:
    name = torch.cuda.get_device_name()
    assert hardware.peak_tflops(name, torch.bfloat16) is not None, (
        f"no peak TFLOPS for {name!r}: MFU shows 'unknown peak'; add its datasheet figure to trainer/hardware.py")


def test_bf16_is_native_on_ampere_and_newer() -> None:
    if torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("before Ampere bf16 is emulated: the trainer picks fp16 there")
    assert native_bf16()
