"""What a first GPU run would hit, checked on CPU: bf16 only where the tensor cores have it, an fp16
resume from a bf16/CPU checkpoint, the peak table, no logits kept for a training step, a rank
asking for a GPU the machine lacks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trainer import distributed, hardware
from trainer.model import GPT, GPTConfig
from trainer.train import configure_cuda_math, load_scaler_state, resolve_dtype

CUDA = torch.device("cuda:0")


def emulating_gpu(native: bool):
    """is_bf16_supported as torch >= 2.5 answers on a GPU: True through emulation (T4, V100), and
    `native` without it (PyTorch PR #148322)."""
    def answer(including_emulation: bool = True) -> bool:
        return True if including_emulation else native
    return answer


def test_auto_dtype_is_fp16_where_bf16_is_only_emulated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", emulating_gpu(native=False))  # a T4, a V100
    assert resolve_dtype("auto", CUDA) is torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", emulating_gpu(native=True))  # an A100, an H100
    assert resolve_dtype("auto", CUDA) is torch.bfloat16
    assert resolve_dtype("auto", torch.device("cpu")) is torch.float32
    assert resolve_dtype("bfloat16", CUDA) is torch.bfloat16  # asked for: given


def test_auto_dtype_on_a_torch_without_the_emulation_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)  # the old signature
    assert resolve_dtype("auto", CUDA) is torch.float16


def test_an_fp16_scaler_resumes_from_a_checkpoint_without_scaler_state() -> None:
    scaler = torch.amp.GradScaler("cpu", enabled=True, init_scale=2.0**10)
    with pytest.raises(RuntimeError):
        scaler.load_state_dict({})  # what a bf16 or CPU checkpoint holds: an enabled scaler refuses it
    load_scaler_state(scaler, {})  # skipped: the scaler starts afresh
    load_scaler_state(scaler, None)
    assert scaler.get_scale() == 2.0**10
    saved = torch.amp.GradScaler("cpu", enabled=True, init_scale=2.0**7).state_dict()
    load_scaler_state(scaler, saved)  # an fp16 run's own state is restored
    assert scaler.state_dict()["scale"] == 2.0**7


@pytest.mark.parametrize(("name", "peak"), [
    ("NVIDIA H100 80GB HBM3", 989.5), ("NVIDIA H100 PCIe", 756.5), ("NVIDIA H100 NVL", 835.5),
    ("NVIDIA H200", 989.5), ("NVIDIA H200 NVL", 835.5), ("NVIDIA GH200 480GB", 989.5),
    ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA A10", 125.0), ("NVIDIA L40S", 362.05), ("NVIDIA L4", 121.0),
    ("Tesla V100-SXM2-16GB", 125.0), ("Tesla V100-PCIE-16GB", 112.0), ("Tesla T4", 65.0),
])
def test_peaks_by_device_name(name: str, peak: float) -> None:
    assert hardware.peak_tflops(name, torch.bfloat16) == peak
    assert hardware.peak_tflops(name, torch.float32) == peak / 2  # TF32


@pytest.mark.parametrize("name", ["NVIDIA A10G", "NVIDIA Some Future GPU", "AMD EPYC 7R13 Processor"])
def test_a_device_without_a_sourced_peak_is_unknown_never_guessed(name: str) -> None:
    assert hardware.peak_tflops(name, torch.bfloat16) is None


def test_every_peak_names_its_source() -> None:
    source = Path(hardware.__file__).read_text()
    table = source[source.index("PEAK_TFLOPS_BF16"):source.index("UNKNOWN_PEAK =")]
    rows = [line for line in table.splitlines() if line.strip().startswith('("')]
    assert len(rows) == len(hardware.PEAK_TFLOPS_BF16)
    assert all("#" in row and ("datasheet" in row or "whitepaper" in row or "no datasheet" in row) for row in rows)


def test_a_training_step_gets_the_loss_without_the_logits() -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=64, n_layer=1, n_head=2, n_embd=16, dropout=0.0, bias=False))
    x = torch.randint(0, 64, (2, 16))
    y = torch.randint(0, 64, (2, 16))
    logits, loss = model(x, y)
    none, same = model(x, y, return_logits=False)
    assert logits is not None and logits.shape == (2, 16, 64)
    assert none is None and same is not None and torch.equal(loss, same)
    same.backward()  # the loss alone carries the graph


def test_a_rank_without_a_gpu_of_its_own_is_told_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    distributed.check_gpu_for_rank(torch.device("cuda:0"), 0)
    with pytest.raises(distributed.NoGPUForRank) as err:
        distributed.check_gpu_for_rank(torch.device("cuda:1"), 1)
    assert str(err.value) == ("local rank 1 would use cuda:1, but this machine has 1 GPU(s): start at most 1 rank(s)"
                              " per node (--nproc-per-node), or pass --device cpu")


def test_float32_matmuls_use_tf32_through_the_current_api() -> None:
    before = torch.get_float32_matmul_precision()
    try:
        configure_cuda_math()
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(before)
