"""A tiny GPT and the check that a swapped-in CPU speed path computes what the plain model does."""

from __future__ import annotations

import torch

from trainer.model import GPT, GPTConfig


def tiny() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=16, vocab_size=40, n_layer=2, n_head=2, n_embd=16))


def assert_same_loss_and_grads(plain: GPT, fast: GPT) -> None:
    """One forward and backward of each on the same batch: equal losses, equal gradients."""
    idx = torch.randint(0, 40, (3, 16), generator=torch.Generator().manual_seed(1))
    losses = []
    for model in (plain, fast):
        _, loss = model(idx, idx)
        loss.backward()
        losses.append(loss)
    assert torch.allclose(losses[0], losses[1], atol=1e-6)
    for (name, p), q in zip(plain.named_parameters(), fast.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, atol=1e-6, rtol=1e-4), name
