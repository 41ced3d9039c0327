"""GPT-2: token + learned position embeddings, pre-LayerNorm blocks, tied lm_head.

Parameter names follow Hugging Face's GPT-2 (transformer.h.N.attn.c_attn, ...), so loading its
weights is a rename-free copy (plus transposing its Conv1D matrices).
The model and nothing else: its shape (GPTConfig, the presets) is trainer/presets.py, torch-free;
the CPU speed path for its linear layers is trainer/onednn.py.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
from torch.nn import functional as F

from trainer.hardware import peak_tflops
from trainer.presets import GPTConfig


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.residual_scale = True  # type: ignore[assignment]
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        # (B, T, C) -> (B, nh, T, hs)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )
        y = y.transpose(1, 2).contiguous().view(b, t, c)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's gelu_new
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.residual_scale = True  # type: ignore[assignment]
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied, as in GPT-2
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            std = 0.02
            if getattr(module, "residual_scale", False):
                # GPT-2: residual projections scaled so the residual stream's variance stays put.
                std = 0.02 / math.sqrt(2 * self.config.n_layer)
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
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
        pos = torch.arange(t, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        if targets is None:
            return self.lm_head(x[:, [-1], :]), None  # inference: only the last position matters
        logits = self.lm_head(x)
        # Under autocast cross_entropy runs in float32 by itself: no extra full-size fp32 copy here.
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return (logits if return_logits else None), loss

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
        if fused:
            try:  # one kernel per tensor (CUDA, and CPU since torch 2.4): 3x faster than the for-loop
                return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True)
            except (RuntimeError, TypeError):
                pass
        return torch.optim.AdamW(groups, lr=lr, betas=betas)

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
