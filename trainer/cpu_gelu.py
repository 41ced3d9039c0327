"""GPT-2's tanh GELU for fp32 CPU tensors, written with the CPU's fast kernels: a speed path, kept apart from the model.

ATen's CPU tanh kernels are slow (one Zen 4 core, (12, 64, 512) fp32: `torch.tanh` ~1.0 ms, `torch.sigmoid`
~0.18 ms; the tanh GELU forward 0.7 ms with AVX-512, 1.1 ms with AVX2). The same function through
the identity 0.5·x·(1 + tanh(u)) = x·sigmoid(2u), u = √(2/π)·(x + 0.044715·x³), costs one sigmoid
and a few multiply-adds forward and five multiply-adds backward: 1.6× (AVX-512) to 2.5× (AVX2)
faster for forward + backward (docs/PERFORMANCE.md). Same values within float rounding (5e-7 from
a float64 reference, ATen's own: 4e-7; gradients 7e-6 vs 3e-6).

`use_fast_gelu(model)` turns the model's `nn.GELU(approximate="tanh")` modules into `TanhGELU`,
which takes this path for fp32 CPU tensors outside autocast and torch.compile and is ATen's GELU
everywhere else (GPU; compiled graphs fuse it anyway). Opt out with GPURUN_CPU_GELU=aten.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
import torch.nn as nn
from torch.nn import functional as F

from trainer.onednn import cpu_eager

OPT_OUT_ENV = "GPURUN_CPU_GELU"

# x·sigmoid(C1·x + C2·x³) is GPT-2's 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).
C1 = 2 * math.sqrt(2 / math.pi)
C2 = C1 * 0.044715


class _SigmoidGELU(torch.autograd.Function):
    """y = x·s, s = sigmoid(x·(C1 + C2·x²)); dy/dx = s + x·s·(1 − s)·(C1 + 3·C2·x²). Saves x and s."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        c1 = torch.tensor(C1, dtype=x.dtype)
        s = torch.addcmul(c1, x, x, value=C2).mul_(x).sigmoid_()  # in place: one temporary
        ctx.save_for_backward(x, s)
        return x * s

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        x, s = ctx.saved_tensors
        c1 = torch.tensor(C1, dtype=x.dtype)
        slope = torch.addcmul(c1, x, x, value=3 * C2).mul_(x)  # x·du/dx
        return torch.addcmul(s, slope, torch.addcmul(s, s, s, value=-1)).mul_(grad)


def tanh_gelu(x: torch.Tensor) -> torch.Tensor:
    """F.gelu(x, approximate="tanh") through sigmoid (fp32 CPU speed path; any tensor works)."""
    return _SigmoidGELU.apply(x)


def enabled() -> bool:
    return os.environ.get(OPT_OUT_ENV, "auto") != "aten"


class TanhGELU(nn.GELU):
    """nn.GELU(approximate="tanh") (same module, no state) whose fp32 CPU forward runs `tanh_gelu`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if cpu_eager(x):
            return tanh_gelu(x)
        return F.gelu(x, approximate=self.approximate)


def use_fast_gelu(model: nn.Module) -> int:
    """Make every tanh `nn.GELU` in `model` a `TanhGELU`, in place; the number changed (0 when opted out)."""
    if not enabled():
        return 0
    changed = 0
    for module in model.modules():
        if type(module) is nn.GELU and module.approximate == "tanh":
            module.__class__ = TanhGELU
            changed += 1
    return changed
