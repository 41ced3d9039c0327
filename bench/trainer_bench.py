"""Time the trainer's own training step for a named config on this machine's device.

    python bench/trainer_bench.py --config baby                          # CPU, nanoGPT's baby config
    python bench/trainer_bench.py --config gpt2 --batch-size 8,16,32     # GPU: GPT-2 124M, T=1024
    python bench/trainer_bench.py --config gpt2 --batch-size auto        # largest micro-batches that fit

It builds the run exactly as `python -m trainer.train` does (Trainer.setup: data, model, optimizer,
torch.compile, prefetching loader), runs `--warmup` steps (compilation included), then times
`--steps` steps of Trainer.train_step between two device synchronisations. One table row per
micro-batch size: ms/step, tokens/s, MFU against the device's own peak (trainer/hardware.py),
peak memory (CUDA: max allocated; CPU: the process's peak RSS) and the share of the timed wall-clock
the loop spent waiting for a batch. The figures go to --json (default bench/results/...).
Extra `--key value` flags are passed to the trainer's config (e.g. --n-layer 6 --lr 3e-4).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bench.data_files import shakespeare  # noqa: E402
from trainer import hardware  # noqa: E402
from trainer.config import ConfigError, load_config  # noqa: E402
from trainer.shards import write_shard  # noqa: E402
from trainer.train import StopRequest, Trainer, lr_at  # noqa: E402

CONFIG_DIR = REPO / "trainer" / "configs"


def config_file(name: str) -> Path:
    p = Path(name)
    if p.is_file():
        return p
    p = CONFIG_DIR / f"{name}.yaml"
    if not p.is_file():
        names = ", ".join(sorted(f.stem for f in CONFIG_DIR.glob("*.yaml")))
        raise SystemExit(f"error: no config {name!r}: give a file or one of {names}")
    return p


def synthetic_gpt2_shards(d: Path, train_tokens: int) -> Path:
    """Random GPT-2 token ids as llm.c shards (no meta.json: read as GPT-2 BPE); speed ignores values."""
    rng = np.random.default_rng(0)
    d.mkdir(parents=True, exist_ok=True)
    write_shard(d / "bench_train_000000.bin", rng.integers(0, 50257, size=train_tokens, dtype=np.uint16))
    write_shard(d / "bench_val_000000.bin", rng.integers(0, 50257, size=200_000, dtype=np.uint16))
    return d


def data_flags(args: argparse.Namespace, cfg_flags: list[str], work: Path) -> list[str]:
    """Data for the bench: --data-dir, else the config's data if it exists, else something local."""
    if args.data_dir:
        return ["--data-dir", args.data_dir]
    base = load_config(cfg_flags)
    if base.data_dir and Path(base.data_dir).is_dir():
        return []
    if base.tokenizer == "char" and base.model in ("tiny", "baby", "small"):
        text = shakespeare()
        return ["--data-dir", ""] + (["--text-file", str(text)] if text else [])
    seq = base.seq_len or base.block_size or 1024
    return ["--data-dir", str(synthetic_gpt2_shards(work / "synthetic", max(2_000_000, 64 * seq * 40)))]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(flags: list[str], steps: int, warmup: int) -> dict[str, Any]:
    cfg = load_config(flags)
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):
        trainer = Trainer(cfg, StopRequest())
        net, opt, scaler, step = trainer.setup()
    device, model = trainer.device, trainer.model
    try:
        t0 = time.perf_counter()
        for _ in range(warmup):
            trainer.train_step(net, opt, scaler, step, trainer.micro, lr_at(cfg, step))
            step += 1
        sync(device)
        warmup_s = time.perf_counter() - t0
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        wait0 = trainer.loader.wait_s
        loss = torch.zeros(())
        t0 = time.perf_counter()
        for _ in range(steps):
            loss = trainer.train_step(net, opt, scaler, step, trainer.micro, lr_at(cfg, step))
            step += 1
        sync(device)
        elapsed = time.perf_counter() - t0
        wait_s = trainer.loader.wait_s - wait0
        final_loss = float(loss.item())
    finally:
        trainer.loader.close()
        trainer.log.close()
    tokens_per_step = cfg.batch_size * trainer.seq_len * cfg.grad_accum
    tok_s = tokens_per_step * steps / elapsed
    dev_name = hardware.device_name(device)
    mfu = model.estimate_mfu(tok_s, trainer.seq_len, dev_name, trainer.dtype, cfg.peak_tflops)
    if device.type == "cuda":
        peak_mib, mem_kind = torch.cuda.max_memory_allocated(device) / 2**20, "cuda max allocated"
    else:
        peak_mib, mem_kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process peak RSS"
    return {
        "batch_size": cfg.batch_size, "seq_len": trainer.seq_len, "grad_accum": cfg.grad_accum,
        "tokens_per_step": tokens_per_step, "dtype": str(trainer.dtype).removeprefix("torch."),
        "compile": cfg.compile, "threads": torch.get_num_threads(), "steps": steps, "warmup": warmup,
        "warmup_s": round(warmup_s, 3), "ms_per_step": round(1000 * elapsed / steps, 3),
        "tokens_per_s": round(tok_s, 1), "mfu": None if mfu is None else round(mfu, 4),
        "peak_memory_mib": round(peak_mib, 1), "peak_memory_kind": mem_kind,
        "loader_wait_share": round(wait_s / elapsed, 5), "final_loss": round(final_loss, 4),
        "parameters": model.num_params(non_embedding=False), "flops_per_token": model.flops_per_token(trainer.seq_len),
        "device": str(device), "device_name": dev_name,
        "peak_tflops": cfg.peak_tflops or hardware.peak_tflops(dev_name, trainer.dtype),
    }


def is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument("--config", default="baby", help="a trainer/configs name (tiny, baby, gpt2) or a YAML file")
    ap.add_argument("--steps", type=int, default=20, help="timed steps (default 20)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first, compilation included (default 5)")
    ap.add_argument("--batch-size", default=None,
                    help="micro-batch: N, a list N,M,..., or auto (CUDA: doubling from 4 until out of memory)")
    ap.add_argument("--seq-len", type=int)
    ap.add_argument("--grad-accum", type=int)
    ap.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"))
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    ap.add_argument("--device", help="auto | cpu | cuda | cuda:N (default: the config's)")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: the trainer's choice)")
    ap.add_argument("--data-dir", help="prepared shards to read (default: local or synthetic data)")
    ap.add_argument("--json", help="output file (default bench/results/trainer_bench-<config>-<time>.json)")
    args, extra = ap.parse_known_args(argv)

    work = Path(tempfile.mkdtemp(prefix="gpurun-bench-"))
    try:
        flags = ["--config", str(config_file(args.config)), *extra]
        for key in ("seq_len", "grad_accum", "dtype", "device", "threads"):
            value = getattr(args, key)
            if value is not None:
                flags += [f"--{key.replace('_', '-')}", str(value)]
        if args.compile is not None:
            flags.append("--compile" if args.compile else "--no-compile")
        flags += ["--resume", "never", "--eval-interval", "0", "--ckpt-interval", "0", "--ckpt-interval-s", "0",
                  "--sample-tokens", "0", "--progress", "off", "--max-iters", str(10**9)]
        try:
            flags += data_flags(args, flags, work)
            base = load_config(flags)
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        auto = args.batch_size == "auto"
        if auto:
            sizes: list[int] = [4 * 2**i for i in range(12)]
        elif args.batch_size:
            sizes = [int(v) for v in args.batch_size.split(",")]
        else:
            sizes = [base.batch_size]

        rows: list[dict[str, Any]] = []
        for n, bs in enumerate(sizes):
            run_flags = flags + ["--batch-size", str(bs), "--out-dir", str(work / f"run{n}")]
            if base.grad_accum is None and args.grad_accum is None:
                run_flags += ["--grad-accum", "1"]
            if hasattr(torch, "_dynamo"):
                torch._dynamo.reset()
            try:
                rows.append(measure(run_flags, args.steps, args.warmup))
            except (RuntimeError, torch.OutOfMemoryError) as e:
                if not is_oom(e):
                    raise
                print(f"batch size {bs}: out of memory", file=sys.stderr)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                if auto:
                    break
                continue
            finally:
                shutil.rmtree(work / f"run{n}", ignore_errors=True)
        if not rows:
            print("error: no batch size fitted", file=sys.stderr)
            return 1

        first = rows[0]
        print(f"device: {first['device_name']} ({first['device']}), peak "
              f"{first['peak_tflops'] or 'n/a'} TFLOPS; config {args.config}: {first['parameters'] / 1e6:.2f}M "
              f"parameters, {first['dtype']}, compile {first['compile']}, threads {first['threads']}; "
              f"{args.steps} timed steps after {args.warmup}")
        head = f"{'batch':>6} {'seq':>5} {'accum':>5} {'ms/step':>10} {'tokens/s':>12} {'MFU':>7} {'peak MiB':>10} {'loader wait':>12}"
        print(head)
        for r in rows:
            mfu = f"{100 * r['mfu']:6.1f}%" if r["mfu"] is not None else "    n/a"
            print(f"{r['batch_size']:>6} {r['seq_len']:>5} {r['grad_accum']:>5} {r['ms_per_step']:>10.2f} "
                  f"{r['tokens_per_s']:>12.0f} {mfu:>7} {r['peak_memory_mib']:>10.0f} {100 * r['loader_wait_share']:>11.2f}%")
        best = max(rows, key=lambda r: r["tokens_per_s"])
        if len(rows) > 1:
            print(f"fastest: batch {best['batch_size']} ({best['tokens_per_s']:.0f} tokens/s)")
        result = {
            "bench": "trainer_bench", "date": time.strftime("%Y-%m-%d %H:%M:%S"), "config": args.config,
            "command": " ".join(["bench/trainer_bench.py", *(argv if argv is not None else sys.argv[1:])]),
            "torch": torch.__version__, "python": platform.python_version(), "cpu": hardware.cpu_model(),
            "cpu_count": os.cpu_count(), "device_name": first["device_name"], "rows": rows,
            "best_batch_size": best["batch_size"],
        }
        out = Path(args.json) if args.json else (
            REPO / "bench" / "results" / f"trainer_bench-{Path(args.config).stem}-{int(time.time())}.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"figures: {out}")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
