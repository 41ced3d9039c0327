"""Tokenizers: character-level (vocabulary stored in the meta file) and GPT-2 BPE through tiktoken.

The BPE can be built from local `encoder.json` + `vocab.bpe` (the files OpenAI publishes), so a
machine without a network still tokenizes exactly like tiktoken's "gpt2" encoding.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

GPT2_EOT = 50256
GPT2_VOCAB = 50257
# tiktoken's r50k/gpt2 split pattern (tiktoken_ext/openai_public.py).
GPT2_PAT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
BPE_DIR_ENV = "GPURUN_GPT2_BPE_DIR"


class Tokenizer(Protocol):
    name: str
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def meta(self) -> dict[str, Any]: ...


class CharTokenizer:
    name = "char"

    def __init__(self, itos: Sequence[str]) -> None:
        self.itos = list(itos)
        self.stoi = {ch: i for i, ch in enumerate(self.itos)}
        self.vocab_size = len(self.itos)

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls(sorted(set(text)))

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[ch] for ch in text]
        except KeyError as e:
            raise ValueError(f"character {e.args[0]!r} is not in this char-level vocabulary") from e

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.itos[i] for i in ids)

    def meta(self) -> dict[str, Any]:
        return {"tokenizer": "char", "vocab_size": self.vocab_size, "itos": self.itos, "stoi": self.stoi}


def _data_gym_ranks(vocab_bpe: Path, encoder_json: Path) -> dict[bytes, int]:
    """tiktoken's data_gym_to_mergeable_bpe_ranks, reading local files instead of URLs."""
    # GPT-2's byte-to-unicode table: printable bytes map to themselves, the rest to chr(256 + n).
    rank_to_byte = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    char_to_byte = {chr(b): b for b in rank_to_byte}
    n = 0
    for b in range(256):
        if b not in rank_to_byte:
            rank_to_byte.append(b)
            char_to_byte[chr(256 + n)] = b
            n += 1

    def decode(s: str) -> bytes:
        return bytes(char_to_byte[c] for c in s)

    ranks = {bytes([b]): i for i, b in enumerate(rank_to_byte)}
    merges = vocab_bpe.read_text(encoding="utf-8").split("\n")[1:-1]  # first line is a version header
    for line in merges:
        first, second = line.split()
        ranks[decode(first) + decode(second)] = len(ranks)
    # The merge order must agree with encoder.json, or tiktoken would encode differently from GPT-2.
    encoder = {decode(k): v for k, v in json.loads(encoder_json.read_text(encoding="utf-8")).items()}
    encoder.pop(b"<|endoftext|>", None)
    encoder.pop(b"<|startoftext|>", None)
    if encoder != ranks:
        raise ValueError(f"{encoder_json} and {vocab_bpe} disagree: not a GPT-2 BPE pair")
    return ranks


def gpt2_encoding(bpe_dir: str | os.PathLike[str] | None = None) -> Any:
    """A tiktoken Encoding for GPT-2: from `bpe_dir` (or $GPURUN_GPT2_BPE_DIR) if given, else tiktoken's."""
    import tiktoken  # optional dependency: only BPE needs it

    bpe_dir = bpe_dir or os.environ.get(BPE_DIR_ENV)
    if not bpe_dir:
        return tiktoken.get_encoding("gpt2")
    d = Path(bpe_dir)
    vocab_bpe, encoder_json = d / "vocab.bpe", d / "encoder.json"
    for f in (vocab_bpe, encoder_json):
        if not f.is_file():
            raise FileNotFoundError(f"{f} not found: --bpe-dir needs encoder.json and vocab.bpe")
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PAT,
        mergeable_ranks=_data_gym_ranks(vocab_bpe, encoder_json),
        special_tokens={"<|endoftext|>": GPT2_EOT},
        explicit_n_vocab=GPT2_VOCAB,
    )


class GPT2Tokenizer:
    name = "gpt2"
    vocab_size = GPT2_VOCAB
    eot = GPT2_EOT

    def __init__(self, bpe_dir: str | os.PathLike[str] | None = None) -> None:
        self.bpe_dir = str(bpe_dir) if bpe_dir else None
        self.enc = gpt2_encoding(bpe_dir)

    def encode(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.enc.decode(list(ids))

    def meta(self) -> dict[str, Any]:
        return {"tokenizer": "gpt2", "vocab_size": self.vocab_size, "eot": self.eot}


def from_meta(meta: dict[str, Any], bpe_dir: str | os.PathLike[str] | None = None) -> Tokenizer:
    kind = meta.get("tokenizer", "gpt2")
    if kind == "char":
        return CharTokenizer(meta["itos"])
    if kind == "gpt2":
        return GPT2Tokenizer(bpe_dir)
    raise ValueError(f"unknown tokenizer {kind!r} in meta file")
