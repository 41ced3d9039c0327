"""What the trainer runs on: peak FLOPS for MFU and the hardware.json record."""

from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

import torch

# Dense (no sparsity) bf16/fp16 tensor-core peaks in TFLOPS, from NVIDIA datasheets. Matched as
# substrings of torch.cuda.get_device_name(), most specific first.
PEAK_TFLOPS_BF16: list[tuple[str, float]] = [
    ("GH200", 989.0),
    ("H200", 989.0),
    ("H100 NVL", 835.0),
    ("H100 PCIE", 756.0),
    ("H100", 989.0),  # SXM
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("RTX 6000 ADA", 364.0),
    ("RTX A6000", 155.0),
    ("RTX 4090", 165.0),
    ("RTX 3090", 71.0),
    ("V100", 125.0),  # fp16 only
    ("T4", 65.0),  # fp16 only
]


def peak_tflops(device_name: str, dtype: torch.dtype) -> float | None:
    """Peak TFLOPS of one device for matmuls in `dtype`, or None when unknown (CPUs included)."""
    name = device_name.upper()
    for key, tflops in PEAK_TFLOPS_BF16:
        if key in name:
            # TF32 tensor cores run at half the bf16 rate on Ampere and Hopper.
            return tflops if dtype in (torch.bfloat16, torch.float16) else tflops / 2
    return None


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (platform.processor() is often empty on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


def nvidia_smi() -> str | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        return subprocess.run([exe], capture_output=True, text=True, timeout=20).stdout or None
    except (OSError, subprocess.SubprocessError):
        return None


def hardware_record(device: torch.device, dtype: torch.dtype, world_size: int) -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda_available": cuda,
        "cuda_version": torch.version.cuda,
        "device": device.type,
        "gpu_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "gpu_count": torch.cuda.device_count() if cuda else 0,
        "nvidia_smi": nvidia_smi(),
        "world_size": world_size,
        "dtype": str(dtype).removeprefix("torch."),
        "cpu_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
