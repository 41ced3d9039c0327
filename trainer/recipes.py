"""Recipes: named, packaged jobs, each a trainer config plus the data it trains on and how fast it runs.

`gpurun launch --recipe NAME` runs one (its `config` is the base of the uploaded config file, under
`--config FILE` and `--set`); `gpurun recipes` lists them with what each costs on each offer.
Torch-free: the controller imports this to plan a launch. Throughputs are tokens per second PER GPU
of a class (`gpu_class` maps a provider's GPU name to one); each figure says where it comes from,
and the ones without a measurement are marked as estimates.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from trainer.config import TrainConfig
from trainer.contract import FINEWEB_VAL, FINEWEB_VAL_TOKENS
from trainer.presets import PRESETS

#: The GPU classes throughputs are given for ("cpu": a run without CUDA).
GPU_CLASSES = ("cpu", "T4", "A10G", "L4", "RTX 4090", "A100", "H100")
#: Data sources `python -m trainer.data prepare --source` knows ("builtin": the trainer makes it itself).
SOURCES = ("builtin", "shakespeare", "tinystories", "fineweb-edu", "fineweb10B")

# One word of a GPU name -> its class. Names come as "NVIDIA A100-SXM4-80GB", "H100 SXM", "1x A100
# SXM4 80GB", "NVIDIA GeForce RTX 4090", "Tesla T4", "NVIDIA L4": matched by whole words, so that an
# L40S is not an L4 and an A100 is not an A10G.
_CLASS_WORDS = {"H100": "H100", "A100": "A100", "4090": "RTX 4090", "A10G": "A10G", "L4": "L4", "T4": "T4",
                "CPU": "cpu"}


def gpu_class(gpu_name: str) -> str | None:
    """The class of a GPU name (see GPU_CLASSES), None when it is none of them (then: no estimate)."""
    for word in re.split(r"[^A-Za-z0-9]+", gpu_name.upper()):
        if word in _CLASS_WORDS:
            return _CLASS_WORDS[word]
    return None


@dataclass(frozen=True)
class DataSpec:
    source: str  # one of SOURCES
    tokenizer: str  # char | gpt2
    max_tokens: int | None  # None: the whole source
    approx_download_bytes: int
    # Seconds to download + tokenize on the instance, by GPU class (a proxy for the box: 8-GPU
    # machines have many cores); "default" for any other. Estimates unless a comment says measured.
    approx_prepare_s: dict[str, float] = field(default_factory=dict)

    @property
    def prepared_on_instance(self) -> bool:
        """False for "builtin": the trainer builds that corpus itself, there is no data phase."""
        return self.source != "builtin"

    def prepare_s(self, cls: str | None) -> float:
        table = self.approx_prepare_s
        return float(table.get(cls or "", table.get("default", 0.0)))

    @property
    def dir_name(self) -> str:
        """Where on the instance (under the run's data/) it is prepared: one dir per argument set."""
        return f"{self.source}-{self.tokenizer}" + (f"-{self.max_tokens}" if self.max_tokens else "")

    def prepare_args(self, out_dir: str, from_dir: str | None = None) -> list[str]:
        """The arguments of `python -m trainer.data prepare` (contract 2) that make this data in out_dir."""
        args = ["prepare", "--source", self.source, "--tokenizer", self.tokenizer, "--out", out_dir]
        if self.max_tokens:
            args += ["--max-tokens", str(self.max_tokens)]
        if from_dir:
            args += ["--from", from_dir]
        return args

    def packages(self) -> list[str]:
        """Optional Python packages the instance needs to prepare and train on it (pip names)."""
        return ["tiktoken"] if self.tokenizer == "gpt2" else []

    def describe(self) -> str:
        size = f", {human(self.max_tokens)} tokens" if self.max_tokens else ""
        tok = "GPT-2 BPE" if self.tokenizer == "gpt2" else "char-level"
        if not self.prepared_on_instance:
            return f"built-in offline corpus, {tok} (made by the trainer)"
        return f"{self.source}, {tok}{size}, ~{human_bytes(self.approx_download_bytes)} download"


@dataclass(frozen=True)
class QualityTarget:
    """The quality a recipe aims at, measured the standard way, and what its source says it takes."""
    split: str  # the final evaluation's set (trainer.contract.FINEWEB_VAL ...)
    val_loss: float  # the target, e.g. 3.28: GPT-2 124M's FineWeb val loss (the speedrun's bar)
    tokens: int  # training tokens that reach it, by the source
    source: str  # where that figure comes from


@dataclass(frozen=True)
class Recipe:
    name: str
    summary: str
    config: dict[str, Any]  # trainer config keys (trainer/README.md)
    data: DataSpec
    tokens_per_s: dict[str, float]  # per GPU, by GPU class
    sources: str = ""  # where the throughput figures come from
    quality: QualityTarget | None = None  # None: the recipe names no standard quality to reach

    @property
    def tokens_per_step(self) -> int:
        """Tokens per optimizer step on one GPU (batch x seq x micro-steps; see tokens_per_step())."""
        return tokens_per_step(self.config, world_size=1)

    @property
    def max_iters(self) -> int:
        return int(self.config.get("max_iters", TrainConfig.max_iters))

    def throughput(self, cls: str | None, gpus: int = 1) -> float | None:
        """Expected training tokens/s on `gpus` GPUs of class `cls`; None when there is no estimate."""
        per_gpu = self.tokens_per_s.get(cls or "")
        if per_gpu is None:
            return None
        # DDP over GPUs of one box scales close to linearly for these models (llm.c, build-nanogpt).
        return per_gpu * (max(1, gpus) if cls != "cpu" else 1)


def tokens_per_step(config: dict[str, Any], world_size: int = 1) -> int:
    """batch_size x seq_len x micro-steps of a trainer config: grad_accum is summed over the ranks
    (trainer/config.py); without it each of `world_size` ranks does one micro-step."""
    batch = int(config.get("batch_size") or TrainConfig.batch_size)
    seq = config.get("seq_len") or config.get("block_size") or PRESETS[config.get("model") or TrainConfig.model].get(
        "block_size", 1024)
    micro = config.get("grad_accum") or max(1, world_size)
    return batch * int(seq) * int(micro)


def human(n: float) -> str:
    """12_345_678 -> "12.3M"; 10_000_000_000 -> "10.0B"."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:.0f}"


def human_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


# modded-nanogpt record #8 (records/track_1_short/2024-11-03_UntieEmbed, its log): 4578 steps of
# 8 x 64 x 1024 = 524,288 tokens reach FineWeb val 3.2762 in 648 s on 8xH100. Our switches are its
# architecture plus record #9's logit softcap, without #9's value/embedding skip connections.
_SPEEDRUN_STEPS = 4578
_SPEEDRUN_TOKENS = _SPEEDRUN_STEPS * 524_288  # 2,400,190,464

# Tiny Shakespeare: karpathy/char-rnn's input.txt, 1,115,394 bytes; nanoGPT's data/shakespeare
# prepare.py: 301,966 train + 36,059 val GPT-2 tokens.
_SHAKESPEARE_BYTES = 1_115_394

RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe(
        name="smoke",
        summary="the CPU smoke run: tiny preset on the built-in corpus (local's default without a GPU)",
        config={},  # the trainer's own defaults are this run (trainer/configs/tiny.yaml)
        data=DataSpec("builtin", "char", None, 0, {"default": 0.0}),
        # cpu measured: `python -m trainer.train --max-iters 100` on a 2-core shared box logs 6.5k-8.7k tok/s.
        tokens_per_s={"cpu": 8_000, "T4": 150_000, "A10G": 200_000, "L4": 200_000, "RTX 4090": 250_000,
                      "A100": 250_000, "H100": 300_000},
        sources="cpu measured (2 shared cores); GPU figures are estimates (a 0.1M-parameter model is launch-bound)",
    ),
    Recipe(
        name="lab",
        summary="the GPU lab: a mini GPT-2 (6 layers, 384 wide, GPT-2 BPE) on Tiny Shakespeare, minutes",
        config=dict(model="small", block_size=256, dropout=0.2, bias=False, batch_size=16, max_iters=750,
                    lr=1e-3, min_lr=1e-4, warmup_iters=50, lr_decay_iters=750, beta2=0.99, weight_decay=0.1,
                    grad_clip=1.0, eval_interval=150, eval_iters=50, log_interval=10, ckpt_interval=250,
                    ckpt_interval_s=60, keep_checkpoints=2, compile=False, sample_tokens=300),
        data=DataSpec("shakespeare", "gpt2", None, _SHAKESPEARE_BYTES, {"default": 15.0}),
        # ~30M parameters (19M of them the 50k-token embedding): ~0.2 GFLOP/token fwd+bwd.
        # cpu measured: ~200 tok/s on 2 shared cores (this config, 6 steps); more cores run faster.
        tokens_per_s={"cpu": 200, "T4": 60_000, "A10G": 120_000, "L4": 100_000, "RTX 4090": 250_000,
                      "A100": 300_000, "H100": 450_000},
        sources="cpu measured (2 shared cores); GPU figures are estimates, scaled from nanoGPT shakespeare-char's ~455k tok/s on one A100 by FLOPs per token",
    ),
    Recipe(
        name="shakespeare-char",
        summary="nanoGPT's config/train_shakespeare_char.py: 6x6x384 char-level GPT, 5000 iters (val ~1.47)",
        config=dict(model="small", block_size=256, dropout=0.2, bias=False, batch_size=64, max_iters=5000,
                    lr=1e-3, min_lr=1e-4, warmup_iters=100, lr_decay_iters=5000, beta2=0.99, weight_decay=0.1,
                    grad_clip=1.0, eval_interval=250, eval_iters=200, log_interval=10, ckpt_interval=1000,
                    ckpt_interval_s=120, keep_checkpoints=2, compile=False, sample_tokens=500),
        data=DataSpec("shakespeare", "char", None, _SHAKESPEARE_BYTES, {"default": 10.0}),
        # nanoGPT README: "On one A100 GPU this training run takes about 3 minutes" = 5000 x 64 x 256
        # tokens / 180 s ~ 455k tok/s (with torch.compile; this recipe does not compile: ~400k).
        # cpu measured: ~500 tok/s on 2 shared cores (this config, 4 steps).
        tokens_per_s={"cpu": 500, "T4": 80_000, "A10G": 150_000, "L4": 130_000, "RTX 4090": 300_000,
                      "A100": 400_000, "H100": 600_000},
        sources="A100 from nanoGPT's README (~3 min for 5000 iters); cpu measured (2 shared cores); the rest estimates",
    ),
    Recipe(
        name="tinystories",
        summary="a small GPT (8 layers, 512 wide, T=512, GPT-2 BPE) on TinyStories, ~390M tokens",
        config=dict(model="small", n_layer=8, n_head=8, n_embd=512, block_size=512, dropout=0.0, bias=False,
                    batch_size=16, grad_accum=8, max_iters=6000, lr=1e-3, min_lr=1e-4, warmup_iters=200,
                    lr_decay_iters=6000, beta2=0.95, weight_decay=0.1, grad_clip=1.0, eval_interval=500,
                    eval_iters=50, log_interval=20, ckpt_interval=1000, ckpt_interval_s=600,
                    keep_checkpoints=2, sample_tokens=300),
        # roneneldan/TinyStories' TinyStoriesV2-GPT4-{train,valid}.txt (trainer/sources.py): ~2.2 GB of
        # text, tokenized on all cores; the times are estimates.
        data=DataSpec("tinystories", "gpt2", None, 2_250_000_000,
                      {"default": 900.0, "A100": 400.0, "H100": 400.0}),
        # ~51M parameters, ~0.33 GFLOP/token: ~35% MFU without compile (estimates).
        tokens_per_s={"cpu": 120, "T4": 30_000, "A10G": 70_000, "L4": 60_000, "RTX 4090": 150_000,
                      "A100": 300_000, "H100": 550_000},
        sources="estimates from FLOPs per token at ~35% MFU",
    ),
    Recipe(
        name="gpt2-124m",
        summary="GPT-2 124M on FineWeb-edu, 10B tokens (llm.c / build-nanogpt), ~0.5M tokens/step",
        # trainer/configs/gpt2.yaml: 16 x 1024 x 32 micro-steps = 524,288 tokens/step on any number
        # of GPUs (grad_accum is split over the ranks); 19,073 steps = 10B tokens; warmup 700.
        config=dict(model="gpt2", dropout=0.0, bias=True, batch_size=16, seq_len=1024, grad_accum=32,
                    max_iters=19073, lr=6e-4, min_lr=6e-5, warmup_iters=700, weight_decay=0.1, beta1=0.9,
                    beta2=0.95, grad_clip=1.0, eval_interval=250, eval_iters=20, log_interval=10,
                    ckpt_interval=1000, ckpt_interval_s=900, keep_checkpoints=2, compile=True,
                    sample_tokens=200),
        # kjj0/finewebedu10B-gpt2 (trainer/sources.py): FineWeb-edu sample-10BT already in GPT-2 llm.c
        # shards, 100 files of 100M uint16 tokens = ~20 GB to download, nothing to tokenize. Times are
        # estimates (~25 MB/s; the 8-GPU boxes' links ~50 MB/s); the parquet fallback, tokenized on
        # the instance, takes about an hour on many cores.
        data=DataSpec("fineweb-edu", "gpt2", 10_000_000_000, 20_000_000_000,
                      {"default": 800.0, "A100": 400.0, "H100": 400.0}),
        # cpu: lab's measured 200 tok/s scaled by FLOPs per token (0.2 -> 0.87 GFLOP): an estimate.
        tokens_per_s={"cpu": 50, "T4": 12_000, "A10G": 35_000, "L4": 30_000, "RTX 4090": 90_000,
                      "A100": 190_000, "H100": 400_000},
        sources=("H100: modded-nanogpt's record table, llm.c baseline 10B tokens in 45 min on 8xH100 (~460k/GPU, "
                 "CUDA; PyTorch + compile ~400k, estimate); A100: llm.c discussion #481, 10B tokens in ~90 min "
                 "on 8xA100 80GB (~230k/GPU; PyTorch ~190k, estimate); the other classes are estimates"),
    ),
    Recipe(
        name="gpt2-speedrun",
        summary="GPT-2 124M to FineWeb val 3.28 the speedrun's way: Muon, rotary, QK-norm, ReLU², untied head, ~2.4B tokens",
        # Record #8's run on our trainer: 16 x 1024 x 32 micro-steps = its 524,288 tokens a step on any
        # number of GPUs; 6 heads of 128 ("head dim 128 suggested by @Grad62304977"); Adam wte 0.3,
        # head 0.002, Muon 0.02 momentum 0.95, betas (0.9, 0.95), no weight decay, no clipping, no
        # warmup, a linear warmdown to 0 over the last 1308 / 4578 = 28.6 % of the steps. The
        # warmdown ends at the budget's deadline stop when the launch has one (wsd by training time).
        config=dict(model="gpt2", n_head=6, dropout=0.0, bias=False, rotary=True, qk_norm=True, relu2=True,
                    zero_init=True, rmsnorm=True, untied_head=True, logit_softcap=30.0, optimizer="muon",
                    lr=0.002, embed_lr=0.3, muon_lr=0.02, muon_momentum=0.95, beta1=0.9, beta2=0.95,
                    weight_decay=0.0, grad_clip=0.0, batch_size=16, seq_len=1024, grad_accum=32,
                    max_iters=_SPEEDRUN_STEPS, lr_schedule="wsd", lr_decay_shape="linear", lr_decay_frac=0.286,
                    warmup_iters=0, min_lr=0.0, eval_interval=250, eval_iters=20,
                    final_val_tokens=FINEWEB_VAL_TOKENS, log_interval=10, ckpt_interval=1000,
                    ckpt_interval_s=900, keep_checkpoints=2, compile=True, sample_tokens=200),
        # kjj0/fineweb10B-gpt2 (trainer/sources.py): twice the tokens the run draws, so the random
        # windows repeat less (one pass in order, as the records read, is a next step); + the val shard's
        # first 10,485,761. ~10 GB, nothing to tokenize; times are estimates (~25 MB/s, 8-GPU boxes ~50).
        data=DataSpec("fineweb10B", "gpt2", 5_000_000_000, 10_021_000_000,
                      {"default": 400.0, "A100": 200.0, "H100": 200.0}),
        # The FLOPs of gpt2-124m's model (the head is as large tied or not; ReLU² is cheaper than GELU;
        # Muon's Newton-Schulz is <1 % of a 524k-token step): the same figures, estimates.
        tokens_per_s={"cpu": 50, "T4": 12_000, "A10G": 35_000, "L4": 30_000, "RTX 4090": 90_000,
                      "A100": 190_000, "H100": 400_000},
        sources=("estimates, as gpt2-124m's (same FLOPs per token); record #8's own compiled code ran "
                 "4578 x 524,288 tokens in 648 s on 8xH100 (~463k tok/s per GPU)"),
        quality=QualityTarget(split=FINEWEB_VAL, val_loss=3.28, tokens=_SPEEDRUN_TOKENS,
                              source="modded-nanogpt record #8 (2024-11-03_UntieEmbed): 4578 steps x 524,288 "
                                     "tokens, FineWeb val 3.2762 over its first 10,485,760 tokens"),
    ),
)}


class UnknownRecipe(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def get(name: str) -> Recipe:
    """The recipe called `name`; UnknownRecipe (one line naming every recipe) for anything else."""
    try:
        return RECIPES[name]
    except KeyError:
        raise UnknownRecipe(f"unknown recipe {name!r}: choose from {', '.join(RECIPES)}") from None
