"""Muon (MomentUm Orthogonalized by Newton-Schulz) for the blocks' matrices, AdamW for the rest.

Keller Jordan's optimizer as the modded-nanogpt records use it (records #3-#9, e.g.
records/track_1_short/2024-11-03_UntieEmbed): SGD with Nesterov momentum whose update of each 2-D
matrix is replaced by the nearest semi-orthogonal matrix, approximated by five steps of a quintic
Newton-Schulz iteration, then scaled by sqrt(max(1, rows / cols)). Embeddings, the head and the
vectors (gains, biases) stay on AdamW: "It should not be used for the embedding layer, the final
fully connected layer, or any {0,1}-D parameters".

Distributed (record #6, 2024-10-17_DistributedMuon): every rank has the same averaged gradients
after DDP's all-reduce; the Newton-Schulz work is split, rank r orthogonalising matrices
r, r + W, ..., and one all-reduce (a sum of disjoint slices, exact) gives every rank every update.
Unlike the record, the momentum buffers are kept on every rank (an elementwise update, cheap), so
rank 0's checkpoint holds the whole optimizer state and a resume on any world size continues it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

# zeropower_via_newtonschulz5's quintic coefficients, records #3-#19: chosen to maximise the slope at
# zero, so that 5 steps push every singular value into roughly [0.7, 1.2] rather than exactly to 1.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5
NS_EPS = 1e-7


def newton_schulz5(g: torch.Tensor, steps: int = NS_STEPS, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """An approximately semi-orthogonal matrix U V^T (U S V^T = g) for each (..., m, n) matrix of g."""
    a, b, c = NS_COEFFICIENTS
    x = g.to(dtype)
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + NS_EPS)  # top singular value <= 1
    tall = g.size(-2) > g.size(-1)
    if tall:  # iterate on the wide side: X X^T is the smaller Gram matrix
        x = x.mT
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x  # = a X + b (X X^T) X + c (X X^T)^2 X
    return x.mT if tall else x


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class Muon(torch.optim.Optimizer):
    """Muon over 2-D parameters. A group's optional "blocks" list says, per parameter, into how many
    equal row blocks it splits (3 for a stacked q/k/v matrix): each block is orthogonalised alone."""

    def __init__(self, params: Iterable[Any], lr: float = 0.02, momentum: float = 0.95, nesterov: bool = True,
                 ns_steps: int = NS_STEPS) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps))
        for group in self.param_groups:
            if any(p.dim() != 2 for p in group["params"]):
                raise ValueError("Muon takes 2-D matrices only: give vectors and embeddings to AdamW")
            group.setdefault("blocks", [1] * len(group["params"]))

    def _direction(self, p: torch.Tensor, group: dict[str, Any]) -> torch.Tensor:
        """Momentum step (every rank) and the Nesterov direction to orthogonalise."""
        g = p.grad
        assert g is not None
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(g)
        buf = state["momentum_buffer"]
        buf.mul_(group["momentum"]).add_(g)  # record #8's form: buf = m * buf + g
        return g.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = closure() if closure is not None else None
        rank, world = _world()
        for group in self.param_groups:
            pairs = [(p, n) for p, n in zip(group["params"], group["blocks"], strict=True) if p.grad is not None]
            if not pairs:
                continue
            ns_dtype = torch.bfloat16 if pairs[0][0].is_cuda else torch.float32  # bf16 on GPUs, as the records
            directions = [self._direction(p, group) for p, _ in pairs]
            flat = torch.zeros(sum(p.numel() for p, _ in pairs), device=pairs[0][0].device, dtype=ns_dtype)
            offset = 0
            for i, ((p, blocks), d) in enumerate(zip(pairs, directions, strict=True)):
                if i % world == rank:
                    rows, cols = p.size(0) // blocks, p.size(1)
                    u = newton_schulz5(d.view(blocks, rows, cols), group["ns_steps"], ns_dtype)
                    u = u * max(1.0, rows / cols) ** 0.5
                    flat[offset : offset + p.numel()] = u.flatten()
                offset += p.numel()
            if world > 1:
                dist.all_reduce(flat, op=dist.ReduceOp.SUM)  # each slice has one non-zero writer: exact
            offset = 0
            for p, _ in pairs:
                p.add_(flat[offset : offset + p.numel()].view_as(p).to(p.dtype), alpha=-group["lr"])
                offset += p.numel()
        return loss


class Optimizers:
    """Several optimizers stepped as one (the records keep a list of them): the trainer sets the LR
    of every group in `param_groups` (times the group's "lr_scale"), GradScaler unscales through
    it, and the checkpoint holds every optimizer's state by name."""

    def __init__(self, **named: torch.optim.Optimizer) -> None:
        self.named = named

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for opt in self.named.values() for g in opt.param_groups]

    @property
    def state(self) -> dict[Any, Any]:
        return {p: s for opt in self.named.values() for p, s in opt.state.items()}

    def step(self, closure: Callable[[], float] | None = None) -> None:
        for opt in self.named.values():
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.named.values():
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {name: opt.state_dict() for name, opt in self.named.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != set(self.named):
            raise ValueError(f"optimizer state holds {sorted(state)}, this run has {sorted(self.named)}")
        for name, opt in self.named.items():
            opt.load_state_dict(state[name])


def adamw(groups: list[dict[str, Any]], lr: float, betas: tuple[float, float], fused: bool) -> torch.optim.AdamW:
    if fused:
        try:  # one kernel per tensor (CUDA, and CPU since torch 2.4): 3x faster than the for-loop
            return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True)
        except (RuntimeError, TypeError):
            pass
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


def configure_muon(model: nn.Module, lr: float, embed_lr: float, muon_lr: float, momentum: float,
                   weight_decay: float, betas: tuple[float, float], fused: bool) -> Optimizers:
    """Muon for the blocks' matrices; AdamW for the embeddings (embed_lr; lr when tied to the head),
    an untied head and the vectors (lr). Record #8: Adam wte lr 0.3, head lr 0.002, Muon lr 0.02
    momentum 0.95, betas (0.9, 0.95).
    Each group's "lr_scale" is its peak LR over `lr`: the schedule's LR times it is the group's LR."""
    named = dict(model.named_parameters())  # a tied head is wte: listed once
    hidden = [(n, p) for n, p in named.items() if n.startswith("transformer.h.") and p.dim() == 2]
    embeds = [p for n, p in named.items() if n.startswith(("transformer.wte.", "transformer.wpe."))]
    taken = {id(p) for _, p in hidden} | {id(p) for p in embeds}
    rest = [p for p in named.values() if id(p) not in taken]
    # A tied wte is also the head: it takes the head's LR (records #3-#7, tied: one AdamW for lm_head
    # = wte); 0.3 is an LR for an embedding alone (record #8, untied).
    tied = "lm_head.weight" not in named  # named_parameters lists a shared tensor once, as wte
    groups = [
        {"params": embeds, "weight_decay": weight_decay, "lr_scale": 1.0 if tied else embed_lr / lr},
        {"params": [p for p in rest if p.dim() >= 2], "weight_decay": weight_decay, "lr_scale": 1.0},  # head
        {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0, "lr_scale": 1.0},
    ]
    muon = Muon([{"params": [p for _, p in hidden], "lr_scale": muon_lr / lr,
                  "blocks": [3 if n.endswith("attn.c_attn.weight") else 1 for n, _ in hidden]}],
                lr=muon_lr, momentum=momentum)
    return Optimizers(adamw=adamw([g for g in groups if g["params"]], lr, betas, fused), muon=muon)


AnyOptimizer = torch.optim.Optimizer | Optimizers  # what the trainer steps: AdamW alone, or Muon + AdamW
