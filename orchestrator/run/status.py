"""What a run reports while it goes: the live line the terminal and `gpurun watch` draw."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class LiveStatus:
    phase: str
    step: int | None = None
    loss: float | None = None
    tokens_per_s: float | None = None
    spent_usd: float = 0.0
    max_usd: float = 0.0
    seconds_to_stop: float | None = None
    message: str = ""
    data: str = ""  # the data phase's progress, "tokenize 42% 12.3M tokens"
    sync: str = ""  # the link home, measured: "sync 1.4 MB/s, final pull ~23 s"


Reporter = Callable[[LiveStatus], None]


def quiet(_: LiveStatus) -> None:
    """The reporter of a run nobody watches (a detached guard, `gpurun teardown`)."""
