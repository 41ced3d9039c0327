"""trainer/contract.py: one spelling of what the trainer writes and the controller reads.

What the trainer's own writers (RunLog, the manifest, progress.json) put down, the controller's
readers (the guard's probe, the outcome check, the live view) find, through the same names; the
module needs no torch and travels with the trainer's upload.
"""

from __future__ import annotations

import dataclasses
import io
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from orchestrator.cli.watch import last_step
from orchestrator.run.outcome import produced
from orchestrator.run.progress import parse_data_probe, parse_probe
from orchestrator.transport.upload import upload_files
from tests.trainer.helpers import REPO, env
from trainer import contract, manifest
from trainer.prepare import Progress
from trainer.runlog import RunLog


def test_importing_the_contract_imports_no_torch() -> None:
    code = "import sys, trainer.contract; assert 'torch' not in sys.modules, 'torch imported'"
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env(), capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr


def test_the_contract_travels_with_the_trainer() -> None:
    # The controller uploads the whole trainer/ directory (orchestrator/run/controller.py, TRAINER_DIR).
    assert "contract.py" in upload_files(REPO / "trainer")


def test_the_paths_are_the_names_under_out() -> None:
    assert contract.METRICS_PATH == "out/metrics.jsonl"
    assert contract.MANIFEST_PATH == "out/checkpoints/MANIFEST.json"
    assert {contract.TRAIN_LOG_PATH, contract.HARDWARE_PATH, contract.SAMPLE_PATH} == {
        "out/train.log", "out/hardware.json", "out/sample.txt"}
    assert contract.MANIFEST_ENTRY_FIELDS == tuple(f.name for f in dataclasses.fields(manifest.CheckpointEntry))
    assert manifest.MANIFEST_NAME == contract.MANIFEST


def test_parse_record_takes_json_objects_only() -> None:
    assert contract.parse_record('{"type": "step", "step": 3}') == {"type": "step", "step": 3}
    assert contract.parse_record('{"type": "st') is None  # torn
    assert contract.parse_record("[1, 2]") is None and contract.parse_record("") is None
    assert contract.is_record({"type": "end"}, contract.RECORD_END)
    assert not contract.is_record(None, contract.RECORD_END) and not contract.is_record([], contract.RECORD_STEP)


def write_run(root: Path, end_reason: str) -> None:
    """A run's outputs, written by the trainer's own writers (no torch, no training)."""
    out = root / contract.OUT_DIR
    log = RunLog(out, enabled=True, progress="off", total_steps=10)
    log.stdout = io.StringIO()  # its lines also go to stdout
    fields = dict(zip(contract.STEP_FIELDS, (10, 2.5, 1e-3, 1234.5, None, 1.0), strict=True))
    log.record(contract.RECORD_STEP, **fields)
    log.record(contract.RECORD_EVAL, **dict(zip(contract.EVAL_FIELDS, (10, 2.4, 2.6), strict=True)))
    ckpt_dir = out / contract.CHECKPOINTS_DIR
    ckpt_dir.mkdir(parents=True)
    (ckpt_dir / "ckpt-000010.pt").write_bytes(b"weights")
    manifest.add_checkpoint(ckpt_dir, manifest.new_entry(ckpt_dir / "ckpt-000010.pt", 10), keep=2)
    log.record(contract.RECORD_CHECKPOINT, step=10, file=f"{contract.CHECKPOINTS_DIR}/ckpt-000010.pt",
               sha256="0" * 64, bytes=7)
    log.line(f"{contract.LINE_STOPPED}: {end_reason} at step 10")
    log.record(contract.RECORD_END, reason=end_reason, step=10)
    log.close()


def test_what_the_trainer_writes_the_controller_reads(tmp_path: Path) -> None:
    write_run(tmp_path, contract.END_DEADLINE)
    metrics = (tmp_path / contract.METRICS_PATH).read_text()
    probe = parse_probe("42\n" + metrics)
    assert probe.step == 10 and probe.metrics == {"step": 10, "loss": 2.5, "tokens_per_s": 1234.5}
    assert probe.end_reason == contract.END_DEADLINE == "deadline"  # what the controller compares it with
    got = produced(tmp_path)
    assert got.steps == 1 and got.checkpoint
    assert last_step(SimpleNamespace(run_dir=str(tmp_path)))["tokens_per_s"] == 1234.5  # type: ignore[arg-type]
    for line in metrics.splitlines():
        rec = json.loads(line)
        kind = rec.pop(contract.TYPE)
        rec.pop(contract.TIME)
        want = {contract.RECORD_STEP: contract.STEP_FIELDS, contract.RECORD_EVAL: contract.EVAL_FIELDS,
                contract.RECORD_CHECKPOINT: contract.CHECKPOINT_FIELDS, contract.RECORD_END: contract.END_FIELDS}
        assert set(rec) == set(want[kind]), kind
    assert (tmp_path / contract.TRAIN_LOG_PATH).read_text().endswith("stopped: deadline at step 10\n")


def test_progress_json_is_what_the_data_probe_reads(tmp_path: Path) -> None:
    Progress(tmp_path).update("tokenize", 0.42, 12_300_000, "shard 3 of 8", force=True)
    written = json.loads((tmp_path / contract.PROGRESS).read_text())
    assert tuple(written) == contract.PROGRESS_FIELDS
    probe = parse_data_probe("7\n" + (tmp_path / contract.PROGRESS).read_text())
    assert probe.line == "tokenize 42% 12.3M tokens: shard 3 of 8"
