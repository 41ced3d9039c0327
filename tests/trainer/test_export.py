"""Less to carry: the trainer keeps K checkpoints (the manifest says K), and writes a weights-only
export (bf16 state dict) of its final step beside the final checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.trainer.helpers import FAST
from trainer import manifest
from trainer.model import GPT
from trainer.presets import GPTConfig
from trainer.train import main


def test_the_final_step_has_a_bf16_weights_export_and_only_k_checkpoints_stay(tmp_path: Path) -> None:
    out = tmp_path / "out"
    ckpts = out / "checkpoints"
    assert main([*FAST, "--out-dir", str(out), "--ckpt-interval", "5", "--max-iters", "20"]) == 0
    listed = manifest.read_manifest(ckpts)
    assert listed["keep"] == 2  # the default K, written for the puller (home keeps the same)
    assert [e["file"] for e in listed["checkpoints"]] == ["ckpt-000015.pt", "ckpt-000020.pt"]
    assert sorted(p.name for p in ckpts.glob("ckpt-*.pt")) == ["ckpt-000015.pt", "ckpt-000020.pt"]
    (export,) = listed["exports"]
    assert export["file"] == "weights-000020.pt" and export["step"] == 20
    assert manifest.sha256_file(ckpts / export["file"]) == export["sha256"]
    weights = torch.load(ckpts / export["file"], weights_only=True)
    full = torch.load(ckpts / "ckpt-000020.pt", weights_only=True)
    assert all(t.dtype == torch.bfloat16 for t in weights["model"].values() if t.is_floating_point())
    assert (ckpts / export["file"]).stat().st_size < (ckpts / "ckpt-000020.pt").stat().st_size / 3
    # A usable model: loads into the architecture it names, within bf16 of the checkpoint's weights.
    model = GPT(GPTConfig(**weights["model_config"]))
    model.load_state_dict({k: v.float() for k, v in weights["model"].items()})
    for name, value in model.state_dict().items():
        assert torch.allclose(value, full["model"][name].float(), rtol=1e-2, atol=1e-2), name
    # A resumed run that goes on replaces the export with its own final step's.
    assert main([*FAST, "--out-dir", str(out), "--ckpt-interval", "5", "--max-iters", "25"]) == 0
    assert [e["file"] for e in manifest.read_manifest(ckpts)["exports"]] == ["weights-000025.pt"]
    assert not (ckpts / "weights-000020.pt").exists()
