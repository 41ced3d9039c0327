"""Deterministic batches from memory-mapped shards.

The batch of step s is a pure function of (seed, s): every step draws `slots x batch_size` random
windows from its own generator, and process `rank` doing micro-step `m` reads slot
`rank * micro_steps + m`. So a resumed run continues with exactly the batches it would have seen,
each rank reads distinct data, and N ranks x k micro-steps see the same global batch as one process
with N*k micro-steps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from trainer.shards import open_shard


class TokenDataset:
    """The concatenation of some shards, addressed by window start positions that never span shards."""

    def __init__(self, paths: list[Path], seq_len: int) -> None:
        if not paths:
            raise FileNotFoundError("no token shards given")
        self.seq_len = seq_len
        self.shards = [open_shard(p) for p in paths]
        # A window needs seq_len + 1 tokens (inputs and next-token targets).
        self.windows = np.array([max(0, len(s) - seq_len) for s in self.shards], dtype=np.int64)
        self.cum = np.cumsum(self.windows)
        if self.cum[-1] == 0:
            raise ValueError(
                f"{paths[0].parent}: fewer than seq_len + 1 = {seq_len + 1} tokens in every shard"
            )

    @property
    def num_tokens(self) -> int:
        return int(sum(len(s) for s in self.shards))

    def windows_at(self, positions: np.ndarray) -> np.ndarray:
        """(n, seq_len + 1) int64 token windows for global window positions."""
        shard_idx = np.searchsorted(self.cum, positions, side="right")
        starts = positions - np.concatenate(([0], self.cum[:-1]))[shard_idx]
        out = np.empty((len(positions), self.seq_len + 1), dtype=np.int64)
        for i, (s, o) in enumerate(zip(shard_idx, starts, strict=True)):
            out[i] = self.shards[s][o : o + self.seq_len + 1]
        return out


class BatchSampler:
    def __init__(self, dataset: TokenDataset, batch_size: int, slots: int, seed: int) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.slots = slots
        self.seed = seed

    def positions(self, step: int, slot: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, step])
        all_pos = rng.integers(0, int(self.dataset.cum[-1]), size=(self.slots, self.batch_size))
        return all_pos[slot]

    def batch(self, step: int, slot: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        w = torch.from_numpy(self.dataset.windows_at(self.positions(step, slot)))
        x, y = w[:, :-1], w[:, 1:]
        if device.type == "cuda":
            # Pinned host memory lets the copy overlap with compute.
            return (x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True))
        return x.contiguous(), y.contiguous()

    def state(self, step: int) -> dict[str, int]:
        return {"seed": self.seed, "step": step, "slots": self.slots, "batch_size": self.batch_size}
