"""The evidence card, from trainer outputs written here per the trainer contract (docs/ARCHITECTURE.md)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import pickle
from pathlib import Path
from typing import Any

import pytest

from orchestrator.proof.evidence import CPU_LABEL, write_evidence
from orchestrator.proof.shutdown import TerminateRequest, build_proof, write_proof
from orchestrator.redact import clear_secrets, register_secret

T0 = 1_760_000_000.0
NVIDIA_SMI = """\
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 550.90.07              Driver Version: 550.90.07      CUDA Version: 12.4     |
|   0  NVIDIA H100 80GB HBM3          On  |   00000000:18:00.0 Off |                    0 |
+-----------------------------------------------------------------------------------------+"""
OFFER = {
    "provider": "runpod",
    "gpu": "H100 80GB HBM3",
    "gpu_count": 1,
    "instance_type": "NVIDIA H100 80GB HBM3",
    "usd_per_hour": 2.69,
    "extra_usd_per_hour": 0.014,
    "price_source": "live",
}


def write_trainer_out(
    run_dir: Path, *, device: str = "cuda", steps: int = 200, ckpt: bool = True
) -> dict[str, Any]:
    """Write what `python -m trainer.train --out-dir out` leaves behind, following the contract."""
    out = run_dir / "out"
    (out / "checkpoints").mkdir(parents=True)
    cuda = device == "cuda"
    gpu = "NVIDIA H100 80GB HBM3" if cuda else None
    log = [f"device: {device}"] + ([f"cuda_name: {gpu}", "world_size: 1", "dtype: bfloat16"] if cuda else [])
    log.append("parameters: 124.44M")
    metrics: list[dict[str, Any]] = []
    for s in range(0, steps + 1, 10):
        loss = 10.9 - 7.5 * s / steps
        elapsed = 0.4 + s * 0.03
        log.append(
            f"step {s:04d} | loss {loss:.4f} | lr 6.00e-04 | tok/s {48000 + s} | mfu 51.3% "
            f"| elapsed {elapsed:.1f}s"
        )
        metrics.append(
            {
                "type": "step",
                "step": s,
                "loss": loss,
                "lr": 6e-4,
                "tokens_per_s": 48000.0 + s,
                "mfu": 0.513,
                "elapsed_s": elapsed,
                "time": T0 + elapsed,
            }
        )
        if s and s % 100 == 0:
            metrics.append(
                {"type": "eval", "step": s, "train_loss": loss, "val_loss": loss + 0.05, "time": T0 + elapsed}
            )
            log.append(f"eval step {s:04d} | train {loss:.2f} | val {loss + 0.05:.2f}")
    entry = None
    if ckpt:
        # a real (small) checkpoint-shaped file: pickled tensors-as-lists, hashed like the trainer does
        blob = pickle.dumps(
            {"step": steps, "model": {"wte": [[0.01 * i for i in range(64)]] * 8}}, protocol=4
        )
        name = f"ckpt-{steps:06d}.pt"
        (out / "checkpoints" / name).write_bytes(blob)
        sha = hashlib.sha256(blob).hexdigest()
        entry = {"file": name, "step": steps, "sha256": sha, "bytes": len(blob), "time": T0 + 10}
        (out / "checkpoints" / "MANIFEST.json").write_text(
            json.dumps({"latest": name, "checkpoints": [entry]})
        )
        log.append(f"checkpoint: checkpoints/{name} sha256 {sha}")
        metrics.append({"type": "checkpoint", "step": steps, "file": name, "sha256": sha, "bytes": len(blob)})
    log.append(f"stopped: max_iters at step {steps}")
    metrics.append({"type": "end", "reason": "max_iters", "step": steps, "time": T0 + 12})
    (out / "train.log").write_text("\n".join(log) + "\n")
    (out / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    (out / "hardware.json").write_text(
        json.dumps(
            {
                "torch": "2.5.1+cu124" if cuda else "2.5.1+cpu",
                "python": "3.11.9",
                "cuda_available": cuda,
                "cuda_version": "12.4" if cuda else None,
                "device": device,
                "gpu_name": gpu,
                "gpu_count": 1 if cuda else 0,
                "nvidia_smi": NVIDIA_SMI if cuda else None,
                "world_size": 1,
                "dtype": "bfloat16" if cuda else "float32",
            }
        )
    )
    (out / "sample.txt").write_text(
        "\n".join(f"ROMEO {i}: What light through yonder window breaks?" for i in range(60))
    )
    (run_dir / "job.log").write_text("\n".join(log) + "\n")
    return {"entry": entry}


def write_run_proof(run_dir: Path, *, verified: bool = True) -> Path:
    proof = build_proof(
        run_id="run-abc",
        provider="runpod",
        instance_ids=["pod-1"],
        terminate_requests=[TerminateRequest("pod-1", T0 + 20, {"data": {"podTerminate": None}})],
        final_describe=[{"id": "pod-1", "state": "not_found" if verified else "running"}],
        zero_match_listing=[],
        deleted_resources=[],
        estimated_cost_usd=0.05,
        max_usd=3.0,
        billing={"increment_s": 1},
        verified=verified,
        prev_sha256=None,
        started_at=T0,
        verified_at=T0 + 25,
    )
    return write_proof(run_dir, proof)[0]


def card(run_dir: Path, **over: Any) -> tuple[str, dict[str, Any]]:
    args: dict[str, Any] = dict(
        run={"run_id": "run-abc", "provider": "runpod", "phase": "verified"},
        offer=OFFER,
        proof_path=run_dir / "shutdown_proof.json",
        runtime_s=65.0,
        cost_usd=0.05,
        max_usd=3.0,
    )
    args.update(over)
    md_path = write_evidence(run_dir, **args)
    assert md_path == run_dir / "EVIDENCE.md"
    return md_path.read_text(), json.loads((run_dir / "evidence.json").read_text())


def test_cuda_run_with_verified_proof_and_checkpoint_is_a_pass(tmp_path: Path) -> None:
    info = write_trainer_out(tmp_path)
    proof_path = write_run_proof(tmp_path)
    md, ev = card(tmp_path)
    assert ev["verdict"]["label"] == "PASS", ev["verdict"]
    assert "**Verdict: PASS**" in md
    # provider and instance type, hardware
    assert "| provider | runpod |" in md and "NVIDIA H100 80GB HBM3" in md
    assert ev["hardware"]["torch"] == "2.5.1+cu124" and ev["hardware"]["cuda_available"] is True
    assert "NVIDIA-SMI 550.90.07" in md and "CUDA available: yes (CUDA 12.4)" in md
    # device lines and parameter count
    assert "device: cuda" in ev["hardware"]["device_log_lines"]
    assert ev["parameters"]["count"] == 124_440_000 and "parameters: 124.44M" in md
    # first, middle, last step lines with loss and elapsed
    lines = ev["training"]["step_lines"]
    assert len(lines) == 3 and lines[0].startswith("step 0000") and lines[-1].startswith("step 0200")
    assert all("loss" in ln and "elapsed" in ln for ln in lines)
    assert [s["step"] for s in ev["training"]["steps"]] == [0, 100, 200]
    # checkpoint re-hashed and matched against the manifest
    ck = ev["checkpoint"]
    assert ck["path"] == "out/checkpoints/ckpt-000200.pt" and ck["matches_manifest"] is True
    assert ck["sha256"] == info["entry"]["sha256"] and ck["bytes"] == info["entry"]["bytes"]
    assert info["entry"]["sha256"] in md and "matches MANIFEST.json" in md
    # sample: first 40 lines only
    assert ev["sample"]["total_lines"] == 60 and len(ev["sample"]["lines"]) == 40
    assert "ROMEO 39:" in md and "ROMEO 40:" not in md
    # runtime and cost against the cap, shutdown proof
    assert ev["cost"] == {
        "runtime_s": 65.0,
        "cost_usd": 0.05,
        "max_usd": 3.0,
        "within_cap": True,
        "fraction_of_cap": 0.0167,
    }
    assert "$0.0500 of $3.00 cap (within the cap" in md and "1m 05s" in md
    pf = ev["shutdown_proof"]
    assert pf["verified"] is True and pf["instance_states"] == {"pod-1": "not_found"}
    assert pf["sha256"] == hashlib.sha256(proof_path.read_bytes()).hexdigest() and pf["sha256"] in md
    assert "instance state: pod-1: not_found" in md
    assert ev["provider"]["instance_ids"] == ["pod-1"]  # taken from the proof when the run row lacks them


def test_cpu_run_is_labelled_a_smoke_test_not_a_pass(tmp_path: Path) -> None:
    write_trainer_out(tmp_path, device="cpu")
    write_run_proof(tmp_path)
    md, ev = card(tmp_path)
    assert ev["verdict"]["label"] == CPU_LABEL and ev["verdict"]["status"] == "smoke"
    assert f"**Verdict: {CPU_LABEL}**" in md
    assert "PASS" not in md.split("\n")[2]
    assert ev["hardware"]["device_log_lines"][0] == "device: cpu"


def test_job_log_stands_in_for_a_missing_train_log(tmp_path: Path) -> None:
    write_trainer_out(tmp_path)
    write_run_proof(tmp_path)
    (tmp_path / "out" / "train.log").unlink()
    _, ev = card(tmp_path)
    assert ev["log_source"] == "job.log" and ev["files"]["out/train.log"] == "missing"
    assert ev["verdict"]["label"] == "PASS" and ev["hardware"]["device_used"] == "cuda"


def test_empty_run_dir_says_what_is_missing_and_does_not_crash(tmp_path: Path) -> None:
    md, ev = card(tmp_path, proof_path=None, runtime_s=None, cost_usd=None, offer=None)
    v = ev["verdict"]
    assert v["label"] == "INCOMPLETE"
    joined = " ".join(v["missing"])
    for item in (
        "hardware.json",
        "device",
        "parameter count",
        "training steps",
        "checkpoint",
        "generated sample",
        "shutdown proof",
        "cost against the cap",
    ):
        assert item in joined, item
    assert "checkpoint: missing" in md and "sample: missing" in md and "shutdown proof: missing" in md
    assert not (tmp_path / "loss.png").exists()


def test_each_missing_trainer_file_is_named(tmp_path: Path) -> None:
    write_trainer_out(tmp_path, ckpt=False)
    write_run_proof(tmp_path)
    (tmp_path / "out" / "sample.txt").unlink()
    (tmp_path / "out" / "hardware.json").unlink()
    (tmp_path / "out" / "metrics.jsonl").write_text('{"type": "step", "step": 0, "loss": 10.9}\n{"type": "st')
    md, ev = card(tmp_path)
    v = ev["verdict"]
    assert v["label"] == "INCOMPLETE"
    assert any("checkpoint" in m for m in v["missing"]) and any("sample" in m for m in v["missing"])
    assert any("hardware.json" in m for m in v["missing"])
    assert ev["hardware"]["device_used"] == "cuda"  # still known from the log line
    assert ev["training"]["metrics_bad_lines"] == 1 and "unreadable line(s) in metrics.jsonl" in md


def test_tampered_checkpoint_fails_the_card(tmp_path: Path) -> None:
    write_trainer_out(tmp_path)
    write_run_proof(tmp_path)
    ckpt = tmp_path / "out" / "checkpoints" / "ckpt-000200.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:-10])  # a truncated (half-synced) checkpoint
    md, ev = card(tmp_path)
    assert ev["verdict"]["label"] == "FAIL" and ev["checkpoint"]["matches_manifest"] is False
    assert "DOES NOT MATCH MANIFEST.json" in md


def test_manifest_cannot_point_outside_the_run(tmp_path: Path) -> None:
    write_trainer_out(tmp_path)
    (tmp_path / "secret.pt").write_bytes(b"x")
    (tmp_path / "out" / "checkpoints" / "MANIFEST.json").write_text(
        json.dumps({"latest": "../../secret.pt", "checkpoints": [{"file": "../../secret.pt", "sha256": "0"}]})
    )
    _, ev = card(tmp_path)
    assert ev["checkpoint"]["status"] == "missing" and "outside" in ev["checkpoint"]["problem"]


def test_unverified_proof_and_over_cap_cost_fail(tmp_path: Path) -> None:
    write_trainer_out(tmp_path)
    write_run_proof(tmp_path, verified=False)
    md, ev = card(tmp_path, cost_usd=3.2)
    assert ev["verdict"]["label"] == "FAIL"
    failures = " ".join(ev["verdict"]["failures"])
    assert "NOT verified" in failures and "over the $3.00 cap" in failures
    assert "instance state: pod-1: running" in md and "OVER THE CAP" in md


def test_loss_png_is_written_when_matplotlib_is_importable(tmp_path: Path) -> None:
    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip("matplotlib not installed")
    write_trainer_out(tmp_path)
    md, ev = card(tmp_path, proof_path=None)
    png = tmp_path / "loss.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert ev["loss_plot"]["path"] == "loss.png" and "![loss and val loss vs step](loss.png)" in md
    assert ev["loss_plot"]["note"] == "21 step points, 2 eval points"


def test_card_is_a_pure_function_of_files_and_args(tmp_path: Path) -> None:
    write_trainer_out(tmp_path)
    write_run_proof(tmp_path)
    card(tmp_path)
    first = {n: (tmp_path / n).read_bytes() for n in ("EVIDENCE.md", "evidence.json", "loss.png")}
    card(tmp_path)
    assert {n: (tmp_path / n).read_bytes() for n in first} == first
    # and a stale plot does not survive a card that has no loss data
    (tmp_path / "out" / "metrics.jsonl").unlink()
    card(tmp_path)
    assert not (tmp_path / "loss.png").exists()


def test_secrets_never_reach_the_card(tmp_path: Path) -> None:
    write_trainer_out(tmp_path)
    write_run_proof(tmp_path)
    with (tmp_path / "job.log").open("a") as f:
        f.write("env RUNPOD_API_KEY=rpa_LEAKEDLEAKEDLEAKED1234 and token zz-registered-secret-zz\n")
    register_secret("zz-registered-secret-zz")
    try:
        run = {
            "run_id": "run-abc",
            "provider": "runpod",
            "plan": {"env": {"DATACRUNCH_CLIENT_SECRET": "dc-leak-99"}},
        }
        md, _ = card(tmp_path, run=run)
    finally:
        clear_secrets()
    raw = md + (tmp_path / "evidence.json").read_text()
    for leak in ("rpa_LEAKEDLEAKEDLEAKED1234", "zz-registered-secret-zz", "dc-leak-99"):
        assert leak not in raw


def test_a_sample_with_backticks_cannot_break_the_fence(tmp_path: Path) -> None:
    write_trainer_out(tmp_path)
    (tmp_path / "out" / "sample.txt").write_text("```\n# injected heading\n````")
    md, _ = card(tmp_path)
    assert "`````\n```\n# injected heading\n````\n`````" in md


def test_job_log_tail_drops_progress_bar_escapes(tmp_path: Path) -> None:
    write_trainer_out(tmp_path)
    with (tmp_path / "job.log").open("a") as f:
        f.write("\r\x1b[2K[####      ] 40/100\r\x1b[2Kdone\nTraceback (most recent call last):\n  boom\n")
    md, ev = card(tmp_path)
    assert "\x1b" not in md and "done" in ev["job_log"]["tail"]
    assert ev["job_log"]["traceback"] is True
    assert "job.log contains a Python traceback" in ev["verdict"]["failures"]
