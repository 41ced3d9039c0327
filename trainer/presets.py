"""The model's shape: GPTConfig and the named presets. Torch-free, so the controller can check a
trainer config (`trainer.config.validate`) without torch installed (torch is the `gpurun[train]` extra).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304  # GPT-2's 50257 padded to a multiple of 64 for faster matmuls
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True
    # Architecture switches of the modded-nanogpt speedrun records (trainer/model.py cites each);
    # all off is GPT-2 as published.
    rotary: bool = False  # rotary position embeddings on q and k instead of a learned wpe
    qk_norm: bool = False  # parameter-free RMS norm of q and k per head
    relu2: bool = False  # ReLU(x)^2 in the MLP instead of tanh-GELU
    zero_init: bool = False  # residual output projections (attn and mlp c_proj, an untied head) start at 0
    rmsnorm: bool = False  # parameter-free RMSNorm instead of LayerNorm (and after the embedding)
    untied_head: bool = False  # lm_head a matrix of its own, not wte
    logit_softcap: float = 0.0  # > 0: logits = cap * tanh(logits / cap)

    def validate(self) -> None:
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}): "
                "pick n_embd = n_head * head_dim"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.logit_softcap < 0:
            raise ValueError(f"logit_softcap must be 0 (off) or positive, got {self.logit_softcap}")
        if self.rotary and (self.n_embd // self.n_head) % 2:
            raise ValueError(f"rotary needs an even head size, got {self.n_embd // self.n_head}: change n_embd or n_head")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GPTConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# Architecture presets (vocab_size comes from the data unless given).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(n_layer=2, n_head=2, n_embd=64, block_size=64),
    "baby": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0),  # nanoGPT's CPU config
    "small": dict(n_layer=6, n_head=6, n_embd=384, block_size=256),  # nanoGPT shakespeare-char
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024),  # 124M
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024, block_size=1024),  # 350M
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280, block_size=1024),  # 774M
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600, block_size=1024),  # 1558M
}
