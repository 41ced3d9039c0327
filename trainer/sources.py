"""Where each dataset comes from, and readers for the public formats it is published in.

Remote files (checked against the public repositories, see trainer/README.md "Data"):
- shakespeare: karpathy/char-rnn's tinyshakespeare/input.txt (1.1 MB, what nanoGPT uses).
- tinystories: roneneldan/TinyStories on Hugging Face, TinyStoriesV2-GPT4-{train,valid}.txt (stories
  separated by `<|endoftext|>` lines).
- fineweb-edu: kjj0/finewebedu10B-gpt2 on Hugging Face, FineWeb-Edu sample-10BT already GPT-2-tokenized
  into llm.c shards (what modded-nanogpt downloads): finewebedu_val_000000.bin, then
  finewebedu_train_000001..000099.bin, 100M tokens each. Fallback: HuggingFaceFW/fineweb-edu
  sample/10BT/NNN_00000.parquet (14 files, `text` column), tokenized here.
- fineweb10B: kjj0/fineweb10B-gpt2 on Hugging Face, the plain FineWeb sample-10BT in the same llm.c
  shards (modded-nanogpt's data/cached_fineweb10B.py, the speedrun's data): fineweb_val_000000.bin,
  then fineweb_train_000001..000103.bin, 100M tokens each. Its standard evaluation reads the val
  shard's first trainer.contract.FINEWEB_VAL_TOKENS in order.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
CORPUS_SUFFIXES = (".md", ".py", ".txt", ".yaml", ".sh")

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINYSTORIES_REPO = "roneneldan/TinyStories"
TINYSTORIES_FILES = {"train": "TinyStoriesV2-GPT4-train.txt", "val": "TinyStoriesV2-GPT4-valid.txt"}
TINYSTORIES_EOT = "<|endoftext|>"
FINEWEB_TOKENS_REPO = "kjj0/finewebedu10B-gpt2"
FINEWEB_TOKENS_PER_SHARD = 100_000_000
FINEWEB_TRAIN_SHARDS = 99  # the last one holds 53,989,344 tokens; the header says so
FINEWEB10B_TOKENS_REPO = "kjj0/fineweb10B-gpt2"
FINEWEB10B_TRAIN_SHARDS = 103  # cached_fineweb10B.py: "num_chunks = 103 # full fineweb10B"
FINEWEB_PARQUET_REPO = "HuggingFaceFW/fineweb-edu"
FINEWEB_PARQUET_FILES = [f"sample/10BT/{i:03d}_00000.parquet" for i in range(14)]
FINEWEB_TOKENS_PER_PARQUET = 700_000_000  # ~10B GPT-2 tokens over 14 files
DOC_SUFFIXES = (".txt", ".jsonl", ".parquet")


class FormatError(ValueError):
    """A local file that is not in the format its source publishes."""


def hf_url(repo: str, path: str) -> str:
    # HF_ENDPOINT is huggingface_hub's own variable for mirrors.
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    return f"{endpoint}/datasets/{repo}/resolve/main/{path}"


def fineweb_token_files(prefix: str = "finewebedu", train_shards: int | None = None) -> list[tuple[str, str]]:
    """(split, file name) of the pre-tokenized shards, val first, as llm.c orders them: FineWeb-edu's
    ("finewebedu") by default, FineWeb's with prefix "fineweb" and FINEWEB10B_TRAIN_SHARDS."""
    count = FINEWEB_TRAIN_SHARDS if train_shards is None else train_shards
    names = [("val", f"{prefix}_val_000000.bin")]
    return names + [("train", f"{prefix}_train_{i:06d}.bin") for i in range(1, count + 1)]


# ---- the offline corpus -------------------------------------------------------------------------


def builtin_corpus_files() -> list[Path]:
    """The text files the offline corpus is made of, in a fixed order.

    Everything textual inside the trainer package (its code and configs), plus the
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


# ---- documents from local files -----------------------------------------------------------------


def split_files(directory: Path, split: str, suffixes: Sequence[str] = DOC_SUFFIXES) -> list[Path]:
    """Files of one split ("train" or "val"; "valid"/"validation" count as val) in a local copy."""
    keys = ("val",) if split == "val" else ("train",)
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in suffixes
                  and any(k in p.name.lower() for k in keys))


class Documents:
    """The documents of a list of files, in order; `fraction` is how far through their bytes it is."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)
        self.total = sum(p.stat().st_size for p in self.paths) or 1
        self.done = 0  # bytes of the files already read
        self.pos = 0  # position in the current file

    @property
    def fraction(self) -> float:
        return min(1.0, (self.done + self.pos) / self.total)

    def __iter__(self) -> Iterator[str]:
        for p in self.paths:
            self.pos = 0
            reader = {".txt": self._txt, ".jsonl": self._jsonl, ".parquet": self._parquet}.get(p.suffix)
            if reader is None:
                raise FormatError(f"{p}: not .txt, .jsonl or .parquet")
            yield from reader(p)
            self.done += p.stat().st_size
            self.pos = 0

    def _txt(self, path: Path) -> Iterator[str]:
        # TinyStories' layout: stories separated by lines holding only <|endoftext|>.
        lines: list[str] = []
        with open(path, "rb") as f:
            for raw in f:
                self.pos = f.tell()
                line = raw.decode("utf-8", errors="replace")
                if line.strip() == TINYSTORIES_EOT:
                    doc = "".join(lines).strip()
                    if doc:
                        yield doc
                    lines = []
                else:
                    lines.append(line)
        doc = "".join(lines).strip()
        if doc:
            yield doc

    def _jsonl(self, path: Path) -> Iterator[str]:
        with open(path, "rb") as f:
            for n, raw in enumerate(f, 1):
                self.pos = f.tell()
                if not raw.strip():
                    continue
                try:
                    text = json.loads(raw)["text"]
                except (ValueError, KeyError, TypeError):
                    raise FormatError(f"{path} line {n}: not a JSON object with a \"text\" field") from None
                if not isinstance(text, str):
                    raise FormatError(f"{path} line {n}: \"text\" is not a string")
                yield text

    def _parquet(self, path: Path) -> Iterator[str]:
        try:
            import pyarrow.parquet as pq  # optional: only parquet needs it
        except ImportError:
            raise FormatError(f"{path}: reading parquet needs pyarrow (pip install pyarrow), "
                              "or pass jsonl / llm.c .bin shards") from None
        try:
            pf = pq.ParquetFile(path)
        except Exception as e:  # pyarrow raises its own ArrowInvalid for a file that is not parquet
            raise FormatError(f"{path}: not a parquet file ({e})") from None
        if "text" not in pf.schema_arrow.names:
            raise FormatError(f"{path}: no \"text\" column (has {', '.join(pf.schema_arrow.names)})")
        size, groups = path.stat().st_size, max(pf.num_row_groups, 1)
        for g in range(pf.num_row_groups):
            for text in pf.read_row_group(g, columns=["text"]).column("text").to_pylist():
                if text:
                    yield text
            self.pos = size * (g + 1) // groups
