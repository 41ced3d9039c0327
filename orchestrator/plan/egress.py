"""What a run is expected to pull home, for the egress reserve (docs/BUDGET.md, "Egress").

A provider that bills data transfer out (AWS: per GB) bills every byte gpurun pulls home: the
periodic syncs and the final one bring `out/` (the checkpoints, each new one once: rsync moves only
what changed) and the logs. The plan estimates those bytes from the model the job trains (its
parameter count from the trainer config, at BYTES_PER_PARAM for a checkpoint that carries AdamW's
state), the number of pulls (the training time over the sync interval, plus the final one) and the
checkpoints the trainer writes in that time; budget.allowance_for keeps their price out of the cap.
An over-estimate only buys less runtime; the meter (run/teardown.py) adds what was really pulled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from orchestrator.plan.forecast import Forecast
from orchestrator.plan.job import effective_config, has_gpu, recipe_for
from orchestrator.plan.options import LaunchOptions
from providers.base import Offer
from trainer.config import TrainConfig
from trainer.presets import PRESETS
from trainer.recipes import human_bytes

# A checkpoint holds the fp32 weights and AdamW's two fp32 moments (12 bytes a parameter), plus the
# scaler, the RNG state and torch's framing: 16 a parameter is an upper bound.
BYTES_PER_PARAM = 16
# What one pull brings besides checkpoints: the logs (train.log, job.log, metrics.jsonl, watchdog.log,
# re-sent whole when they grew) and the sample. An upper bound for the bundled trainer's logs.
LOG_BYTES_PER_PULL = 2_000_000
# The vocabulary when the config does not name one: GPT-2's BPE padded (the largest the trainer's
# tokenizers make); the built-in corpus's char tokenizer has well under this many symbols.
GPT2_VOCAB = 50304
CHAR_VOCAB = 1024


def parameters(cfg: TrainConfig) -> int:
    """The model's parameter count (GPT-2: tied embeddings, pre-LayerNorm blocks), from the config alone."""
    builtin_chars = cfg.tokenizer == "char" and not cfg.data_dir and not cfg.text_file
    model = cfg.model_config(CHAR_VOCAB if builtin_chars else GPT2_VOCAB) if cfg.model in PRESETS else None
    if model is None:
        return 0
    d, b = model.n_embd, 1 if model.bias else 0
    block = 12 * d * d + b * 9 * d + (2 + 2 * b) * d  # attention + MLP (+ their biases), two LayerNorms
    return model.vocab_size * d + model.block_size * d + model.n_layer * block + (1 + b) * d


@dataclass(frozen=True)
class Pulls:
    """The bytes a run is expected to pull home, and how they were counted."""

    bytes: float
    pulls: int  # syncs in the training time, the final one included
    checkpoints: int  # checkpoints expected to come home
    checkpoint_bytes: float  # one checkpoint (0: a command, whose outputs are not known)

    def words(self) -> str:
        logs = f"{self.pulls} pulls of the logs (~{human_bytes(LOG_BYTES_PER_PULL)} each)"
        if not self.checkpoint_bytes:
            return f"{logs}; a command's own outputs in out/ are not known: only its logs are reserved"
        return f"{self.checkpoints} checkpoint(s) of ~{human_bytes(self.checkpoint_bytes)} + {logs}"


def expected_pulls(options: LaunchOptions, offer: Offer, train_s: float, sync_interval_s: float) -> Pulls:
    """What the run pulls home in `train_s` of training, syncing every `sync_interval_s` seconds."""
    interval = max(1.0, float(options.sync_interval_s or sync_interval_s))
    pulls = math.floor(max(0.0, train_s) / interval) + 1  # the final pull too
    recipe, default = recipe_for(options, has_gpu(offer))
    if options.command:
        return Pulls(pulls * LOG_BYTES_PER_PULL, pulls, 0, 0.0)
    cfg = effective_config(options, recipe)
    ckpt = float(parameters(cfg) * BYTES_PER_PARAM)
    forecast = Forecast.of(options, recipe, default, offer) if recipe else None
    if forecast is not None and forecast.tokens_per_s:  # the job ends at max_iters: no pull after that
        train_s = min(train_s, forecast.max_iters * forecast.tokens_per_step / forecast.tokens_per_s)
        pulls = min(pulls, math.floor(max(0.0, train_s) / interval) + 1)
    written = _checkpoints_written(cfg, train_s, forecast)
    checkpoints = pulls if written is None else min(pulls, written)
    return Pulls(checkpoints * ckpt + pulls * LOG_BYTES_PER_PULL, pulls, checkpoints, ckpt)


def _checkpoints_written(cfg: TrainConfig, train_s: float, forecast: Forecast | None) -> int | None:
    """How many checkpoints the trainer writes in `train_s` (the final one included); None: no bound
    (a step interval without a throughput figure)."""
    count = 1
    if cfg.ckpt_interval_s > 0:
        count += math.floor(train_s / cfg.ckpt_interval_s)
    if cfg.ckpt_interval > 0:
        if forecast is None or not forecast.tokens_per_s:
            return None
        steps = min(forecast.max_iters, train_s * forecast.tokens_per_s / forecast.tokens_per_step)
        count += math.floor(steps / cfg.ckpt_interval)
    return count


def egress_words(offer: Offer, pulls: Pulls | None, reserve_usd: float) -> str:
    """The plan's egress row: free (with its source), or the expected pulls and what is reserved for them."""
    source = offer.egress_source or "no egress price recorded for this offer"
    if not offer.egress_usd_per_gb:
        return f"free ({source})"
    rate = f"{offer.egress_usd_per_gb:.4f} USD/GB ({source})"
    if pulls is None:
        return f"{rate}; metered on what is pulled"
    return (f"{rate}: ~{human_bytes(pulls.bytes)} expected ({pulls.words()}) ~ {reserve_usd:.4f} USD, reserved out"
            f" of the budget (the training time is what is left); every byte pulled is metered into the cost")
