"""EVIDENCE.md: the evidence dict (orchestrator.proof.evidence) as Markdown, one renderer per section."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from orchestrator.proof.artifact_facts import JOB_LOG_TAIL, SAMPLE_LINES
from trainer.recipes import human


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


def _verdict_md(ev: Mapping[str, Any]) -> list[str]:
    v = ev["verdict"]
    md: list[str] = [f"# Evidence — run {ev['run_id']}", "", f"**Verdict: {v['label']}**", ""]
    left = ("Left behind (the instances are verified gone; this may still bill)", v.get("left_behind") or [])
    for title, items in (("Failures", v["failures"]), ("Missing", v["missing"]), left):
        if items:
            md += [f"{title}:", *[f"- {i}" for i in items], ""]
    return md


def _price_line(p: Mapping[str, Any]) -> str:
    if p.get("usd_per_hour") is None:
        return "unknown"
    extra = f" + ${p['extra_usd_per_hour']:.4f}/h extra" if p.get("extra_usd_per_hour") else ""
    return f"${p['usd_per_hour']:.4f}/h{extra} ({p.get('price_source') or 'source unknown'})"


def _cost_line(cost: Mapping[str, Any]) -> str:
    if cost["cost_usd"] is not None and cost["max_usd"] is not None:
        cap = "within the cap" if cost["within_cap"] else "OVER THE CAP"
        return f"${cost['cost_usd']:.4f} of ${cost['max_usd']:.2f} cap ({cap}, {cost['fraction_of_cap']:.0%})"
    if cost["cost_usd"] is not None:
        return f"${cost['cost_usd']:.4f} (cap unknown)"
    return "unknown" + (f" (cap ${cost['max_usd']:.2f})" if cost["max_usd"] is not None else "")


def _egress_line(egress: Mapping[str, Any]) -> str:
    """The data pulled home and what it cost (part of the cost above), from the proof's billing."""
    source = egress.get("source") or "source unknown"
    if not egress.get("usd_per_gb"):
        return f"{float(egress.get('gb_pulled') or 0):.3f} GB pulled: free ({source})".replace("|", "\\|")
    return (f"{float(egress.get('gb_pulled') or 0):.3f} GB pulled x ${float(egress['usd_per_gb']):.4f}/GB ="
            f" ${float(egress.get('usd') or 0):.4f}, in the cost (reserved ${float(egress.get('reserved_usd') or 0):.4f};"
            f" {source})").replace("|", "\\|")


def _run_md(ev: Mapping[str, Any]) -> list[str]:
    p, cost = ev["provider"], ev["cost"]
    ended = ev["ending"]["shown"].replace("|", "\\|")  # a reason quoting an error must not split the row
    nodes = p.get("nodes") or []
    return [
        "## Run",
        "",
        "| item | value |",
        "| --- | --- |",
        f"| provider | {_fmt(p.get('name'))} |",
        f"| instance type | {_fmt(p.get('instance_type'))} |",
        f"| GPU offered | {_fmt(p.get('gpu'), 'unknown')} x{_fmt(p.get('gpu_count'), '?')} |",
        f"| instance ids | {', '.join(map(str, p.get('instance_ids') or [])) or 'unknown'} |",
        *([f"| nodes | {len(nodes)}: " + ", ".join(f"node {n['rank']} {n['instance_id']} ({n['private_ip'] or '?'})"
                                                   for n in nodes) + " (price is per node) |"]
          if len(nodes) > 1 else []),
        f"| price | {_price_line(p)} |",
        f"| runtime | {_fmt_duration(cost['runtime_s'])} |",
        f"| cost | {_cost_line(cost)} |",
        *([f"| egress | {_egress_line(cost['egress'])} |"] if cost.get("egress") else []),
        f"| provider's figure | {_billed_line(ev['run'].get('billed'))} |",
        f"| ended | {ended} |",
        "",
    ]


def _hardware_md(ev: Mapping[str, Any]) -> list[str]:
    hw = ev["hardware"]
    md = ["## Hardware (out/hardware.json)", ""]
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
    return md


def _training_md(ev: Mapping[str, Any]) -> list[str]:
    tr = ev["training"]
    md = ["## Training (first, middle, last step)", ""]
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
    return md


def _quality_md(ev: Mapping[str, Any]) -> list[str]:
    """The standard evaluation's figure (a final_val record), beside the steps, tokens and dollars that bought it."""
    fv = ev.get("final_val") or {}
    if fv.get("status") != "present":
        return []
    trained = (f"{human(fv['trained_tokens'])} ({fv['tokens_per_step']:,} per step)" if fv.get("trained_tokens")
               else "unknown (no recipe config)")
    cost = ev["cost"].get("cost_usd")
    md = ["## Quality (the standard evaluation)", "",
          "| evaluation | val loss | step | training tokens | cost |", "| --- | ---: | ---: | ---: | ---: |",
          f"| {fv['label']} | {_fmt(fv.get('val_loss'))} | {fv['step']:,} | {trained} | "
          f"{'unknown' if cost is None else f'{cost:.4f} USD'} |", ""]
    target = fv.get("target")
    if target:
        md += [f"- target {target['words']}: {'reached' if target['reached'] else 'not reached'}", ""]
    return md


def _checkpoint_md(ev: Mapping[str, Any]) -> list[str]:
    ck = ev["checkpoint"]
    md = ["## Checkpoint", ""]
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
    if ck.get("home"):
        md.append("- came home: " + ", ".join(
            f"`{h['file']}` ({'weights only, ' if h['kind'] == 'weights' else ''}step {_fmt(h['step'], '?')},"
            f" {h['bytes'] / 2**20:.2f} MiB)" for h in ck["home"]))
    if ck.get("problem"):
        md.append(f"- problem: {ck['problem']}")
    if ck["log_line"]:
        md.append(f"- log: `{ck['log_line']}`")
    md.append("")
    return md


def _sample_md(ev: Mapping[str, Any]) -> list[str]:
    sm = ev["sample"]
    md = [f"## Sample (out/sample.txt, first {SAMPLE_LINES} lines)", ""]
    if sm["status"] == "present":
        md += [_fence("\n".join(sm["lines"]))]
        if sm["truncated"]:
            md.append(f"({sm['total_lines'] - len(sm['lines'])} more lines in out/sample.txt)")
    else:
        md.append(f"sample: {sm['status']}")
    md.append("")
    return md


def _proof_md(ev: Mapping[str, Any]) -> list[str]:
    pf = ev["shutdown_proof"]
    md = ["## Shutdown proof", ""]
    if pf["status"] != "present":
        md.append(f"- shutdown proof: {pf['status']}" + (f" ({pf['path']})" if pf.get("path") else ""))
        md.append("")
        return md
    states = ", ".join(f"{k}: {v}" for k, v in (pf.get("instance_states") or {}).items()) or "none described"
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
    md += [f"- cleanup failed after the verification: {f['error']}; left: {f['left']}; bills: {f['bills']};"
           f" remove it: `{f['remove']}`" for f in pf.get("cleanup_failures") or []]
    for a in pf.get("attempts") or []:  # offer fallback: boots that failed before the last offer
        md.append(f"- failed attempt {a['attempt']}: {a['offer']}: {a['reason']}"
                  f" (instance {a['instance_id'] or 'none made'}, {float(a['cost_usd'] or 0):.4f} USD)")
    md.append("")
    return md


def _plot_and_log_md(ev: Mapping[str, Any]) -> list[str]:
    plot = ev.get("loss_plot") or {}
    md = ["## Loss curve", ""]
    md += [
        "![loss and val loss vs step](loss.png)"
        if plot.get("path")
        else f"loss.png: {plot.get('note', 'not written')}",
        "",
    ]
    jl = ev["job_log"]
    md += [f"## job.log (last {JOB_LOG_TAIL} lines)", ""]
    md += [_fence("\n".join(jl["tail"])) if jl["tail"] else f"job.log: {jl['status']}", ""]
    return md


_SECTIONS = (_verdict_md, _run_md, _hardware_md, _training_md, _quality_md, _checkpoint_md, _sample_md, _proof_md,
             _plot_and_log_md)


def render_markdown(ev: Mapping[str, Any]) -> str:
    """EVIDENCE.md's text: the verdict first, then each section in a fixed order."""
    return "\n".join(line for section in _SECTIONS for line in section(ev))
