"""The fp32 CPU speed paths beside the model (sigmoid-form tanh GELU, glibc malloc settings) change speed only."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from torch.nn import functional as F

from tests.trainer.helpers import REPO, env
from tests.trainer.model_helpers import assert_same_loss_and_grads, tiny
from trainer import cpu_gelu, cpu_speed
from trainer.config import load_config
from trainer.train import StopRequest, Trainer


def test_sigmoid_form_is_gpt2s_tanh_gelu_within_float_rounding() -> None:
    # GPT-2's formula in float64 is the reference; ATen's fp32 tanh GELU is the yardstick for the error.
    x = torch.cat([torch.linspace(-30, 30, 6001), torch.randn(4000, generator=torch.Generator().manual_seed(0)) * 3])
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    ref_x = x.double().requires_grad_()
    F.gelu(ref_x, approximate="tanh").backward(grad.double())
    results = {}
    for name, fn in (("ours", cpu_gelu.tanh_gelu), ("aten", lambda t: F.gelu(t, approximate="tanh"))):
        xi = x.clone().requires_grad_()
        y = fn(xi)
        y.backward(grad)
        assert torch.isfinite(y).all() and torch.isfinite(xi.grad).all()
        results[name] = ((y.double() - F.gelu(x.double(), approximate="tanh")).abs().max().item(),
                         (xi.grad.double() - ref_x.grad).abs().max().item())
    (fwd, bwd), (aten_fwd, aten_bwd) = results["ours"], results["aten"]
    assert fwd <= 4 * max(aten_fwd, 1e-7) and fwd < 2e-6
    assert bwd <= 4 * max(aten_bwd, 1e-6) and bwd < 2e-5


def test_swap_keeps_the_model_and_its_results() -> None:
    plain, fast = tiny(), tiny()
    assert cpu_gelu.use_fast_gelu(fast) == 2
    assert all(type(m) is cpu_gelu.TanhGELU for m in fast.modules() if isinstance(m, nn.GELU))
    assert fast.state_dict().keys() == plain.state_dict().keys()
    assert_same_loss_and_grads(plain, fast)
    assert cpu_gelu.use_fast_gelu(fast) == 0  # idempotent


def test_the_sigmoid_form_is_for_fp32_cpu_eager_only() -> None:
    gelu = nn.GELU(approximate="tanh")
    gelu.__class__ = cpu_gelu.TanhGELU
    x = torch.randn(4, 8, requires_grad=True)
    assert gelu(x).grad_fn.name().startswith("_SigmoidGELU")
    assert gelu(x.double()).grad_fn.name().startswith("GeluBackward")  # float64: ATen's
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert gelu(x).grad_fn.name().startswith("GeluBackward")  # autocast: ATen's


def test_opt_outs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cpu_gelu.OPT_OUT_ENV, "aten")
    model = tiny()
    assert cpu_gelu.use_fast_gelu(model) == 0
    assert all(type(m) is nn.GELU for m in model.modules() if isinstance(m, nn.GELU))
    monkeypatch.setenv(cpu_speed.OPT_OUT_ENV, "default")
    assert cpu_speed.keep_freed_memory() is False


FAULTS = """
import ctypes, ctypes.util, resource, sys
from trainer import cpu_speed
if sys.argv[1] == "keep":
    assert cpu_speed.keep_freed_memory()
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
MB = 1 << 20
def step():  # a training step's shape: a few MB-sized activations allocated, written, freed
    blocks = [libc.malloc(MB) for _ in range(3)]
    for b in blocks:
        ctypes.memset(b, 1, MB)
    for b in blocks:
        libc.free(ctypes.c_void_p(b))
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc and getrusage's fault count")
def test_kept_memory_is_not_faulted_in_again_every_step() -> None:
    faults = {}
    for mode in ("default", "keep"):
        out = subprocess.run([sys.executable, "-c", FAULTS, mode], cwd=REPO, env=env(), capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        faults[mode] = int(out.stdout.split()[-1])
    pages = 10 * 3 * (1 << 20) // 4096
    assert faults["default"] > pages // 2  # glibc trims the freed top and faults it in again, zeroed
    assert faults["keep"] < pages // 20


def test_the_trainer_uses_them_on_cpu(tmp_path: Path) -> None:
    cfg = load_config(["--device", "cpu", "--model", "tiny", "--out-dir", str(tmp_path / "out"), "--progress", "off",
                       "--threads", "1"])
    trainer = Trainer(cfg, StopRequest())
    try:
        trainer.setup()
        gelus = [m for m in trainer.model.modules() if isinstance(m, nn.GELU)]
        assert gelus and all(type(m) is cpu_gelu.TanhGELU for m in gelus)
    finally:
        trainer.loader.close()
        trainer.log.close()
