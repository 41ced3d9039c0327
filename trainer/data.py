"""Prepare datasets into llm.c token shards plus a meta.json, and find them again.

    python -m trainer.data builtin OUT_DIR                      # offline corpus from gpurun's own files
    python -m trainer.data text FILE OUT_DIR [--tokenizer char|gpt2] [--bpe-dir DIR]
    python -m trainer.data hf {fineweb-edu,tinystories} OUT_DIR [--max-tokens N] [--shard-size N]

A prepared directory holds `train_000000.bin ...`, `val_000000.bin ...` and `meta.json`
(`tokenizer`, `vocab_size`, and for char-level `itos`/`stoi`). Any directory of llm.c shards whose
names contain "train" / "val" works as data; without meta.json it is taken as GPT-2 BPE.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from trainer.manifest import atomic_write_json
from trainer.shards import write_shard
from trainer.tokenizer import CharTokenizer, GPT2Tokenizer, Tokenizer

META_NAME = "meta.json"
PACKAGE_DIR = Path(__file__).resolve().parent
CORPUS_SUFFIXES = (".md", ".py", ".txt", ".yaml", ".sh")
VAL_FRACTION = 0.1

HF_DATASETS: dict[str, dict[str, Any]] = {
    # name -> load_dataset arguments; val comes from its own split or from the first documents.
    "fineweb-edu": {"path": "HuggingFaceFW/fineweb-edu", "name": "sample-10BT", "split": "train"},
    "tinystories": {"path": "roneneldan/TinyStories", "split": "train", "val_split": "validation"},
}


def builtin_corpus_files() -> list[Path]:
    """The text files the offline corpus is made of, in a fixed order.

    Everything textual inside the trainer package (its code, configs and trainer/corpus/), plus the
    docs beside it when the package sits in a gpurun checkout rather than in site-packages.
    """
    files = [p for p in PACKAGE_DIR.rglob("*") if p.suffix in CORPUS_SUFFIXES and "__pycache__" not in p.parts]
    root = PACKAGE_DIR.parent
    if root.name not in ("site-packages", "dist-packages"):
        files += [p for p in root.glob("*.md")] + [p for p in (root / "docs").glob("*.md")]
    return sorted({p for p in files if p.is_file()})


def builtin_corpus_text() -> str:
    parts = []
    for p in builtin_corpus_files():
        try:
            parts.append(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError):
            continue
    text = "\n\n".join(parts)
    if len(text) < 10_000:
        raise RuntimeError(f"the built-in corpus under {PACKAGE_DIR} is too small ({len(text)} chars)")
    return text


def write_meta(out_dir: Path, meta: dict[str, Any]) -> None:
    atomic_write_json(out_dir / META_NAME, meta)


def read_meta(data_dir: str | Path) -> dict[str, Any]:
    path = Path(data_dir) / META_NAME
    if path.is_file():
        return json.loads(path.read_text())
    # Bare llm.c / modded-nanogpt shards are GPT-2 BPE.
    return {"tokenizer": "gpt2", "vocab_size": GPT2Tokenizer.vocab_size}


def shard_paths(data_dir: str | Path, split: str) -> list[Path]:
    return sorted(p for p in Path(data_dir).glob(f"*{split}*.bin") if p.is_file())


def is_prepared(data_dir: str | Path) -> bool:
    d = Path(data_dir)
    return d.is_dir() and bool(shard_paths(d, "train")) and bool(shard_paths(d, "val"))


def prepare_text(
    text: str, out_dir: str | Path, tokenizer: str = "char", bpe_dir: str | None = None, source: str = ""
) -> dict[str, Any]:
    """Tokenize `text`, split 90/10 into train/val shards, write meta.json; returns the meta."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if tokenizer not in ("char", "gpt2"):
        raise ValueError(f"unknown tokenizer {tokenizer!r}: use char or gpt2")
    tok: Tokenizer = CharTokenizer.from_text(text) if tokenizer == "char" else GPT2Tokenizer(bpe_dir)
    cut = int(len(text) * (1 - VAL_FRACTION))
    train, val = tok.encode(text[:cut]), tok.encode(text[cut:])
    write_shard(out / "train_000000.bin", train)
    write_shard(out / "val_000000.bin", val)
    meta = tok.meta() | {"source": source, "train_tokens": len(train), "val_tokens": len(val)}
    write_meta(out, meta)
    return meta


def prepare_file(path: str | Path, out_dir: str | Path, tokenizer: str = "char", bpe_dir: str | None = None) -> dict:
    text = Path(path).read_text(encoding="utf-8")
    return prepare_text(text, out_dir, tokenizer, bpe_dir, source=str(path))


def prepare_builtin(out_dir: str | Path, tokenizer: str = "char", bpe_dir: str | None = None) -> dict:
    return prepare_text(builtin_corpus_text(), out_dir, tokenizer, bpe_dir, source="builtin")


class ShardWriter:
    """Streams tokens into fixed-size shards named <prefix>_<split>_NNNNNN.bin."""

    def __init__(self, out_dir: Path, prefix: str, shard_size: int) -> None:
        self.out_dir, self.prefix, self.shard_size = out_dir, prefix, shard_size
        self.buf = np.empty(shard_size, dtype=np.uint16)
        self.fill = 0
        self.index = 0
        self.total = 0

    def add(self, tokens: Iterable[int], split: str) -> None:
        arr = np.asarray(list(tokens), dtype=np.uint16)
        while arr.size:
            take = min(arr.size, self.shard_size - self.fill)
            self.buf[self.fill : self.fill + take] = arr[:take]
            self.fill += take
            arr = arr[take:]
            if self.fill == self.shard_size:
                self.flush(split)

    def flush(self, split: str) -> None:
        if self.fill:
            write_shard(self.out_dir / f"{self.prefix}_{split}_{self.index:06d}.bin", self.buf[: self.fill])
            self.total += self.fill
            self.index += 1
            self.fill = 0


def _documents(spec: dict[str, Any], split: str) -> Iterator[str]:
    from datasets import load_dataset  # lazy: heavy, and only this path needs a network

    args = {k: v for k, v in spec.items() if k not in ("split", "val_split")}
    for row in load_dataset(**args, split=split, streaming=True):
        yield row["text"]


def prepare_hf(
    name: str, out_dir: str | Path, max_tokens: int = 100_000_000, shard_size: int = 100_000_000,
    val_tokens: int = 10_000_000, bpe_dir: str | None = None,
) -> dict[str, Any]:
    """GPT-2-tokenize a Hugging Face dataset (needs `datasets` and a network) into llm.c shards.

    Each document is preceded by <|endoftext|>, as llm.c does; shard 0 of "val" comes first.
    """
    if name not in HF_DATASETS:
        raise ValueError(f"unknown dataset {name!r}: choose from {', '.join(HF_DATASETS)}")
    spec = HF_DATASETS[name]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = GPT2Tokenizer(bpe_dir)
    prefix = name.replace("-", "_")
    writer = ShardWriter(out, prefix, min(shard_size, max(val_tokens, 1)))
    train_docs = _documents(spec, spec["split"])
    val_docs = _documents(spec, spec["val_split"]) if "val_split" in spec else train_docs
    for doc in val_docs:  # the val split, or the first documents of the only split
        writer.add([tok.eot, *tok.encode(doc)], "val")
        if writer.total + writer.fill >= val_tokens:
            break
    writer.flush("val")
    n_val = writer.total
    writer = ShardWriter(out, prefix, shard_size)
    for doc in train_docs:
        writer.add([tok.eot, *tok.encode(doc)], "train")
        if writer.total + writer.fill >= max_tokens:
            break
    writer.flush("train")
    meta = tok.meta() | {"source": f"hf:{spec['path']}", "train_tokens": writer.total, "val_tokens": n_val}
    write_meta(out, meta)
    return meta


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trainer.data", description="Prepare token shards.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("builtin", help="offline corpus from gpurun's own text files")
    b.add_argument("out_dir")
    t = sub.add_parser("text", help="any text file")
    t.add_argument("file")
    t.add_argument("out_dir")
    h = sub.add_parser("hf", help="a Hugging Face dataset (needs a network)")
    h.add_argument("name", choices=sorted(HF_DATASETS))
    h.add_argument("out_dir")
    h.add_argument("--max-tokens", type=int, default=100_000_000)
    h.add_argument("--val-tokens", type=int, default=10_000_000)
    h.add_argument("--shard-size", type=int, default=100_000_000)
    for p in (b, t):
        p.add_argument("--tokenizer", choices=("char", "gpt2"), default="char")
    for p in (b, t, h):
        p.add_argument("--bpe-dir", default=None, help="directory with GPT-2's encoder.json + vocab.bpe")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "builtin":
            meta = prepare_builtin(args.out_dir, args.tokenizer, args.bpe_dir)
        elif args.cmd == "text":
            meta = prepare_file(args.file, args.out_dir, args.tokenizer, args.bpe_dir)
        else:
            meta = prepare_hf(args.name, args.out_dir, args.max_tokens, args.shard_size, args.val_tokens,
                              args.bpe_dir)
    except (OSError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"prepared {args.out_dir}: tokenizer {meta['tokenizer']}, vocab {meta['vocab_size']}, "
        f"train {meta['train_tokens']} tokens, val {meta['val_tokens']} tokens"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
