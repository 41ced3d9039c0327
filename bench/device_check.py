"""One prepared check of the trainer on a lent GPU: every figure in one summary.json, in one go.

    PYTHONUNBUFFERED=1 python3 bench/device_check.py --out $OUT        # on the GPU machine (~8 min at most)
    python bench/device_check.py --cpu                                  # here: the same stages, tiny sizes
    python bench/device_check.py --stages environment,trainer_bench     # a subset (names or numbers 1-5)

Stages (docs/PERFORMANCE.md, "The device check"), each under its own hard wall-clock limit:
  1 environment      nvidia-smi, python/torch/CUDA versions, GPU name, native bf16, the GPU's peak TFLOPS
  2 cuda_tests       pytest tests/trainer/test_cuda.py (on --cpu: collected, all skipped)
  3 trainer_bench    bench/trainer_bench.py --config gpt2 at micro-batch 16 and 64 (--cpu: tiny at 4 and 16)
  4 compare_nanogpt  bench/compare_nanogpt.py --preset gpt2 --pairs 1 against --nanogpt PATH (default
                     nanogpt/ in the repo root); no checkout there: skipped with the reason
  5 lab              the `lab` recipe as the controller runs it on an instance (trainer.data prepare, then
                     trainer.launch with the recipe's config, a short max_iters), then its evidence card
                     (orchestrator.proof.evidence.write_evidence): does EVIDENCE.md show `device: cuda`?

Every command runs under compare_nanogpt.run_one: a timer kills its process group at the stage's limit,
printing or silent. run_one keeps only the lines that match its pattern, so each command runs behind a
relay (this script with --relay) that numbers every line for it and writes the output to the logs.
Under --out (default $OUT, else bench/results/device-check-<time>) at most 8 files: summary.json
(rewritten after every stage, so a cut run still leaves one), device-check.log (every command's output),
nvidia-smi.txt, the bench and comparison JSONs and the lab's EVIDENCE.md. Exit 0 when every stage that
ran passed or was skipped with a reason. Imports only the standard library at start (the relay starts
fast); torch comes in with compare_nanogpt when the stages run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
sys.path.insert(0, str(REPO))
from bench.data_files import gpt2_bpe, shakespeare  # noqa: E402  (standard library only: the relay starts fast)

STAGES = ("environment", "cuda_tests", "trainer_bench", "compare_nanogpt", "lab")
# Hard wall-clock limits per stage, seconds, and for the whole check (a stage gets at most what is left
# of it). GPU: 465 s, under the 8 minutes a lent machine's ~10 (start-up included) leave; expected ~5 min
# (cold GPT-2 compiles in stages 3 and 4 are the bulk). CPU: under 3 minutes in all, whatever hangs; the
# run takes ~20 s on 2 idle cores, ~1 min beside a full test suite (hence per-stage room to spare).
GPU_LIMITS = {"environment": 25, "cuda_tests": 125, "trainer_bench": 150, "compare_nanogpt": 120, "lab": 45}
CPU_LIMITS = {"environment": 30, "cuda_tests": 60, "trainer_bench": 90, "compare_nanogpt": 60, "lab": 90}
GPU_BUDGET_S, CPU_BUDGET_S = 470, 170

LOG_NAME = "device-check.log"
LOG_CAP = 400_000  # bytes of one command's output in device-check.log; past it only its last lines
LOG_TAIL = 150
RELAY_LINE = re.compile(r"^(\d+)\t()(\d+)\t")  # what the relay prints per line, in run_one's (step, _, value) form
JOB_CONFIG = "gpurun_config.yaml"  # the job's config file name on an instance (orchestrator/plan/job.py: JOB_CONFIG)
TIKTOKEN_HOST = "openaipublic.blob.core.windows.net"  # where tiktoken fetches GPT-2's BPE files


def relay(argv: list[str]) -> int:
    """`--relay RC_FILE FULL_LOG SHARED_LOG -- CMD...`: run CMD, its output to FULL_LOG (whole) and
    SHARED_LOG (capped), and to stdout numbered for run_one; CMD's exit status goes to RC_FILE."""
    sep = argv.index("--")
    rc_file, full_log, shared_log, cmd = Path(argv[0]), Path(argv[1]), Path(argv[2]), argv[sep + 1:]
    n = written = omitted = 0
    tail: deque[str] = deque(maxlen=LOG_TAIL)

    def mark(text: str) -> None:  # run_one needs 3 matching lines, whatever CMD prints
        print(f"{n}\t{n}\t{text}", flush=True)

    mark(f"$ {shlex.join(cmd)}")
    mark(f"cwd {os.getcwd()}")
    with open(full_log, "w", encoding="utf-8") as full, open(shared_log, "a", encoding="utf-8") as shared:
        shared.write(f"$ {shlex.join(cmd)}\n")
        shared.flush()
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    errors="replace", bufsize=1)
        except OSError as e:
            full.write(f"cannot start: {e}\n")
            shared.write(f"cannot start: {e}\n")
            rc = 127
        else:
            assert proc.stdout is not None
            for line in proc.stdout:
                n += 1
                full.write(line)
                full.flush()
                if written + len(line) <= LOG_CAP:
                    shared.write(line)
                    shared.flush()
                    written += len(line)
                else:
                    omitted += 1
                    tail.append(line)
                # ASCII only: run_one decodes with the locale's codec, which may be ASCII.
                mark(line.rstrip().encode("ascii", "backslashreplace").decode())
            rc = proc.wait()
        if omitted:
            shared.write(f"[... {omitted - len(tail)} lines left out here: over {LOG_CAP} bytes ...]\n")
            shared.writelines(tail)
        shared.write(f"[exit {rc}]\n\n")
    rc_file.write_text(str(rc))
    n += 1
    mark(f"exit {rc}")
    return 0


class StageCut(Exception):
    """The stage's wall-clock limit was reached (a command killed, or no time left to start one)."""


class Ran:
    def __init__(self, rc: int, wall_s: float, log: Path) -> None:
        self.rc, self.wall_s, self.log = rc, wall_s, log

    def tail(self, lines: int = 25) -> list[str]:
        return log_tail(self.log, lines)

    def text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


def log_tail(path: Path, lines: int = 25) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
    except OSError:
        return []


class Stage:
    """One stage's clock, commands and result (a dict whose keys are the same in every mode)."""

    def __init__(self, check: Check, name: str, limit: float, result: dict[str, Any]) -> None:
        self.check, self.name, self.limit, self.result = check, name, limit, result
        self.deadline = time.monotonic() + limit
        self.count = 0

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, cmd: list[str], cwd: Path = REPO, env: dict[str, str] | None = None,
            copy_to: Path | None = None) -> Ran:
        """Run cmd under what is left of the stage's limit; its output also goes to copy_to."""
        left = self.left()
        if left < 1:
            raise StageCut(f"no time left of its {self.limit:.0f} s to start `{shlex.join(cmd[:4])} ...`")
        c = self.check
        self.count += 1
        log = c.work / "logs" / f"{self.name}-{self.count}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        rc_file = log.with_suffix(".rc")
        self.result["commands"].append(shlex.join(cmd))
        wrapped = [sys.executable, str(Path(__file__).resolve()), "--relay", str(rc_file), str(log),
                   str(c.out / LOG_NAME), "--", *cmd]
        t0 = time.monotonic()
        try:
            c.run_one(wrapped, cwd, env or c.env, RELAY_LINE, left)
        except c.wall_limit:
            with open(c.out / LOG_NAME, "a", encoding="utf-8") as shared:
                shared.write(f"[killed at the stage's wall limit of {self.limit:.0f} s]\n\n")
            last = " | ".join(log_tail(log, 5))
            raise StageCut(f"`{shlex.join(cmd[:4])} ...` killed at the stage's limit of {self.limit:.0f} s"
                           + (f"; its last lines: {last}" if last else " (it printed nothing)")) from None
        finally:
            if copy_to is not None and log.is_file():
                shutil.copyfile(log, copy_to)
        try:
            rc = int(rc_file.read_text())
        except (OSError, ValueError):
            rc = -1
        return Ran(rc, time.monotonic() - t0, log)


class Check:
    def __init__(self, args: argparse.Namespace) -> None:
        sys.path.insert(0, str(BENCH))
        # The hard limit, reused: a timer kills the command's process group at the limit (a silent hang
        # too). Imported here, not at start: it imports torch, and the relay must start fast.
        from compare_nanogpt import WallLimit, run_one

        self.run_one: Callable[..., dict[str, Any]] = run_one
        self.wall_limit = WallLimit
        self.args = args
        self.cpu: bool = args.cpu
        self.mode = "cpu" if args.cpu else "gpu"
        self.out = Path(args.out).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix="gpurun-device-check-"))
        self.limits = dict(CPU_LIMITS if args.cpu else GPU_LIMITS)
        for item in args.limit or []:
            name, _, seconds = item.partition("=")
            self.limits[stage_name(name)] = float(seconds)
        self.budget_s = args.budget_s or (CPU_BUDGET_S if args.cpu else GPU_BUDGET_S)
        self.budget_end = time.monotonic() + self.budget_s
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8",
                   PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
        for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(key, None)  # a check started under torchrun must not make its trainers join that group
        if self.cpu:
            env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")  # the CPU variant, even on a GPU box
        self.env = env
        self.started = time.time()
        self.summary: dict[str, Any] = {
            "tool": "device_check", "schema": 1, "mode": self.mode, "ok": None, "complete": False,
            "command": shlex.join([sys.executable, "bench/device_check.py", *sys.argv[1:]]),
            "out_dir": str(self.out), "started_at": iso(self.started), "finished_at": None, "wall_s": None,
            "budget_s": self.budget_s, "limits_s": {s: self.limits[s] for s in STAGES}, "files": [],
            "stages": {s: template(s) for s in STAGES},
        }
        self.facts: dict[str, Any] = {}  # the environment stage's, for the later stages

    def write_summary(self) -> None:
        names = {p.name for p in self.out.iterdir() if p.is_file() and not p.name.startswith(".")}
        self.summary["files"] = sorted(names | {"summary.json"})
        tmp = self.out / ".summary.json.tmp"  # then a rename: a cut run never leaves half a summary
        tmp.write_text(json.dumps(self.summary, indent=2) + "\n")
        os.replace(tmp, self.out / "summary.json")


def iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t))


def stage_name(text: str) -> str:
    text = text.strip()
    if text.isdigit() and 1 <= int(text) <= len(STAGES):
        return STAGES[int(text) - 1]
    if text not in STAGES:
        raise SystemExit(f"error: unknown stage {text!r}: choose from {', '.join(STAGES)} (or 1-{len(STAGES)})")
    return text


# ---- the summary's shape: the same keys in every mode and status; values differ ------------------------

BENCH_RUN_KEYS = ("batch_size", "status", "reason", "tokens_per_s", "ms_per_step", "mfu", "peak_memory_mib",
                  "peak_memory_kind", "warmup_s", "seq_len", "grad_accum", "dtype", "compile",
                  "loader_wait_share", "final_loss", "parameters", "device_name", "peak_tflops", "file")
STAGE_KEYS: dict[str, tuple[str, ...]] = {
    "environment": ("python", "torch", "cuda_version", "cudnn_version", "nccl_version", "cuda_available",
                    "gpu_count", "gpu_name", "device_name", "compute_capability", "gpu_memory_mib",
                    "driver_version", "native_bf16", "peak_tflops_bf16", "flash_sdp_enabled", "triton",
                    "c_compiler", "cpu_model", "cpu_count", "platform", "nvidia_smi_file"),
    "cuda_tests": ("exit_code", "collected", "passed", "skipped", "failed", "errors", "failed_tests",
                   "skip_reasons"),
    "trainer_bench": ("config", "steps", "warmup", "batch_sizes", "runs", "notes"),
    "compare_nanogpt": ("preset", "checkout", "nanogpt_commit", "pairs", "batch_size", "steps", "warmup",
                        "nanogpt_tokens_per_s", "ours_tokens_per_s", "nanogpt_ms_per_step", "ours_ms_per_step",
                        "nanogpt_mfu", "ours_mfu", "ratio", "file", "notes"),
    "lab": ("recipe", "data_source", "data_origin", "tokenizer", "max_iters", "gpus", "prepare_command",
            "train_command", "prepare_exit_code", "exit_code", "last_step", "final_loss", "final_val_loss",
            "tokens_per_s", "mfu", "checkpoint_verified", "sample", "verdict", "verdict_missing",
            "evidence_device", "expected_device", "shows_expected_device", "evidence_file", "notes"),
}


def template(stage: str) -> dict[str, Any]:
    result: dict[str, Any] = {"status": "skipped", "reason": "not selected (--stages)", "limit_s": None,
                              "wall_s": None, "commands": [], "log_tail": []}
    result.update(dict.fromkeys(STAGE_KEYS[stage]))
    for key in ("failed_tests", "skip_reasons", "runs", "batch_sizes", "verdict_missing", "notes"):
        if key in result:
            result[key] = []
    return result


def fail(result: dict[str, Any], reason: str, ran: Ran | None = None) -> None:
    result["status"], result["reason"] = "failed", reason
    if ran is not None:
        result["log_tail"] = ran.tail()


# ---- stage 1: environment -----------------------------------------------------------------------------

PROBE = r"""
import json, os, platform, sys
import torch, torch.distributed
from bench.data_files import gpt2_bpe, shakespeare  # noqa: E402
from trainer import hardware
from trainer.train import native_bf16
cuda = torch.cuda.is_available()
try:
    import triton
    triton = triton.__version__
except Exception:
    triton = None
name = torch.cuda.get_device_name(0) if cuda else hardware.cpu_model()
try:
    import torch.cuda.nccl
    nccl = torch.cuda.nccl.version() if cuda and torch.distributed.is_nccl_available() else None
except Exception:
    nccl = None
facts = {
    "python": platform.python_version(), "torch": torch.__version__, "cuda_version": torch.version.cuda,
    "cudnn_version": torch.backends.cudnn.version() if cuda else None,
    "nccl_version": ".".join(map(str, nccl)) if isinstance(nccl, tuple) else nccl,
    "cuda_available": cuda, "gpu_count": torch.cuda.device_count() if cuda else 0,
    "gpu_name": name if cuda else None, "device_name": name,
    "compute_capability": "%d.%d" % torch.cuda.get_device_capability(0) if cuda else None,
    "gpu_memory_mib": round(torch.cuda.get_device_properties(0).total_memory / 2**20) if cuda else None,
    "native_bf16": native_bf16() if cuda else None,
    "peak_tflops_bf16": hardware.peak_tflops(name, torch.bfloat16) if cuda else None,
    "flash_sdp_enabled": torch.backends.cuda.flash_sdp_enabled() if cuda else None,
    "triton": triton,
    "cpu_model": hardware.cpu_model(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
}
open(sys.argv[1], "w").write(json.dumps(facts))
print(json.dumps(facts, indent=1))
"""


def stage_environment(st: Stage) -> None:
    c, r = st.check, st.result
    # torch's view first: it is what the trainer sees, and what the later stages need.
    facts_file, probe_file = c.work / "facts.json", c.work / "env_probe.py"
    probe_file.write_text(PROBE)
    probe = st.run([sys.executable, str(probe_file), str(facts_file)])
    if probe.rc != 0 or not facts_file.is_file():
        return fail(r, f"the torch probe failed (exit {probe.rc})", probe)
    facts = json.loads(facts_file.read_text())
    # torch.compile's Triton kernels need a C compiler at run time (their launchers are built here).
    facts["c_compiler"] = next((shutil.which(cc) for cc in ("cc", "gcc", "clang") if shutil.which(cc)), None)
    r.update({k: v for k, v in facts.items() if k in STAGE_KEYS["environment"]})
    c.facts = facts
    smi = shutil.which("nvidia-smi")
    smi_rc = 0
    if smi:
        smi_rc = st.run([smi], copy_to=c.out / "nvidia-smi.txt").rc
        r["nvidia_smi_file"] = "nvidia-smi.txt"
        query = st.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"])
        if query.rc == 0 and query.text().strip():
            r["driver_version"] = c.facts["driver_version"] = query.text().strip().splitlines()[0].strip()
    if not c.cpu and not facts["cuda_available"]:
        return fail(r, "CUDA is not available here: this check expects a GPU (pass --cpu for the CPU variant)", probe)
    if not c.cpu and smi is None:
        r["reason"] = "no nvidia-smi on PATH (versions from torch only)"
    elif smi_rc != 0:
        r["reason"] = f"nvidia-smi exited {smi_rc} (see nvidia-smi.txt)"
    r["status"] = "passed"


# ---- stage 2: the CUDA tests --------------------------------------------------------------------------

def stage_cuda_tests(st: Stage) -> None:
    c, r = st.check, st.result
    junit = c.work / "cuda-tests.xml"
    ran = st.run([sys.executable, "-m", "pytest", "-q", "tests/trainer/test_cuda.py", "-p", "no:cacheprovider",
                  f"--junitxml={junit}"])
    r["exit_code"] = ran.rc
    if not junit.is_file():
        return fail(r, f"pytest wrote no report (exit {ran.rc})", ran)
    suite = ET.parse(junit).getroot()
    suites = [suite] if suite.tag == "testsuite" else list(suite.iter("testsuite"))
    total = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    r.update(collected=total["tests"], skipped=total["skipped"], failed=total["failures"], errors=total["errors"],
             passed=total["tests"] - total["failures"] - total["errors"] - total["skipped"])
    reasons: set[str] = set()
    for case in suite.iter("testcase"):
        for child in case:
            if child.tag in ("failure", "error"):
                r["failed_tests"].append(f"{case.get('name')}: {(child.get('message') or '')[:300]}")
            elif child.tag == "skipped":
                reasons.add(child.get("message") or "")
    r["skip_reasons"] = sorted(reasons)
    if c.cpu:
        ok = ran.rc == 0 and r["collected"] > 0 and r["skipped"] == r["collected"]
        why = f"on CPU every CUDA test should be collected and skipped: {r['collected']} collected, " \
              f"{r['skipped']} skipped, exit {ran.rc}"
    else:
        ok = ran.rc == 0 and r["failed"] == 0 and r["errors"] == 0 and r["passed"] > 0
        why = f"{r['failed']} failed, {r['errors']} errors, {r['passed']} passed (pytest exit {ran.rc})"
    if not ok:
        return fail(r, why, ran)
    r["status"] = "passed"


# ---- stage 3: the trainer bench -----------------------------------------------------------------------

def no_compile(c: Check, r: dict[str, Any]) -> list[str]:
    """["--no-compile"] (with a note) where stage 1 found no C compiler: eager figures rather than none."""
    if not c.facts or c.facts.get("c_compiler"):
        return []
    r["notes"].append("no C compiler (cc, gcc, clang) for torch.compile's Triton kernels: run without compile")
    return ["--no-compile"]


def stage_trainer_bench(st: Stage) -> None:
    c, r = st.check, st.result
    if c.cpu:
        config, sizes, steps, warmup = "tiny", (4, 16), 3, 1
        extra = ["--device", "cpu", "--threads", "1"]
    else:  # gpt2.yaml's grad_accum is 32: one micro-step per timed step instead
        config, sizes, steps, warmup = "gpt2", (16, 64), 20, 5
        extra = no_compile(c, r)
    r.update(config=config, steps=steps, warmup=warmup, batch_sizes=list(sizes))
    problems = []
    for bs in sizes:
        row = dict.fromkeys(BENCH_RUN_KEYS)
        row.update(batch_size=bs, status="failed")
        r["runs"].append(row)
        name = f"trainer_bench-b{bs}.json"
        figures = c.work / name
        try:
            ran = st.run([sys.executable, "bench/trainer_bench.py", "--config", config, "--batch-size", str(bs),
                          "--grad-accum", "1", "--steps", str(steps), "--warmup", str(warmup), *extra,
                          "--json", str(figures)])
        except StageCut:
            row["reason"] = "killed at the stage's wall limit"
            raise
        if ran.rc != 0 or not figures.is_file():
            oom = "out of memory" in ran.text()
            row["reason"] = "out of memory" if oom else f"exit {ran.rc}"
            problems.append(f"batch {bs}: {row['reason']}")
            r["log_tail"] = ran.tail()
            continue
        shutil.copyfile(figures, c.out / name)
        (fig,) = json.loads(figures.read_text())["rows"]
        row.update({k: fig.get(k) for k in BENCH_RUN_KEYS if k in fig}, status="passed", file=name)
    if problems:
        return fail(r, "; ".join(problems))
    r["status"] = "passed"


# ---- stage 4: ours vs nanoGPT -------------------------------------------------------------------------

def stage_compare_nanogpt(st: Stage) -> None:
    c, r = st.check, st.result
    checkout = Path(c.args.nanogpt).expanduser().resolve() if c.args.nanogpt else REPO / "nanogpt"
    r["checkout"] = str(checkout)
    if c.cpu:
        preset, batch, steps, warmup, interval = "baby", 12, 30, 5, 5
    else:
        preset, batch, steps, warmup, interval = "gpt2", 16, 60, 20, 10
    r.update(preset=preset, pairs=1, batch_size=batch, steps=steps, warmup=warmup)
    if not checkout.is_dir():
        r["status"] = "skipped"
        r["reason"] = (f"no nanoGPT checkout at {checkout}: carry one in nanogpt/ (git-ignored) or pass "
                       "--nanogpt PATH")
        return
    lacking = [n for n in ("train.py", "model.py", "configurator.py", "config") if not (checkout / n).exists()]
    if lacking:
        return fail(r, f"{checkout} is not a nanoGPT checkout (no {', '.join(lacking)})")
    figures = c.work / "compare_nanogpt.json"
    # Its own limits end its runs (each in a session of its own) before this stage's timer would.
    own = str(max(10, int(st.left()) - 10))
    ran = st.run([sys.executable, "bench/compare_nanogpt.py", "--nanogpt", str(checkout), "--preset", preset,
                  "--pairs", "1", "--batch-size", str(batch), "--steps", str(steps), "--warmup", str(warmup),
                  "--log-interval", str(interval), "--timeout", own, "--budget-s", own, "--json", str(figures),
                  *([] if c.cpu else no_compile(c, r))])
    if ran.rc != 0 or not figures.is_file():
        return fail(r, f"compare_nanogpt.py failed (exit {ran.rc})", ran)
    shutil.copyfile(figures, c.out / "compare_nanogpt.json")
    res = json.loads(figures.read_text())
    pair = res["pairs"][0]
    r.update(nanogpt_commit=res.get("nanogpt_commit"), ratio=pair["ratio"], file="compare_nanogpt.json")
    for who in ("nanogpt", "ours"):
        for key in ("tokens_per_s", "ms_per_step", "mfu"):
            r[f"{who}_{key}"] = pair[who][key]
    r["status"] = "passed"


# ---- stage 5: the lab recipe's evidence card ----------------------------------------------------------

def reachable(url: str, timeout: float = 2.0) -> bool:
    """A TCP connection to the URL's host within the timeout (a thread: name lookups take no timeout)."""
    host = urlsplit(url).hostname or url
    ok: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, 443), timeout=timeout):
                ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 2)
    return bool(ok)


def local_shakespeare() -> Path | None:
    return shakespeare()


def local_bpe() -> Path | None:
    return gpt2_bpe()


def write_flat_yaml(path: Path, config: dict[str, Any]) -> None:
    """The job's config as flat `key: value` lines (JSON scalars are YAML): the trainer reads it with or
    without PyYAML, as it reads the controller's (orchestrator.plan.job.config_text)."""
    path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in config.items()))


def stage_lab(st: Stage) -> None:
    c, r = st.check, st.result
    from trainer import recipes, sources  # torch-free

    recipe = recipes.get("lab")
    r["recipe"] = recipe.name
    run_dir = c.work / "lab-run"
    code, out = run_dir / "code", run_dir / "out"
    code.mkdir(parents=True)
    env = dict(c.env)

    # The data, as the controller's data phase makes it (recipe.data.prepare_args), from a local copy
    # (`gpurun launch --data-from`: the same code path) when there is one or the download is unreachable.
    tokenizer = recipe.data.tokenizer
    bpe = local_bpe()
    if tokenizer == "gpt2" and bpe is not None:
        env["GPURUN_GPT2_BPE_DIR"] = str(bpe)  # prepare and the trainer's sample read it
    elif tokenizer == "gpt2" and not reachable(f"https://{TIKTOKEN_HOST}/"):
        tokenizer = "char"
        r["notes"].append("GPT-2 BPE: no encoder.json + vocab.bpe under $GPURUN_DATA_DIR/gpt2 or $GPURUN_GPT2_BPE_DIR and "
                          f"{TIKTOKEN_HOST} unreachable: char-level instead of the recipe's gpt2")
    text = local_shakespeare()
    if text is not None:
        r["data_source"], r["data_origin"] = "local copy", str(text)
    elif reachable(sources.SHAKESPEARE_URL):
        r["data_source"], r["data_origin"] = "download", sources.SHAKESPEARE_URL
    else:
        text = c.work / "lab-text" / "input.txt"
        text.parent.mkdir()
        text.write_text(sources.builtin_corpus_text(), encoding="utf-8")
        r["data_source"], r["data_origin"] = "built-in corpus", "trainer's own text (no tinyshakespeare here)"
        r["notes"].append("tinyshakespeare: no local copy and its download unreachable: the trainer's built-in corpus")
    r["tokenizer"] = tokenizer
    data_dir = run_dir / "data" / recipe.data.dir_name
    args = recipe.data.prepare_args(str(data_dir), from_dir=str(text) if text is not None else None)
    args[args.index("--tokenizer") + 1] = tokenizer
    prep_cmd = [sys.executable, "-m", "trainer.data", *args]
    r["prepare_command"] = shlex.join(prep_cmd)
    prep = st.run(prep_cmd, cwd=code, env=env)
    r["prepare_exit_code"] = prep.rc
    if prep.rc != 0:
        return fail(r, f"trainer.data prepare failed (exit {prep.rc})", prep)

    # The job: the recipe's config file with data_dir, the user's flags (here: a short run), the
    # guard's deadline; one rank per GPU through trainer.launch (orchestrator.run.bootstrap.trainer_command).
    try:
        from orchestrator.proof.evidence import write_evidence
        from orchestrator.run.bootstrap import trainer_command
    except ImportError as e:
        return fail(r, f"the controller's modules do not import on this machine: {e}")
    write_flat_yaml(code / JOB_CONFIG, dict(recipe.config, data_dir=str(data_dir)))
    if c.cpu:  # the recipe's 30M-parameter model at ~200 tokens/s would take minutes here: tiny sizes
        flags = ["--device", "cpu", "--max-iters", "12", "--n-layer", "1", "--n-head", "2", "--n-embd", "32",
                 "--block-size", "32", "--batch-size", "4", "--eval-iters", "2", "--sample-tokens", "16",
                 "--log-interval", "2"]
    else:
        flags = ["--max-iters", "100"]
    r["max_iters"] = int(flags[flags.index("--max-iters") + 1])
    gpus = 1 if c.cpu else max(1, int(c.facts.get("gpu_count") or 1))
    r["gpus"] = gpus
    deadline = int(time.time() + st.left() - 3)  # the trainer's own stop comes before this stage's kill
    line = trainer_command(gpus, ["--config", JOB_CONFIG, *flags, "--deadline-epoch", str(deadline)],
                           python=sys.executable, out_dir=str(out))
    r["train_command"] = line
    job = st.run(shlex.split(line), cwd=code, env=env, copy_to=run_dir / "job.log")
    r["exit_code"] = job.rc

    device = c.facts.get("gpu_name") if not c.cpu else None
    md_path = write_evidence(
        run_dir, run={"run_id": "device-check-lab", "provider": "device-check (no cloud)", "gpu": device,
                      "gpu_count": gpus, "recipe": recipe.name, "end_reason": f"job ended (exit {job.rc})",
                      "job_exit_code": job.rc},
        offer=None, proof_path=None, runtime_s=job.wall_s, cost_usd=None, max_usd=None)
    shutil.copyfile(md_path, c.out / "EVIDENCE.md")
    r["evidence_file"] = "EVIDENCE.md"
    ev = json.loads((run_dir / "evidence.json").read_text())
    tr, steps = ev["training"], ev["training"]["steps"]
    r.update(last_step=tr["last_step"], final_loss=tr["final_loss"], final_val_loss=tr["final_val_loss"],
             tokens_per_s=steps[-1]["tokens_per_s"] if steps else None, mfu=steps[-1]["mfu"] if steps else None,
             checkpoint_verified=ev["checkpoint"]["matches_manifest"], sample=ev["sample"]["status"],
             verdict=ev["verdict"]["label"], verdict_missing=ev["verdict"]["missing"])
    md = md_path.read_text(encoding="utf-8")
    shown = re.search(r"^device: (\S+)$", md, re.M)
    r["evidence_device"] = shown.group(1) if shown else None
    r["expected_device"] = "cpu" if c.cpu else "cuda"
    r["shows_expected_device"] = r["evidence_device"] == r["expected_device"]
    if job.rc != 0:
        return fail(r, f"the job (trainer.launch) exited {job.rc}", job)
    if not r["shows_expected_device"]:
        return fail(r, f"EVIDENCE.md shows device: {r['evidence_device']}, not {r['expected_device']}", job)
    r["status"] = "passed"


RUNNERS: dict[str, Callable[[Stage], None]] = {
    "environment": stage_environment, "cuda_tests": stage_cuda_tests, "trainer_bench": stage_trainer_bench,
    "compare_nanogpt": stage_compare_nanogpt, "lab": stage_lab,
}
NEEDS_CUDA = ("cuda_tests", "trainer_bench", "compare_nanogpt", "lab")


# ---- the text summary ---------------------------------------------------------------------------------

def fmt(v: Any, spec: str = "", unit: str = "") -> str:
    return "n/a" if v is None else f"{v:{spec}}{unit}"


def headline(name: str, r: dict[str, Any]) -> str:
    if r["status"] != "passed":
        return r["reason"] or ""
    if name == "environment":
        return (f"{r['device_name']}; torch {r['torch']}, CUDA {r['cuda_version']}, driver {r['driver_version']}; "
                f"native bf16 {r['native_bf16']}, peak {fmt(r['peak_tflops_bf16'])} TFLOPS")
    if name == "cuda_tests":
        return f"{r['collected']} collected: {r['passed']} passed, {r['skipped']} skipped, {r['failed']} failed"
    if name == "trainer_bench":
        return "; ".join(
            f"batch {x['batch_size']}: {fmt(x['tokens_per_s'], ',.0f')} tok/s, {fmt(x['ms_per_step'], '.1f')} ms/step, "
            f"MFU {fmt(None if x['mfu'] is None else 100 * x['mfu'], '.1f', '%')}, {fmt(x['peak_memory_mib'], ',.0f')} MiB"
            for x in r["runs"])
    if name == "compare_nanogpt":
        return (f"nanoGPT {fmt(r['nanogpt_tokens_per_s'], ',.0f')} vs ours {fmt(r['ours_tokens_per_s'], ',.0f')} tok/s,"
                f" ratio {fmt(r['ratio'], '.3f')}")
    return (f"EVIDENCE.md shows device: {r['evidence_device']} (verdict {r['verdict']}); {r['last_step']} steps, "
            f"loss {fmt(r['final_loss'], '.3f')}, data: {r['data_source']}, {r['tokenizer']}")


def text_summary(check: Check) -> str:
    s = check.summary
    lines = [f"device check ({s['mode']}): {'OK' if s['ok'] else 'FAILED'} in {s['wall_s']:.1f} s -> {s['out_dir']}"]
    for i, name in enumerate(STAGES, 1):
        r = s["stages"][name]
        wall = "" if r["wall_s"] is None else f"{r['wall_s']:.1f} s"
        lines.append(f"  {i} {name:<16} {r['status']:<8} {wall:>8}  {headline(name, r)}")
    return "\n".join(lines)


# ---- main ---------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--relay"]:
        return relay(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument("--cpu", action="store_true", help="the CPU variant: tiny sizes, CUDA hidden")
    ap.add_argument("--out", default=os.environ.get("OUT") or str(
        REPO / "bench" / "results" / time.strftime("device-check-%Y%m%d-%H%M%S")),
        help="where summary.json and the other files go (default $OUT, else bench/results/device-check-<time>)")
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma list of {', '.join(STAGES)} (or 1-5)")
    ap.add_argument("--nanogpt", help="a nanoGPT checkout (default: nanogpt/ in the repo root, if there)")
    ap.add_argument("--limit", action="append", metavar="STAGE=SECONDS", help="override a stage's wall limit")
    ap.add_argument("--budget-s", type=float, help=f"wall limit of the whole check (default {GPU_BUDGET_S} s; "
                    f"--cpu: {CPU_BUDGET_S} s); a stage gets at most what is left of it")
    ap.add_argument("--keep", action="store_true", help="keep the temporary work directory")
    args = ap.parse_args(argv)
    selected = [stage_name(s) for s in args.stages.split(",") if s.strip()]

    check = Check(args)
    print(f"device check ({check.mode}): stages {', '.join(selected)}; output in {check.out}", flush=True)
    check.write_summary()
    try:
        for i, name in enumerate(STAGES, 1):
            if name not in selected:
                continue
            result = check.summary["stages"][name]
            limit = min(check.limits[name], check.budget_end - time.monotonic())
            result.update(status="failed", reason=None, limit_s=round(limit, 1))
            env = check.summary["stages"]["environment"]
            if name in NEEDS_CUDA and not check.cpu and env["status"] == "failed" and env["cuda_available"] is False:
                result.update(status="skipped", reason="no CUDA here (stage 1): the GPU stages cannot run")
                continue
            if limit < 1:
                fail(result, f"no time left of the check's budget of {check.budget_s:.0f} s (--budget-s)")
                continue
            print(f"== {i}/{len(STAGES)} {name} (limit {limit:.0f} s)", flush=True)
            st = Stage(check, name, limit, result)
            t0 = time.monotonic()
            try:
                RUNNERS[name](st)
            except StageCut as e:
                fail(result, f"wall limit: {e}")
            except Exception as e:  # a broken stage is reported in the summary; the next ones still run
                fail(result, f"{type(e).__name__}: {e}")
            result["wall_s"] = round(time.monotonic() - t0, 2)
            print(f"   {result['status']} in {result['wall_s']:.1f} s: {headline(name, result)}", flush=True)
            check.write_summary()
    finally:
        s = check.summary
        s["ok"] = all(r["status"] == "passed" or (r["status"] == "skipped" and r["reason"])
                      for r in s["stages"].values())
        s["complete"] = True
        s["finished_at"] = iso(time.time())
        s["wall_s"] = round(time.time() - check.started, 2)
        check.write_summary()
        text = text_summary(check)
        with open(check.out / LOG_NAME, "a", encoding="utf-8") as log:
            log.write(text + "\n")
        if args.keep:
            print(f"work directory kept: {check.work}")
        else:
            shutil.rmtree(check.work, ignore_errors=True)
        print(text, flush=True)
    return 0 if check.summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
