"""What the trainer says about itself: the hardware it ran on, the model's size, the training steps.

Read from out/hardware.json, out/metrics.jsonl and the log (train.log, else job.log).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from orchestrator.proof.reading import first_middle_last, num, read_json, read_jsonl

_DEVICE_LINE_RE = re.compile(r"^\s*(?:\[[^\]]*\]\s*)?(device|cuda_name|gpu_name|world_size|dtype)\s*:", re.I)
_PARAMS_RE = re.compile(
    r"^\s*(?:\[[^\]]*\]\s*)?param(?:eter)?s?\s*:\s*(?P<num>[0-9.]+)\s*(?P<unit>[KMB]?)", re.I
)
_STEP_RE = re.compile(
    r"^\s*(?:\[[^\]]*\]\s*)?step\s+(?P<step>\d+)\s*\|.*\bloss\s+(?P<loss>[0-9.eE+\-]+|nan|inf)"
)
_STOPPED_RE = re.compile(r"^\s*(?:\[[^\]]*\]\s*)?stopped:\s*(?P<reason>.*)$")
_UNITS = {"": 1, "K": 1e3, "M": 1e6, "B": 1e9}


def hardware_section(out: Path, log_lines: list[str]) -> dict[str, Any]:
    hw, problem = read_json(out / "hardware.json")
    if not isinstance(hw, dict):
        hw = None
    device_lines = [ln.strip() for ln in log_lines if _DEVICE_LINE_RE.match(ln)]
    used = None
    for ln in device_lines:  # what training actually ran on, as the trainer logged it
        m = re.match(r"^\s*(?:\[[^\]]*\]\s*)?device\s*:\s*(\S+)", ln, re.I)
        if m:
            used = m.group(1).lower()
            break
    if used is None and hw and hw.get("device"):
        used = str(hw["device"]).lower()
    gpu_name = (hw or {}).get("gpu_name")
    if not gpu_name:
        for ln in device_lines:
            m = re.match(r"^\s*(?:\[[^\]]*\]\s*)?(?:cuda_name|gpu_name)\s*:\s*(.+)$", ln, re.I)
            if m:
                gpu_name = m.group(1).strip()
                break
    section: dict[str, Any] = {
        "status": "present" if hw is not None else "missing",
        "file": "out/hardware.json",
        "problem": problem,
        "torch": (hw or {}).get("torch"),
        "python": (hw or {}).get("python"),
        "cuda_available": (hw or {}).get("cuda_available"),
        "cuda_version": (hw or {}).get("cuda_version"),
        "gpu_name": gpu_name,
        "gpu_count": (hw or {}).get("gpu_count"),
        "world_size": (hw or {}).get("world_size"),
        "dtype": (hw or {}).get("dtype"),
        "nvidia_smi": (hw or {}).get("nvidia_smi"),
        "device_used": used,
        "device_log_lines": device_lines[:8],
        "cuda_used": bool(used and used.startswith("cuda")),
    }
    return section


def parameters_section(log_lines: list[str]) -> dict[str, Any]:
    for ln in log_lines:
        m = _PARAMS_RE.match(ln)
        if m:
            count = int(round(float(m.group("num")) * _UNITS[m.group("unit").upper()]))
            return {"status": "present", "log_line": ln.strip(), "count": count}
    return {"status": "missing", "log_line": None, "count": None}


def training_section(out: Path, log_lines: list[str]) -> dict[str, Any]:
    rows, bad = read_jsonl(out / "metrics.jsonl")
    steps = [r for r in rows if r.get("type") == "step" and num(r.get("step")) is not None]
    evals = [r for r in rows if r.get("type") == "eval" and num(r.get("step")) is not None]
    ends = [r for r in rows if r.get("type") == "end"]
    log_steps = [ln.strip() for ln in log_lines if _STEP_RE.match(ln)]
    if log_steps:
        step_lines, source = first_middle_last(log_steps), "train.log"
    else:  # no log (or not synced): show the same facts from metrics.jsonl
        step_lines = [
            f"step {int(r['step']):04d} | loss {num(r.get('loss')) or float('nan'):.4f} | "
            f"elapsed {num(r.get('elapsed_s')) or 0.0:.1f}s"
            for r in first_middle_last(steps)
        ]
        source = "metrics.jsonl" if steps else None
    picked = [
        {
            "step": int(r["step"]),
            "loss": num(r.get("loss")),
            "elapsed_s": num(r.get("elapsed_s")),
            "tokens_per_s": num(r.get("tokens_per_s")),
            "mfu": num(r.get("mfu")),
        }
        for r in first_middle_last(steps)
    ]
    stopped = [ln.strip() for ln in log_lines if _STOPPED_RE.match(ln)]
    last_eval = evals[-1] if evals else None
    return {
        "metrics_status": "present" if (out / "metrics.jsonl").is_file() else "missing",
        "metrics_bad_lines": bad,
        "step_count": max(len(steps), len(log_steps)),
        "step_lines": step_lines,
        "step_lines_source": source,
        "steps": picked,
        "evals": len(evals),
        "last_step": int(steps[-1]["step"]) if steps else None,
        "final_loss": num(steps[-1].get("loss")) if steps else None,
        "final_train_eval_loss": num(last_eval.get("train_loss")) if last_eval else None,
        "final_val_loss": num(last_eval.get("val_loss")) if last_eval else None,
        "training_elapsed_s": num(steps[-1].get("elapsed_s")) if steps else None,
        "end": ends[-1] if ends else None,
        "stopped_line": stopped[-1] if stopped else None,
        "_curve": {
            "step": [(int(r["step"]), num(r.get("loss"))) for r in steps],
            "val": [(int(r["step"]), num(r.get("val_loss"))) for r in evals],
            "train_eval": [(int(r["step"]), num(r.get("train_loss"))) for r in evals],
        },
    }


