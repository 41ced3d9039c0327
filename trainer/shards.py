"""llm.c token shards: a 256 x int32 header (magic 20240520, version 1, token count) then uint16 tokens.

The same format llm.c's and modded-nanogpt's fineweb.py write, so their shards load here too.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from trainer.manifest import atomic_write

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4


class ShardError(ValueError):
    """A file that is not a valid llm.c token shard."""


def write_shard(path: str | os.PathLike[str], tokens: Sequence[int] | np.ndarray) -> None:
    arr = np.asarray(tokens)
    if arr.size and (arr.min() < 0 or arr.max() >= 2**16):
        raise ShardError(f"{path}: token ids must fit in uint16 (0..65535)")
    header = np.zeros(HEADER_INTS, dtype=np.int32)
    header[:3] = (MAGIC, VERSION, arr.size)
    data = arr.astype(np.uint16)

    def writer(f) -> None:  # type: ignore[no-untyped-def]
        f.write(header.tobytes())
        f.write(data.tobytes())

    atomic_write(path, writer)


def read_header(path: str | os.PathLike[str]) -> int:
    """Token count of a shard, after checking magic, version and file size."""
    p = Path(path)
    header = np.fromfile(p, dtype=np.int32, count=HEADER_INTS)
    if header.size < HEADER_INTS or header[0] != MAGIC:
        raise ShardError(f"{p}: not an llm.c token shard (bad magic)")
    if header[1] != VERSION:
        raise ShardError(f"{p}: unsupported shard version {int(header[1])}")
    ntok = int(header[2])
    expected = HEADER_BYTES + 2 * ntok
    if p.stat().st_size != expected:
        raise ShardError(f"{p}: {p.stat().st_size} bytes, header says {expected} (truncated?)")
    return ntok


def open_shard(path: str | os.PathLike[str]) -> np.memmap:
    """The shard's tokens as a read-only uint16 memmap (nothing is read into memory)."""
    ntok = read_header(path)
    return np.memmap(path, dtype=np.uint16, mode="r", offset=HEADER_BYTES, shape=(ntok,))
