"""GPT-2: token + learned position embeddings, pre-LayerNorm blocks, tied lm_head; and the speedrun's
architecture switches (GPTConfig: rotary, qk_norm, relu2, zero_init, rmsnorm, untied_head,
logit_softcap), each off by default.

Parameter names follow Hugging Face's GPT-2 (transformer.h.N.attn.c_attn, ...), so loading its
weights is a rename-free copy (plus transposing its Conv1D matrices).
The model and nothing else: its shape (GPTConfig, the presets) is trainer/presets.py, torch-free;
the CPU speed path for its linear layers is trainer/onednn.py.

The switches follow KellerJordan/modded-nanogpt's records (records/track_1_short/, README's table):
#2 2024-06-06_AdamW (rotary), #5 2024-10-14_ModernArch (ReLU², zero-init projections, QK-norm,
parameter-free RMSNorm, no biases), #8 2024-11-03_UntieEmbed (untied head initialised to zero, RMSNorm
after the embedding), #9 2024-11-06_ShortcutsTweaks (logit softcap 30). Our code, their numbers.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
from torch.nn import functional as F

from trainer.hardware import peak_tflops
from trainer.muon import adamw
from trainer.presets import GPTConfig

ROTARY_BASE = 10_000.0  # records #2-#16: Rotary(dim, base=10000)


class RMSNorm(nn.Module):
    """Parameter-free RMS norm over the last dimension: F.rms_norm(x, (C,)) as records #5+ call it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.size(-1),))


def make_norm(config: GPTConfig) -> nn.Module:
    return RMSNorm() if config.rmsnorm else nn.LayerNorm(config.n_embd, bias=config.bias)


Rope = tuple[torch.Tensor, torch.Tensor]  # rotary cos and sin, (1, 1, T, head_size / 2)


def rotary_tables(t: int, head_dim: int, device: torch.device) -> Rope:
    """cos/sin of rotary embeddings (Su et al. 2021) for positions 0..t-1: once per forward, shared
    by every layer. Computed, not a buffer: nothing to save, nothing for DDP to broadcast."""
    inv_freq = 1.0 / (ROTARY_BASE ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    freqs = torch.outer(torch.arange(t, device=device, dtype=torch.float32), inv_freq)
    return freqs.cos()[None, None], freqs.sin()[None, None]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the two halves of each head's vector (the records' apply_rotary_emb layout)."""
    d = x.size(-1) // 2
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1).type_as(x)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.qk_norm = config.qk_norm
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        # q, k, v stacked: Muon orthogonalises each of the three blocks on its own, as the records'
        # separate c_q/c_k/c_v (#5-#19) and batched qkv_w (#20) do.
        self.c_attn.weight.muon_blocks = 3  # type: ignore[attr-defined]
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.residual_scale = True  # type: ignore[assignment]
        self.rotary = config.rotary
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, rope: Rope | None = None) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        # (B, T, C) -> (B, nh, T, hs)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        if self.qk_norm:  # record #5: F.rms_norm of q and k per head, before the rotation
            q, k = F.rms_norm(q, (q.size(-1),)), F.rms_norm(k, (k.size(-1),))
        if self.rotary:  # record #2 on: no learned positions, q and k rotated by position (base 10000)
            if rope is None:
                rope = rotary_tables(t, c // self.n_head, x.device)
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )
        y = y.transpose(1, 2).contiguous().view(b, t, c)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.relu2 = config.relu2
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's gelu_new
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.residual_scale = True  # type: ignore[assignment]
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c_fc(x)
        # record #5: F.relu(x).square(), "~1-2% better than GELU" (arXiv:2109.08668)
        h = F.relu(h).square() if self.relu2 else self.gelu(h)
        return self.dropout(self.c_proj(h))


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = make_norm(config)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, rope: Rope | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), rope)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        modules: dict[str, nn.Module] = dict(wte=nn.Embedding(config.vocab_size, config.n_embd))
        if not config.rotary:
            modules["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        modules |= dict(drop=nn.Dropout(config.dropout), h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                        ln_f=make_norm(config))
        self.transformer = nn.ModuleDict(modules)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if not config.untied_head:
            self.lm_head.weight = self.transformer.wte.weight  # tied, as in GPT-2
        self.apply(self._init_weights)
        if config.zero_init and config.untied_head:
            nn.init.zeros_(self.lm_head.weight)  # record #8: "init head to zero"

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            std = 0.02
            if getattr(module, "residual_scale", False) and self.config.zero_init:
                std = 0.0  # record #5: c_proj.weight.data.zero_() ("zero init suggested by @Grad62304977")
            elif getattr(module, "residual_scale", False):
                # GPT-2: residual projections scaled so the residual stream's variance stays put.
                std = 0.02 / math.sqrt(2 * self.config.n_layer)
            nn.init.normal_(module.weight, mean=0.0, std=std) if std else nn.init.zeros_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and "wpe" in self.transformer:
            n -= self.transformer.wpe.weight.numel()
        return n

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, return_logits: bool = True
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(logits, loss). Training and eval pass return_logits=False (llm.c's): the full logits are
        then no output of the step, so a compiled graph need not keep them (1.6 GB at micro-batch 16
        for GPT-2 124M, 6.6 GB at 64)."""
        _, t = idx.shape
        if t > self.config.block_size:
            raise ValueError(f"sequence of length {t} is longer than block_size {self.config.block_size}")
        x = self.transformer.wte(idx)
        if "wpe" in self.transformer:
            x = x + self.transformer.wpe(torch.arange(t, dtype=torch.long, device=idx.device))
        if self.config.rmsnorm:
            x = F.rms_norm(x, (x.size(-1),))  # record #8: "added RMSNorm after embed"
        x = self.transformer.drop(x)
        c = self.config
        rope = rotary_tables(t, c.n_embd // c.n_head, idx.device) if c.rotary else None
        for block in self.transformer.h:
            x = block(x, rope)
        x = self.transformer.ln_f(x)
        if targets is None:
            return self.head(x[:, [-1], :]), None  # inference: only the last position matters
        logits = self.head(x)
        # Under autocast cross_entropy runs in float32 by itself: no extra full-size fp32 copy here.
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return (logits if return_logits else None), loss

    def head(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head(x)
        cap = self.config.logit_softcap
        if cap > 0:  # record #9: logits = 30 * torch.tanh(logits / 30); bounded in (-cap, cap)
            logits = cap * torch.tanh(logits / cap)
        return logits

    def full_logits(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits at every position (forward() without targets returns only the last)."""
        logits, _ = self.forward(idx, targets=torch.zeros_like(idx))
        assert logits is not None
        return logits

    def configure_optimizer(
        self, weight_decay: float, lr: float, betas: tuple[float, float], fused: bool
    ) -> torch.optim.AdamW:
        # Decay matrices and embeddings; never biases or LayerNorm gains.
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        return adamw([g for g in groups if g["params"]], lr, betas, fused)

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward), PaLM appendix B."""
        c = self.config
        return 6 * self.num_params() + 12 * c.n_layer * c.n_embd * seq_len

    def estimate_mfu(
        self, tokens_per_s: float, seq_len: int, device_name: str, dtype: torch.dtype,
        peak_override_tflops: float | None = None,
    ) -> float | None:
        """Model FLOPs utilisation of ONE device as a fraction, or None when its peak is unknown."""
        peak = peak_override_tflops or peak_tflops(device_name, dtype)
        if not peak:
            return None
        return self.flops_per_token(seq_len) * tokens_per_s / (peak * 1e12)

    @torch.no_grad()
    def generate(
        self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Append max_new_tokens sampled tokens to idx (B, T); temperature 0 means greedy."""
        for _ in range(max_new_tokens):
            context = idx[:, -self.config.block_size :]
            logits, _ = self(context)
            assert logits is not None
            logits = logits[:, -1, :].float()
            if temperature <= 0:
                nxt = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None and top_k > 0:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                probs = F.softmax(logits, dim=-1)
                nxt = torch.multinomial(probs, num_samples=1, generator=generator)
            idx = torch.cat((idx, nxt), dim=1)
        return idx

    @classmethod
    def from_pretrained(cls, source: Any, dropout: float = 0.0) -> GPT:
        """Build from Hugging Face GPT-2 weights.

        `source` is a transformers GPT2LMHeadModel (or GPT2Model-with-head) instance, or a name /
        local directory that GPT2LMHeadModel.from_pretrained accepts (this needs the weights locally
        or a network).
        """
        if isinstance(source, (str, bytes)) or hasattr(source, "__fspath__"):
            from transformers import GPT2LMHeadModel  # lazy: only this path needs transformers

            source = GPT2LMHeadModel.from_pretrained(source)
        hf = source.config
        config = GPTConfig(
            block_size=hf.n_positions, vocab_size=hf.vocab_size, n_layer=hf.n_layer, n_head=hf.n_head,
            n_embd=hf.n_embd, dropout=dropout, bias=True,
        )
        model = cls(config)
        model.load_hf_state_dict(source.state_dict())
        return model

    def load_hf_state_dict(self, hf_sd: dict[str, torch.Tensor]) -> None:
        # HF GPT-2 stores these four as Conv1D (in, out): ours are nn.Linear (out, in).
        transposed = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
        hf_sd = {k: v for k, v in hf_sd.items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
        own = self.state_dict()
        missing = [k for k in own if k not in hf_sd and k != "lm_head.weight"]
        if missing:
            raise ValueError(f"Hugging Face state dict lacks {len(missing)} tensors, e.g. {missing[:3]}")
        with torch.no_grad():
            for key, target in own.items():
                if key == "lm_head.weight":
                    continue  # tied to wte
                src = hf_sd[key]
                if key.endswith(transposed):
                    src = src.t()
                if src.shape != target.shape:
                    raise ValueError(f"{key}: shape {tuple(src.shape)} does not fit {tuple(target.shape)}")
                target.copy_(src)
