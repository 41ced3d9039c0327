"""Prepare datasets into llm.c token shards plus a meta.json, and find them again.

    python -m trainer.data prepare --source SOURCE --out DIR [--tokenizer char|gpt2] [--max-tokens N]
                                   [--workers N] [--from DIR]   # builtin, shakespeare, tinystories, fineweb-edu, fineweb10B
    python -m trainer.data builtin OUT_DIR                      # offline corpus from gpurun's own files
    python -m trainer.data text FILE OUT_DIR [--tokenizer char|gpt2] [--bpe-dir DIR]

A prepared directory holds `*train*.bin`, `*val*.bin` and `meta.json` (`tokenizer`, `vocab_size`,
and for char-level `itos`/`stoi`). Any directory of llm.c shards whose names contain "train" / "val"
works as data; without meta.json it is taken as GPT-2 BPE. `prepare` is trainer/prepare.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from trainer import contract
from trainer import prepare as prep
from trainer.manifest import atomic_write_json
from trainer.shards import write_shard
from trainer.sources import builtin_corpus_files, builtin_corpus_text
from trainer.tokenizer import CharTokenizer, GPT2Tokenizer, Tokenizer

META_NAME = contract.META
EXIT_DATA = 3  # contract: a failed download or a bad source
VAL_FRACTION = prep.VAL_FRACTION
# Re-exported: callers (train.py, bench/) know them as trainer.data's.
__all__ = ["META_NAME", "builtin_corpus_files", "builtin_corpus_text", "read_meta", "shard_paths", "is_prepared"]


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
    if (d / contract.PROGRESS).exists() and not (d / contract.READY).exists():
        return False  # `prepare` is still at work there, or died half-way
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


def _add_prepare(sub: Any) -> None:
    p = sub.add_parser("prepare", help="fetch a dataset (or read --from DIR) into shards, resumable",
                       description="Writes llm.c shards, meta.json, progress.json and, last, READY into --out.")
    p.add_argument("--source", required=True, choices=prep.SOURCES)
    p.add_argument("--tokenizer", choices=("char", "gpt2"), default=None,
                   help="default: char for builtin/shakespeare, gpt2 otherwise")
    p.add_argument("--out", required=True, help="the prepared directory (trainer's data_dir)")
    p.add_argument("--max-tokens", type=int, default=None, help="at most this many train tokens")
    p.add_argument("--workers", type=int, default=None, help="tokenizer processes (default: all CPU cores)")
    p.add_argument("--from", dest="from_dir", default=None,
                   help="a local copy in the source's public format instead of the network")
    p.add_argument("--shard-size", type=int, default=prep.SHARD_TOKENS, help="tokens per train shard")
    p.add_argument("--val-tokens", type=int, default=prep.VAL_TOKENS, help="at most this many val tokens")


def _prepare(args: argparse.Namespace) -> int:
    try:
        res = prep.prepare(args.source, args.out, args.tokenizer, args.max_tokens, args.workers, args.from_dir,
                           args.bpe_dir, args.shard_size, args.val_tokens)
    except prep.DataError as e:
        print(f"data: {prep.one_line(e)}", file=sys.stderr)
        return EXIT_DATA
    except (OSError, ValueError, RuntimeError) as e:  # a bad file the checks did not name
        print(f"data: preparing {args.source} failed: {prep.one_line(e)}", file=sys.stderr)
        return EXIT_DATA
    m = res.meta
    how = "reused (READY)" if res.reused else "prepared"
    print(f"data: {how} {args.out}: {args.source}, tokenizer {m['tokenizer']}, vocab {m['vocab_size']}, "
          f"train {m['train_tokens']} tokens, val {m['val_tokens']} tokens")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trainer.data", description="Prepare token shards.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    _add_prepare(sub)
    b = sub.add_parser("builtin", help="offline corpus from gpurun's own text files")
    b.add_argument("out_dir")
    t = sub.add_parser("text", help="any text file")
    t.add_argument("file")
    t.add_argument("out_dir")
    for p in (b, t):
        p.add_argument("--tokenizer", choices=("char", "gpt2"), default="char")
    for p in sub.choices.values():
        p.add_argument("--bpe-dir", default=None, help="directory with GPT-2's encoder.json + vocab.bpe")
    args = ap.parse_args(argv)
    if args.cmd == "prepare":
        return _prepare(args)
    try:
        if args.cmd == "builtin":
            meta = prepare_builtin(args.out_dir, args.tokenizer, args.bpe_dir)
        else:
            meta = prepare_file(args.file, args.out_dir, args.tokenizer, args.bpe_dir)
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
