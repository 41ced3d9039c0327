"""The oneDNN CPU linear path lives beside the model, not in it, and changes nothing but speed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn

from tests.trainer.model_helpers import assert_same_loss_and_grads, tiny
from trainer import onednn
from trainer.config import load_config
from trainer.train import StopRequest, Trainer

needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN")


@pytest.fixture(autouse=True)
def onednn_wherever_it_works(monkeypatch: pytest.MonkeyPatch) -> None:
    """Take the oneDNN path on any CPU (an AVX2-only one would not, by default), probed afresh."""
    monkeypatch.setenv(onednn.OPT_OUT_ENV, "onednn")
    monkeypatch.setattr(onednn, "_PROBED", False)
    monkeypatch.setattr(onednn, "_OP", None)


def test_the_model_is_plain_pytorch() -> None:
    model = tiny()
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 2 * 4 + 1 and all(type(m) is nn.Linear for m in linears)


@needs_onednn
def test_swap_keeps_parameters_ties_and_results() -> None:
    plain, fast = tiny(), tiny()
    before = {k: v.clone() for k, v in fast.state_dict().items()}
    params = [id(p) for p in fast.parameters()]
    assert onednn.use_onednn_linears(fast) == 9
    assert all(type(m) is onednn.Linear for m in fast.modules() if isinstance(m, nn.Linear))
    assert [id(p) for p in fast.parameters()] == params  # same tensors: an optimizer built before still works
    assert fast.lm_head.weight is fast.transformer.wte.weight  # the tie survives
    assert fast.state_dict().keys() == before.keys()
    assert all(torch.equal(fast.state_dict()[k], v) for k, v in before.items())

    assert_same_loss_and_grads(plain, fast)
    assert onednn.use_onednn_linears(fast) == 0  # idempotent


def test_opt_out_leaves_the_model_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(onednn.OPT_OUT_ENV, "aten")
    assert onednn.probe_linear_op() is None
    monkeypatch.setattr(onednn, "_PROBED", False)
    monkeypatch.setattr(onednn, "_OP", None)
    model = tiny()
    assert onednn.use_onednn_linears(model) == 0
    assert all(type(m) is nn.Linear for m in model.modules() if isinstance(m, nn.Linear))


def test_probe_never_touches_the_global_rng() -> None:
    torch.manual_seed(5)
    want = torch.rand(3)
    torch.manual_seed(5)
    onednn.probe_linear_op()
    assert torch.equal(torch.rand(3), want)  # resumed runs replay the global RNG bit for bit


@needs_onednn
def test_the_trainer_uses_it_on_cpu(tmp_path: Path) -> None:
    cfg = load_config(["--device", "cpu", "--model", "tiny", "--out-dir", str(tmp_path / "out"), "--progress", "off",
                       "--threads", "1"])
    trainer = Trainer(cfg, StopRequest())
    try:
        trainer.setup()
        assert trainer.device.type == "cpu"
        assert all(type(m) is onednn.Linear for m in trainer.model.modules() if isinstance(m, nn.Linear))
    finally:
        trainer.loader.close()
        trainer.log.close()


@needs_onednn
@pytest.mark.parametrize(("machine", "capability", "choice", "taken"), [
    ("x86_64", "AVX512", "auto", True),  # MKL runs AVX2 on AMD, oneDNN AVX-512
    ("x86_64", "AVX2", "auto", False),  # both AVX2: oneDNN's transposed-input copies make it slower (Zen 3)
    ("x86_64", "AVX2", "onednn", True),  # forced, for A/B runs
    ("x86_64", "AVX512", "aten", False),
    ("aarch64", "DEFAULT", "auto", True),
])
def test_the_probe_takes_onednn_only_where_it_pays(monkeypatch: pytest.MonkeyPatch, machine: str, capability: str,
                                                   choice: str, taken: bool) -> None:
    monkeypatch.setenv(onednn.OPT_OUT_ENV, choice)
    monkeypatch.setattr(onednn.platform, "machine", lambda: machine)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert (onednn.probe_linear_op() is not None) is taken
