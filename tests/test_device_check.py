"""bench/device_check.py's CPU variant end to end: every stage runs (or is skipped with its reason) and
summary.json carries every figure under the keys a GPU run fills. No speed is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

COMMON_KEYS = {"status", "reason", "limit_s", "wall_s", "commands", "log_tail"}
STAGE_KEYS = {
    "environment": {"python", "torch", "cuda_version", "cuda_available", "gpu_name", "device_name", "driver_version",
                    "native_bf16", "peak_tflops_bf16", "nvidia_smi_file"},
    "cuda_tests": {"exit_code", "collected", "passed", "skipped", "failed", "errors", "failed_tests"},
    "trainer_bench": {"config", "steps", "warmup", "batch_sizes", "runs"},
    "compare_nanogpt": {"preset", "checkout", "nanogpt_tokens_per_s", "ours_tokens_per_s", "nanogpt_mfu", "ours_mfu",
                        "ratio"},
    "lab": {"recipe", "data_source", "tokenizer", "exit_code", "last_step", "verdict", "evidence_device",
            "expected_device", "shows_expected_device", "evidence_file"},
}
RUN_KEYS = {"batch_size", "status", "tokens_per_s", "ms_per_step", "mfu", "peak_memory_mib", "dtype", "compile"}


def number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@pytest.mark.timeout(420)
def test_the_cpu_variant_runs_every_stage_and_writes_one_complete_summary(tmp_path: Path) -> None:
    out = tmp_path / "out"
    # A nanoGPT path that is not there: stage 4 is skipped with its reason at once (no checkout is carried).
    cmd = [sys.executable, "bench/device_check.py", "--cpu", "--out", str(out), "--nanogpt", str(tmp_path / "none")]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=360)  # a hang guard only
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]

    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8, files
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "cpu" and summary["ok"] is True and summary["complete"] is True
    assert sorted(summary["files"]) == sorted(p.name for p in files)
    stages = summary["stages"]
    assert list(stages) == list(STAGE_KEYS)
    for name, keys in STAGE_KEYS.items():
        assert set(stages[name]) >= COMMON_KEYS | keys, name
        assert stages[name]["status"] in ("passed", "skipped"), (name, stages[name]["reason"])
    assert summary["budget_s"] < 180  # the CPU variant stays under 3 minutes, hung or not

    env = stages["environment"]
    assert env["status"] == "passed" and env["cuda_available"] is False and env["native_bf16"] is None
    assert env["torch"] and env["python"] and env["device_name"]

    tests = stages["cuda_tests"]
    assert tests["status"] == "passed" and tests["exit_code"] == 0
    assert tests["collected"] > 0 and tests["skipped"] == tests["collected"]
    assert tests["passed"] == tests["failed"] == tests["errors"] == 0

    bench = stages["trainer_bench"]
    assert bench["status"] == "passed" and len(bench["runs"]) == 2 == len(bench["batch_sizes"])
    for run in bench["runs"]:
        assert set(run) >= RUN_KEYS and run["status"] == "passed"
        for key in ("tokens_per_s", "ms_per_step", "peak_memory_mib"):
            assert number(run[key]) and run[key] > 0, (key, run)
        assert run["mfu"] is None  # a CPU has no known peak
        assert (out / run["file"]).is_file()

    compare = stages["compare_nanogpt"]
    assert compare["status"] == "skipped" and "no nanoGPT checkout" in compare["reason"]

    lab = stages["lab"]
    assert lab["status"] == "passed" and lab["recipe"] == "lab" and lab["exit_code"] == 0
    assert lab["evidence_device"] == lab["expected_device"] == "cpu" and lab["shows_expected_device"] is True
    assert lab["last_step"] == lab["max_iters"] and lab["checkpoint_verified"] is True
    assert "\ndevice: cpu\n" in (out / lab["evidence_file"]).read_text()

    assert (out / "device-check.log").is_file()
    printed = result.stdout.rstrip().splitlines()
    assert printed[-6].startswith("device check (cpu): OK")  # the text summary comes last, one line per stage
