"""The evidence card: EVIDENCE.md + evidence.json (+ loss.png) in the local run directory.

This module gathers the facts (the sections come from `training_facts` and `artifact_facts`),
judges them (the verdict) and writes the files; `card` renders the Markdown, `loss_plot` the plot.

The card is a pure function of the files in the run directory (the synced trainer outputs under
``out/``, ``job.log``, the shutdown proof) and the arguments: no clock, no network, no ledger. Run it
twice on the same files and the bytes are the same. Every file may be missing; the card then says
what is missing instead of failing. Everything written goes through :func:`orchestrator.redact.redact`.

Verdicts:
- ``PASS``: CUDA was used, the checkpoint re-hashes to its manifest entry, the shutdown proof says
  verified, and every other item of the card is present (cost within the cap when known).
- ``SMOKE TEST (CPU only) — not a GPU pass``: the trainer ran on the CPU (whatever else holds).
- ``FAIL``: something contradicts success (hash mismatch, proof not verified, cost over the cap,
  the job exited non-zero, the run stalled or broke: the run's ``ending``).
- ``INCOMPLETE``: CUDA, but items are missing; the card lists which.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from orchestrator.proof.artifact_facts import (
    checkpoint_section,
    job_log_section,
    proof_section,
    sample_section,
)
from orchestrator.proof.card import render_markdown
from orchestrator.proof.loss_plot import plot_loss
from orchestrator.proof.quality_facts import final_val_section
from orchestrator.proof.reading import num, read_text
from orchestrator.proof.shutdown import jsonable
from orchestrator.proof.training_facts import hardware_section, parameters_section, training_section
from orchestrator.redact import redact
from orchestrator.state.endings import Ending, Exit, for_run
from trainer.manifest import atomic_write_bytes

SCHEMA = "gpurun.evidence"
SCHEMA_VERSION = 1
CPU_LABEL = "SMOKE TEST (CPU only) — not a GPU pass"


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
        "usd_per_hour": num(offer.get("usd_per_hour")) if offer else num(run.get("usd_per_hour")),
        "extra_usd_per_hour": num(offer.get("extra_usd_per_hour")) if offer else None,
        "price_source": pick("price_source"),
        "instance_ids": list(
            run.get("instance_ids") or ([run["instance_id"]] if run.get("instance_id") else [])
        ),
        # A multi-node run's nodes (rank, instance id, the address the others reached it at).
        "nodes": [{k: n.get(k) for k in ("rank", "instance_id", "private_ip")}
                  for n in (run.get("plan") or {}).get("nodes") or [] if isinstance(n, dict)],
    }


def _cost_section(runtime_s: float | None, cost_usd: float | None, max_usd: float | None) -> dict[str, Any]:
    runtime, cost, cap = num(runtime_s), num(cost_usd), num(max_usd)
    within = None if cost is None or cap is None else cost <= cap + 1e-9
    return {
        "runtime_s": runtime,
        "cost_usd": cost,
        "max_usd": cap,
        "within_cap": within,
        "fraction_of_cap": None if within is None or not cap else round(cost / cap, 4),
    }


def _ending_of_run(run: Mapping[str, Any]) -> Ending | None:
    """The run's typed ending (None: it has not ended)."""
    return Ending(run["ending"]) if run.get("ending") is not None else None


def _ending_section(run: Mapping[str, Any]) -> dict[str, Any]:
    """How the run ended, as the controller recorded it (the ledger's end_reason, job_exit_code)."""
    reason, code = run.get("end_reason"), run.get("job_exit_code")
    ending = _ending_of_run(run)
    outcome = for_run(ending, code) if reason else None
    shown = reason or "unknown"
    if code is not None and ending is not Ending.JOB_ENDED:  # "job ended (exit N)" says it
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
    billed = (ev.get("run") or {}).get("billed") or {}
    if billed.get("usd") is not None and cost["max_usd"] and billed["usd"] > cost["max_usd"] + 1e-9:
        failures.append(str(billed.get("flag")))  # the provider billed more than the cap
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
    # The instances are gone (verified), but the provider's cleanup raised: what it may have left.
    left = [f"cleanup failed ({f['error']}): {f['left']}; {f['bills']}; remove it: `{f['remove']}`"
            for f in proof.get("cleanup_failures") or []]
    return {"label": label, "status": status, "missing": missing, "failures": failures, "left_behind": left}


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
    train_log = read_text(out / "train.log")
    job_log = read_text(run_dir / "job.log")
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
        "hardware": hardware_section(out, log_lines),
        "parameters": parameters_section(log_lines),
        "training": training_section(out, log_lines),
        "final_val": final_val_section(out, run),
        "checkpoint": checkpoint_section(out, log_lines),
        "sample": sample_section(out),
        "cost": _cost_section(runtime_s, cost_usd, max_usd),
        "shutdown_proof": proof_section(proof_path, run_dir),
        "job_log": job_log_section(run_dir),
        "ending": _ending_section(run),
        "run": jsonable(run),
    }
    if ev["shutdown_proof"].get("egress"):  # the meter's egress, from the proof's billing
        ev["cost"]["egress"] = ev["shutdown_proof"]["egress"]
    if not ev["provider"]["instance_ids"]:  # the ledger's run row may not carry them; the proof does
        ev["provider"]["instance_ids"] = list(ev["shutdown_proof"].get("instance_ids") or [])
    ev["verdict"] = _verdict(ev)
    return redact(jsonable(ev))


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
    ev["loss_plot"] = plot_loss(curve, png)
    if ev["loss_plot"]["path"] is None:
        png.unlink(missing_ok=True)  # a stale plot from an earlier card would contradict this one
    md_path = run_dir / "EVIDENCE.md"
    atomic_write_bytes(
        run_dir / "evidence.json",
        (json.dumps(ev, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode(),
    )
    atomic_write_bytes(md_path, render_markdown(redact(ev)).encode("utf-8"))
    return md_path
