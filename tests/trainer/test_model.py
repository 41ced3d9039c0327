"""trainer/model.py: architecture, presets, generation, MFU and Hugging Face weights."""

from __future__ import annotations

import pytest
import torch

from trainer.model import GPT
from trainer.presets import PRESETS, GPTConfig


def test_from_pretrained_matches_hf_logits() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf_config = transformers.GPT2Config(
        vocab_size=97, n_positions=32, n_embd=48, n_layer=2, n_head=4,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )
    hf = transformers.GPT2LMHeadModel(hf_config).eval()
    with torch.no_grad():  # random, non-trivial biases and LayerNorm gains so the mapping is tested
        for name, p in hf.named_parameters():
            if p.dim() == 1:
                p.normal_(0.0, 0.1 if name.endswith("bias") else 1.0)
    ours = GPT.from_pretrained(hf).eval()
    idx = torch.randint(0, 97, (3, 32))
    with torch.no_grad():
        expected = hf(idx).logits
        got = ours.full_logits(idx)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_presets_and_param_counts() -> None:
    with torch.device("meta"):
        gpt2 = GPT(GPTConfig(**PRESETS["gpt2"], vocab_size=50257))
        xl = GPT(GPTConfig(**PRESETS["gpt2-xl"], vocab_size=50257))
    assert round(gpt2.num_params(non_embedding=False) / 1e6) == 124
    assert round(xl.num_params(non_embedding=False) / 1e6) == 1558
    tiny = GPT(GPTConfig(**PRESETS["tiny"], vocab_size=65))
    assert tiny.lm_head.weight is tiny.transformer.wte.weight  # tied
    assert PRESETS["baby"] == dict(n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0)


def test_init_scales_residual_projections() -> None:
    torch.manual_seed(0)
    m = GPT(GPTConfig(n_layer=8, n_head=4, n_embd=256, block_size=16, vocab_size=100))
    fc_std = m.transformer.h[0].mlp.c_fc.weight.std().item()
    proj_std = m.transformer.h[0].mlp.c_proj.weight.std().item()
    assert abs(fc_std - 0.02) < 0.002
    assert abs(proj_std - 0.02 / 4) < 0.001  # 1/sqrt(2 * 8) = 1/4


def test_forward_loss_and_generate() -> None:
    torch.manual_seed(0)
    m = GPT(GPTConfig(**PRESETS["tiny"], vocab_size=50, dropout=0.1, bias=False)).eval()
    idx = torch.randint(0, 50, (2, 10))
    logits, loss = m(idx, torch.randint(0, 50, (2, 10)))
    assert logits.shape == (2, 10, 50) and abs(loss.item() - torch.log(torch.tensor(50.0)).item()) < 0.3
    last, none = m(idx)
    assert last.shape == (2, 1, 50) and none is None
    out = m.generate(idx, 80, temperature=1.0, top_k=5)  # longer than block_size: context is cropped
    assert out.shape == (2, 90) and (out[:, :10] == idx).all()
    g1 = m.generate(idx, 5, temperature=0)
    assert (g1 == m.generate(idx, 5, temperature=0)).all()
    with pytest.raises(ValueError, match="block_size"):
        m(torch.zeros(1, 65, dtype=torch.long))


def test_mfu_uses_device_peak() -> None:
    m = GPT(GPTConfig(**PRESETS["tiny"], vocab_size=65))
    h100 = m.estimate_mfu(1e6, 64, "NVIDIA H100 80GB HBM3", torch.bfloat16)
    a100 = m.estimate_mfu(1e6, 64, "NVIDIA A100-SXM4-80GB", torch.bfloat16)
    assert h100 is not None and a100 is not None
    assert a100 / h100 == pytest.approx(989.5 / 312)
    assert m.estimate_mfu(1e6, 64, "x86_64", torch.float32) is None
    assert m.estimate_mfu(1e6, 64, "x86_64", torch.float32, peak_override_tflops=1.0) == pytest.approx(
        m.flops_per_token(64) * 1e6 / 1e12
    )


def test_bad_model_config() -> None:
    with pytest.raises(ValueError, match="divisible"):
        GPT(GPTConfig(n_embd=100, n_head=3, vocab_size=10, block_size=8, n_layer=1))
