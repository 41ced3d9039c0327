"""`python -m trainer.data prepare`: fetch a dataset and write llm.c token shards, on the instance.

    --source builtin|shakespeare|tinystories|fineweb-edu|fineweb10B --tokenizer char|gpt2 --out DIR
    [--max-tokens N] [--workers N] [--from DIR]

DIR receives `<name>_val_000000.bin`, `<name>_train_NNNNNN.bin`, meta.json, progress.json (rewritten
atomically, at most once a second, while it works) and, last, READY: the JSON of the arguments. The
same arguments again find READY and return at once; a directory without READY is a partial attempt,
cleaned and redone (downloads that finished are kept under DIR/download/ until the end).
`--from DIR` reads a local copy in the source's public format instead of the network.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from trainer import contract, sources
from trainer.download import DownloadError, fetch
from trainer.manifest import atomic_write_json
from trainer.shards import HEADER_BYTES, HEADER_INTS, MAGIC, VERSION, write_shard
from trainer.tokenizer import GPT2_EOT, CharTokenizer, GPT2Tokenizer, Tokenizer

SOURCES = ("builtin", "shakespeare", "tinystories", "fineweb-edu", "fineweb10B")
DEFAULT_TOKENIZER = {"builtin": "char", "shakespeare": "char", "tinystories": "gpt2", "fineweb-edu": "gpt2",
                     "fineweb10B": "gpt2"}
GPT2_ONLY = ("tinystories", "fineweb-edu", "fineweb10B")
META_NAME = contract.META
PROGRESS_NAME = contract.PROGRESS
READY_NAME = contract.READY
DOWNLOAD_DIR = "download"
FORMAT_VERSION = 1  # part of READY: a change in how shards are made invalidates old ones
VAL_FRACTION = 0.1  # nanoGPT's 90/10 split for whole-text sources
SHARD_TOKENS = 100_000_000  # llm.c's fineweb.py shard size
VAL_TOKENS = 10_485_760  # modded-nanogpt evaluates on this many FineWeb val tokens
BYTES_PER_TOKEN = 6  # generous for English under GPT-2 BPE (~4.2): how much of a big .txt to download
DOCS_PER_TASK = 64
PROGRESS_EVERY_S = 1.0


class DataError(Exception):
    """A failure the user can act on; its message is the one line the CLI prints."""


@dataclass
class Result:
    meta: dict[str, Any]
    reused: bool


# ---- progress.json ------------------------------------------------------------------------------


class Progress:
    """Writes DIR/progress.json atomically, at most every PROGRESS_EVERY_S unless the stage changes."""

    def __init__(self, out: Path) -> None:
        self.path = out / PROGRESS_NAME
        self.stage = ""
        self.last = 0.0

    def update(self, stage: str, fraction: float, tokens: int, message: str, force: bool = False) -> None:
        now = time.time()
        if not force and stage == self.stage and now - self.last < PROGRESS_EVERY_S:
            return
        self.stage, self.last = stage, now
        values = (stage, round(min(max(fraction, 0.0), 1.0), 4), int(tokens), message, now)
        atomic_write_json(self.path, dict(zip(contract.PROGRESS_FIELDS, values, strict=True)))


# ---- shards -------------------------------------------------------------------------------------


class ShardWriter:
    """Streams tokens into <prefix>_<split>_NNNNNN.bin; val is shard 0 and train continues from 1."""

    def __init__(self, out: Path, prefix: str, shard_tokens: int) -> None:
        self.out, self.prefix, self.shard_tokens = out, prefix, shard_tokens
        self.buf = np.empty(shard_tokens, dtype=np.uint16)
        self.fill = 0
        self.index = 0
        self.counts = {"train": 0, "val": 0}
        self.files: list[str] = []

    def add(self, tokens: np.ndarray, split: str) -> None:
        while tokens.size:
            take = min(tokens.size, self.shard_tokens - self.fill)
            self.buf[self.fill : self.fill + take] = tokens[:take]
            self.fill += take
            tokens = tokens[take:]
            if self.fill == self.shard_tokens:
                self.flush(split)

    def flush(self, split: str) -> None:
        if self.fill:
            name = f"{self.prefix}_{split}_{self.index:06d}.bin"
            write_shard(self.out / name, self.buf[: self.fill])
            self.files.append(name)
            self.counts[split] += self.fill
            self.index += 1
            self.fill = 0


def _shard_header(path: Path) -> int:
    """Token count of an llm.c shard (possibly cut short by a capped download), after checking its magic."""
    header = np.fromfile(path, dtype=np.int32, count=HEADER_INTS)
    if header.size < HEADER_INTS or header[0] != MAGIC:
        raise DataError(f"{path.name} is not an llm.c token shard (bad magic, expected {MAGIC}); "
                        "pass llm.c GPT-2 shards, or text as jsonl/parquet")
    if header[1] != VERSION:
        raise DataError(f"{path.name}: llm.c shard version {int(header[1])}, only {VERSION} (uint16 GPT-2) works")
    return int(header[2])


def _cut_shard(path: Path, take: int | None) -> int:
    """Keep the first `take` tokens of the shard at `path` (all if None), fixing its header; the count kept."""
    have = _shard_header(path)
    present = (path.stat().st_size - HEADER_BYTES) // 2
    keep = have if take is None else min(take, have)
    if present < keep:
        raise DataError(f"{path.name}: holds {present} tokens, its header says {have} (truncated download?)")
    with open(path, "r+b") as f:
        f.seek(8)
        f.write(np.int32(keep).tobytes())
        f.truncate(HEADER_BYTES + 2 * keep)
    return keep


# ---- parallel GPT-2 tokenization ----------------------------------------------------------------

_worker_tok: GPT2Tokenizer | None = None


def _init_worker(bpe_dir: str | None) -> None:
    global _worker_tok
    _worker_tok = GPT2Tokenizer(bpe_dir)


def _encode_docs(tok: Tokenizer, docs: list[str]) -> np.ndarray:
    # As llm.c's fineweb.py: every document starts with <|endoftext|>, which delimits them.
    ids: list[int] = []
    for doc in docs:
        ids.append(GPT2_EOT)
        ids.extend(tok.encode(doc))
    return np.asarray(ids, dtype=np.uint16)


def _encode_task(docs: list[str]) -> np.ndarray:
    assert _worker_tok is not None
    return _encode_docs(_worker_tok, docs)


def _batched(docs: Iterable[str], n: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for doc in docs:
        batch.append(doc)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


class ParallelEncoder:
    """GPT-2-encodes a stream of documents on `workers` processes, in order, with bounded memory.

    At most 2 x workers tasks are in flight, so a multi-GB input is never queued whole (Pool.imap
    would read its iterable as fast as it can). The token stream is the same for any worker count.
    """

    def __init__(self, tok: GPT2Tokenizer, workers: int) -> None:
        self.tok, self.workers = tok, workers
        self.pool = None
        if workers > 1:
            # spawn: tiktoken's Rust threads make fork unsafe.
            self.pool = get_context("spawn").Pool(workers, _init_worker, (tok.bpe_dir,))

    def __enter__(self) -> ParallelEncoder:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()

    def encode(self, docs: Iterable[str]) -> Iterator[np.ndarray]:
        if self.pool is None:
            for batch in _batched(docs, DOCS_PER_TASK):
                yield _encode_docs(self.tok, batch)
            return
        pending: deque[Any] = deque()
        for batch in _batched(docs, DOCS_PER_TASK):
            pending.append(self.pool.apply_async(_encode_task, (batch,)))
            if len(pending) >= 2 * self.workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def gpt2_tokenizer(bpe_dir: str | None) -> GPT2Tokenizer:
    try:
        return GPT2Tokenizer(bpe_dir)
    except ImportError:
        raise DataError("the gpt2 tokenizer needs tiktoken: pip install tiktoken") from None
    except (OSError, ValueError) as e:
        raise DataError(f"cannot load the GPT-2 BPE ({one_line(e)}); the instance needs a network, "
                        "or pass --bpe-dir DIR holding encoder.json and vocab.bpe") from None


# ---- the preparation ----------------------------------------------------------------------------


@dataclass
class Job:
    source: str
    tokenizer: str
    out: Path
    max_tokens: int | None
    workers: int
    from_dir: Path | None
    bpe_dir: str | None
    shard_tokens: int
    val_tokens: int
    progress: Progress

    def ready_args(self) -> dict[str, Any]:
        # Workers and bpe_dir change how, not what: the tokens are the same.
        return {"source": self.source, "tokenizer": self.tokenizer, "max_tokens": self.max_tokens,
                "from": str(self.from_dir) if self.from_dir else None, "shard_tokens": self.shard_tokens,
                "val_tokens": self.val_tokens, "format": FORMAT_VERSION}

    def download(self, url: str, name: str, index: int, count: int, max_bytes: int | None = None) -> Path:
        """Fetch `url` (its first `max_bytes`) into DIR/download/, reporting stage "download" over `count` files.

        A capped copy carries its cap in its name, so a later attempt with another budget never takes a
        shorter file for a complete one.
        """
        p = Path(name)
        local = name if max_bytes is None else f"{p.stem}.first{max_bytes}B{p.suffix}"

        def on_bytes(got: int, total: int | None) -> None:
            frac = (index + (got / total if total else 0.0)) / count
            self.progress.update("download", frac, 0, f"downloading {name}: {got / 1e6:.1f} MB")

        self.progress.update("download", index / count, 0, f"downloading {name}", force=True)
        try:
            return fetch(url, self.out / DOWNLOAD_DIR / local, max_bytes, on_bytes)
        except DownloadError as e:
            raise DataError(f"cannot download {self.source} from {e.url}: {e.reason}; "
                            "the instance needs a network, or pass --from DIR with a local copy") from e


def one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def prepare(source: str, out: str | os.PathLike[str], tokenizer: str | None = None, max_tokens: int | None = None,
            workers: int | None = None, from_dir: str | os.PathLike[str] | None = None, bpe_dir: str | None = None,
            shard_tokens: int = SHARD_TOKENS, val_tokens: int = VAL_TOKENS) -> Result:
    """Prepare `source` into `out` (see the module docstring); raises DataError with a one-line message."""
    if source not in SOURCES:
        raise DataError(f"unknown source {source!r}: choose from {', '.join(SOURCES)}")
    tokenizer = tokenizer or DEFAULT_TOKENIZER[source]
    if tokenizer not in ("char", "gpt2"):
        raise DataError(f"unknown tokenizer {tokenizer!r}: use char or gpt2")
    if tokenizer == "char" and source in GPT2_ONLY:
        raise DataError(f"{source} is prepared with the gpt2 tokenizer only: pass --tokenizer gpt2")
    if (max_tokens is not None and max_tokens <= 0) or shard_tokens <= 0 or val_tokens <= 0:
        raise DataError("--max-tokens, --shard-size and --val-tokens must be positive")
    outp = Path(out).resolve()
    src = Path(from_dir).resolve() if from_dir else None
    if src is not None:
        if source == "builtin":
            raise DataError("the builtin source is gpurun's own files: it takes no --from")
        if not src.exists():
            raise DataError(f"--from {src}: no such file or directory (a local copy of {source} in its "
                            "public format)")
        if src == outp:
            raise DataError("--from and --out are the same directory: prepare into another one")
    outp.mkdir(parents=True, exist_ok=True)
    job = Job(source, tokenizer, outp, max_tokens, max(1, workers or os.cpu_count() or 1), src, bpe_dir,
              shard_tokens, val_tokens, Progress(outp))
    ready = _read_ready(outp)
    if ready == job.ready_args() and (outp / META_NAME).is_file() and _has_shards(outp):
        return Result(_read_json(outp / META_NAME), reused=True)
    _clean(outp)
    job.progress.update("download", 0.0, 0, f"preparing {source}", force=True)
    meta = {"builtin": _builtin, "shakespeare": _shakespeare, "tinystories": _tinystories,
            "fineweb-edu": _fineweb, "fineweb10B": _fineweb10b}[source](job)
    meta |= {"source": source, "prepared_at": time.time()}
    atomic_write_json(outp / META_NAME, meta)
    shutil.rmtree(outp / DOWNLOAD_DIR, ignore_errors=True)
    total = meta["train_tokens"] + meta["val_tokens"]
    job.progress.update("done", 1.0, total, f"{source}: {meta['train_tokens']} train + {meta['val_tokens']} "
                        "val tokens", force=True)
    atomic_write_json(outp / READY_NAME, job.ready_args())  # last: its presence means complete
    return Result(meta, reused=False)


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _read_ready(out: Path) -> dict[str, Any] | None:
    try:
        return _read_json(out / READY_NAME)
    except (OSError, ValueError):
        return None


def _has_shards(out: Path) -> bool:
    return any(out.glob("*train*.bin")) and any(out.glob("*val*.bin"))


def _clean(out: Path) -> None:
    """Remove what a previous attempt left (keeping finished downloads); only files this module writes."""
    (out / READY_NAME).unlink(missing_ok=True)
    for p in [*out.glob("*.bin"), *out.glob("*.part"), *out.glob(".*.tmp*"), out / META_NAME, out / PROGRESS_NAME]:
        if p.is_file():
            p.unlink()
    for p in (out / DOWNLOAD_DIR).glob("*.part"):
        p.unlink()


# ---- whole-text sources: builtin, shakespeare ---------------------------------------------------


def _text_shards(job: Job, text: str, prefix: str) -> dict[str, Any]:
    """nanoGPT's prepare.py: the first 90% of the characters train, the rest val; --max-tokens caps train."""
    job.progress.update("tokenize", 0.0, 0, f"tokenizing {len(text)} characters", force=True)
    tok: Tokenizer = CharTokenizer.from_text(text) if job.tokenizer == "char" else gpt2_tokenizer(job.bpe_dir)
    cut = int(len(text) * (1 - VAL_FRACTION))
    train = np.asarray(tok.encode(text[:cut]), dtype=np.uint16)[: job.max_tokens]
    val = np.asarray(tok.encode(text[cut:]), dtype=np.uint16)
    write_shard(job.out / f"{prefix}_val_000000.bin", val)
    write_shard(job.out / f"{prefix}_train_000001.bin", train)
    return tok.meta() | {"train_tokens": int(train.size), "val_tokens": int(val.size), "shards": 2}


def _builtin(job: Job) -> dict[str, Any]:
    return _text_shards(job, sources.builtin_corpus_text(), "builtin") | {"origin": "builtin corpus"}


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def _shakespeare(job: Job) -> dict[str, Any]:
    if job.from_dir is None:
        path = job.download(sources.SHAKESPEARE_URL, "input.txt", 0, 1)
        origin = sources.SHAKESPEARE_URL
    elif job.from_dir.is_file():
        path = origin = job.from_dir
    else:
        txts = sorted(job.from_dir.glob("*.txt"))
        named = [p for p in txts if p.name == "input.txt"]
        if not named and len(txts) != 1:
            raise DataError(f"--from {job.from_dir}: expected tiny Shakespeare's input.txt (or one .txt file)")
        path = origin = (named or txts)[0]
    return _text_shards(job, _read_text(path), "shakespeare") | {"origin": str(origin)}


# ---- document sources: tinystories, fineweb-edu --------------------------------------------------


def _fill(stream: Iterable[np.ndarray], writer: ShardWriter, split: str, limit: int | None,
          report: Callable[[], None]) -> np.ndarray:
    """Write `stream` into `writer` until `limit` tokens; returns the tokens past the limit (the next split's)."""
    written = 0
    for ids in stream:
        if limit is not None and written + ids.size >= limit:
            writer.add(ids[: limit - written], split)
            writer.flush(split)
            return ids[limit - written :]
        writer.add(ids, split)
        written += ids.size
        report()
    writer.flush(split)
    return np.empty(0, dtype=np.uint16)


def _tokenize_documents(job: Job, prefix: str, val_docs: sources.Documents | None,
                        train_docs: sources.Documents) -> dict[str, Any]:
    """One val shard (index 0) of up to val_tokens from `val_docs`, or else from the start of the train
    stream as llm.c's fineweb.py does; then train shards from index 1, up to max_tokens (the last
    document is cut, as llm.c cuts documents at shard boundaries)."""
    tok = gpt2_tokenizer(job.bpe_dir)
    val = ShardWriter(job.out, prefix, job.val_tokens)
    train = ShardWriter(job.out, prefix, job.shard_tokens)
    train.index = 1
    target = (job.max_tokens or 0) + job.val_tokens

    def report() -> None:
        done = val.counts["val"] + val.fill + train.counts["train"] + train.fill
        docs = val_docs if val_docs is not None and train.counts["train"] + train.fill == 0 else train_docs
        frac = done / target if job.max_tokens else docs.fraction
        job.progress.update("tokenize", frac, done, f"tokenizing with {job.workers} workers: {done} tokens")

    job.progress.update("tokenize", 0.0, 0, f"tokenizing with {job.workers} workers", force=True)
    with ParallelEncoder(tok, job.workers) as enc:
        stream = enc.encode(train_docs)
        if val_docs is not None:
            _fill(enc.encode(val_docs), val, "val", job.val_tokens, report)
            rest = np.empty(0, dtype=np.uint16)
        else:
            rest = _fill(stream, val, "val", job.val_tokens, report)
        _fill(itertools.chain([rest], stream), train, "train", job.max_tokens, report)
    if not train.counts["train"] or not val.counts["val"]:
        raise DataError(f"{job.source}: the input gave {train.counts['train']} train and {val.counts['val']} val "
                        f"tokens; it needs more documents (the first --val-tokens {job.val_tokens} are val)")
    return tok.meta() | {"train_tokens": train.counts["train"], "val_tokens": val.counts["val"],
                         "shards": len(val.files) + len(train.files)}


def _tinystories(job: Job) -> dict[str, Any]:
    if job.from_dir is None:
        names = sources.TINYSTORIES_FILES
        cap = job.max_tokens * BYTES_PER_TOKEN + (1 << 20) if job.max_tokens else None
        val = job.download(sources.hf_url(sources.TINYSTORIES_REPO, names["val"]), names["val"], 0, 2)
        train = job.download(sources.hf_url(sources.TINYSTORIES_REPO, names["train"]), names["train"], 1, 2, cap)
        val_paths, train_paths, origin = [val], [train], sources.hf_url(sources.TINYSTORIES_REPO, "")
    else:
        d = job.from_dir if job.from_dir.is_dir() else job.from_dir.parent
        train_paths, val_paths, origin = sources.split_files(d, "train"), sources.split_files(d, "val"), str(d)
        if not train_paths:
            raise DataError(f"--from {d}: no TinyStories *train*.txt (or .jsonl/.parquet with a text column)")
    val_docs = sources.Documents(val_paths) if val_paths else None
    return _tokenize_documents(job, "tinystories", val_docs, sources.Documents(train_paths)) | {"origin": origin}


def _fineweb(job: Job) -> dict[str, Any]:
    if job.from_dir is not None:
        d = job.from_dir
        files = [d] if d.is_file() else sorted(p for p in d.iterdir() if p.is_file())
        bins = [p for p in files if p.suffix == ".bin"]
        if bins:
            return _copy_token_shards(job, bins) | {"origin": str(d)}
        docs = [p for p in files if p.suffix in (".jsonl", ".parquet")]
        if not docs:
            raise DataError(f"--from {d}: no llm.c .bin shards and no .jsonl/.parquet files with a text column")
        return _tokenize_documents(job, "finewebedu", None, sources.Documents(docs)) | {"origin": str(d)}
    try:
        return _download_token_shards(job)
    except DataError as e:
        if not (isinstance(e.__cause__, DownloadError) and e.__cause__.missing):
            raise
    # The pre-tokenized shards are gone from their repository: tokenize the public parquet here instead.
    _clean(job.out)
    return _download_parquet(job)


def _fineweb10b(job: Job) -> dict[str, Any]:
    """kjj0/fineweb10B-gpt2 (or a local copy of its .bin shards): no parquet fallback, these shards
    are the speedrun's standard. One val token more than val_tokens: the target of the last of
    FINEWEB_VAL_TOKENS predictions (modded-nanogpt's val loader reads B*T+1 tokens a batch)."""
    if job.from_dir is not None:
        d = job.from_dir
        bins = [d] if d.is_file() else sorted(p for p in d.iterdir() if p.is_file() and p.suffix == ".bin")
        if not bins:
            raise DataError(f"--from {d}: no llm.c .bin shards (fineweb_val_000000.bin, fineweb_train_*.bin)")
        return _copy_token_shards(job, bins, "fineweb", val_extra=1) | {"origin": str(d)}
    return _download_token_shards(job, sources.FINEWEB10B_TOKENS_REPO, "fineweb", sources.FINEWEB10B_TRAIN_SHARDS,
                                  val_extra=1)


def _shard_plan(job: Job, counts: list[tuple[str, int]], val_extra: int = 0) -> list[int]:
    """Tokens to take from each (split, tokens) shard: val_tokens (+ val_extra) of the first val,
    max_tokens of train."""
    plan: list[int] = []
    left = job.max_tokens
    have_val = False
    for split, n in counts:
        if split == "val":
            take = 0 if have_val else min(n, job.val_tokens + val_extra)
            have_val = True
        else:
            take = n if left is None else min(n, left)
            left = None if left is None else left - take
        plan.append(take)
    return plan


def _copy_prefix(src: Path, dst: Path, nbytes: int) -> None:
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while nbytes > 0:
            chunk = fin.read(min(nbytes, 1 << 24))
            if not chunk:
                break
            fout.write(chunk)
            nbytes -= len(chunk)


def _copy_token_shards(job: Job, bins: list[Path], prefix: str = "finewebedu", val_extra: int = 0) -> dict[str, Any]:
    """Local llm.c shards (--from): the first val shard and the train shards, cut to the token budget."""
    vals = [p for p in bins if "val" in p.name]
    trains = [p for p in bins if "train" in p.name]
    if not vals or not trains:
        raise DataError(f"--from {job.from_dir}: llm.c shards need *val*.bin and *train*.bin files")
    ordered = [("val", vals[0])] + [("train", p) for p in trains]
    plan = _shard_plan(job, [(split, _shard_header(p)) for split, p in ordered], val_extra)
    got = {"train": 0, "val": 0}
    files = 0
    for i, ((split, p), take) in enumerate(zip(ordered, plan, strict=True)):
        if take:
            dst = job.out / f"{prefix}_{split}_{i:06d}.bin"
            tmp = dst.with_name(dst.name + ".part")
            _copy_prefix(p, tmp, HEADER_BYTES + 2 * take)
            got[split] += _cut_shard(tmp, take)
            os.replace(tmp, dst)
            files += 1
        job.progress.update("download", (i + 1) / len(ordered), got["train"] + got["val"], f"copied {p.name}")
    return _token_meta(got, files)


def _download_token_shards(job: Job, repo: str | None = None, prefix: str = "finewebedu",
                           train_shards: int | None = None, val_extra: int = 0) -> dict[str, Any]:
    """kjj0/finewebedu10B-gpt2 (or `repo`): fetch only the bytes the budget needs (the first N tokens of each shard)."""
    repo = repo or sources.FINEWEB_TOKENS_REPO
    names = sources.fineweb_token_files(prefix, train_shards)
    plan = _shard_plan(job, [(split, sources.FINEWEB_TOKENS_PER_SHARD) for split, _ in names], val_extra)
    todo = [(split, name, take) for (split, name), take in zip(names, plan, strict=True) if take]
    got = {"train": 0, "val": 0}
    for i, (split, name, take) in enumerate(todo):
        path = job.download(sources.hf_url(repo, name), name, i, len(todo),
                            HEADER_BYTES + 2 * take)
        got[split] += _cut_shard(path, take)  # checks the magic before anything trains on it
        os.replace(path, job.out / name)
    return _token_meta(got, len(todo)) | {"origin": sources.hf_url(repo, "")}


def _token_meta(got: dict[str, int], files: int) -> dict[str, Any]:
    return {"tokenizer": "gpt2", "vocab_size": GPT2Tokenizer.vocab_size, "eot": GPT2_EOT,
            "train_tokens": got["train"], "val_tokens": got["val"], "shards": files}


def _download_parquet(job: Job) -> dict[str, Any]:
    if importlib.util.find_spec("pyarrow") is None:
        raise DataError(f"fineweb-edu: the GPT-2 shards at {sources.hf_url(sources.FINEWEB_TOKENS_REPO, '')} are "
                        "unavailable and tokenizing the parquet instead needs pyarrow: pip install pyarrow")
    need = (job.max_tokens or 10**13) + job.val_tokens
    files = sources.FINEWEB_PARQUET_FILES
    paths: list[Path] = []
    for i, name in enumerate(files):  # only as many ~2 GB files as the budget needs
        if len(paths) * sources.FINEWEB_TOKENS_PER_PARQUET >= need:
            break
        paths.append(job.download(sources.hf_url(sources.FINEWEB_PARQUET_REPO, name), Path(name).name, i, len(files)))
    meta = _tokenize_documents(job, "finewebedu", None, sources.Documents(paths))
    return meta | {"origin": sources.hf_url(sources.FINEWEB_PARQUET_REPO, "sample/10BT")}
