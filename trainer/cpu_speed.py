"""The fp32 CPU speed paths, switched on together where the trainer (and the sampler) builds a CPU model.

Each changes speed only (docs/PERFORMANCE.md has the measurements): oneDNN linear layers
(trainer/onednn.py), GPT-2's tanh GELU through sigmoid (trainer/cpu_gelu.py), and glibc malloc kept
from handing freed activation memory back to the kernel (below).
"""

from __future__ import annotations

import ctypes
import os

import torch.nn as nn

from trainer import cpu_gelu, onednn

OPT_OUT_ENV = "GPURUN_CPU_MALLOC"

# glibc's <malloc.h> parameter numbers.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)
TRIM_THRESHOLD = 1024 * 1024 * 1024


def keep_freed_memory() -> bool:
    """Keep freed heap memory in the process for reuse; True when glibc took both settings.

    A training step allocates and frees the same activation-sized blocks (MBs) every step. By
    default glibc serves blocks over its mmap threshold with fresh mmaps and trims the heap's free
    top back to the kernel, so the next step page-faults the memory in again, zeroed: 270–2,900
    minor faults and 0.5–7 ms of system time per step on the baby config (getrusage, Zen 4).
    With blocks up to 32 MiB taken from the heap and the heap's top kept up to 1 GiB, the faults
    stop after the first steps (~0 per step). The process keeps its peak heap, which a trainer reaches every step
    anyway. What MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ would do, set from inside.
    """
    if os.environ.get(OPT_OUT_ENV, "auto") == "default":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on
    except (OSError, AttributeError):  # no mallopt (not glibc): nothing to tune
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def use_cpu_speed_paths(model: nn.Module) -> dict[str, int | bool]:
    """Apply every fp32 CPU speed path to `model` (in place) and the process; what each changed."""
    return {
        "onednn_linears": onednn.use_onednn_linears(model),
        "fast_gelus": cpu_gelu.use_fast_gelu(model),
        "malloc_kept": keep_freed_memory(),
    }
