"""Deterministic batches from memory-mapped shards.

The batch of step s is a pure function of (seed, s): every step draws `slots x batch_size` random
windows from its own generator, and process `rank` doing micro-step `m` reads slot
`rank * micro_steps + m`. So a resumed run continues with exactly the batches it would have seen,
each rank reads distinct data, and N ranks x k micro-steps see the same global batch as one process
with N*k micro-steps.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
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

    def host_batch(self, step: int, slot: int, pin: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) int64 on the host, in pinned memory when `pin` (for an asynchronous copy)."""
        w = torch.from_numpy(self.dataset.windows_at(self.positions(step, slot)))
        x, y = w[:, :-1].contiguous(), w[:, 1:].contiguous()
        if pin:
            x, y = x.pin_memory(), y.pin_memory()
        return x, y

    def batch(self, step: int, slot: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        return to_device(self.host_batch(step, slot, pin=device.type == "cuda"), device)

    def state(self, step: int) -> dict[str, int]:
        return {"seed": self.seed, "step": step, "slots": self.slots, "batch_size": self.batch_size}


def to_device(batch: tuple[torch.Tensor, torch.Tensor], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    if device.type == "cpu":
        return batch
    # From pinned memory the copy is asynchronous: it overlaps with the GPU's work, no host sync.
    return batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)


class Prefetcher:
    """Builds the batches of the coming (step, slot)s in a background thread, `depth` ahead.

    The batches are the sampler's (a pure function of step and slot), so the numbers are the same
    as without it; the main thread only takes a ready batch off the queue and starts its copy to
    the device. `wait_s` adds up the time the main thread waited for a batch (a loader stall).
    """

    def __init__(self, sampler: BatchSampler, keys: Iterator[tuple[int, int]], device: torch.device,
                 depth: int = 4) -> None:
        self.sampler = sampler
        self.device = device
        self.pin = device.type == "cuda"
        self.wait_s = 0.0
        self._keys = keys
        self._queue: queue.Queue[tuple[tuple[int, int], object]] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="batch-prefetch", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        for key in self._keys:
            try:
                item: object = self.sampler.host_batch(*key, pin=self.pin)
            except Exception as e:  # handed to the consumer, which raises it
                item = e
            while not self._stop.is_set():
                try:
                    self._queue.put((key, item), timeout=0.1)
                    break
                except queue.Full:
                    continue
            if self._stop.is_set() or isinstance(item, Exception):
                return

    def get(self, step: int, slot: int) -> tuple[torch.Tensor, torch.Tensor]:
        t0 = time.perf_counter()
        key, item = self._queue.get()
        self.wait_s += time.perf_counter() - t0
        if isinstance(item, Exception):
            raise item
        if key != (step, slot):
            raise RuntimeError(f"prefetcher out of order: asked for {(step, slot)}, has {key}")
        return to_device(item, self.device)  # type: ignore[arg-type]

    def close(self) -> None:
        self._stop.set()
        while True:  # unblock a producer waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=5)


def sequential_windows(tokens: int, seq_len: int, rank: int, world_size: int) -> list[tuple[int, int]]:
    """(start, length) of the windows rank `rank` evaluates so that the ranks together predict
    tokens 1..`tokens` of a stream (inputs 0..tokens-1) in order, each exactly once: windows of
    seq_len from 0, the last one shorter when seq_len does not divide `tokens`, dealt round-robin."""
    starts = range(0, tokens, seq_len)
    return [(s, min(seq_len, tokens - s)) for i, s in enumerate(starts) if i % world_size == rank]


class TokenStream:
    """Shards read as one stream of tokens, in order (the final evaluation's val set)."""

    def __init__(self, paths: list[Path]) -> None:
        if not paths:
            raise FileNotFoundError("no token shards given")
        self.shards = [open_shard(p) for p in paths]
        self.cum = np.cumsum([0] + [len(s) for s in self.shards])

    def __len__(self) -> int:
        return int(self.cum[-1])

    def read(self, start: int, n: int) -> np.ndarray:
        """Tokens [start, start + n) as int64, across shard boundaries."""
        parts, pos, end = [], start, start + n
        while pos < end:
            i = int(np.searchsorted(self.cum, pos, side="right")) - 1
            take = min(end, int(self.cum[i + 1])) - pos
            parts.append(np.asarray(self.shards[i][pos - self.cum[i] : pos - self.cum[i] + take], dtype=np.int64))
            pos += take
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)

    def batches(self, windows: list[tuple[int, int]], batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(x, y) of up to batch_size windows of one length each: y is x shifted by one token."""
        for length in sorted({n for _, n in windows}, reverse=True):
            same = [s for s, n in windows if n == length]
            for i in range(0, len(same), batch_size):
                w = torch.from_numpy(np.stack([self.read(s, length + 1) for s in same[i : i + batch_size]]))
                yield w[:, :-1].contiguous(), w[:, 1:].contiguous()
