"""What the money buys in quality: a recipe's target (a validation loss measured the standard way, and
the training tokens its source needs to reach it), the plan's line about it, and the names of the
evaluation sets the evidence card and the plan show.

The target is the recipe's (`trainer.recipes.QualityTarget`); the throughput is the recipe's figure
for the offer's GPU class (plan/forecast.py). Nothing here is measured: the evidence card shows what
the run's own final evaluation (`trainer.contract.RECORD_FINAL_VAL`) reached.
"""

from __future__ import annotations

from dataclasses import dataclass

from trainer import contract
from trainer.recipes import QualityTarget, human

# The final evaluation's set -> how the plan and the card name it. One place: the card's row
# "FineWeb val (10.5M tokens)" and the plan's "FineWeb val 3.28" both read it.
SPLIT_NAMES: dict[str, str] = {contract.FINEWEB_VAL: "FineWeb val"}


def split_name(split: str) -> str:
    """The set's name in words ("FineWeb val"); an unknown split shows as the trainer wrote it."""
    return SPLIT_NAMES.get(split, split)


def split_label(split: str, tokens: int | None = None) -> str:
    """"FineWeb val (10.5M tokens)": the set and how many tokens the evaluation read, each once."""
    return f"{split_name(split)} ({human(tokens)} tokens)" if tokens else split_name(split)


def target_words(target: QualityTarget) -> str:
    """"FineWeb val 3.28": the loss the recipe aims at, on its set."""
    return f"{split_name(target.split)} {target.val_loss:g}"


@dataclass(frozen=True)
class QualityBuy:
    """Whether what a cap trains reaches the recipe's target, on one offer."""

    target: QualityTarget
    tokens_per_s: float  # all GPUs together (the recipe's figure for the offer's GPU class)
    bought_tokens: float  # what the run trains: the cap's training time, max_iters at most
    needed_usd: float  # what training the target's tokens costs at this price (data phase included)
    max_iters_tokens: float  # where the job stops on its own
    device: str = "GPU"  # what the throughput is of: "GPU", or "CPU" for a machine without one

    @property
    def enough(self) -> bool:
        return self.bought_tokens >= self.target.tokens

    def words(self) -> str:
        verdict = "enough" if self.enough else "not enough"
        why = ""
        if not self.enough and self.max_iters_tokens < self.target.tokens:
            why = f"; max_iters stops the job at {human(self.max_iters_tokens)} tokens"
        return (f"at ~{self.tokens_per_s:,.0f} tok/s on this {self.device} the cap buys {human(self.bought_tokens)} tokens:"
                f" {verdict} for {target_words(self.target)} (needs {human(self.target.tokens)} tokens"
                f" = ~{self.needed_hours:,.1f} h ~ {self.needed_usd:.2f} USD at this price{why}; {self.target.source})")

    @property
    def needed_hours(self) -> float:
        """Training hours the target's tokens take at this throughput (a price of 0 still takes time)."""
        return self.target.tokens / self.tokens_per_s / 3600.0 if self.tokens_per_s > 0 else float("inf")


def no_estimate_words(target: QualityTarget, gpu: str) -> str:
    """The quality row where the recipe has no throughput figure for the offer's GPU."""
    return (f"no tok/s figure for {gpu!r}: whether the cap reaches {target_words(target)} is not known"
            f" (it needs {human(target.tokens)} tokens; {target.source})")


def tokens_per_usd(tokens_per_s: float, usd_per_hour: float) -> float:
    """Training tokens one dollar buys at this throughput and price (infinite at a price of 0)."""
    return float("inf") if usd_per_hour <= 0 else tokens_per_s * 3600.0 / usd_per_hour
