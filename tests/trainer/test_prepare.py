"""`python -m trainer.data prepare`: each source through --from on a tiny sample in its public format.

No network: the samples are made here (jsonl/parquet with a `text` column like FineWeb-Edu, llm.c .bin
shards like kjj0/finewebedu10B-gpt2, TinyStories' <|endoftext|>-separated .txt, a Shakespeare .txt);
downloads are exercised against a local HTTP server.
"""

from __future__ import annotations

import functools
import http.server
import importlib.util
import json
import random
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.trainer.helpers import FAST, step_losses
from trainer import data, download, prepare, sources
from trainer.shards import open_shard
from trainer.tokenizer import GPT2_EOT, GPT2Tokenizer
from trainer.train import main as train_main

WORDS = ("the of and to in a is that for it as was with be by on not he this are or his from at which but have "
         "an they you were her she there had one all we can their has been if more when will would who so no "
         "learning photosynthesis mitochondria équation 日本 don't we'll 1984 3.14").split()


def make_docs(n: int, seed: int = 0) -> list[str]:
    rnd = random.Random(seed)
    return [" ".join(rnd.choice(WORDS) for _ in range(rnd.randint(5, 60))) + f"\n\nDocument {i}." for i in range(n)]


def write_jsonl(path: Path, docs: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": d, "id": f"<urn:{i}>", "score": 3.1}) + "\n"
                            for i, d in enumerate(docs)))
    return path


def reference(tok: GPT2Tokenizer, docs: list[str]) -> list[int]:
    out: list[int] = []
    for d in docs:
        out += [GPT2_EOT, *tok.encode(d)]
    return out


def tokens(d: Path, split: str) -> list[int]:
    return [t for p in data.shard_paths(d, split) for t in open_shard(p).tolist()]


def run_prepare(*args: str | Path) -> int:
    return data.main(["prepare", *map(str, args)])


def llmc_shard(path: Path, toks: np.ndarray, magic: int = 20240520) -> None:
    # Written the way llm.c's data_common.write_datafile does, not through our writer.
    header = np.zeros(256, dtype=np.int32)
    header[:3] = (magic, 1, len(toks))
    path.write_bytes(header.tobytes() + toks.astype(np.uint16).tobytes())


@pytest.fixture
def bpe(shared_data: Path) -> Path:
    return shared_data / "gpt2"


@pytest.fixture
def progress_log(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every progress.json write, unthrottled."""
    writes: list[dict[str, Any]] = []
    real = prepare.atomic_write_json

    def recording(path: Path, obj: Any) -> None:
        if Path(path).name == prepare.PROGRESS_NAME:
            writes.append(dict(obj))
        real(path, obj)

    monkeypatch.setattr(prepare, "atomic_write_json", recording)
    monkeypatch.setattr(prepare, "PROGRESS_EVERY_S", 0.0)
    return writes


def test_gpt2_124m_data_phase_end_to_end(tmp_path: Path, bpe: Path, progress_log: list[dict[str, Any]]) -> None:
    # FineWeb-Edu as jsonl with a text column, tokenized on 2 worker processes, then trained on.
    docs = make_docs(300)
    src = tmp_path / "fineweb-edu"
    src.mkdir()
    write_jsonl(src / "000_00000.jsonl", docs)
    out = tmp_path / "data"
    rc = run_prepare("--source", "fineweb-edu", "--tokenizer", "gpt2", "--out", out, "--from", src, "--bpe-dir", bpe,
                     "--workers", 2, "--max-tokens", 6000, "--shard-size", 3000, "--val-tokens", 2000)
    assert rc == 0
    ref = reference(GPT2Tokenizer(bpe), docs)
    assert len(ref) > 8000  # the budget, not the input, ends the train split
    assert sorted(p.name for p in out.glob("*.bin")) == [
        "finewebedu_train_000001.bin", "finewebedu_train_000002.bin", "finewebedu_val_000000.bin"]
    assert tokens(out, "val") == ref[:2000]  # llm.c: the first shard of the stream is val
    assert tokens(out, "train") == ref[2000:8000]
    meta = data.read_meta(out)
    assert (meta["tokenizer"], meta["vocab_size"], meta["eot"]) == ("gpt2", 50257, GPT2_EOT)
    assert (meta["source"], meta["train_tokens"], meta["val_tokens"], meta["shards"]) == ("fineweb-edu", 6000, 2000, 3)
    ready = json.loads((out / "READY").read_text())
    assert ready["source"] == "fineweb-edu" and ready["max_tokens"] == 6000 and ready["from"] == str(src)
    stages = [w["stage"] for w in progress_log]
    assert "tokenize" in stages and stages[-1] == "done"
    for w in progress_log:
        assert set(w) == {"stage", "fraction", "tokens", "message", "updated_at"} and 0 <= w["fraction"] <= 1
    counts = [w["tokens"] for w in progress_log if w["stage"] == "tokenize"]
    assert counts == sorted(counts) and progress_log[-1]["tokens"] == 8000
    assert json.loads((out / "progress.json").read_text())["stage"] == "done"
    assert data.is_prepared(out)

    run = tmp_path / "run"
    assert train_main(["--data-dir", str(out), "--out-dir", str(run), *FAST, "--max-iters", "3",
                       "--log-interval", "1"]) == 0
    assert sorted(step_losses(run)) == [1, 2, 3]


def test_workers_give_the_same_tokens(tmp_path: Path, bpe: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prepare, "DOCS_PER_TASK", 7)  # many small tasks, spread over both workers
    src = write_jsonl(tmp_path / "docs.jsonl", make_docs(200, seed=1))
    outs = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        assert run_prepare("--source", "fineweb-edu", "--out", out, "--from", src, "--bpe-dir", bpe,
                           "--workers", workers, "--shard-size", 2500, "--val-tokens", 1000) == 0
        outs.append({p.name: p.read_bytes() for p in out.glob("*.bin")})
    assert outs[0] == outs[1] and len(outs[0]) >= 3


def test_ready_is_reused_and_a_partial_attempt_redone(tmp_path: Path, bpe: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    src = write_jsonl(tmp_path / "docs.jsonl", make_docs(120))
    out = tmp_path / "data"
    args = ["--source", "fineweb-edu", "--out", out, "--from", src, "--bpe-dir", bpe, "--workers", 1,
            "--shard-size", 2000, "--val-tokens", 500]
    assert run_prepare(*args) == 0
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    def no_tokenizing(*a: Any) -> None:
        raise AssertionError("tokenized again")

    monkeypatch.setattr(prepare, "ParallelEncoder", no_tokenizing)
    capsys.readouterr()
    assert run_prepare(*args) == 0  # same arguments: READY, nothing redone
    assert "reused" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes
    with pytest.raises(AssertionError, match="tokenized again"):
        run_prepare(*args, "--max-tokens", 1000)  # other arguments: prepared anew
    monkeypatch.undo()

    # A previous attempt that died: no READY, a stray shard. It is cleaned, not mixed in.
    (out / "READY").unlink(missing_ok=True)
    (out / "finewebedu_train_000099.bin").write_bytes(b"partial")
    assert not data.is_prepared(out)
    assert run_prepare(*args) == 0
    assert not (out / "finewebedu_train_000099.bin").exists() and (out / "READY").is_file()
    assert tokens(out, "train")[:50] == reference(GPT2Tokenizer(bpe), make_docs(120))[500:550]


def test_parquet_like_fineweb(tmp_path: Path, bpe: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    docs = make_docs(150, seed=2)
    src = tmp_path / "sample" / "10BT"
    src.mkdir(parents=True)
    pq.write_table(pa.table({"text": docs[:80], "id": [str(i) for i in range(80)]}), src / "000_00000.parquet",
                   row_group_size=16)
    pq.write_table(pa.table({"text": docs[80:], "id": [str(i) for i in range(70)]}), src / "001_00000.parquet")
    out = tmp_path / "data"
    assert run_prepare("--source", "fineweb-edu", "--out", out, "--from", src, "--bpe-dir", bpe, "--workers", 1,
                       "--val-tokens", 700) == 0
    ref = reference(GPT2Tokenizer(bpe), docs)
    assert tokens(out, "val") == ref[:700] and tokens(out, "train") == ref[700:]


def test_pretokenized_llmc_shards(tmp_path: Path) -> None:
    # kjj0/finewebedu10B-gpt2's layout: finewebedu_val_000000.bin, finewebedu_train_000001.bin, ...
    src = tmp_path / "finewebedu10B"
    src.mkdir()
    rng = np.random.default_rng(0)
    shards = {name: rng.integers(0, 50257, n) for name, n in
              [("finewebedu_val_000000.bin", 5000), ("finewebedu_train_000001.bin", 8000),
               ("finewebedu_train_000002.bin", 8000), ("finewebedu_train_000003.bin", 8000)]}
    for name, toks in shards.items():
        llmc_shard(src / name, toks)
    out = tmp_path / "data"
    # No --bpe-dir: shards that are already GPT-2 tokens need no tokenizer.
    assert run_prepare("--source", "fineweb-edu", "--out", out, "--from", src, "--max-tokens", 10_000,
                       "--val-tokens", 1000) == 0
    assert tokens(out, "val") == shards["finewebedu_val_000000.bin"][:1000].tolist()
    want = np.concatenate([shards["finewebedu_train_000001.bin"], shards["finewebedu_train_000002.bin"][:2000]])
    assert tokens(out, "train") == want.tolist()
    assert sorted(p.name for p in out.glob("*.bin")) == [
        "finewebedu_train_000001.bin", "finewebedu_train_000002.bin", "finewebedu_val_000000.bin"]
    meta = data.read_meta(out)
    assert meta["tokenizer"] == "gpt2" and (meta["train_tokens"], meta["val_tokens"]) == (10_000, 1000)


def test_shakespeare_txt_char_and_gpt2(tmp_path: Path, shared_data: Path) -> None:
    text = (shared_data / "tinyshakespeare" / "input.txt").read_text()[:20_000]
    src = tmp_path / "tinyshakespeare"
    src.mkdir()
    (src / "input.txt").write_text(text)
    cut = int(len(text) * 0.9)  # nanoGPT's shakespeare prepare.py split
    out = tmp_path / "char"
    assert run_prepare("--source", "shakespeare", "--out", out, "--from", src) == 0
    meta = data.read_meta(out)
    assert meta["tokenizer"] == "char" and meta["vocab_size"] == len(set(text))
    itos = meta["itos"]
    assert "".join(itos[i] for i in tokens(out, "train")) == text[:cut]
    assert "".join(itos[i] for i in tokens(out, "val")) == text[cut:]

    out = tmp_path / "gpt2"
    assert run_prepare("--source", "shakespeare", "--tokenizer", "gpt2", "--out", out, "--from", src,
                       "--bpe-dir", shared_data / "gpt2") == 0
    tok = GPT2Tokenizer(shared_data / "gpt2")
    assert tokens(out, "train") == tok.encode(text[:cut]) and tokens(out, "val") == tok.encode(text[cut:])


def test_tinystories_txt(tmp_path: Path, bpe: Path) -> None:
    stories = make_docs(60, seed=3)
    src = tmp_path / "TinyStories"
    src.mkdir()
    for name, part in (("TinyStoriesV2-GPT4-train.txt", stories[:50]), ("TinyStoriesV2-GPT4-valid.txt", stories[50:])):
        (src / name).write_text("".join(f"{s}\n<|endoftext|>\n" for s in part))
    out = tmp_path / "data"
    assert run_prepare("--source", "tinystories", "--out", out, "--from", src, "--bpe-dir", bpe, "--workers", 1,
                       "--max-tokens", 1500) == 0
    tok = GPT2Tokenizer(bpe)
    assert tokens(out, "val") == reference(tok, stories[50:])
    assert tokens(out, "train") == reference(tok, stories[:50])[:1500]


def test_builtin_source(tmp_path: Path) -> None:
    assert run_prepare("--source", "builtin", "--out", tmp_path / "d") == 0
    meta = data.read_meta(tmp_path / "d")
    assert meta["tokenizer"] == "char" and meta["train_tokens"] > 10_000 and data.is_prepared(tmp_path / "d")


def one_error_line(capsys: pytest.CaptureFixture[str], rc: int) -> str:
    err = capsys.readouterr().err
    assert rc == 3, err
    assert err.startswith("data: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


def test_bad_sources_exit_3_with_one_line(tmp_path: Path, bpe: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    rc = run_prepare("--source", "fineweb-edu", "--out", out, "--from", tmp_path / "nowhere")
    assert "no such file" in one_error_line(capsys, rc)

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jsonl").write_text('{"content": "no text field"}\n')
    rc = run_prepare("--source", "fineweb-edu", "--out", out, "--from", bad, "--bpe-dir", bpe, "--workers", 1)
    assert '"text"' in one_error_line(capsys, rc)
    assert not (out / "READY").exists() and not data.is_prepared(out)

    shards = tmp_path / "shards"
    shards.mkdir()
    llmc_shard(shards / "x_val_000000.bin", np.arange(10), magic=20240801)  # llm.c's llama-3 magic
    llmc_shard(shards / "x_train_000001.bin", np.arange(10), magic=20240801)
    rc = run_prepare("--source", "fineweb-edu", "--out", out, "--from", shards)
    assert "magic" in one_error_line(capsys, rc)

    rc = run_prepare("--source", "tinystories", "--tokenizer", "char", "--out", out, "--from", bad)
    assert "gpt2" in one_error_line(capsys, rc)

    (bad / "a.jsonl").unlink()
    (bad / "000_00000.parquet").write_bytes(b"not parquet")
    rc = run_prepare("--source", "fineweb-edu", "--out", out, "--from", bad, "--bpe-dir", bpe, "--workers", 1)
    err = one_error_line(capsys, rc)
    assert ("not a parquet file" in err) if importlib.util.find_spec("pyarrow") else ("pip install pyarrow" in err)


def test_failed_download_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    with serve(tmp_path) as base:  # a server that has no such file: 404
        monkeypatch.setattr(sources, "SHAKESPEARE_URL", f"{base}/input.txt")
        rc = run_prepare("--source", "shakespeare", "--out", tmp_path / "out")
    err = one_error_line(capsys, rc)
    assert f"cannot download shakespeare from {base}/input.txt: HTTP 404" in err and "--from DIR" in err
    monkeypatch.setattr(download, "RETRIES", 1)
    monkeypatch.setattr(download, "BACKOFF_S", 0.0)
    monkeypatch.setattr(sources, "SHAKESPEARE_URL", f"{base}/input.txt")  # nothing listens there now
    rc = run_prepare("--source", "shakespeare", "--out", tmp_path / "out")
    assert "after 2 attempts" in one_error_line(capsys, rc)


def test_fineweb_token_shards_over_https_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    # The instance's path: kjj0/finewebedu10B-gpt2 under HF_ENDPOINT, only the bytes the budget needs.
    repo = tmp_path / "hub" / "datasets" / "kjj0" / "finewebedu10B-gpt2" / "resolve" / "main"
    repo.mkdir(parents=True)
    rng = np.random.default_rng(1)
    shards = {name: rng.integers(0, 50257, 5000) for _, name in sources.fineweb_token_files()[:3]}
    for name, toks in shards.items():
        llmc_shard(repo / name, toks)
    monkeypatch.setattr(sources, "FINEWEB_TOKENS_PER_SHARD", 5000)
    monkeypatch.setattr(sources, "FINEWEB_TRAIN_SHARDS", 2)
    out = tmp_path / "data"
    with serve(tmp_path / "hub") as base:
        monkeypatch.setenv("HF_ENDPOINT", base)
        assert run_prepare("--source", "fineweb-edu", "--out", out, "--max-tokens", 7000, "--val-tokens", 1000) == 0
        (repo / "finewebedu_val_000000.bin").unlink()  # gone from the hub: no shards, so parquet, also gone
        rc = run_prepare("--source", "fineweb-edu", "--out", tmp_path / "other", "--val-tokens", 1000)
    one_error_line(capsys, rc)
    assert tokens(out, "val") == shards["finewebedu_val_000000.bin"][:1000].tolist()
    want = np.concatenate([shards["finewebedu_train_000001.bin"], shards["finewebedu_train_000002.bin"][:2000]])
    assert tokens(out, "train") == want.tolist()
    assert data.read_meta(out)["origin"].startswith(base) and not (out / "download").exists()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


def _server(directory: Path) -> http.server.ThreadingHTTPServer:
    return http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(directory)))


class serve:  # noqa: N801 - used as a context manager, reads like a function
    def __init__(self, directory: Path) -> None:
        self.httpd = _server(directory)

    def __enter__(self) -> str:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_download_streams_to_part_and_caps(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    body = bytes(range(256)) * 5000
    (site / "f.bin").write_bytes(body)
    seen: list[tuple[int, int | None]] = []
    with serve(site) as base:
        got = download.fetch(f"{base}/f.bin", tmp_path / "a" / "f.bin", on_bytes=lambda n, t: seen.append((n, t)))
        assert got.read_bytes() == body and not (tmp_path / "a" / "f.bin.part").exists()
        assert seen[-1] == (len(body), len(body))
        part = tmp_path / "b" / "f.bin.part"
        part.parent.mkdir()
        part.write_bytes(b"stale")  # a server that ignores Range sends it all again: start over
        assert download.fetch(f"{base}/f.bin", tmp_path / "b" / "f.bin", max_bytes=3000).read_bytes() == body[:3000]
        with pytest.raises(download.DownloadError) as e:
            download.fetch(f"{base}/missing.bin", tmp_path / "c" / "missing.bin")
    assert e.value.missing and "404" in e.value.reason



def test_fineweb10b_shards_over_https_keep_one_val_token_more(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # kjj0/fineweb10B-gpt2 (modded-nanogpt's data/cached_fineweb10B.py): fineweb_val_000000.bin, then
    # fineweb_train_000001.bin ...; the val set keeps val_tokens + 1: the last prediction's target.
    repo = tmp_path / "hub" / "datasets" / "kjj0" / "fineweb10B-gpt2" / "resolve" / "main"
    repo.mkdir(parents=True)
    rng = np.random.default_rng(2)
    names = [name for _, name in sources.fineweb_token_files("fineweb", 2)]
    assert names == ["fineweb_val_000000.bin", "fineweb_train_000001.bin", "fineweb_train_000002.bin"]
    shards = {name: rng.integers(0, 50257, 5000) for name in names}
    for name, toks in shards.items():
        llmc_shard(repo / name, toks)
    monkeypatch.setattr(sources, "FINEWEB_TOKENS_PER_SHARD", 5000)
    monkeypatch.setattr(sources, "FINEWEB10B_TRAIN_SHARDS", 2)
    out = tmp_path / "data"
    with serve(tmp_path / "hub") as base:
        monkeypatch.setenv("HF_ENDPOINT", base)
        assert run_prepare("--source", "fineweb10B", "--out", out, "--max-tokens", 7000, "--val-tokens", 1000) == 0
    assert tokens(out, "val") == shards["fineweb_val_000000.bin"][:1001].tolist()
    want = np.concatenate([shards["fineweb_train_000001.bin"], shards["fineweb_train_000002.bin"][:2000]])
    assert tokens(out, "train") == want.tolist()
    meta = data.read_meta(out)
    assert meta["source"] == "fineweb10B" and meta["tokenizer"] == "gpt2" and meta["origin"].startswith(base)
    # A local copy (--from) gives the same tokens.
    local = tmp_path / "local"
    assert run_prepare("--source", "fineweb10B", "--out", local, "--from", repo, "--max-tokens", 7000,
                       "--val-tokens", 1000) == 0
    assert tokens(local, "val") == tokens(out, "val") and tokens(local, "train") == tokens(out, "train")
    # The trainer's standard evaluation names it FineWeb val and reads exactly the tokens asked for.
    from tests.trainer.helpers import FAST, records
    from trainer import contract
    from trainer.train import main as train

    run = tmp_path / "run"
    assert train([*FAST, "--data-dir", str(out), "--out-dir", str(run), "--max-iters", "2", "--final-val-tokens", "1000"]) == 0
    (rec,) = records(run, contract.RECORD_FINAL_VAL)
    assert (rec["split"], rec["tokens"], rec["step"]) == (contract.FINEWEB_VAL, 1000, 2)
