"""Train GPT-2: `python -m trainer.train [--config FILE] [--flags]`, or the same under torchrun for DDP.

With no data flags it prepares the built-in offline corpus (char-level) into <out-dir>/data and
trains the tiny preset, checkpointing every few seconds. Outputs follow the trainer contract
(trainer/contract.py; docs/ARCHITECTURE.md): train.log, metrics.jsonl, hardware.json, checkpoints/ +
MANIFEST.json, sample.txt.
"""

from __future__ import annotations

import atexit
import gc
import itertools
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from types import FrameType
from typing import Any, NamedTuple

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from trainer import checkpoint, contract, cpu_speed, data, distributed
from trainer.batches import BatchSampler, Prefetcher, TokenDataset, TokenStream, sequential_windows
from trainer.checkpoint import CheckpointError
from trainer.config import ConfigError, TrainConfig, load_config
from trainer.hardware import UNKNOWN_PEAK, device_name, hardware_record
from trainer.manifest import atomic_write_bytes, atomic_write_json
from trainer.model import GPT
from trainer.muon import AnyOptimizer, configure_muon
from trainer.presets import GPTConfig
from trainer.runlog import RunLog
from trainer.schedule import Schedule, ScheduleState, cosine_lr, ema, skip_eval, training_seconds_left
from trainer.shards import ShardError
from trainer.tokenizer import from_meta

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class StopRequest:
    """Turns SIGTERM / SIGUSR1 / SIGINT into a flag the loop polls; a second SIGINT interrupts."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def install(self) -> None:
        for s in STOP_SIGNALS:
            self._previous[s] = signal.signal(s, self._handle)

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()


def lr_at(cfg: TrainConfig, it: int) -> float:
    """The cosine schedule's LR at step `it` (bench/trainer_bench.py times steps with it)."""
    return cosine_lr(it, cfg.lr, cfg.min_lr, cfg.warmup_iters, cfg.lr_decay_iters or cfg.max_iters)


class Agreed(NamedTuple):
    """What every rank decided together after a step (see Trainer.agree_stop)."""

    stop: bool
    reason: str
    due: bool  # checkpoint now
    skip_eval: bool  # skip this step's periodic eval: the deadline stop's own eval comes within an interval
    dt: float  # the step's training seconds (the slowest rank's)
    left_s: float | None  # training seconds projected to remain before the deadline stop


def cpu_threads(num_params: int, world_size: int) -> int:
    """Torch CPU threads when not configured: one for small models, else a share of the cores.

    Tiny models gain nothing from more threads, and OpenMP threads on a busy machine spin-wait each
    other into a crawl (a 0.1M model ran 20x slower with 2 threads beside other jobs on 2 cores).
    """
    if num_params < 2_000_000:
        return 1
    return max(1, (os.cpu_count() or 1) // world_size)


def native_bf16() -> bool:
    """bf16 in the GPU's tensor cores. T4 and V100 report is_bf16_supported() True through emulation
    (PyTorch PR #148322): slow and no tensor cores, so those train in fp16 with a GradScaler."""
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # a torch before the flag: its answer did not count emulation
        return bool(torch.cuda.is_bf16_supported())


def resolve_dtype(requested: str, device: torch.device) -> torch.dtype:
    if requested == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if native_bf16() else torch.float16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[requested]


def load_scaler_state(scaler: torch.amp.GradScaler, state: dict[str, Any] | None) -> None:
    """A bf16 or CPU checkpoint saves a disabled scaler's state, {}: an fp16 run resuming from it
    starts its scaler afresh (an enabled scaler refuses an empty state)."""
    if state:
        scaler.load_state_dict(state)


def configure_cuda_math() -> None:
    """TF32 for float32 matmuls (what the legacy allow_tf32 flags did, through the current API)."""
    torch.set_float32_matmul_precision("high")


class Trainer:
    def __init__(self, cfg: TrainConfig, stop: StopRequest, clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.stop = stop
        self.clock = clock  # wall-clock seconds; tests inject one to make a time-driven schedule reproducible
        self.t_start = clock()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.dist = distributed.setup(cfg.device)
        self.device = self.dist.device
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {cfg.device!r} requested but CUDA is not available here")
        self.out = Path(cfg.out_dir)
        self.ckpt_dir = self.out / contract.CHECKPOINTS_DIR
        self.log = RunLog(self.out, self.dist.master, cfg.progress, cfg.max_iters)
        self.dtype = resolve_dtype(cfg.dtype, self.device)
        self.last_ckpt_step = -1
        self.last_ckpt_time = clock()
        self.paused_s = 0.0  # time spent in eval and checkpoints, kept out of tok/s and step time
        self.schedule = Schedule.from_config(cfg)
        self.sched = ScheduleState()  # saved in checkpoints: a resumed run continues the same LR curve
        self.last_eval: tuple[int, dict[str, float]] | None = None

    # ---- set-up -------------------------------------------------------------------------------

    def prepare_data(self) -> Path:
        cfg = self.cfg
        if cfg.data_dir:
            d = Path(cfg.data_dir)
            if not data.is_prepared(d):
                raise ConfigError(f"data_dir {d} has no *train*.bin and *val*.bin shards: run python -m trainer.data")
            return d
        d = self.out / "data"
        error: str | None = None
        # The first rank of each node prepares its node's copy: the nodes of a multi-node run share
        # no disk, and the preparation is deterministic, so every copy holds the same token ids.
        if self.dist.local_rank == 0 and not data.is_prepared(d):
            # Reuse what an earlier (resumed) run prepared, so its token ids stay the same.
            try:
                if cfg.text_file:
                    data.prepare_file(cfg.text_file, d, cfg.tokenizer, cfg.bpe_dir or None)
                else:
                    data.prepare_builtin(d, cfg.tokenizer, cfg.bpe_dir or None)
            except (OSError, ValueError, RuntimeError) as e:
                error = f"cannot prepare the data: {e}"
        # Every rank learns of a failure, rather than waiting for a node's first rank forever.
        error = distributed.first_error(self.dist, error)
        if error:
            raise ConfigError(error)
        return d

    def find_resume(self) -> Path | None:
        cfg = self.cfg
        if cfg.resume == "never" or cfg.init_from != "scratch":
            return None
        name: str | None = None
        error: str | None = None
        if self.dist.master:
            try:
                entry, bad = checkpoint.find_latest(self.ckpt_dir)
            except CheckpointError as e:
                entry, bad, error = None, {}, str(e)
            for file, reason in bad.items():
                self.log.line(f"checkpoint: rejected checkpoints/{file} ({reason})")
            if entry is not None:
                name = entry.file
            elif bad:
                error = f"no valid checkpoint in {self.ckpt_dir}: all are corrupted; remove them or pass --resume never"
            elif cfg.resume == "must" and error is None:
                error = f"resume=must but {self.ckpt_dir} has no checkpoint"
        name, error = distributed.broadcast_object(self.dist, (name, error))
        if error:
            raise CheckpointError(error)
        return self.ckpt_dir / name if name else None

    def build_model(self, meta: dict[str, Any], resume: dict[str, Any] | None) -> GPT:
        cfg = self.cfg
        data_vocab = int(meta["vocab_size"])
        torch.manual_seed(cfg.seed)  # identical init on every rank
        if resume is not None:
            model = GPT(GPTConfig.from_dict(resume["model_config"]))
            self.check_same_architecture(model.config)
            model.load_state_dict(resume["model"])
        elif cfg.init_from != "scratch":
            if meta.get("tokenizer") != "gpt2":
                raise ConfigError(f"init_from={cfg.init_from} needs GPT-2 BPE data, not {meta.get('tokenizer')}")
            model = GPT.from_pretrained(cfg.init_from, dropout=cfg.dropout or 0.0)
        else:
            # Pad GPT-2's 50257 to 50304 (a multiple of 64): same model, faster matmuls.
            vocab = data_vocab if meta.get("tokenizer") == "char" else 64 * math.ceil(data_vocab / 64)
            model = GPT(cfg.model_config(vocab_size=cfg.vocab_size or vocab))
        mc = model.config
        if data_vocab > mc.vocab_size:
            raise ConfigError(f"the data's vocabulary ({data_vocab}) is larger than the model's ({mc.vocab_size})")
        # Training length: seq_len, else block_size, else the model's context (resumed/pretrained).
        self.seq_len = cfg.seq_len or cfg.block_size or mc.block_size
        if self.seq_len > mc.block_size:
            raise ConfigError(
                f"seq_len/block_size ({self.seq_len}) is longer than the model's block_size ({mc.block_size})"
            )
        if self.device.type == "cpu":
            cpu_speed.use_cpu_speed_paths(model)  # oneDNN linears, sigmoid GELU, malloc (docs/PERFORMANCE.md)
        return model.to(self.device)

    def check_same_architecture(self, saved: GPTConfig) -> None:
        """Refuse to resume a checkpoint of a different model than the config asks for."""
        cfg = self.cfg
        wanted = cfg.model_config(vocab_size=saved.vocab_size).to_dict()
        diffs = [
            f"{k} {saved.to_dict()[k]} vs {wanted[k]}"
            for k in ("n_layer", "n_head", "n_embd", "bias", "rotary", "qk_norm", "relu2", "rmsnorm", "untied_head",
                      "logit_softcap")
            if saved.to_dict()[k] != wanted[k]
        ]
        if diffs:
            raise ConfigError(
                f"{self.ckpt_dir} holds a checkpoint of another model ({', '.join(diffs)}): "
                "use another --out-dir or --resume never"
            )

    # ---- the run ------------------------------------------------------------------------------

    def setup(self) -> tuple[torch.nn.Module, AnyOptimizer, torch.amp.GradScaler, int]:
        """Everything before the first step: data, model, optimizer, resume; (net, opt, scaler, step)."""
        cfg, d = self.cfg, self.dist
        if cfg.grad_accum is None:
            cfg.grad_accum = d.world_size
        cfg.check_world_size(d.world_size)
        data_dir = self.prepare_data()
        meta = data.read_meta(data_dir)
        resume_path = self.find_resume()
        resume = checkpoint.load_file(resume_path, "cpu", verified=True) if resume_path else None
        model = self.build_model(meta, resume)
        self.model = model
        self.meta = meta
        if self.device.type == "cpu" and not cfg.threads:
            torch.set_num_threads(cpu_threads(model.num_params(), d.world_size))

        if self.device.type == "cuda":
            configure_cuda_math()
        opt = self.build_optimizer(model)
        scaler = torch.amp.GradScaler("cuda", enabled=self.dtype == torch.float16)
        step = 0
        if resume is not None:
            self.load_optimizer(opt, resume)
            load_scaler_state(scaler, resume.get("scaler"))
            step = int(resume["step"])
            self.last_ckpt_step = step
            self.sched = ScheduleState.from_dict(resume.get("schedule"))
            rng = resume["rng"]
            if len(rng) == d.world_size:
                checkpoint.set_rng_state(rng[d.rank])
            else:
                torch.manual_seed(cfg.seed + 1 + d.rank + step)
        else:
            torch.manual_seed(cfg.seed + 1 + d.rank)  # distinct dropout noise per rank

        net: torch.nn.Module = torch.compile(model) if cfg.compile else model
        self.eval_net = net
        if d.enabled:
            net = DDP(net, device_ids=[self.device.index] if self.device.type == "cuda" else None)

        seq = self.seq_len
        train_ds = TokenDataset(data.shard_paths(data_dir, "train"), seq)
        val_ds = TokenDataset(data.shard_paths(data_dir, "val"), seq)
        self.val_stream = TokenStream(data.shard_paths(data_dir, "val"))
        if cfg.final_val_tokens >= len(self.val_stream):  # the last prediction needs one token more
            raise ConfigError(f"final_val_tokens ({cfg.final_val_tokens}) needs {cfg.final_val_tokens + 1} val tokens, "
                              f"the data has {len(self.val_stream)}: lower --final-val-tokens or prepare more val data")
        self.sampler = BatchSampler(train_ds, cfg.batch_size, cfg.grad_accum, cfg.seed)
        self.eval_samplers = {
            # Eval batch i is the same whatever the world size; rank r evaluates i = r, r + W, ...
            "train": BatchSampler(train_ds, cfg.batch_size, 1, cfg.seed + 1),
            "val": BatchSampler(val_ds, cfg.batch_size, 1, cfg.seed + 2),
        }
        self.autocast: AbstractContextManager[Any] = (
            torch.autocast(device_type=self.device.type, dtype=self.dtype)
            if self.dtype != torch.float32 else nullcontext()
        )

        self.write_header(data_dir, meta, resume_path, step)
        self.micro = cfg.grad_accum // d.world_size
        self.loader = Prefetcher(self.sampler, self.train_keys(step), self.device)
        return net, opt, scaler, step

    def load_optimizer(self, opt: AnyOptimizer, resume: dict[str, Any]) -> None:
        """The checkpoint's optimizer state, refused when another optimizer made it; the peak LRs
        (each group's lr_scale) stay this config's."""
        saved = resume.get("train_config", {}).get("optimizer", "adamw")
        if saved != self.cfg.optimizer:
            raise ConfigError(f"{self.ckpt_dir} holds a checkpoint trained with optimizer {saved}, "
                              f"not {self.cfg.optimizer}: use another --out-dir or --resume never")
        scales = [g.get("lr_scale") for g in opt.param_groups]
        opt.load_state_dict(resume["optimizer"])
        for group, scale in zip(opt.param_groups, scales, strict=True):
            if scale is not None:
                group["lr_scale"] = scale

    def build_optimizer(self, model: GPT) -> AnyOptimizer:
        cfg = self.cfg
        betas = (cfg.beta1, cfg.beta2)
        if cfg.optimizer == "muon":
            return configure_muon(model, cfg.lr, cfg.embed_lr if cfg.embed_lr is not None else cfg.lr, cfg.muon_lr,
                                  cfg.muon_momentum, cfg.weight_decay, betas, fused=True)
        return model.configure_optimizer(cfg.weight_decay, cfg.lr, betas, fused=True)

    def train_keys(self, step: int) -> Iterator[tuple[int, int]]:
        """The (step, slot) of every micro-batch this rank trains on, from `step` on."""
        rank, micro = self.dist.rank, self.micro
        for s in itertools.count(step):
            for m in range(micro):
                yield s, rank * micro + m

    def run(self) -> int:
        net, opt, scaler, step = self.setup()
        # What start-up made (torch, the model, the data) lives to the end: frozen, the loop's full
        # collections no longer walk it (0.4 -> 0.1 s of collections in a 300-step CPU run).
        gc.freeze()
        try:
            return self.loop(net, opt, scaler, step)
        finally:
            self.loader.close()

    def loop(self, net: torch.nn.Module, opt: AnyOptimizer, scaler: torch.amp.GradScaler, step: int) -> int:
        cfg, d = self.cfg, self.dist
        seq, micro = self.seq_len, self.micro
        tokens_per_step = cfg.batch_size * seq * cfg.grad_accum
        dev_name = device_name(self.device)
        t_loop = self.clock()
        t_log, steps_since_log = t_loop, 0
        t_prev = t_loop
        first_step = step + 1

        if step == 0 and cfg.eval_interval:
            self.evaluate(step)
            t_loop = t_log = t_prev = self.clock()
            self.paused_s = 0.0
        self.last_ckpt_time = t_loop  # the time-based interval counts training time, not start-up
        agreed = self.agree_stop(step, dt=None, due=False)
        lr = 0.0
        while not agreed.stop and step < cfg.max_iters:
            lr = self.schedule.lr_at(step, self.sched)
            loss_acc = self.train_step(net, opt, scaler, step, micro, lr)
            step += 1
            steps_since_log += 1

            now = self.clock()
            dt_step = now - t_prev - self.paused_s
            t_log += self.paused_s
            t_prev, self.paused_s = now, 0.0

            if step % cfg.log_interval == 0 or step == first_step or step == cfg.max_iters:
                loss_val = distributed.mean(d, loss_acc).item()  # the only host sync of a step
                now = self.clock()
                tok_s = tokens_per_step * steps_since_log / max(now - t_log, 1e-9)
                t_log, steps_since_log = now, 0
                self.log_step(step, loss_val, lr, tok_s, now - t_loop, dev_name)
            else:
                self.log.progress(step)

            eval_due = bool(cfg.eval_interval) and (step % cfg.eval_interval == 0 or step == cfg.max_iters)
            agreed = self.agree_stop(step, dt_step, self.checkpoint_due(step), eval_due)
            self.sched.observe(agreed.dt, agreed.left_s)
            if eval_due and not agreed.skip_eval and agreed.reason != contract.END_DEADLINE:  # a deadline stop evaluates below
                self.evaluate(step)
            if agreed.stop or agreed.due or step == cfg.max_iters:
                self.save(step, opt, scaler)

        if agreed.stop:
            self.save(step, opt, scaler)  # stopped before the first step: make sure a checkpoint exists
        self.export_weights(step)
        final: dict[str, float] = {}
        if agreed.reason == contract.END_DEADLINE and step >= first_step:
            final["lr"] = lr  # the last step's: min_lr when the schedule ended at this stop
            if cfg.eval_interval:
                # The guard's checkpoint is the run's result: say how good it is (the stop left time for this).
                if self.last_eval is None or self.last_eval[0] != step:
                    self.evaluate(step)
                assert self.last_eval is not None
                final["val_loss"] = self.last_eval[1]["val"]
        if cfg.final_val_tokens and step >= first_step:
            self.final_evaluate(step)
        self.write_sample(agreed.reason)
        self.log.line(f"{contract.LINE_STOPPED}: {agreed.reason} at step {step}")
        self.log.record(contract.RECORD_END, reason=agreed.reason, step=step, **final)
        self.log.close()
        return 0

    def train_step(
        self, net: torch.nn.Module, opt: AnyOptimizer, scaler: torch.amp.GradScaler, step: int,
        micro: int, lr: float,
    ) -> torch.Tensor:
        """One optimizer step over `micro` micro-batches; returns the mean loss as a device tensor."""
        d = self.dist
        for group in opt.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)  # Muon's groups peak at their own LRs (trainer/muon.py)
        loss_acc = torch.zeros((), device=self.device)
        for m in range(micro):
            x, y = self.loader.get(step, d.rank * micro + m)
            # Only the last micro-step all-reduces gradients.
            sync = not d.enabled or m == micro - 1
            with net.no_sync() if not sync else nullcontext():  # type: ignore[operator]
                with self.autocast:
                    _, loss = net(x, y, return_logits=False)
                loss = loss / micro
                scaler.scale(loss).backward()
            loss_acc += loss.detach()
        if self.cfg.grad_clip > 0:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        return loss_acc

    def log_step(self, step: int, loss: float, lr: float, tok_s: float, elapsed: float, dev_name: str) -> None:
        mfu = self.model.estimate_mfu(tok_s / self.dist.world_size, self.seq_len, dev_name, self.dtype,
                                      self.cfg.peak_tflops)
        if mfu is not None:
            mfu_text = f"{100 * mfu:.1f}%"
        else:  # a GPU without a datasheet figure is never given a guessed one
            mfu_text = UNKNOWN_PEAK if self.device.type == "cuda" else "n/a"
        self.log.line(
            f"step {step:04d} | loss {loss:.4f} | lr {lr:.2e} | tok/s {tok_s:.0f} | "
            f"mfu {mfu_text} | elapsed {elapsed:.1f}s"
        )
        self.log.record(
            contract.RECORD_STEP, step=step, loss=loss, lr=lr, tokens_per_s=round(tok_s, 1),
            mfu=None if mfu is None else round(mfu, 5), elapsed_s=round(elapsed, 3),
        )
        self.log.progress(step, loss)

    def write_header(self, data_dir: Path, meta: dict[str, Any], resume_path: Path | None, step: int) -> None:
        d, cfg = self.dist, self.cfg
        if d.master:
            atomic_write_json(self.out / contract.HARDWARE, hardware_record(self.device, self.dtype, d.world_size))
        self.log.line(f"{contract.LINE_DEVICE}: {self.device.type}")
        if self.device.type == "cuda":
            self.log.line(f"{contract.LINE_CUDA_NAME}: {torch.cuda.get_device_name(self.device)}")
        self.log.line(f"{contract.LINE_WORLD_SIZE}: {d.world_size}")
        self.log.line(f"{contract.LINE_DTYPE}: {str(self.dtype).removeprefix('torch.')}")
        self.log.line(
            f"data: {data_dir} ({meta.get('tokenizer')}, vocab {meta['vocab_size']}, "
            f"train {self.sampler.dataset.num_tokens} tokens, val {self.eval_samplers['val'].dataset.num_tokens} tokens)"
        )
        mc = self.model.config
        self.log.line(
            f"model: {mc.n_layer} layers, {mc.n_head} heads, {mc.n_embd} wide, block {mc.block_size}, "
            f"vocab {mc.vocab_size}; batch {cfg.batch_size} x {self.seq_len} x {cfg.grad_accum} accum"
        )
        self.log.line(f"{contract.LINE_PARAMETERS}: {self.model.num_params(non_embedding=False) / 1e6:.2f}M")
        self.log.line(f"lr schedule: {self.schedule.describe()}")
        if resume_path is not None:
            self.log.line(f"{contract.LINE_RESUMED}: {contract.CHECKPOINTS_DIR}/{resume_path.name} at step {step}")

    def agree_stop(self, step: int, dt: float | None, due: bool, eval_due: bool = False) -> Agreed:
        """What all ranks do after `step`, which took dt training seconds (None: before the first step).

        Each rank stops on its own signal, or when the next step plus the final checkpoint (and eval)
        would miss the deadline; it decides whether this step's periodic eval still pays off, and
        projects the training time left for the schedule. One all-reduce(MAX) of small ints makes any
        rank's reason, the slowest step and the shortest projection everyone's, so every rank
        computes the same LR and takes the same evals.
        """
        cfg = self.cfg
        signalled = self.stop.signum is not None
        late, skip, left_ms = False, False, 0
        step_s = ema(self.sched.step_s, dt) if dt is not None else (self.sched.step_s or 0.0)
        if cfg.deadline_epoch is not None:
            now = self.clock()
            reserve = self.stop_reserve(step_s)
            late = now + reserve >= cfg.deadline_epoch
            if dt is not None:
                wall_left = cfg.deadline_epoch - reserve - now
                eval_s, ckpt_s = self.eval_cost(step_s), self.checkpoint_cost()
                rate = ckpt_s / cfg.ckpt_interval_s if cfg.ckpt_interval_s else 0.0
                pending = ckpt_s if due else 0.0  # this step's own checkpoint and eval are still to come
                if eval_due and step != cfg.max_iters:
                    skip = skip_eval(wall_left, eval_s, pending, cfg.eval_interval, step_s, rate)
                    pending += 0.0 if skip else eval_s
                left = training_seconds_left(wall_left - pending, step_s, step, cfg.eval_interval, eval_s,
                                             cfg.ckpt_interval, ckpt_s, rate)
                left_ms = round(1000 * left)
        dt_us = round(1e6 * dt) if dt is not None else 0
        flags = distributed.agree(self.dist, [int(signalled), int(late), int(due), int(skip), dt_us, -left_ms])
        signalled, late, due, skip = (bool(v) for v in flags[:4])
        reason = contract.END_SIGNAL if signalled else contract.END_DEADLINE if late else contract.END_MAX_ITERS
        left_s = -flags[5] / 1000 if cfg.deadline_epoch is not None and dt is not None else None
        return Agreed(signalled or late, reason, due, skip, flags[4] / 1e6, left_s)

    def stop_reserve(self, step_s: float) -> float:
        """Seconds before the deadline at which the loop stops: a step, the final checkpoint and eval, the margin.

        The wsd schedule's decay ends exactly here, so the guard's checkpoint is a decayed model.
        """
        final_eval = 1.5 * self.eval_cost(step_s) if self.cfg.eval_interval else 0.0
        final_eval += 1.5 * self.final_val_cost(step_s)
        return 1.5 * step_s + self.checkpoint_estimate() + final_eval + self.cfg.deadline_margin_s

    def eval_cost(self, step_s: float) -> float:
        if self.sched.eval_s is not None:
            return self.sched.eval_s
        # Before the first one: forward only (about a third of a step) over both splits' batches.
        return 2 * math.ceil(self.cfg.eval_iters / self.dist.world_size) * step_s / (3 * self.micro)

    def final_val_cost(self, step_s: float) -> float:
        """The final sequential evaluation: forward only (about a third of a step) over its tokens, split over the ranks."""
        per_step = self.cfg.batch_size * self.seq_len * self.cfg.grad_accum
        return self.cfg.final_val_tokens / per_step * step_s / 3

    def checkpoint_cost(self) -> float:
        if self.sched.ckpt_s is not None:
            return self.sched.ckpt_s
        # Before the first one: model + two AdamW moments at ~200 MB/s, written then hashed.
        nbytes = 3 * 4 * sum(p.numel() for p in self.model.parameters())
        return 0.5 + 2 * nbytes / 200e6

    def checkpoint_estimate(self) -> float:
        return 1.5 * self.sched.ckpt_s if self.sched.ckpt_s is not None else self.checkpoint_cost()

    def checkpoint_due(self, step: int) -> bool:
        cfg = self.cfg
        if cfg.ckpt_interval and step % cfg.ckpt_interval == 0:
            return True
        # Time-based: rank 0's clock decides; agree() spreads the decision.
        return bool(self.dist.master and cfg.ckpt_interval_s and self.clock() - self.last_ckpt_time >= cfg.ckpt_interval_s)

    def save(self, step: int, opt: AnyOptimizer, scaler: torch.amp.GradScaler) -> None:
        if step == self.last_ckpt_step or step == 0:
            return
        t0 = self.clock()
        rng = distributed.gather_objects(self.dist, checkpoint.rng_state())
        if self.dist.master:
            payload = {
                "model": self.model.state_dict(),
                "optimizer": opt.state_dict(),
                "scaler": scaler.state_dict(),
                "step": step,
                "model_config": self.model.config.to_dict(),
                "train_config": self.cfg.to_dict(),
                "meta": self.meta,
                "data": self.sampler.state(step),
                "rng": rng,
                "world_size": self.dist.world_size,
                "schedule": self.sched.to_dict(),
            }
            entry = checkpoint.save(self.ckpt_dir, step, payload, self.cfg.keep_checkpoints)
            file = f"{contract.CHECKPOINTS_DIR}/{entry.file}"
            self.log.line(f"{contract.LINE_CHECKPOINT}: {file} sha256 {entry.sha256}")
            self.log.record(contract.RECORD_CHECKPOINT, step=step, file=file, sha256=entry.sha256,
                            bytes=entry.bytes)
        distributed.barrier(self.dist)
        self.last_ckpt_step = step
        self.last_ckpt_time = self.clock()
        self.sched.ckpt_s = self.last_ckpt_time - t0
        self.paused_s += self.sched.ckpt_s

    def export_weights(self, step: int) -> None:
        """The final step's weights-only export (trainer/checkpoint.py), beside its checkpoint."""
        if self.cfg.export_weights and self.dist.master and step and step == self.last_ckpt_step:
            entry = checkpoint.export_weights(self.ckpt_dir, step, self.model.state_dict(),
                                              self.model.config.to_dict())
            self.log.line(f"weights export: {contract.CHECKPOINTS_DIR}/{entry.file} ({entry.bytes} bytes)")

    @torch.no_grad()
    def evaluate(self, step: int) -> None:
        t0 = self.clock()
        net = self.eval_net
        net.eval()
        losses: dict[str, float] = {}
        for split, sampler in self.eval_samplers.items():
            total = torch.zeros((), device=self.device)
            for i in range(self.dist.rank, self.cfg.eval_iters, self.dist.world_size):
                x, y = sampler.batch(i, 0, self.device)
                with self.autocast:
                    _, loss = net(x, y, return_logits=False)
                total += loss
            losses[split] = (distributed.total(self.dist, total) / self.cfg.eval_iters).item()
        net.train()
        self.log.line(f"eval step {step:04d} | train {losses['train']:.4f} | val {losses['val']:.4f}")
        self.log.record(contract.RECORD_EVAL, step=step, train_loss=losses["train"], val_loss=losses["val"])
        self.last_eval = (step, losses)
        self.sched.eval_s = self.clock() - t0
        self.paused_s += self.sched.eval_s

    @torch.no_grad()
    def final_evaluate(self, step: int) -> None:
        """The standard evaluation: mean loss over the first final_val_tokens of the val set, read in
        order, each predicted once (modded-nanogpt's val_tokens = 10485760), the windows shared out
        over the ranks. Not random windows, so runs compare exactly."""
        n = self.cfg.final_val_tokens
        net = self.eval_net
        net.eval()
        total = torch.zeros((), device=self.device, dtype=torch.float64)
        windows = sequential_windows(n, self.seq_len, self.dist.rank, self.dist.world_size)
        for x, y in self.val_stream.batches(windows, self.cfg.batch_size):
            x, y = x.to(self.device), y.to(self.device)
            with self.autocast:
                _, loss = net(x, y, return_logits=False)
            total += loss.double() * y.numel()  # the mean over this batch's tokens, back to a sum
        val_loss = (distributed.total(self.dist, total) / n).item()
        net.train()
        split = contract.FINEWEB_VAL if self.meta.get("source") == "fineweb10B" else "val"
        self.log.line(f"final val step {step:04d} | {split} {n} tokens | val {val_loss:.4f}")
        self.log.record(contract.RECORD_FINAL_VAL, **dict(zip(contract.FINAL_VAL_FIELDS, (step, split, n, val_loss),
                                                              strict=True)))

    @torch.no_grad()
    def write_sample(self, reason: str) -> None:
        cfg = self.cfg
        if not self.dist.master or cfg.sample_tokens == 0:
            return
        tok = from_meta(self.meta, cfg.bpe_dir or None)
        if cfg.sample_prompt:
            prompt = tok.encode(cfg.sample_prompt)
        elif self.meta.get("tokenizer") == "char":
            prompt = tok.encode("\n") if "\n" in getattr(tok, "stoi", {}) else [0]
        else:
            prompt = [int(self.meta.get("eot", 50256))]
        # After a deadline stop, sample only in the time left before it.
        limit = cfg.deadline_epoch - cfg.deadline_margin_s / 2 if cfg.deadline_epoch else None
        gen = torch.Generator(device=self.device).manual_seed(cfg.seed)
        idx = torch.tensor([prompt], dtype=torch.long, device=self.device)
        model = self.model
        model.eval()
        remaining = cfg.sample_tokens
        while remaining > 0 and (limit is None or self.clock() < limit):
            n = min(32, remaining)
            with self.autocast:
                idx = model.generate(idx, n, cfg.temperature, cfg.top_k or None, generator=gen)
            remaining -= n
        model.train()
        ids = [i for i in idx[0].tolist() if i < int(self.meta["vocab_size"])]
        text = tok.decode(ids)
        atomic_write_bytes(self.out / contract.SAMPLE, text.encode("utf-8"))
        self.log.line(f"sample: {contract.SAMPLE} ({len(ids) - len(prompt)} tokens)")


def main(argv: list[str] | None = None) -> int:
    # At exit the interpreter collects garbage over every live object: with torch and the torch._dynamo
    # that torch.optim loads that was ~1 CPU-s, between the last checkpoint and the exit the controller
    # waits for. Frozen objects are skipped; the memory goes back to the OS with the process.
    atexit.unregister(gc.freeze)  # once per process (tests call main() many times)
    atexit.register(gc.freeze)
    stop = StopRequest()
    stop.install()  # early, so a SIGTERM during start-up still ends in a clean stop
    trainer: Trainer | None = None
    try:
        cfg = load_config(argv)
        trainer = Trainer(cfg, stop)
        return trainer.run()
    except (ConfigError, CheckpointError, ShardError, FileNotFoundError, distributed.NoGPUForRank) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        stop.restore()
        if trainer is not None:
            trainer.log.close()
            distributed.teardown(trainer.dist)


if __name__ == "__main__":
    sys.exit(main())
