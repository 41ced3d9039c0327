"""A recipe run end to end on the `local` provider: the real CLI, `python -m trainer.data prepare` as
the run's data phase (from a local copy in the source's public format: no network), then the trainer
on the prepared shards; and a prepare that fails ends the run with its one line and a teardown."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from orchestrator.plan.job import JOB_CONFIG
from orchestrator.state.endings import Exit
from orchestrator.state.ledger import Ledger
from tests.e2e_helpers import only_run, phases, wait_for
from tests.test_signals import alive

REPO = Path(__file__).resolve().parent.parent
# A model small enough that three steps take a second on a CPU: the run's phases are the point.
SMALL = ["--set", "max_iters=3", "--set", "n_layer=1", "--set", "n_head=1", "--set", "n_embd=32",
         "--set", "block_size=32", "--set", "batch_size=4", "--set", "eval_iters=1", "--set", "eval_interval=2",
         "--set", "sample_tokens=5", "--set", "log_interval=1"]
VERSE = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"


def gpurun(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200", **(env or {})}
    return subprocess.run([sys.executable, "-m", "orchestrator.cli.main", *args], cwd=cwd, env=full,
                          capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL)


def sandbox(run_id: str) -> Path:
    return Path(os.environ["GPURUN_HOME"]) / "sandboxes" / run_id


def assert_prepared_then_trained(run_id: str, data_name: str, tokenizer: str) -> dict[str, object]:
    run = Ledger().resolve_run(run_id)
    seen = phases(run)
    assert run.phase == "verified" and seen.index("preparing_data") < seen.index("running"), seen
    events = [e.phase for e in Ledger().events(run_id)]
    assert events.index("data_ready") < events.index("job_started")
    data_dir = f"{sandbox(run_id).resolve()}/data/{data_name}"
    assert (Path(data_dir) / "READY").is_file()
    # The trainer read the recipe's config with data_dir at the prepared shards, --set above it.
    uploaded = yaml.safe_load((sandbox(run_id) / "code" / JOB_CONFIG).read_text())
    assert uploaded["data_dir"] == data_dir
    log = (Path(run.run_dir) / "out" / "train.log").read_text()
    assert f"data: {data_dir} ({tokenizer}" in log and "model: 1 layers, 1 heads, 32 wide, block 32" in log, log
    metrics = [json.loads(ln) for ln in (Path(run.run_dir) / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [m["reason"] for m in metrics if m.get("type") == "end"] == ["max_iters"]
    return uploaded


def test_a_recipe_prepares_its_data_then_trains_on_it(tmp_path: Path) -> None:
    src = tmp_path / "tinyshakespeare"
    src.mkdir()
    (src / "input.txt").write_text(VERSE * 200)  # the public format: one input.txt
    res = gpurun("launch", "--provider", "local", "--recipe", "shakespeare-char", "--data-from", str(src),
                 "--yes", *SMALL, cwd=tmp_path)
    assert res.returncode == Exit.OK, res.stdout + res.stderr
    out = " ".join(res.stdout.split())
    assert "recipe shakespeare-char" in out and "preparing_data" in out
    uploaded = assert_prepared_then_trained(only_run().run_id, "shakespeare-char", "char")
    assert uploaded["lr"] == 1e-3 and uploaded["dropout"] == 0.2  # the recipe's keys, in the file


def test_lab_trains_a_gpt2_bpe_model_on_tiny_shakespeare(tmp_path: Path, shared_data: Path) -> None:
    # The instance's python must have tiktoken (else bootstrap installs it: a network); offline BPE files.
    env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "GPURUN_GPT2_BPE_DIR": str(shared_data / "gpt2")}
    res = gpurun("launch", "--provider", "local", "--recipe", "lab", "--yes", *SMALL,
                 "--data-from", str(shared_data / "tinyshakespeare"), cwd=tmp_path, env=env)
    assert res.returncode == Exit.OK, res.stdout + res.stderr
    assert_prepared_then_trained(only_run().run_id, "shakespeare-gpt2", "gpt2")


def test_a_failed_prepare_ends_the_run_with_its_line(tmp_path: Path) -> None:
    empty = tmp_path / "nothing-here"
    empty.mkdir()
    res = gpurun("launch", "--provider", "local", "--recipe", "shakespeare-char", "--data-from", str(empty),
                 "--yes", *SMALL, cwd=tmp_path)
    # RUN_FAILED, not JOB_FAILED: the training job never started; the instance is verified gone.
    assert res.returncode == Exit.RUN_FAILED, res.stdout + res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stdout + res.stderr, res.stderr
    assert "data preparation failed (exit 3)" in lines[0] and f"--from {empty}" in lines[0], lines[0]
    assert "data.log" in lines[0]
    run = only_run()
    assert run.phase == "verified" and run.end_reason and "data preparation failed" in run.end_reason
    seen = phases(run)
    assert "failed_preparing_data" in seen and "running" not in seen, seen
    assert (Path(run.run_dir) / "data.log").is_file()  # its log came home


def test_detach_during_the_data_phase_hands_both_phases_to_the_guard(tmp_path: Path) -> None:
    src = tmp_path / "tinyshakespeare"
    src.mkdir()
    (src / "input.txt").write_text(VERSE * 200)
    # The machine's own python3 has no torch: the guard that starts the job must run bootstrap's
    # python (kept in the run's record), not whichever python3 its PATH finds.
    machine = tmp_path / "machine-python"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(machine)], check=True)
    res = gpurun("launch", "--provider", "local", "--recipe", "shakespeare-char", "--data-from", str(src),
                 "--detach", "--yes", *SMALL, cwd=tmp_path,
                 env={"PATH": os.pathsep.join([str(machine / "bin"), os.environ["PATH"]])})
    assert res.returncode == Exit.OK and "detached: guard pid" in res.stdout, res.stdout + res.stderr
    ledger = Ledger()
    run = only_run()
    # `launch --detach` returned once the data phase was under way, not after it (it may take an hour):
    # it reported preparing_data, never running (the guard it handed the run to started the job).
    shown = [ln.split()[1] for ln in res.stdout.splitlines() if ln[:2].isdigit() and len(ln.split()) > 1]
    assert shown[-1] == "preparing_data" and "running" not in shown, res.stdout
    wait_for(lambda: not ledger.resolve_run(run.run_id).open, 120, "the guard to finish the run")
    assert_prepared_then_trained(run.run_id, "shakespeare-char", "char")
    guard = ledger.resolve_run(run.run_id).controller_pid
    assert guard is not None and guard != os.getpid()
    wait_for(lambda: not alive(guard), 60, "the guard to exit after the run's end (its evidence card)")
