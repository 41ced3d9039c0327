"""Our trainer against nanoGPT's train.py: same model, batch, block size, dtype, threads and step count.

    python bench/compare_nanogpt.py --nanogpt PATH/TO/nanoGPT                       # CPU, baby config
    python bench/compare_nanogpt.py --nanogpt PATH/TO/nanoGPT --preset gpt2         # GPU, GPT-2 124M

PATH is a nanoGPT checkout the user fetched; nothing of it is copied into this repository. Its
train.py runs from a temporary directory that links to the checkout's train.py, model.py,
configurator.py and config/ and holds the data (nanoGPT's train.bin / val.bin / meta.pkl format),
so the checkout itself is never written to.

Both trainers read the same tokens: the text (tinyshakespeare if found, else the trainer's built-in
corpus) is tokenized once, char-level, for `baby`; `gpt2` uses random GPT-2 token ids (speed does
not depend on the token values). Runs alternate nanoGPT, ours, nanoGPT, ours... Each run's speed is
measured the same way for both: the wall-clock arrival time of its log lines (both print after a
host sync of the loss, so a line marks finished GPU work), over log intervals after the warm-up
steps; no eval or checkpoint falls inside the timed steps. The run's figure is the median interval;
the comparison is the median over pairs of ours / nanoGPT. Each trainer's self-reported timing is
kept in the JSON as a cross-check.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bench.data_files import shakespeare  # noqa: E402
from trainer import data as tdata  # noqa: E402
from trainer.hardware import cpu_model, peak_tflops  # noqa: E402
from trainer.model import GPT, GPTConfig  # noqa: E402
from trainer.shards import open_shard, write_shard  # noqa: E402

PRESETS: dict[str, dict[str, Any]] = {
    # nanoGPT README's CPU run: config/train_shakespeare_char.py shrunk to a "baby GPT".
    "baby": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, grad_accum=1, bias=False,
                 device="cpu", dtype="float32", compile=False, tokens="char", steps=120, warmup=20,
                 log_interval=10, lr=1e-3, beta2=0.99),
    # GPT-2 124M, T=1024, bf16, torch.compile: the GPU comparison.
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, batch_size=16, grad_accum=1, bias=True,
                 device="cuda", dtype="bfloat16", compile=True, tokens="gpt2", steps=60, warmup=20,
                 log_interval=10, lr=6e-4, beta2=0.95),
}

NANO_LINE = re.compile(r"^iter (\d+): loss (\S+), time ([\d.]+)ms")
OURS_LINE = re.compile(r"^step (\d+) \| loss (\S+) \| lr \S+ \| tok/s (\d+)")


def find_text(path: str | None) -> tuple[str, str]:
    if path:
        return Path(path).read_text(encoding="utf-8"), path
    if (p := shakespeare()) is not None:
        return p.read_text(encoding="utf-8"), str(p)
    return tdata.builtin_corpus_text(), "builtin corpus"


def prepare_data(work: Path, tokens: str, text_file: str | None) -> tuple[Path, Path, str]:
    """(our data dir, nanoGPT working dir's dataset name dir, source) holding the same tokens."""
    ours = work / "ours_data"
    nano = work / "nanogpt" / "data" / "gpurun"
    nano.mkdir(parents=True)
    if tokens == "char":
        text, source = find_text(text_file)
        meta = tdata.prepare_text(text, ours, "char", source=source)
        itos = {i: ch for i, ch in enumerate(meta["itos"])}
        with open(nano / "meta.pkl", "wb") as f:
            pickle.dump({"vocab_size": meta["vocab_size"], "itos": itos, "stoi": meta["stoi"]}, f)
    else:
        # Random GPT-2 ids; no meta.json / meta.pkl, so both build the 50304-padded GPT-2 vocabulary.
        rng = np.random.default_rng(0)
        ours.mkdir(parents=True)
        write_shard(ours / "train_000000.bin", rng.integers(0, 50257, size=20_000_000, dtype=np.uint16))
        write_shard(ours / "val_000000.bin", rng.integers(0, 50257, size=1_000_000, dtype=np.uint16))
        source = "random GPT-2 token ids"
    for split in ("train", "val"):
        np.asarray(open_shard(ours / f"{split}_000000.bin")).tofile(nano / f"{split}.bin")
    return ours, nano, source


def link_nanogpt(checkout: Path, work: Path) -> Path:
    run_dir = work / "nanogpt"
    for name in ("train.py", "model.py", "configurator.py", "config"):
        if not (checkout / name).exists():
            raise SystemExit(f"error: {checkout} is not a nanoGPT checkout (no {name})")
        (run_dir / name).symlink_to((checkout / name).resolve())
    return run_dir


def nano_cmd(a: argparse.Namespace) -> list[str]:
    cmd = [sys.executable, "train.py"]
    if a.preset == "baby":
        cmd.append("config/train_shakespeare_char.py")
    cmd += [
        "--dataset=gpurun", "--out_dir=out", f"--device={a.device}", f"--compile={a.compile}",
        f"--dtype={a.dtype}", "--eval_interval=1000000000", "--eval_iters=1", "--always_save_checkpoint=False",
        "--wandb_log=False", f"--log_interval={a.log_interval}", f"--max_iters={a.steps}",
        f"--lr_decay_iters={max(a.steps, 2000)}", "--warmup_iters=10", f"--learning_rate={a.lr}",
        f"--beta2={a.beta2}", "--weight_decay=0.1", "--grad_clip=1.0",
        f"--block_size={a.block_size}", f"--batch_size={a.batch_size}", f"--n_layer={a.n_layer}",
        f"--n_head={a.n_head}", f"--n_embd={a.n_embd}", "--dropout=0.0", f"--bias={a.bias}",
        f"--gradient_accumulation_steps={a.grad_accum}",
    ]
    return cmd


def ours_cmd(a: argparse.Namespace, data_dir: Path, out_dir: Path) -> list[str]:
    return [
        sys.executable, "-m", "trainer.train", "--data-dir", str(data_dir), "--out-dir", str(out_dir),
        "--resume", "never", "--model", "baby", "--n-layer", str(a.n_layer), "--n-head", str(a.n_head),
        "--n-embd", str(a.n_embd), "--block-size", str(a.block_size), "--batch-size", str(a.batch_size),
        "--grad-accum", str(a.grad_accum), "--dropout", "0.0", "--bias" if a.bias else "--no-bias",
        "--max-iters", str(a.steps), "--lr-decay-iters", str(max(a.steps, 2000)), "--warmup-iters", "10",
        "--lr", str(a.lr), "--min-lr", str(a.lr / 10), "--beta2", str(a.beta2), "--weight-decay", "0.1",
        "--grad-clip", "1.0", "--log-interval", str(a.log_interval), "--eval-interval", "0",
        "--ckpt-interval", "0", "--ckpt-interval-s", "0", "--sample-tokens", "0", "--progress", "off",
        "--device", a.device, "--dtype", a.dtype, "--compile" if a.compile else "--no-compile",
        "--threads", str(a.threads),
    ]


class WallLimit(RuntimeError):
    """A run (or the whole comparison) reached its hard wall-clock limit."""


def run_one(cmd: list[str], cwd: Path, env: dict[str, str], pattern: re.Pattern[str], timeout: float) -> dict:
    """Run a trainer, timestamping its log lines as they arrive. `timeout` is a hard wall limit: a
    timer kills the run's process group then, whether or not it prints (a silent hang included)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1, start_new_session=True)
    killed = threading.Event()

    def kill() -> None:
        killed.set()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    timer = threading.Timer(max(0.0, timeout), kill)
    timer.start()
    lines: list[tuple[int, float, float]] = []  # (step, arrival s, self-reported figure)
    cpu: list[tuple[int, float | None]] = []  # (step, the trainer's CPU seconds so far) at the same lines
    tail: list[str] = []
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            now = time.perf_counter()
            tail = (tail + [line.rstrip()])[-30:]
            m = pattern.match(line)
            if m:
                lines.append((int(m.group(1)), now, float(m.group(3))))
                cpu.append((int(m.group(1)), cpu_seconds(proc.pid)))
    finally:
        timer.cancel()
    rc = proc.wait()
    if killed.is_set():
        raise WallLimit(f"{' '.join(cmd[:3])}... killed at its wall limit of {timeout:.0f} s:\n" + "\n".join(tail))
    if rc != 0 or len(lines) < 3:
        raise RuntimeError(f"{' '.join(cmd[:3])}... failed (exit {rc}):\n" + "\n".join(tail))
    return {"lines": lines, "cpu": cpu, "wall_s": time.perf_counter() - t0}


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a live process, all its threads (Linux /proc), else None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    except (OSError, IndexError, ValueError):
        return None


def cpu_ms_per_step(cpu: list[tuple[int, float | None]], warmup: int) -> float | None:
    """CPU milliseconds per step over the timed steps: unlike the wall clock, not stretched by other
    processes taking turns on the same cores (a cross-check on a shared machine; ticks of 10 ms)."""
    s = [(step, c) for step, c in cpu if step >= warmup and c is not None]
    if len(s) < 2 or s[-1][0] <= s[0][0]:
        return None
    return 1000 * (s[-1][1] - s[0][1]) / (s[-1][0] - s[0][0])


def steady(lines: list[tuple[int, float, float]], warmup: int) -> list[tuple[int, float, float]]:
    return [x for x in lines if x[0] >= warmup]


def interval_ms(lines: list[tuple[int, float, float]], warmup: int) -> list[float]:
    s = steady(lines, warmup)
    return [1000 * (t2 - t1) / (s2 - s1) for (s1, t1, _), (s2, t2, _) in zip(s, s[1:], strict=False) if s2 > s1]


def flops_per_token(a: argparse.Namespace, vocab: int) -> float:
    """Training FLOPs per token by the trainer's own formula (6 N + 12 L C T), for both trainers."""
    with torch.device("meta"):
        model = GPT(GPTConfig(block_size=a.block_size, vocab_size=vocab, n_layer=a.n_layer, n_head=a.n_head,
                              n_embd=a.n_embd, bias=a.bias))
    return model.flops_per_token(a.block_size)


def device_info(device: str, dtype: str) -> tuple[str, float | None]:
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(torch.device(device))
    else:
        name = cpu_model()
    return name, peak_tflops(name, getattr(torch, dtype))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nanogpt", required=True, help="path to a nanoGPT checkout (fetched by the user)")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="baby")
    ap.add_argument("--pairs", type=int, default=3, help="A/B pairs (nanoGPT then ours), default 3")
    ap.add_argument("--steps", type=int, help="optimizer steps per run (preset default)")
    ap.add_argument("--warmup", type=int, help="steps left out of the timing (preset default)")
    ap.add_argument("--log-interval", type=int, help="steps between timed log lines (preset default)")
    ap.add_argument("--threads", type=int, help="torch CPU threads for both (OMP_NUM_THREADS); default 1 "
                    "on CPU, all cores on CUDA")
    for key in ("batch_size", "block_size", "grad_accum", "n_layer", "n_head", "n_embd"):
        ap.add_argument(f"--{key.replace('_', '-')}", type=int, dest=key)
    ap.add_argument("--device", help="cpu | cuda | cuda:N (preset default)")
    ap.add_argument("--dtype", choices=("float32", "bfloat16", "float16"))
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    ap.add_argument("--text-file", help="text for the char-level preset (default: tinyshakespeare if found)")
    ap.add_argument("--timeout", type=float, default=300, help="hard wall limit of one run, seconds (default 300)")
    ap.add_argument("--budget-s", type=float, default=1200,
                    help="hard wall limit of the whole comparison (default 1200): no run starts past it, and each"
                         " run's limit is cut to what is left; the pairs done by then are reported")
    ap.add_argument("--json", help="where to write the figures (default bench/results/...)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary work directory")
    a = ap.parse_args(argv)
    for key, value in PRESETS[a.preset].items():
        if getattr(a, key, None) is None:
            setattr(a, key, value)
    if a.threads is None:
        a.threads = 1 if a.device == "cpu" else (os.cpu_count() or 1)
    if a.warmup >= a.steps - 2 * a.log_interval:
        raise SystemExit("error: --steps must leave at least two log intervals after --warmup")

    checkout = Path(a.nanogpt).expanduser().resolve()
    work = Path(tempfile.mkdtemp(prefix="gpurun-vs-nanogpt-"))
    try:
        ours_data, _, source = prepare_data(work, a.tokens, a.text_file)
        nano_dir = link_nanogpt(checkout, work)
        vocab = tdata.read_meta(ours_data)["vocab_size"]
        vocab = vocab if a.tokens == "char" else 64 * -(-vocab // 64)
        tokens_per_step = a.batch_size * a.block_size * a.grad_accum
        dev_name, peak = device_info(a.device, a.dtype)
        fpt = flops_per_token(a, vocab)

        env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads),
                   PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
        env.pop("RANK", None)
        ours_env = dict(env, PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""))
        print(f"device: {dev_name}; preset {a.preset}: {a.n_layer}L {a.n_head}H {a.n_embd}C, block {a.block_size}, "
              f"batch {a.batch_size} x accum {a.grad_accum} = {tokens_per_step} tokens/step, {a.dtype}, "
              f"compile {a.compile}, threads {a.threads}, vocab {vocab}; data: {source}")
        print(f"{a.pairs} pairs, {a.steps} steps each, timed from step {a.warmup} every {a.log_interval} steps")
        pairs = []
        budget_end = time.monotonic() + a.budget_s

        def limit() -> float:
            left = budget_end - time.monotonic()
            if left <= 0:
                raise WallLimit(f"the comparison's wall limit (--budget-s {a.budget_s:g}) is spent")
            return min(a.timeout, left)

        for i in range(a.pairs):
            shutil.rmtree(nano_dir / "out", ignore_errors=True)
            try:
                nano = run_one(nano_cmd(a), nano_dir, env, NANO_LINE, limit())
                ours_out = work / f"ours_out_{i}"
                ours = run_one(ours_cmd(a, ours_data, ours_out), REPO, ours_env, OURS_LINE, limit())
            except WallLimit as exc:
                if not pairs:
                    raise
                print(f"stopping after {len(pairs)} pair(s): {str(exc).splitlines()[0]}")
                break
            shutil.rmtree(ours_out, ignore_errors=True)
            row: dict[str, Any] = {"pair": i + 1}
            # nanoGPT's "iter k" line follows its (k+1)-th step, ours "step k" its k-th: shift nanoGPT's by one.
            nano["lines"] = [(s + 1, t, ms) for s, t, ms in nano["lines"]]
            nano["cpu"] = [(s + 1, c) for s, c in nano["cpu"]]
            for name, run in (("nanogpt", nano), ("ours", ours)):
                ms = statistics.median(interval_ms(run["lines"], a.warmup))
                tok_s = tokens_per_step / (ms / 1000)
                self_rep = [x[2] for x in steady(run["lines"], a.warmup + 1)]
                row[name] = {
                    "ms_per_step": round(ms, 3), "tokens_per_s": round(tok_s, 1),
                    "mfu": None if not peak else round(fpt * tok_s / (peak * 1e12), 4),
                    "intervals_ms": [round(x, 3) for x in interval_ms(run["lines"], a.warmup)],
                    # nanoGPT: its own per-iteration "time" (ms) at log steps; ours: its own tok/s per interval.
                    "self_reported_median": statistics.median(self_rep) if self_rep else None,
                    "run_wall_s": round(run["wall_s"], 2),
                    "cpu_ms_per_step": cpu_ms_per_step(run["cpu"], a.warmup),
                }
            row["ratio"] = round(row["ours"]["tokens_per_s"] / row["nanogpt"]["tokens_per_s"], 4)
            n_cpu, o_cpu = row["nanogpt"]["cpu_ms_per_step"], row["ours"]["cpu_ms_per_step"]
            row["cpu_ratio"] = round(n_cpu / o_cpu, 4) if n_cpu and o_cpu else None
            pairs.append(row)
            n, o = row["nanogpt"], row["ours"]
            print(f"pair {i + 1}: nanoGPT {n['tokens_per_s']:10.0f} tok/s ({n['ms_per_step']:8.2f} ms/step)   "
                  f"ours {o['tokens_per_s']:10.0f} tok/s ({o['ms_per_step']:8.2f} ms/step)   ratio {row['ratio']:.3f}"
                  + (f"   CPU ms/step {n['cpu_ms_per_step']:.2f} vs {o['cpu_ms_per_step']:.2f}: {row['cpu_ratio']:.3f}"
                     if row["cpu_ratio"] else ""), flush=True)

        def med(who: str, key: str) -> float:
            return statistics.median(p[who][key] for p in pairs)

        ratio = statistics.median(p["ratio"] for p in pairs)
        print()
        print(f"{'':10} {'tokens/s':>12} {'ms/step':>10} {'MFU':>8}   (medians over {a.pairs} runs)")
        for who, label in (("nanogpt", "nanoGPT"), ("ours", "ours")):
            mfu = med(who, "mfu") if peak else None
            mfu_text = f"{100 * mfu:7.1f}%" if mfu is not None else "     n/a"
            print(f"{label:10} {med(who, 'tokens_per_s'):12.0f} {med(who, 'ms_per_step'):10.2f} {mfu_text}")
        print(f"ratio ours/nanoGPT tokens/s: median {ratio:.3f} over {a.pairs} pairs "
              f"(min {min(p['ratio'] for p in pairs):.3f}, max {max(p['ratio'] for p in pairs):.3f})")
        cpu_ratios = [p["cpu_ratio"] for p in pairs if p["cpu_ratio"]]
        cpu_ratio = statistics.median(cpu_ratios) if cpu_ratios else None
        if cpu_ratio:
            print(f"ratio by CPU time per step (nanoGPT/ours; other processes on the cores do not stretch it): "
                  f"median {cpu_ratio:.3f} (min {min(cpu_ratios):.3f}, max {max(cpu_ratios):.3f})")

        result = {
            "bench": "compare_nanogpt", "date": time.strftime("%Y-%m-%d %H:%M:%S"), "device": dev_name,
            "device_peak_tflops": peak, "preset": a.preset, "command": " ".join([sys.argv[0], *(argv or sys.argv[1:])]),
            "config": {k: getattr(a, k) for k in ("n_layer", "n_head", "n_embd", "block_size", "batch_size",
                                                   "grad_accum", "bias", "device", "dtype", "compile", "threads",
                                                   "steps", "warmup", "log_interval")},
            "vocab_size": vocab, "tokens_per_step": tokens_per_step, "flops_per_token": fpt, "data": source,
            "nanogpt_checkout": str(checkout), "nanogpt_commit": git_head(checkout),
            "pairs": pairs, "ratio_median": ratio, "cpu_ratio_median": cpu_ratio,
            "nanogpt_tokens_per_s_median": med("nanogpt", "tokens_per_s"),
            "ours_tokens_per_s_median": med("ours", "tokens_per_s"),
            "nanogpt_mfu_median": med("nanogpt", "mfu") if peak else None,
            "ours_mfu_median": med("ours", "mfu") if peak else None,
        }
        out = Path(a.json) if a.json else (
            REPO / "bench" / "results" / f"compare_nanogpt-{a.preset}-{a.device.replace(':', '')}-{int(time.time())}.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"figures: {out}")
        return 0
    finally:
        if a.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def git_head(path: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


if __name__ == "__main__":
    sys.exit(main())
