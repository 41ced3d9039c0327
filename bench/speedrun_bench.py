"""The speedrun options against the trainer as shipped, on a CPU: how much sooner they reach the same loss.

    python bench/speedrun_bench.py --seeds 1,2,3            # both scales (~15-20 min on 2 shared cores)
    python bench/speedrun_bench.py --seeds 1 --scales baby  # one scale, one seed

Two arms on Shakespeare-char (bench/data_files.py finds input.txt), same data, same tokens per step,
same number of steps, one thread each, run one after the other and alternating (baseline, speedrun,
baseline, ...) so a busy neighbour slows both alike:
- baseline: the trainer as shipped (AdamW, GPT-2's architecture, its default 20-step warmup then
  cosine to lr/10), the best LR of a 3-point grid (1e-3, the shipped baby LR, 2e-3, 4e-3: a short run
  wants more than 1e-3);
- speedrun: rotary, QK-norm, ReLU², zero-init projections, RMSNorm, no biases, untied head, softcap
  30, Muon for the blocks' matrices and a linear warmdown over the last 29 % (trainer/recipes.py's
  gpt2-speedrun switches), the best of a 3-point grid of all its LRs scaled together.
The grids run on the first seed (best = lowest final val loss); the other seeds rerun both winners.

Every `--eval-every` steps the run's val loss is measured over the first `--val-tokens` of the val
split read in order (the trainer's sequential evaluation), outside the timed training time. For each
seed: the baseline's final val loss is the bar; the speedrun's steps and training seconds to reach it
(linear between two evaluations) over the baseline's; the median ratio and min..max over seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bench.data_files import shakespeare  # noqa: E402
from trainer.batches import sequential_windows  # noqa: E402
from trainer.config import load_config  # noqa: E402
from trainer.hardware import cpu_model  # noqa: E402
from trainer.train import StopRequest, Trainer  # noqa: E402

# The speedrun switches, as the gpt2-speedrun recipe sets them (its LRs are the grid's centre here).
ARCH = ["--rotary", "--qk-norm", "--relu2", "--zero-init", "--rmsnorm", "--untied-head", "--logit-softcap", "30",
        "--bias", "false"]
WARMDOWN = ["--lr-schedule", "wsd", "--lr-decay-shape", "linear", "--lr-decay-frac", "0.29", "--min-lr", "0",
            "--warmup-iters", "0", "--weight-decay", "0", "--beta2", "0.95", "--grad-clip", "0"]
SPEEDRUN = [*ARCH, "--optimizer", "muon", *WARMDOWN]
GRID = (0.5, 1.0, 2.0)


@dataclass(frozen=True)
class Scale:
    name: str
    shape: list[str]  # model and batch flags, the same for both arms
    iters: int
    base_lr: float  # the baseline grid's centre (the shipped config's)
    speed_lrs: tuple[float, float, float]  # the speedrun grid's centre: lr (head, vectors), embed_lr, muon_lr


SCALES = {
    # nanoGPT's CPU "baby" (trainer/configs/baby.yaml): 4 x 4 x 128, T 64, batch 12: 768 tokens a step.
    "baby": Scale("baby", ["--model", "baby", "--batch-size", "12"], 300, 2e-3, (0.008, 0.3, 0.02)),
    # Four times the context: 4 x 4 x 128, T 256, batch 4: 1024 tokens a step.
    "long": Scale("long", ["--model", "baby", "--block-size", "256", "--batch-size", "4"], 200, 2e-3,
                  (0.008, 0.3, 0.02)),
}


class BenchTrainer(Trainer):
    """The shipped trainer; its periodic eval is the val split's first N tokens in order, with the
    training seconds so far (the schedule's own measure: wall-clock time of the steps, pauses left
    out) and the main thread's CPU seconds in the steps (what a busy neighbour does not inflate)."""

    curve: list[tuple[int, float, float, float]]  # step, wall s, CPU s, val loss
    val_tokens: int
    cpu_s: float = 0.0

    def train_step(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        t0 = time.thread_time()  # one torch thread: the ops run on this thread
        try:
            return super().train_step(*args, **kwargs)
        finally:
            self.cpu_s += time.thread_time() - t0

    @torch.no_grad()
    def evaluate(self, step: int) -> None:
        t0 = self.clock()
        self.model.eval()
        total, windows = 0.0, sequential_windows(self.val_tokens, self.seq_len, 0, 1)
        for x, y in self.val_stream.batches(windows, 64):
            _, loss = self.model(x, y, return_logits=False)
            total += loss.item() * y.numel()
        self.model.train()
        self.curve.append((step, self.sched.train_s, self.cpu_s, total / self.val_tokens))
        self.paused_s += self.clock() - t0


def run(arm: str, scale: Scale, seed: int, mult: float, text: Path, work: Path, a: argparse.Namespace) -> dict[str, Any]:
    args = [*scale.shape, "--text-file", str(text), "--tokenizer", "char", "--device", "cpu", "--threads", "1",
            "--dtype", "float32", "--max-iters", str(scale.iters), "--eval-interval", str(a.eval_every),
            "--log-interval", str(scale.iters), "--ckpt-interval-s", "0", "--sample-tokens", "0", "--progress", "off",
            "--seed", str(seed), "--resume", "never", "--out-dir", str(work / f"{scale.name}-{arm}-{seed}-{mult}")]
    head, embed, muon = (v * mult for v in scale.speed_lrs)
    muon_lrs = ["--optimizer", "muon", "--lr", f"{head:g}", "--embed-lr", f"{embed:g}", "--muon-lr", f"{muon:g}"]
    if arm == "baseline":
        lr = scale.base_lr * mult
        args += ["--lr", f"{lr:g}", "--min-lr", f"{lr / 10:g}", "--lr-decay-iters", str(scale.iters)]
    elif arm == "speedrun":
        args += [*SPEEDRUN, *muon_lrs]
    elif arm == "arch-adamw":  # ablation: the architecture and warmdown, AdamW at the baseline's LR
        args += [*ARCH, *WARMDOWN, "--lr", f"{scale.base_lr * mult:g}"]
    else:  # "muon-only", ablation: GPT-2's architecture, Muon and the warmdown
        args += [*WARMDOWN, *muon_lrs]
    trainer = BenchTrainer(load_config(args), StopRequest())
    trainer.curve, trainer.val_tokens = [], a.val_tokens
    started = time.time()
    try:
        trainer.run()
    finally:
        trainer.log.close()
    curve = trainer.curve
    return {"arm": arm, "scale": scale.name, "seed": seed, "mult": mult, "final": curve[-1][3],
            "train_s": curve[-1][1], "cpu_s": curve[-1][2], "wall_s": round(time.time() - started, 1), "curve": curve}


def reach(curve: list[tuple[int, float, float, float]], bar: float) -> tuple[float, float, float] | None:
    """(steps, training seconds, CPU seconds) at which the curve first comes down to `bar`, linear
    between evals."""
    for (s0, t0, c0, l0), (s1, t1, c1, l1) in zip(curve, curve[1:], strict=False):
        if l1 <= bar:
            f = 1.0 if l0 == l1 else min(1.0, max(0.0, (l0 - bar) / (l0 - l1)))
            return s0 + f * (s1 - s0), t0 + f * (t1 - t0), c0 + f * (c1 - c0)
    return None


def compare(base: dict[str, Any], speed: dict[str, Any]) -> dict[str, Any]:
    bar = base["final"]
    got = reach(speed["curve"], bar)
    row = {"seed": base["seed"], "bar": round(bar, 4), "baseline_steps": base["curve"][-1][0],
           "baseline_s": round(base["train_s"], 2), "baseline_cpu_s": round(base["cpu_s"], 2),
           "speedrun_final": round(speed["final"], 4), "speedrun_total_s": round(speed["train_s"], 2),
           "speedrun_total_cpu_s": round(speed["cpu_s"], 2)}
    if got is None:
        return row | {"speedrun_steps": None, "speedrun_s": None, "speedrun_cpu_s": None, "time_ratio": None,
                      "cpu_ratio": None, "step_ratio": None}
    steps, secs, cpu = got
    return row | {"speedrun_steps": round(steps, 1), "speedrun_s": round(secs, 2), "speedrun_cpu_s": round(cpu, 2),
                  "step_ratio": round(steps / row["baseline_steps"], 3), "time_ratio": round(secs / base["train_s"], 3),
                  "cpu_ratio": round(cpu / base["cpu_s"], 3)}


def bench_scale(scale: Scale, seeds: list[int], text: Path, work: Path, a: argparse.Namespace) -> dict[str, Any]:
    first = seeds[0]
    grid: dict[str, list[dict[str, Any]]] = {"baseline": [], "speedrun": []}
    for mult in GRID:  # alternating arms
        for arm in ("baseline", "speedrun"):
            r = run(arm, scale, first, mult, text, work, a)
            grid[arm].append(r)
            print(f"  {scale.name} seed {first} {arm} x{mult:g}: final val {r['final']:.4f}, {r['train_s']:.1f} s", flush=True)
    best = {arm: min(rs, key=lambda r: r["final"]) for arm, rs in grid.items()}
    rows = [compare(best["baseline"], best["speedrun"])]
    for seed in seeds[1:]:
        b = run("baseline", scale, seed, best["baseline"]["mult"], text, work, a)
        s = run("speedrun", scale, seed, best["speedrun"]["mult"], text, work, a)
        rows.append(compare(b, s))
        print(f"  {scale.name} seed {seed}: baseline {b['final']:.4f}, speedrun {s['final']:.4f}", flush=True)
    if a.ablate:  # one seed, each at its family's best multiplier
        for arm, mult in (("arch-adamw", best["baseline"]["mult"]), ("muon-only", best["speedrun"]["mult"])):
            r = run(arm, scale, first, mult, text, work, a)
            rows.append(compare(best["baseline"], r) | {"arm": arm})
            print(f"  {scale.name} seed {first} {arm} x{mult:g}: final val {r['final']:.4f}, {r['train_s']:.1f} s", flush=True)
    ratios = [r["time_ratio"] for r in rows if r["time_ratio"] is not None and "arm" not in r]
    cpu_ratios = [r["cpu_ratio"] for r in rows if r["cpu_ratio"] is not None and "arm" not in r]
    summary = {"scale": scale.name, "shape": " ".join(scale.shape), "iters": scale.iters,
               "baseline_lr_mult": best["baseline"]["mult"], "speedrun_lr_mult": best["speedrun"]["mult"],
               "grid_finals": {arm: [round(r["final"], 4) for r in rs] for arm, rs in grid.items()},
               "rows": rows, "reached": f"{len(ratios)}/{len(seeds)}"}
    if ratios:
        summary |= {"time_ratio_median": round(statistics.median(ratios), 3), "time_ratio_min": min(ratios),
                    "time_ratio_max": max(ratios), "cpu_ratio_median": round(statistics.median(cpu_ratios), 3),
                    "cpu_ratio_min": min(cpu_ratios), "cpu_ratio_max": max(cpu_ratios)}
    return summary


def print_summary(s: dict[str, Any]) -> None:
    print(f"\n{s['scale']} ({s['shape']}, {s['iters']} steps): LR grid x{GRID}, best baseline x{s['baseline_lr_mult']:g}, "
          f"best speedrun x{s['speedrun_lr_mult']:g}; grid finals {s['grid_finals']}")
    print("  seed | bar (baseline final) | baseline steps, wall s, CPU s | speedrun steps, wall s, CPU s to the bar | "
          "step ratio | wall-time ratio | CPU-time ratio | speedrun final (its total wall s, CPU s)")
    for r in s["rows"]:
        print(f"  {r['seed']:>4}{' ' + r['arm'] if 'arm' in r else ''} | {r['bar']:.4f} | {r['baseline_steps']}, "
              f"{r['baseline_s']}, {r['baseline_cpu_s']} | {r['speedrun_steps']}, {r['speedrun_s']}, {r['speedrun_cpu_s']} | "
              f"{r['step_ratio']} | {r['time_ratio']} | {r['cpu_ratio']} | {r['speedrun_final']} "
              f"({r['speedrun_total_s']}, {r['speedrun_total_cpu_s']})")
    if "time_ratio_median" in s:
        print(f"  wall-time ratio median {s['time_ratio_median']} ({s['time_ratio_min']}..{s['time_ratio_max']}), "
              f"CPU-time ratio median {s['cpu_ratio_median']} ({s['cpu_ratio_min']}..{s['cpu_ratio_max']}), "
              f"reached in {s['reached']} seeds")
    else:
        print("  the speedrun options never reached the baseline's final val loss")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="1,2,3", help="comma-separated seeds (default 1,2,3); the grids run on the first")
    ap.add_argument("--scales", default=",".join(SCALES), help=f"comma-separated, of {', '.join(SCALES)}")
    ap.add_argument("--max-iters", type=int, help="steps of every run instead of each scale's (a smoke run)")
    ap.add_argument("--eval-every", type=int, default=25, help="steps between val measurements (default 25)")
    ap.add_argument("--val-tokens", type=int, default=8192, help="val tokens read in order per measurement")
    ap.add_argument("--text-file", help="tinyshakespeare's input.txt (default: bench/data_files.py's)")
    ap.add_argument("--ablate", action="store_true", help="also, on the first seed: the architecture with AdamW"
                                                          " (arch-adamw) and Muon on GPT-2's (muon-only)")
    ap.add_argument("--json", help="write the figures here too")
    a = ap.parse_args(argv)
    text = Path(a.text_file) if a.text_file else shakespeare()
    if text is None or not text.is_file():
        print("error: no tinyshakespeare input.txt: pass --text-file (or set GPURUN_SHAKESPEARE or GPURUN_DATA_DIR)",
              file=sys.stderr)
        return 2
    try:
        seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
        scales = [SCALES[s.strip()] for s in a.scales.split(",") if s.strip()]
        if a.max_iters:
            scales = [replace(s, iters=a.max_iters) for s in scales]
    except (ValueError, KeyError) as e:
        print(f"error: bad --seeds or --scales ({e}): e.g. --seeds 1,2,3 --scales {','.join(SCALES)}", file=sys.stderr)
        return 2
    print(f"speedrun bench on {cpu_model()}, torch {torch.__version__}, seeds {seeds}", flush=True)
    summaries = []
    with tempfile.TemporaryDirectory(prefix="speedrun-bench-") as tmp:
        for scale in scales:
            summaries.append(bench_scale(scale, seeds, text, Path(tmp), a))
    for s in summaries:
        print_summary(s)
    if a.json:
        Path(a.json).write_text(json.dumps({"cpu": cpu_model(), "seeds": seeds, "scales": summaries}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
