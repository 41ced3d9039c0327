"""Training configuration: one dataclass, filled from a YAML/JSON file and then from flags (flags win).

Every field is a flag: `max_iters` is `--max-iters` (or `--max_iters`). PyYAML is used when it is
installed; an instance without it still reads flat `key: value` files. Torch-free: the controller
checks a launch's trainer input with `validate` before it rents anything.
"""

from __future__ import annotations

import argparse
import difflib
import json
import types
import typing
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from trainer import contract
from trainer.presets import PRESETS, GPTConfig
from trainer.schedule import DECAY_SHAPES, SCHEDULES

OPTIMIZERS = ("adamw", "muon")


class ConfigError(ValueError):
    """Bad configuration: reported as one line, exit status 2."""


@dataclass
class TrainConfig:
    # data: prepared shards in data_dir, else text_file (or the built-in corpus) prepared into out_dir/data
    out_dir: str = contract.OUT_DIR
    data_dir: str = ""
    text_file: str = ""
    tokenizer: str = "char"  # for text_file / built-in corpus: char | gpt2
    bpe_dir: str = ""  # local encoder.json + vocab.bpe for gpt2 without a network
    # model: a preset, with any of the fields below overriding it
    model: str = "tiny"
    n_layer: int | None = None
    n_head: int | None = None
    n_embd: int | None = None
    block_size: int | None = None
    vocab_size: int | None = None
    dropout: float | None = None
    bias: bool | None = None
    # the speedrun's architecture switches (trainer/presets.py GPTConfig; None: the preset's, off)
    rotary: bool | None = None
    qk_norm: bool | None = None
    relu2: bool | None = None
    zero_init: bool | None = None
    rmsnorm: bool | None = None
    untied_head: bool | None = None
    logit_softcap: float | None = None
    init_from: str = "scratch"  # scratch | a Hugging Face GPT-2 name or local directory
    resume: str = "auto"  # auto (if out_dir has a checkpoint) | never | must
    # batch: tokens per optimizer step = batch_size * seq_len * grad_accum (across all ranks)
    batch_size: int = 8
    seq_len: int | None = None  # defaults to the model's block_size
    grad_accum: int | None = None  # micro-steps per step, summed over ranks; default: one per rank
    # optimizer and schedule
    optimizer: str = "adamw"  # adamw | muon (Muon for the blocks' matrices, AdamW for the rest: trainer/muon.py)
    muon_lr: float = 0.02  # muon: the matrices' peak LR (lr is then the head's and the vectors')
    muon_momentum: float = 0.95
    embed_lr: float | None = None  # muon: the embeddings' peak AdamW LR (default: lr)
    max_iters: int = 20000  # the default run is meant to be ended by the budget guard, not by this
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 20
    lr_decay_iters: int | None = None  # cosine: defaults to max_iters
    lr_schedule: str = "auto"  # auto (wsd ending at the deadline when there is one, else cosine) | cosine | wsd
    lr_decay_frac: float = 0.2  # wsd: the share of the run (training time or steps) spent decaying
    lr_decay_shape: str = "sqrt"  # wsd: sqrt (1 - sqrt) | linear (the speedrun records' warmdown)
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    # evaluation, logging, checkpoints
    eval_interval: int = 250
    eval_iters: int = 20
    final_val_tokens: int = 0  # > 0: at the end, the loss over the first N val tokens read in order, each once
    log_interval: int = 10
    ckpt_interval: int = 0  # steps; 0 = only by time and at the end
    ckpt_interval_s: float = 5.0  # seconds; 0 = off
    keep_checkpoints: int = 2  # on the instance, and at home (the manifest's "keep")
    export_weights: bool = True  # a bf16 weights-only file beside the final checkpoint, pulled first
    # system
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    compile: bool = False
    seed: int = 1337
    threads: int = 0  # torch CPU threads; 0 = auto (1 for models under 2M parameters, else cores / ranks)
    peak_tflops: float | None = None  # override the device's peak for MFU
    deadline_epoch: float | None = None  # absolute UNIX time by which a checkpoint must exist
    deadline_margin_s: float = 2.0
    progress: str = "auto"  # auto (when stdout is a terminal) | on | off
    # sample written to sample.txt at the end
    sample_tokens: int = 300
    sample_prompt: str = ""
    temperature: float = 0.8
    top_k: int = 200

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> None:
        if self.model not in PRESETS:
            raise ConfigError(f"unknown model preset {self.model!r}: choose from {', '.join(PRESETS)}")
        choices = {
            "tokenizer": ("char", "gpt2"), "resume": ("auto", "never", "must"),
            "dtype": ("auto", "float32", "bfloat16", "float16"), "progress": ("auto", "on", "off"),
            "lr_schedule": SCHEDULES, "optimizer": OPTIMIZERS, "lr_decay_shape": DECAY_SHAPES,
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"{key} must be one of {', '.join(allowed)}, got {getattr(self, key)!r}")
        positive = ("batch_size", "grad_accum", "max_iters", "eval_iters", "log_interval")
        for key in positive:
            if getattr(self, key) is not None and getattr(self, key) <= 0:
                raise ConfigError(f"{key} must be positive, got {getattr(self, key)}")
        for key in ("warmup_iters", "eval_interval", "ckpt_interval", "ckpt_interval_s", "threads", "lr",
                    "min_lr", "weight_decay", "grad_clip", "sample_tokens", "final_val_tokens", "muon_lr",
                    "muon_momentum"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must not be negative, got {getattr(self, key)}")
        if not 0.0 < self.lr_decay_frac <= 1.0:
            raise ConfigError(f"lr_decay_frac must be in (0, 1], got {self.lr_decay_frac}")
        if self.optimizer == "muon" and self.lr <= 0:
            raise ConfigError("optimizer muon needs lr > 0: the other groups' LRs are scaled from it")
        if self.embed_lr is not None and self.embed_lr < 0:
            raise ConfigError(f"embed_lr must not be negative, got {self.embed_lr}")
        if self.min_lr > self.lr:
            raise ConfigError(f"min_lr ({self.min_lr}) is above lr ({self.lr})")
        if self.keep_checkpoints < 1:
            raise ConfigError("keep_checkpoints must be at least 1")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.init_from != "scratch" and self.resume == "must":
            raise ConfigError("init_from and resume=must contradict each other: pick one")
        model = self.model_config(vocab_size=self.vocab_size or 1)
        if self.seq_len is not None and self.init_from == "scratch" and self.seq_len > model.block_size:
            raise ConfigError(
                f"seq_len ({self.seq_len}) is longer than the model's block_size ({model.block_size}): "
                "lower --seq-len or raise --block-size"
            )

    def check_world_size(self, world_size: int) -> None:
        """The micro-steps of one optimizer step split evenly over the ranks (one per GPU)."""
        if self.grad_accum is not None and self.grad_accum % world_size:
            raise ConfigError(f"grad_accum ({self.grad_accum}) must be a multiple of the world size ({world_size})")

    def model_config(self, vocab_size: int) -> GPTConfig:
        """The model this config builds from scratch (preset + overrides); raises ConfigError."""
        params = dict(PRESETS[self.model])
        for f in fields(GPTConfig):
            value = getattr(self, f.name)
            if value is not None:
                params[f.name] = value
        if self.vocab_size is None:
            params["vocab_size"] = vocab_size
        config = GPTConfig(**params)
        try:
            config.validate()
        except ValueError as e:
            raise ConfigError(str(e)) from e
        return config


_FIELDS = {f.name: f for f in fields(TrainConfig)}
_HINTS = typing.get_type_hints(TrainConfig)


def _base_type(hint: Any) -> tuple[type, bool]:
    """(scalar type, optional?) of a field's annotation."""
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        inner = [a for a in args if a is not type(None)]
        return inner[0], True
    return hint, False


def coerce(key: str, value: Any, source: str) -> Any:
    """Convert a value from a file or a flag to the field's type, or raise ConfigError."""
    typ, optional = _base_type(_HINTS[key])
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "~")):
        if optional:
            return None
        raise ConfigError(f"{key} cannot be empty ({source})")
    try:
        if typ is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "yes", "1", "on"):
                return True
            if str(value).lower() in ("false", "no", "0", "off"):
                return False
            raise ValueError(value)
        if typ is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            if isinstance(value, str):
                return int(float(value)) if any(c in value for c in ".eE") else int(value)
            return int(value)
        if typ is float:
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be {typ.__name__}, got {value!r} ({source})") from None


def _scalar(text: str) -> Any:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def parse_flat_yaml(text: str) -> dict[str, Any]:
    """Flat `key: value` YAML without PyYAML; values stay strings and coerce() types them."""
    out: dict[str, Any] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not line.strip() or line.strip() == "---":
            continue
        if ":" not in line or line[0].isspace():
            raise ConfigError(f"line {n}: expected a flat 'key: value' line, got {raw.strip()!r}")
        key, value = line.split(":", 1)
        out[key.strip()] = _scalar(value) if value.strip() else None
    return out


def load_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config file {p}: {e.strerror}") from e
    try:
        if p.suffix == ".json":
            data = json.loads(text)
        else:
            try:
                import yaml  # optional on an instance
            except ImportError:
                data = parse_flat_yaml(text)
            else:
                data = yaml.safe_load(text)
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from e
    except Exception as e:  # yaml.YAMLError / JSONDecodeError: both only need a message
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"{p}: not valid YAML/JSON ({first})") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of config keys at the top level")
    return data


def _did_you_mean(word: str, choices: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f": did you mean {close[0]}?" if close else ""


class _OneLineParser(argparse.ArgumentParser):
    # A ConfigError, not SystemExit: train.main prints it as one line with exit status 2, and the
    # controller's validate() refuses the launch with it.
    def error(self, message: str) -> typing.NoReturn:
        raise ConfigError(f"{message} (see --help)")


def flag_name(key: str) -> str:
    return f"--{key.replace('_', '-')}"


def build_parser(add_help: bool = True) -> argparse.ArgumentParser:
    ap = _OneLineParser(
        prog="python -m trainer.train", argument_default=argparse.SUPPRESS, allow_abbrev=False,
        description="Train GPT-2 from scratch (single process, or under torchrun for DDP).", add_help=add_help,
    )
    ap.add_argument("--config", help="YAML or JSON file of config keys; flags override it")
    for name in _FIELDS:
        typ, _ = _base_type(_HINTS[name])
        names = [flag_name(name)] + ([f"--{name}"] if "_" in name else [])
        default = _FIELDS[name].default
        help_text = f"default: {default!r}" if default != "" else "default: unset"
        if typ is bool:
            # `--compile`, `--no-compile`, and `--compile true|false` (typed by coerce()): gpurun's
            # `--set compile=true` reaches the trainer as `--compile true`.
            ap.add_argument(*names, dest=name, nargs="?", const=True, metavar="BOOL", help=help_text)
            ap.add_argument(*(f"--no-{n[2:]}" for n in names), dest=name, action="store_const", const=False,
                            help=f"same as {names[0]} false")
        else:
            ap.add_argument(*names, dest=name, metavar=typ.__name__.upper(), help=help_text)
    return ap


def unknown_key(key: str, where: str = "") -> str | None:
    """None for a config key, else the one-line reason, naming the closest key."""
    key = key.replace("-", "_")
    return None if key in _FIELDS else f"unknown config key {key!r}{where}{_did_you_mean(key, _FIELDS)}"


def _parse(argv: list[str] | None, add_help: bool, flag_label: typing.Callable[[str], str]) -> TrainConfig:
    parser = build_parser(add_help=add_help)
    ns_obj, extra = parser.parse_known_args(argv)
    if extra:
        flags = ["--config", *map(flag_name, _FIELDS)]
        hint = _did_you_mean(extra[0].split("=", 1)[0], flags) if extra[0].startswith("--") else ""
        parser.error(f"unrecognized arguments: {' '.join(extra)}{hint}")
    ns = vars(ns_obj)
    values: dict[str, Any] = {}
    config_file = ns.pop("config", None)
    if config_file:
        for key, value in load_file(config_file).items():
            key = str(key).replace("-", "_")
            if (why := unknown_key(key, f" in {config_file}")) is not None:
                raise ConfigError(why)
            values[key] = coerce(key, value, config_file)
    for key, value in ns.items():
        values[key] = coerce(key, value, flag_label(key))
    cfg = TrainConfig(**values)
    cfg.validate()
    return cfg


def load_config(argv: list[str] | None = None) -> TrainConfig:
    """TrainConfig from `--config FILE` and flags; raises ConfigError with one line."""
    return _parse(argv, add_help=True, flag_label=flag_name)


def validate(config_path: str | None, args: list[str], world_size: int = 1,
             flag_label: typing.Callable[[str], str] = flag_name) -> TrainConfig:
    """The config `python -m trainer.train [--config FILE] ARGS` would run with, checked without
    torch, data or a GPU; raises ConfigError with one line. The same parser, file reading, typing and
    checks as load_config: the controller calls this before anything is rented. `flag_label` names a
    flag in messages (the controller says `--set max_iters`); `--help` is refused, not printed."""
    argv = (["--config", config_path] if config_path else []) + list(args)
    cfg = _parse(argv, add_help=False, flag_label=flag_label)
    cfg.check_world_size(world_size)
    return cfg
