"""What the trainer runs on: peak FLOPS for MFU and the hardware.json record."""

from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

import torch

# Dense (no sparsity) bf16/fp16 tensor-core peaks in TFLOPS. Matched as substrings of
# torch.cuda.get_device_name(), most specific first; each figure names its datasheet. Datasheets
# give "with sparsity" figures: the dense peak is half. None: no published figure found, so MFU says
# "unknown peak" rather than guess (a name that matches nothing is unknown too).
PEAK_TFLOPS_BF16: list[tuple[str, float | None]] = [
    ("GH200", 989.5),  # NVIDIA GH200 Grace Hopper Superchip datasheet: BF16 1,979 TFLOPS with sparsity
    ("H200 NVL", 835.5),  # NVIDIA H200 datasheet, H200 NVL column: BF16 1,671 TFLOPS with sparsity
    ("H200", 989.5),  # NVIDIA H200 datasheet, H200 SXM column: BF16 1,979 TFLOPS with sparsity
    ("H100 NVL", 835.5),  # NVIDIA H100 datasheet, H100 NVL column: BF16 1,671 TFLOPS with sparsity
    ("H100 PCIE", 756.5),  # NVIDIA H100 datasheet, H100 PCIe column: BF16 1,513 TFLOPS with sparsity
    ("H100", 989.5),  # NVIDIA H100 datasheet, H100 SXM column: BF16 1,979 TFLOPS with sparsity
    ("B200", 2250.0),  # NVIDIA HGX B200 datasheet: FP16/BF16 36 PFLOPS with sparsity for 8 GPUs
    ("A100", 312.0),  # NVIDIA A100 datasheet: BF16 312 TFLOPS (624 with sparsity), SXM and PCIe
    ("A800", 312.0),  # NVIDIA A800 datasheet: BF16 312 TFLOPS (624 with sparsity)
    ("L40S", 362.05),  # NVIDIA L40S datasheet: BF16 733 TFLOPS with sparsity (362.05 dense)
    ("L40", 181.05),  # NVIDIA L40 datasheet: BF16 362.1 TFLOPS with sparsity
    ("L4", 121.0),  # NVIDIA L4 datasheet: BF16 242 TFLOPS with sparsity
    ("A10G", None),  # AWS's variant of the A10: NVIDIA publishes no datasheet for it (not the A10's figure)
    ("A10", 125.0),  # NVIDIA A10 datasheet: BF16 125 TFLOPS (250 with sparsity)
    ("RTX 6000 ADA", 364.25),  # NVIDIA RTX 6000 Ada datasheet: 1,457 TFLOPS FP8 with sparsity = 4 x BF16 dense
    ("RTX A6000", 154.8),  # NVIDIA RTX A6000 datasheet: tensor 309.7 TFLOPS with sparsity
    ("RTX 4090", 165.2),  # NVIDIA Ada Lovelace architecture whitepaper: FP16/BF16 with FP32 accumulate
    ("RTX 3090", 71.0),  # NVIDIA Ampere GA102 whitepaper: FP16/BF16 tensor with FP32 accumulate
    ("V100-PCIE", 112.0),  # NVIDIA V100 datasheet, PCIe column: tensor 112 TFLOPS (fp16; no bf16)
    ("V100", 125.0),  # NVIDIA V100 datasheet, SXM2 column: tensor 125 TFLOPS (fp16; no bf16)
    ("T4", 65.0),  # NVIDIA T4 datasheet: mixed-precision FP16/FP32 65 TFLOPS (no bf16)
]
UNKNOWN_PEAK = "unknown peak"  # what MFU shows on a GPU without a known figure


def peak_tflops(device_name: str, dtype: torch.dtype) -> float | None:
    """Peak TFLOPS of one device for matmuls in `dtype`, or None when unknown (CPUs included)."""
    name = device_name.upper()
    for key, tflops in PEAK_TFLOPS_BF16:
        if key in name:
            if tflops is None:
                return None
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
