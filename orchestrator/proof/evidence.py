"""The evidence card: EVIDENCE.md + evidence.json (+ loss.png) in the local run directory.

The card is a pure function of the files in the run directory (the synced trainer outputs under
``out/``, ``job.log``, the shutdown proof) and the arguments: no clock, no network, no ledger. Run it
twice on the same files and the bytes are the same. Every file may be missing; the card then says
what is missing instead of failing. Everything written goes through :func:`orchestrator.redact.redact`.

Verdicts:
- ``PASS``: CUDA was used, the checkpoint re-hashes to its manifest entry, the shutdown proof says
  verified, and every other item of the card is present (cost within the cap when known).
- ``SMOKE TEST (CPU only) — not a GPU pass``: the trainer ran on the CPU (whatever else holds).
- ``FAIL``: something contradicts success (hash mismatch, proof not verified, cost over the cap,
  the job exited non-zero, the run stalled or broke: the run's ``end_reason``).
- ``INCOMPLETE``: CUDA, but items are missing; the card lists which.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from orchestrator.proof.shutdown import iso, jsonable, sha256_bytes
from orchestrator.redact import redact
from orchestrator.state.endings import Ending, Exit, ending_of, for_run
from trainer.manifest import atomic_write_bytes, sha256_file

SCHEMA = "gpurun.evidence"
SCHEMA_VERSION = 1
SAMPLE_LINES = 40
JOB_LOG_TAIL = 20
CPU_LABEL = "SMOKE TEST (CPU only) — not a GPU pass"

_DEVICE_LINE_RE = re.compile(r"^\s*(?:\[[^\]]*\]\s*)?(device|cuda_name|gpu_name|world_size|dtype)\s*:", re.I)
_PARAMS_RE = re.compile(
    r"^\s*(?:\[[^\]]*\]\s*)?param(?:eter)?s?\s*:\s*(?P<num>[0-9.]+)\s*(?P<unit>[KMB]?)", re.I
)
_STEP_RE = re.compile(
    r"^\s*(?:\[[^\]]*\]\s*)?step\s+(?P<step>\d+)\s*\|.*\bloss\s+(?P<loss>[0-9.eE+\-]+|nan|inf)"
)
_CKPT_LINE_RE = re.compile(
    r"^\s*(?:\[[^\]]*\]\s*)?checkpoint:\s*(?P<file>\S+)\s+sha256\s+(?P<sha>[0-9a-f]{64})"
)
_STOPPED_RE = re.compile(r"^\s*(?:\[[^\]]*\]\s*)?stopped:\s*(?P<reason>.*)$")
_ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_UNITS = {"": 1, "K": 1e3, "M": 1e6, "B": 1e9}


# --- reading ---------------------------------------------------------------------------------------


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except (OSError, ValueError):
        return None


def _read_json(path: Path) -> tuple[Any, str | None]:
    """(value, problem); value None when missing or unreadable."""
    text = _read_text(path)
    if text is None:
        return None, None
    try:
        return json.loads(text), None
    except json.JSONDecodeError as e:
        return None, f"{path.name} is not valid JSON ({e.msg} at line {e.lineno})"


def _read_jsonl(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Rows that parse as JSON objects, and how many lines did not (a half-synced last line)."""
    text = _read_text(path)
    if text is None:
        return [], 0
    rows: list[dict[str, Any]] = []
    bad = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            bad += 1
    return rows, bad


def _pick_first_middle_last(items: list[Any]) -> list[Any]:
    if len(items) <= 3:
        return list(items)
    return [items[0], items[len(items) // 2], items[-1]]


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _rel(path: Path, run_dir: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(run_dir.resolve()))
    except ValueError:
        return str(path)


# --- sections --------------------------------------------------------------------------------------


def _provider_section(run: Mapping[str, Any], offer: Mapping[str, Any] | None) -> dict[str, Any]:
    offer = offer or {}

    def pick(*keys: str) -> Any:
        for src in (offer, run):
            for k in keys:
                if src.get(k) not in (None, ""):
                    return src[k]
        return None

    return {
        "name": pick("provider"),
        "instance_type": pick("instance_type"),
        "gpu": pick("gpu"),
        "gpu_count": pick("gpu_count"),
        "region": pick("region"),
        "spot": pick("spot"),
        "usd_per_hour": _num(offer.get("usd_per_hour")) if offer else _num(run.get("usd_per_hour")),
        "extra_usd_per_hour": _num(offer.get("extra_usd_per_hour")) if offer else None,
        "price_source": pick("price_source"),
        "instance_ids": list(
            run.get("instance_ids") or ([run["instance_id"]] if run.get("instance_id") else [])
        ),
        # A multi-node run's nodes (rank, instance id, the address the others reached it at).
        "nodes": [{k: n.get(k) for k in ("rank", "instance_id", "private_ip")}
                  for n in (run.get("plan") or {}).get("nodes") or [] if isinstance(n, dict)],
    }


def _hardware_section(out: Path, log_lines: list[str]) -> dict[str, Any]:
    hw, problem = _read_json(out / "hardware.json")
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


def _parameters_section(log_lines: list[str]) -> dict[str, Any]:
    for ln in log_lines:
        m = _PARAMS_RE.match(ln)
        if m:
            count = int(round(float(m.group("num")) * _UNITS[m.group("unit").upper()]))
            return {"status": "present", "log_line": ln.strip(), "count": count}
    return {"status": "missing", "log_line": None, "count": None}


def _training_section(out: Path, log_lines: list[str]) -> dict[str, Any]:
    rows, bad = _read_jsonl(out / "metrics.jsonl")
    steps = [r for r in rows if r.get("type") == "step" and _num(r.get("step")) is not None]
    evals = [r for r in rows if r.get("type") == "eval" and _num(r.get("step")) is not None]
    ends = [r for r in rows if r.get("type") == "end"]
    log_steps = [ln.strip() for ln in log_lines if _STEP_RE.match(ln)]
    if log_steps:
        step_lines, source = _pick_first_middle_last(log_steps), "train.log"
    else:  # no log (or not synced): show the same facts from metrics.jsonl
        step_lines = [
            f"step {int(r['step']):04d} | loss {_num(r.get('loss')) or float('nan'):.4f} | "
            f"elapsed {_num(r.get('elapsed_s')) or 0.0:.1f}s"
            for r in _pick_first_middle_last(steps)
        ]
        source = "metrics.jsonl" if steps else None
    picked = [
        {
            "step": int(r["step"]),
            "loss": _num(r.get("loss")),
            "elapsed_s": _num(r.get("elapsed_s")),
            "tokens_per_s": _num(r.get("tokens_per_s")),
            "mfu": _num(r.get("mfu")),
        }
        for r in _pick_first_middle_last(steps)
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
        "final_loss": _num(steps[-1].get("loss")) if steps else None,
        "final_train_eval_loss": _num(last_eval.get("train_loss")) if last_eval else None,
        "final_val_loss": _num(last_eval.get("val_loss")) if last_eval else None,
        "training_elapsed_s": _num(steps[-1].get("elapsed_s")) if steps else None,
        "end": ends[-1] if ends else None,
        "stopped_line": stopped[-1] if stopped else None,
        "_curve": {
            "step": [(int(r["step"]), _num(r.get("loss"))) for r in steps],
            "val": [(int(r["step"]), _num(r.get("val_loss"))) for r in evals],
            "train_eval": [(int(r["step"]), _num(r.get("train_loss"))) for r in evals],
        },
    }


def _checkpoint_section(out: Path, log_lines: list[str]) -> dict[str, Any]:
    ckdir = out / "checkpoints"
    manifest, problem = _read_json(ckdir / "MANIFEST.json")
    section: dict[str, Any] = {
        "status": "missing",
        "manifest": "present" if isinstance(manifest, dict) else "missing",
        "problem": problem,
        "file": None,
        "path": None,
        "bytes": None,
        "sha256": None,
        "manifest_sha256": None,
        "manifest_bytes": None,
        "step": None,
        "matches_manifest": None,
        "log_line": None,
        "manifest_entries": 0,
    }
    logged = [ln.strip() for ln in log_lines if _CKPT_LINE_RE.match(ln)]
    section["log_line"] = logged[-1] if logged else None
    if not isinstance(manifest, dict):
        stray = sorted(p.name for p in ckdir.glob("*.pt")) if ckdir.is_dir() else []
        if stray:
            section["problem"] = (problem or "MANIFEST.json is missing") + (
                f"; unverified checkpoint files: {', '.join(stray)}"
            )
        return section
    entries = [e for e in manifest.get("checkpoints") or [] if isinstance(e, dict)]
    section["manifest_entries"] = len(entries)
    latest = manifest.get("latest") or (entries[-1].get("file") if entries else None)
    if not latest:
        section["problem"] = "MANIFEST.json names no checkpoint"
        return section
    entry = next((e for e in reversed(entries) if e.get("file") == latest), {})
    section.update(
        file=str(latest),
        manifest_sha256=entry.get("sha256"),
        manifest_bytes=entry.get("bytes"),
        step=entry.get("step"),
    )
    path = (ckdir / str(latest)).resolve()
    # The manifest came from the instance: never let it point the hash (or the card) outside the run.
    if ckdir.resolve() not in path.parents:
        section["problem"] = f"MANIFEST.json points outside checkpoints/: {latest!r}"
        return section
    section["path"] = f"out/checkpoints/{path.name}"
    if not path.is_file():
        section["problem"] = f"{section['path']} is listed in MANIFEST.json but was not synced"
        return section
    section["bytes"] = path.stat().st_size
    section["sha256"] = sha256_file(path)
    ok = section["sha256"] == entry.get("sha256") and (
        entry.get("bytes") is None or int(entry["bytes"]) == section["bytes"]
    )
    section["matches_manifest"] = ok
    section["status"] = "verified" if ok else "mismatch"
    if not entry:
        section["problem"] = f"MANIFEST.json has no entry for its latest file {latest}"
    elif not ok:
        section["problem"] = (
            f"{section['path']} does not match MANIFEST.json (sha256 {section['sha256']} "
            f"vs {entry.get('sha256')}, {section['bytes']} vs {entry.get('bytes')} bytes)"
        )
    return section


def _sample_section(out: Path) -> dict[str, Any]:
    text = _read_text(out / "sample.txt")
    if text is None:
        return {"status": "missing", "lines": [], "total_lines": 0, "truncated": False}
    lines = text.splitlines()
    return {
        "status": "present" if text.strip() else "empty",
        "lines": lines[:SAMPLE_LINES],
        "total_lines": len(lines),
        "truncated": len(lines) > SAMPLE_LINES,
    }


def _cost_section(runtime_s: float | None, cost_usd: float | None, max_usd: float | None) -> dict[str, Any]:
    runtime, cost, cap = _num(runtime_s), _num(cost_usd), _num(max_usd)
    within = None if cost is None or cap is None else cost <= cap + 1e-9
    return {
        "runtime_s": runtime,
        "cost_usd": cost,
        "max_usd": cap,
        "within_cap": within,
        "fraction_of_cap": None if within is None or not cap else round(cost / cap, 4),
    }


def _proof_section(proof_path: Path | None, run_dir: Path) -> dict[str, Any]:
    section: dict[str, Any] = {"status": "missing", "path": None, "sha256": None, "verified": None}
    if proof_path is None:
        return section
    proof_path = Path(proof_path)
    section["path"] = _rel(proof_path, run_dir)
    try:
        data = proof_path.read_bytes()
    except OSError:
        return section
    section["sha256"] = sha256_bytes(data)
    try:
        proof = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        section.update(status="unreadable", problem=f"not valid JSON: {e}")
        return section
    if not isinstance(proof, dict):
        section.update(status="unreadable", problem="not a JSON object")
        return section
    describe = [d for d in proof.get("final_describe") or [] if isinstance(d, dict)]
    section.update(
        status="present",
        schema_version=proof.get("schema_version"),
        run_id=proof.get("run_id"),
        verified=proof.get("verified") is True,
        verified_at=iso(_num(proof.get("verified_at"))),
        instance_ids=proof.get("instance_ids") or [],
        instance_states={str(d.get("id", i)): d.get("state") for i, d in enumerate(describe)},
        zero_match=not (proof.get("zero_match_listing") or []),
        terminate_requests=len(proof.get("terminate_requests") or []),
        deleted_resources=proof.get("deleted_resources") or [],
        prev_sha256=proof.get("prev_sha256"),
        contradictions=proof.get("contradictions") or [],
        estimated_cost_usd=(proof.get("cost") or {}).get("estimated_usd"),
        attempts=[{k: a.get(k) for k in ("attempt", "offer", "instance_id", "reason", "cost_usd")}
                  for a in proof.get("attempts") or [] if isinstance(a, dict)],
    )
    return section


def _job_log_section(run_dir: Path) -> dict[str, Any]:
    text = _read_text(run_dir / "job.log")
    if text is None:
        return {"status": "missing", "tail": [], "traceback": False}
    # job.log is the job's terminal output: drop progress-bar escapes and redraws before quoting it
    lines = [ln for ln in _ANSI_RE.sub("", text).splitlines() if ln.strip()]
    return {
        "status": "present",
        "tail": lines[-JOB_LOG_TAIL:],
        "traceback": "Traceback (most recent call last)" in text,
    }


def _ending_section(run: Mapping[str, Any]) -> dict[str, Any]:
    """How the run ended, as the controller recorded it (the ledger's end_reason, job_exit_code)."""
    reason, code = run.get("end_reason"), run.get("job_exit_code")
    outcome = for_run(reason, code) if reason else None
    shown = reason or "unknown"
    if code is not None and ending_of(reason) is not Ending.JOB_ENDED:  # "job ended (exit N)" says it
        shown += f"; job exit status {code}"
    return {"reason": reason, "job_exit_code": code, "exit": None if outcome is None else outcome.name,
            "shown": shown}


# --- verdict ---------------------------------------------------------------------------------------


def _verdict(ev: dict[str, Any]) -> dict[str, Any]:
    hw, tr, ck, proof, cost = (
        ev["hardware"],
        ev["training"],
        ev["checkpoint"],
        ev["shutdown_proof"],
        ev["cost"],
    )
    missing: list[str] = []
    failures: list[str] = []
    if hw["status"] == "missing":
        missing.append("hardware.json (out/hardware.json)")
    if hw["device_used"] is None:
        missing.append("device (no `device:` line in train.log/job.log and no hardware.json)")
    if not hw["device_log_lines"]:
        missing.append("`device:` log line")
    if ev["parameters"]["status"] == "missing":
        missing.append("parameter count (`parameters:` log line)")
    if tr["step_count"] < 3:
        missing.append(f"at least 3 training steps (found {tr['step_count']})")
    if ck["status"] == "missing":
        missing.append("checkpoint" + (f" ({ck['problem']})" if ck.get("problem") else ""))
    elif ck["status"] == "mismatch":
        failures.append(ck["problem"] or "checkpoint does not match its manifest")
    if ev["sample"]["status"] != "present":
        missing.append(f"generated sample (out/sample.txt {ev['sample']['status']})")
    if proof["status"] != "present":
        missing.append("shutdown proof" + (f" ({proof['status']})" if proof["status"] != "missing" else ""))
    elif not proof["verified"]:
        failures.append("shutdown proof says termination was NOT verified")
    if cost["cost_usd"] is None or cost["max_usd"] is None:
        missing.append("cost against the cap")
    elif not cost["within_cap"]:
        failures.append(f"cost ${cost['cost_usd']:.4f} is over the ${cost['max_usd']:.2f} cap")
    billed_flag = str(((ev.get("run") or {}).get("billed") or {}).get("flag") or "")
    if billed_flag.startswith("OVER THE CAP"):
        failures.append(billed_flag)
    if ev["job_log"]["traceback"]:
        failures.append("job.log contains a Python traceback")
    ending = ev["ending"]
    if ending["exit"] == Exit.JOB_FAILED.name:
        code = ending["job_exit_code"]
        failures.append("the job failed (" + ("killed, no exit status" if code is None else f"exit {code}") + ")")
    elif ending["exit"] in (Exit.STALLED.name, Exit.RUN_FAILED.name):
        failures.append(f"the run ended: {ending['reason']}")

    device = hw["device_used"]
    if device is not None and not device.startswith("cuda"):
        label = CPU_LABEL if device == "cpu" else f"SMOKE TEST ({device}, no CUDA) — not a GPU pass"
        status = "smoke"
    elif failures:
        label, status = "FAIL", "fail"
    elif missing:
        label, status = "INCOMPLETE", "incomplete"
    else:
        label, status = "PASS", "pass"
    return {"label": label, "status": status, "missing": missing, "failures": failures}


# --- assembling ------------------------------------------------------------------------------------


def collect_evidence(
    run_dir: Path,
    *,
    run: Mapping[str, Any],
    offer: Mapping[str, Any] | None,
    proof_path: Path | None,
    runtime_s: float | None,
    cost_usd: float | None,
    max_usd: float | None,
) -> dict[str, Any]:
    """Everything the card shows, as a redacted JSON-ready dict (no files written)."""
    run_dir = Path(run_dir)
    out = run_dir / "out"
    train_log = _read_text(out / "train.log")
    job_log = _read_text(run_dir / "job.log")
    # train.log is the trainer's own record; job.log (its stdout) stands in when it was not synced.
    log_text = train_log if train_log is not None else (job_log or "")
    log_lines = log_text.splitlines()
    run = dict(run or {})
    ev: dict[str, Any] = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "run_id": run.get("run_id") or run.get("id") or run_dir.name,
        "provider": _provider_section(run, offer),
        "log_source": "out/train.log"
        if train_log is not None
        else ("job.log" if job_log is not None else None),
        "files": {
            name: ("present" if (run_dir / name).is_file() else "missing")
            for name in (
                "out/train.log",
                "out/metrics.jsonl",
                "out/hardware.json",
                "out/checkpoints/MANIFEST.json",
                "out/sample.txt",
                "job.log",
            )
        },
        "hardware": _hardware_section(out, log_lines),
        "parameters": _parameters_section(log_lines),
        "training": _training_section(out, log_lines),
        "checkpoint": _checkpoint_section(out, log_lines),
        "sample": _sample_section(out),
        "cost": _cost_section(runtime_s, cost_usd, max_usd),
        "shutdown_proof": _proof_section(proof_path, run_dir),
        "job_log": _job_log_section(run_dir),
        "ending": _ending_section(run),
        "run": jsonable(run),
    }
    if not ev["provider"]["instance_ids"]:  # the ledger's run row may not carry them; the proof does
        ev["provider"]["instance_ids"] = list(ev["shutdown_proof"].get("instance_ids") or [])
    ev["verdict"] = _verdict(ev)
    return redact(jsonable(ev))


def _fence(text: str, lang: str = "") -> str:
    """A code fence longer than any backtick run inside, so a sample cannot break out of it."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}{lang}\n{text}\n{ticks}"


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h {m:02d}m {sec:02d}s" if h else f"{m}m {sec:02d}s"


def _fmt(v: Any, missing: str = "missing") -> str:
    if v is None or v == "":
        return missing
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4f}"
    return str(v)


def _billed_line(billed: Mapping[str, Any] | None) -> str:
    """The provider's own figure for the run (orchestrator.money.reconcile), beside our estimate."""
    if not billed:
        return "not asked"
    figure = "no figure" if billed.get("usd") is None else f"${float(billed['usd']):.4f}"
    final = "" if billed.get("complete") else " (not final: `gpurun cost --reconcile` asks again)"
    flag = f" **{billed['flag']}**" if billed.get("flag") else ""
    return f"{figure}: {billed.get('source') or 'source unknown'}{final}{flag}".replace("|", "\\|")


def render_markdown(ev: Mapping[str, Any]) -> str:
    p, hw, tr, ck = ev["provider"], ev["hardware"], ev["training"], ev["checkpoint"]
    sm, cost, pf, v = ev["sample"], ev["cost"], ev["shutdown_proof"], ev["verdict"]
    md: list[str] = [f"# Evidence — run {ev['run_id']}", "", f"**Verdict: {v['label']}**", ""]
    for title, items in (("Failures", v["failures"]), ("Missing", v["missing"])):
        if items:
            md += [f"{title}:", *[f"- {i}" for i in items], ""]

    price = "unknown"
    if p.get("usd_per_hour") is not None:
        extra = f" + ${p['extra_usd_per_hour']:.4f}/h extra" if p.get("extra_usd_per_hour") else ""
        price = f"${p['usd_per_hour']:.4f}/h{extra} ({p.get('price_source') or 'source unknown'})"
    if cost["cost_usd"] is not None and cost["max_usd"] is not None:
        cap = "within the cap" if cost["within_cap"] else "OVER THE CAP"
        cost_line = (
            f"${cost['cost_usd']:.4f} of ${cost['max_usd']:.2f} cap ({cap}, {cost['fraction_of_cap']:.0%})"
        )
    elif cost["cost_usd"] is not None:
        cost_line = f"${cost['cost_usd']:.4f} (cap unknown)"
    else:
        cost_line = "unknown" + (f" (cap ${cost['max_usd']:.2f})" if cost["max_usd"] is not None else "")
    ended = ev["ending"]["shown"].replace("|", "\\|")  # a reason quoting an error must not split the row
    md += [
        "## Run",
        "",
        "| item | value |",
        "| --- | --- |",
        f"| provider | {_fmt(p.get('name'))} |",
        f"| instance type | {_fmt(p.get('instance_type'))} |",
        f"| GPU offered | {_fmt(p.get('gpu'), 'unknown')} x{_fmt(p.get('gpu_count'), '?')} |",
        f"| instance ids | {', '.join(map(str, p.get('instance_ids') or [])) or 'unknown'} |",
        *([f"| nodes | {len(p['nodes'])}: " + ", ".join(f"node {n['rank']} {n['instance_id']} ({n['private_ip'] or '?'})"
                                                       for n in p["nodes"]) + " (price is per node) |"]
          if len(p.get("nodes") or []) > 1 else []),
        f"| price | {price} |",
        f"| runtime | {_fmt_duration(cost['runtime_s'])} |",
        f"| cost | {cost_line} |",
        f"| provider's figure | {_billed_line(ev['run'].get('billed'))} |",
        f"| ended | {ended} |",
        "",
    ]

    md += ["## Hardware (out/hardware.json)", ""]
    if hw["status"] == "missing":
        md += ["hardware.json: missing", ""]
    md += [
        f"- torch: {_fmt(hw['torch'])}",
        f"- CUDA available: {_fmt(hw['cuda_available'])}"
        + (f" (CUDA {hw['cuda_version']})" if hw["cuda_version"] else ""),
        f"- GPU: {_fmt(hw['gpu_name'], 'none')}" + (f" x{hw['gpu_count']}" if hw["gpu_count"] else ""),
        f"- world size: {_fmt(hw['world_size'])}, dtype: {_fmt(hw['dtype'])}",
        "",
        "nvidia-smi:",
        "",
        _fence(str(hw["nvidia_smi"]).rstrip()) if hw["nvidia_smi"] else "missing (no nvidia-smi output)",
        "",
    ]

    md += [f"## Device ({_fmt(ev['log_source'], 'no log')})", ""]
    md += [
        _fence("\n".join(hw["device_log_lines"])) if hw["device_log_lines"] else "missing: no `device:` line",
        "",
    ]
    md += [f"Device used: **{_fmt(hw['device_used'], 'unknown')}**", ""]

    params = ev["parameters"]
    md += ["## Model", ""]
    md += [
        f"- {params['log_line']} ({params['count']:,} parameters)"
        if params["count"]
        else "- parameters: missing",
        "",
    ]

    md += ["## Training (first, middle, last step)", ""]
    if tr["step_lines"]:
        md += [_fence("\n".join(tr["step_lines"])), ""]
    else:
        md += ["missing: no step lines in the log or metrics.jsonl", ""]
    if tr["steps"]:
        md += ["| step | loss | elapsed (s) | tokens/s |", "| ---: | ---: | ---: | ---: |"]
        for s in tr["steps"]:
            cells = [_fmt(s[k], "-") for k in ("loss", "elapsed_s", "tokens_per_s")]
            md.append(f"| {s['step']} | " + " | ".join(cells) + " |")
        md.append("")
    md += [
        f"- steps logged: {tr['step_count']}; last step: {_fmt(tr['last_step'])}; "
        f"final loss: {_fmt(tr['final_loss'])}",
        f"- last eval: train {_fmt(tr['final_train_eval_loss'])}, val {_fmt(tr['final_val_loss'])}",
        f"- end: {_fmt(tr['stopped_line'] or (tr['end'] or {}).get('reason'))}",
    ]
    if tr["metrics_bad_lines"]:
        md.append(f"- {tr['metrics_bad_lines']} unreadable line(s) in metrics.jsonl skipped")
    md.append("")

    md += ["## Checkpoint", ""]
    if ck["sha256"]:
        match = "matches MANIFEST.json" if ck["matches_manifest"] else "DOES NOT MATCH MANIFEST.json"
        md += [
            f"- path: `{ck['path']}` (step {_fmt(ck['step'], '?')})",
            f"- size: {ck['bytes']:,} bytes ({ck['bytes'] / 2**20:.2f} MiB)",
            f"- sha256 (re-hashed here): `{ck['sha256']}`",
            f"- sha256 in manifest: `{_fmt(ck['manifest_sha256'])}` → **{match}**",
        ]
    else:
        md.append("- checkpoint: missing")
    if ck.get("problem"):
        md.append(f"- problem: {ck['problem']}")
    if ck["log_line"]:
        md.append(f"- log: `{ck['log_line']}`")
    md.append("")

    md += [f"## Sample (out/sample.txt, first {SAMPLE_LINES} lines)", ""]
    if sm["status"] == "present":
        md += [_fence("\n".join(sm["lines"]))]
        if sm["truncated"]:
            md.append(f"({sm['total_lines'] - len(sm['lines'])} more lines in out/sample.txt)")
    else:
        md.append(f"sample: {sm['status']}")
    md.append("")

    md += ["## Shutdown proof", ""]
    if pf["status"] == "present":
        states = (
            ", ".join(f"{k}: {v}" for k, v in (pf.get("instance_states") or {}).items()) or "none described"
        )
        md += [
            f"- path: `{pf['path']}`",
            f"- sha256: `{pf['sha256']}`",
            f"- verified: **{_fmt(pf['verified'])}**"
            + (f" at {pf['verified_at']}" if pf.get("verified_at") else ""),
            f"- instance state: {states}",
            f"- zero-match listing for the run: {_fmt(pf.get('zero_match'))}",
            f"- terminate requests: {pf.get('terminate_requests')}; deleted: "
            f"{', '.join(map(str, pf.get('deleted_resources') or [])) or 'nothing else'}",
            f"- previous proof in the chain: `{_fmt(pf.get('prev_sha256'), 'none (first)')}`",
        ]
        md += [f"- contradiction: {c}" for c in pf.get("contradictions") or []]
        for a in pf.get("attempts") or []:  # offer fallback: boots that failed before the last offer
            md.append(f"- failed attempt {a['attempt']}: {a['offer']}: {a['reason']}"
                      f" (instance {a['instance_id'] or 'none made'}, {float(a['cost_usd'] or 0):.4f} USD)")
    else:
        md.append(f"- shutdown proof: {pf['status']}" + (f" ({pf['path']})" if pf.get("path") else ""))
    md.append("")

    plot = ev.get("loss_plot") or {}
    md += ["## Loss curve", ""]
    md += [
        "![loss and val loss vs step](loss.png)"
        if plot.get("path")
        else f"loss.png: {plot.get('note', 'not written')}",
        "",
    ]

    jl = ev["job_log"]
    md += [f"## job.log (last {JOB_LOG_TAIL} lines)", ""]
    md += [_fence("\n".join(jl["tail"])) if jl["tail"] else f"job.log: {jl['status']}", ""]
    return "\n".join(md)


def _plot_loss(curve: Mapping[str, Any], path: Path) -> dict[str, Any]:
    pts = [(s, v) for s, v in curve.get("step") or [] if v is not None]
    val = [(s, v) for s, v in curve.get("val") or [] if v is not None]
    if not pts and not val:
        return {"path": None, "note": "not written (no loss values in metrics.jsonl)"}
    try:
        # The object API with an explicit Agg canvas: no pyplot global state, no display needed.
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return {"path": None, "note": "not written (matplotlib is not installed)"}
    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if pts:
        ax.plot([s for s, _ in pts], [v for _, v in pts], label="train loss", linewidth=1)
    if val:
        ax.plot([s for s, _ in val], [v for _, v in val], "o-", label="val loss", linewidth=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})  # no version stamp: same input, same bytes
    atomic_write_bytes(path, buf.getvalue())
    return {"path": "loss.png", "note": f"{len(pts)} step points, {len(val)} eval points"}


def write_evidence(
    run_dir: Path,
    *,
    run: dict,
    offer: dict | None,
    proof_path: Path | None,
    runtime_s: float | None,
    cost_usd: float | None,
    max_usd: float | None,
) -> Path:
    """Write EVIDENCE.md, evidence.json and (with matplotlib) loss.png into run_dir; return EVIDENCE.md."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ev = collect_evidence(
        run_dir,
        run=run,
        offer=offer,
        proof_path=proof_path,
        runtime_s=runtime_s,
        cost_usd=cost_usd,
        max_usd=max_usd,
    )
    curve = ev["training"].pop("_curve")
    png = run_dir / "loss.png"
    ev["loss_plot"] = _plot_loss(curve, png)
    if ev["loss_plot"]["path"] is None:
        png.unlink(missing_ok=True)  # a stale plot from an earlier card would contradict this one
    md_path = run_dir / "EVIDENCE.md"
    atomic_write_bytes(
        run_dir / "evidence.json",
        (json.dumps(ev, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode(),
    )
    atomic_write_bytes(md_path, render_markdown(redact(ev)).encode("utf-8"))
    return md_path
