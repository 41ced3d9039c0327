"""Token shards (llm.c format), tokenizers and the data preparation CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trainer import data
from trainer.batches import BatchSampler, TokenDataset
from trainer.shards import HEADER_BYTES, MAGIC, ShardError, open_shard, read_header, write_shard
from trainer.tokenizer import CharTokenizer, GPT2Tokenizer, from_meta


def test_shard_header_round_trip(tmp_path: Path) -> None:
    tokens = np.array([0, 1, 50256, 65535, 7], dtype=np.int64)
    path = tmp_path / "x_train_000000.bin"
    write_shard(path, tokens)
    header = np.fromfile(path, dtype=np.int32, count=256)
    assert header[:3].tolist() == [MAGIC, 1, 5] and not header[3:].any()
    assert path.stat().st_size == HEADER_BYTES + 2 * 5
    assert read_header(path) == 5
    mm = open_shard(path)
    assert isinstance(mm, np.memmap) and mm.dtype == np.uint16
    assert mm.tolist() == tokens.tolist()


def test_llmc_style_shard_loads(tmp_path: Path) -> None:
    # Written the way llm.c's data_common.write_datafile does it, not through our writer.
    toks = np.arange(1000, dtype=np.uint16)
    header = np.zeros(256, dtype=np.int32)
    header[0], header[1], header[2] = 20240520, 1, len(toks)
    path = tmp_path / "fineweb_val_000000.bin"
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(toks.tobytes())
    assert open_shard(path)[:5].tolist() == [0, 1, 2, 3, 4]


def test_bad_shards_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "a.bin"
    write_shard(path, np.arange(100))
    with open(path, "r+b") as f:
        f.truncate(HEADER_BYTES + 50)
    with pytest.raises(ShardError, match="truncated"):
        open_shard(path)
    (tmp_path / "b.bin").write_bytes(b"\0" * 2048)
    with pytest.raises(ShardError, match="magic"):
        open_shard(tmp_path / "b.bin")
    with pytest.raises(ShardError, match="uint16"):
        write_shard(tmp_path / "c.bin", [70000])


def test_bpe_from_local_files(shared_data: Path) -> None:
    tok = GPT2Tokenizer(shared_data / "gpt2")
    assert tok.encode("Hello world") == [15496, 995]  # GPT-2's well-known ids
    text = "First Citizen:\nBefore we proceed any further, hear me speak. Ünïcödé 日本"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.enc.n_vocab == 50257 and tok.enc.eot_token == 50256


def test_bpe_dir_missing_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="encoder.json"):
        GPT2Tokenizer(tmp_path)


def test_char_prepare_and_meta(tmp_path: Path, shared_data: Path) -> None:
    src = shared_data / "tinyshakespeare" / "input.txt"
    assert data.main(["text", str(src), str(tmp_path / "d")]) == 0
    meta = data.read_meta(tmp_path / "d")
    assert meta["tokenizer"] == "char" and meta["vocab_size"] == 65
    assert meta["stoi"][meta["itos"][10]] == 10
    tok = from_meta(meta)
    train = open_shard(data.shard_paths(tmp_path / "d", "train")[0])
    val = open_shard(data.shard_paths(tmp_path / "d", "val")[0])
    assert len(train) + len(val) == len(src.read_text())
    assert tok.decode(train[:14].tolist()) == "First Citizen:"


def test_gpt2_prepare_via_cli(tmp_path: Path, shared_data: Path) -> None:
    txt = tmp_path / "t.txt"
    txt.write_text("Hello world. " * 200)
    rc = data.main(["text", str(txt), str(tmp_path / "d"), "--tokenizer", "gpt2", "--bpe-dir", str(shared_data / "gpt2")])
    assert rc == 0
    assert data.read_meta(tmp_path / "d")["tokenizer"] == "gpt2"
    assert open_shard(tmp_path / "d" / "train_000000.bin")[:2].tolist() == [15496, 995]


def test_builtin_corpus_offline(tmp_path: Path) -> None:
    files = data.builtin_corpus_files()
    assert any(f.name == "train.py" for f in files)
    meta = data.prepare_builtin(tmp_path)
    assert meta["tokenizer"] == "char" and meta["train_tokens"] > 10_000 and meta["val_tokens"] > 1000
    assert data.is_prepared(tmp_path)


def test_sampler_is_deterministic_and_splits_ranks(tmp_path: Path) -> None:
    write_shard(tmp_path / "a_train_0.bin", np.arange(5000) % 500)
    write_shard(tmp_path / "a_train_1.bin", np.arange(300) % 500)
    ds = TokenDataset(data.shard_paths(tmp_path, "train"), seq_len=16)
    s = BatchSampler(ds, batch_size=3, slots=4, seed=7)
    x1, y1 = s.batch(5, 2, device=__import__("torch").device("cpu"))
    x2, _ = BatchSampler(ds, 3, 4, 7).batch(5, 2, device=__import__("torch").device("cpu"))
    assert x1.shape == (3, 16) and (x1 == x2).all()
    assert (y1[:, :-1] == x1[:, 1:]).all()  # targets are inputs shifted by one
    slots = [tuple(s.positions(5, k)) for k in range(4)]
    assert len(set(slots)) == 4  # each rank/micro-step reads different windows
    assert tuple(s.positions(6, 2)) != slots[2]


def test_char_tokenizer_rejects_unknown() -> None:
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match="not in this char-level vocabulary"):
        tok.encode("abd")
