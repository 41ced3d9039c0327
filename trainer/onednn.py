"""fp32 CPU linear layers on oneDNN: a speed path for the model, kept apart from it.

On CPUs where MKL takes its AVX2 path (AMD), oneDNN's AVX-512 kernels run fp32 matmuls about twice
as fast, in the same precision (docs/PERFORMANCE.md has the measurements). `use_onednn_linears(model)`
turns a model's nn.Linear layers into `Linear`, which takes that path for fp32 CPU tensors outside
autocast and torch.compile and is F.linear everywhere else. Only where ATen runs AVX-512 kernels: on an
x86 CPU without AVX-512 (Zen 3) MKL and oneDNN both run AVX2, and oneDNN's copies of transposed inputs
make it the slower one. GPURUN_CPU_LINEAR=aten opts out, =onednn takes it regardless of the CPU.
"""

from __future__ import annotations

import os
import platform
from typing import Any

import torch
import torch.nn as nn
from torch.nn import functional as F

OPT_OUT_ENV = "GPURUN_CPU_LINEAR"


def worth_it() -> bool:
    """Whether oneDNN can beat MKL here: not on an x86 CPU whose widest ATen kernels are AVX2.

    The CPU's flags decide (torch's capability), never a timing, so every process on one machine
    (a run and its resume) takes the same path and bitwise resume holds.
    """
    x86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")
    return not x86 or torch.backends.cpu.get_cpu_capability() == "AVX512"


def probe_linear_op() -> Any:
    """oneDNN's fp32 matmul, when this torch build has it, it computes F.linear and it pays; else None."""
    choice = os.environ.get(OPT_OUT_ENV, "auto")
    if choice == "aten" or (choice != "onednn" and not worth_it()):
        return None
    try:
        if not torch.backends.mkldnn.is_available():
            return None
        op = torch.ops.mkldnn._linear_pointwise
        gen = torch.Generator().manual_seed(0)  # never the global RNG: resumed runs must replay it exactly
        x, w, b, g = (torch.randn(*shape, generator=gen) for shape in ((5, 7), (3, 7), (3,), (5, 3)))
        checks = [
            (op(x, w, b, "none", [], ""), F.linear(x, w, b)),  # forward
            (op(x, w, None, "none", [], ""), F.linear(x, w)),
            (op(g, w.t(), None, "none", [], ""), g @ w),  # the backward's transposed operands
            (op(g.t(), x.t(), None, "none", [], ""), g.t() @ x),
        ]
        if all(torch.allclose(got, want, atol=1e-5, rtol=1e-4) for got, want in checks):
            return op
        return None
    except (AttributeError, RuntimeError):
        return None


_OP: Any = None
_PROBED = False


def linear_op() -> Any:
    """probe_linear_op(), run once per process."""
    global _OP, _PROBED
    if not _PROBED:
        _OP, _PROBED = probe_linear_op(), True
    return _OP


class _CPULinear(torch.autograd.Function):
    """y = x @ w.T + b with oneDNN matmuls forward and backward (fp32 CPU tensors only)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        op = linear_op()
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        y = op(x.reshape(-1, x.shape[-1]), weight, bias, "none", [], "")
        return y.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        op = linear_op()
        x, weight = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1])
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = op(g, weight.t(), None, "none", [], "").view(x.shape)  # g @ W
        if ctx.needs_input_grad[1]:
            x2 = x.reshape(-1, x.shape[-1])
            # oneDNN copies a transposed *input* into a contiguous one (a transposed weight it reads in
            # place): transpose the narrower of g and x. g.T @ x for c_fc would copy (B·T, 4C) floats.
            if g.shape[1] <= x2.shape[1]:
                gw = op(g.t(), x2.t(), None, "none", [], "")  # g.T @ x
            else:
                gw = op(x2.t(), g.t(), None, "none", [], "").t()  # (x.T @ g).T
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g.sum(0)
        return gx, gw, gb


def cpu_eager(x: torch.Tensor) -> bool:
    """fp32 on the CPU, outside autocast and torch.compile: where the hand-written CPU path applies."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
            and not torch.compiler.is_compiling())


class Linear(nn.Linear):
    """nn.Linear (same parameters, same state dict) that runs fp32 CPU matmuls on oneDNN."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if cpu_eager(x) and self.weight.dtype == torch.float32 and linear_op() is not None:
            return _CPULinear.apply(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)


def use_onednn_linears(model: nn.Module) -> int:
    """Make every plain nn.Linear in `model` a oneDNN `Linear`, in place; the number changed.

    Call it before torch.compile / DDP wrap the model. Nothing changes (0) where the probe fails or
    GPURUN_CPU_LINEAR=aten. `Linear` adds no state, so re-classing each module keeps its parameters
    (and ties such as lm_head = wte), buffers, hooks and attributes exactly and allocates nothing.
    """
    if linear_op() is None:
        return 0
    changed = 0
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = Linear
            changed += 1
    return changed
