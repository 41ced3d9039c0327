"""End to end on the embedded `local` provider: the real CLI, the real trainer, real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator.cli.main import main
from orchestrator.state.ledger import Ledger
from orchestrator.state.phases import is_phase
from providers.local import LocalProvider, pgid_alive

REPO = Path(__file__).resolve().parent.parent


def gpurun(*args: str, cwd: Path, timeout: float = 240, path_first: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    if path_first is not None:
        env["PATH"] = os.pathsep.join([str(path_first), env.get("PATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli.main", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )


def instances_in_ledger() -> int:
    ledger = Ledger()
    return sum(len(ledger.instances(r.run_id)) for r in ledger.list_runs())


def no_torch_in(python: Path) -> bool:
    probe = subprocess.run([str(python), "-c", "import importlib.util as u; print(u.find_spec('torch') is None)"],
                           capture_output=True, text=True, timeout=60)
    return probe.stdout.strip() == "True"


def test_local_launch_is_stopped_by_the_guard_under_the_cap(tmp_path: Path) -> None:
    # The README's `make run`, on a machine whose own python3 has no torch (a bare venv first on PATH
    # stands in for it): the run trains with gpurun's interpreter and leaves that python3 alone.
    machine = tmp_path / "machine-python"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(machine)], check=True)
    res = gpurun("launch", "--provider", "local", "--max-usd", "0.02", "--usd-per-hour", "1.2", "--yes",
                 cwd=tmp_path, path_first=machine / "bin")
    assert res.returncode == 0, res.stdout + res.stderr
    assert no_torch_in(machine / "bin" / "python3")
    ledger = Ledger()
    (run,) = ledger.list_runs()
    assert run.phase == "verified"
    assert run.cost_usd is not None and run.cost_usd <= 0.02
    assert run.clock_start_epoch is not None
    proof_rows = ledger.proofs(run.run_id)
    assert len(proof_rows) == 1
    run_dir = Path(run.run_dir)
    proof = json.loads((run_dir / "shutdown_proof.json").read_text())
    assert proof["verified"] is True
    # In order: the create (the clock's start), the verified teardown, then the money deadline.
    assert run.deadline_epoch is not None
    assert run.clock_start_epoch < proof["verified_at"] <= run.deadline_epoch

    # The guard stopped the trainer (it did not run out by itself), leaving a verified checkpoint.
    events = [e.phase for e in ledger.events(run.run_id)]
    assert "stopping" in events and [e for e in events if is_phase(e)][-1] == "verified"
    stop = next(e for e in ledger.events(run.run_id) if e.phase == "stopping")
    assert "deadline" in stop.payload["reason"]
    manifest = json.loads((run_dir / "out" / "checkpoints" / "MANIFEST.json").read_text())
    latest = run_dir / "out" / "checkpoints" / manifest["latest"]
    assert latest.exists()
    from trainer.manifest import verify_checkpoints

    ok, bad = verify_checkpoints(run_dir / "out" / "checkpoints")
    assert ok and not bad
    train_log = (run_dir / "out" / "train.log").read_text()
    assert train_log.count("device: cpu") == 1 and train_log.count("| loss ") >= 3, train_log[-2000:]
    assert json.loads((run_dir / "out" / "bootstrap.json").read_text())["python"] == sys.executable
    card = (run_dir / "EVIDENCE.md").read_text()
    assert "SMOKE TEST" in card and run.run_id in card
    # Nothing of the instance is left running.
    assert LocalProvider().get(f"local-{run.run_id}").state == "terminated"

    # The checkpoint is resumable: the trainer picks it up and goes on from its step.
    step = manifest["checkpoints"][-1]["step"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    resumed = subprocess.run(
        [sys.executable, "-m", "trainer.train", "--out-dir", str(run_dir / "out"), "--max-iters", str(step + 3)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"at step {step}" in resumed.stdout and "resumed:" in resumed.stdout


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["--max-usd", "0.001", "--usd-per-hour", "1.2"], "raise --max-usd"),
        (["--max-usd", "-1"], "max-usd"),
        (["--provider", "nosuchcloud", "--max-usd", "1"], "unknown provider"),
    ],
)
def test_bad_launches_are_refused_with_one_line(args: list[str], expect: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["launch", *args, "--yes"])
    assert result.exit_code != 0
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and expect in lines[0], result.output
    assert instances_in_ledger() == 0


def test_malformed_budgets_file_is_refused_naming_key_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "budgets.yaml"
    bad.write_text("per_run_default_usd: 2\nmonthly_usd: lots\n")
    result = CliRunner().invoke(main, ["launch", "--budgets", str(bad), "--max-usd", "1", "--yes"])
    assert result.exit_code != 0
    out = result.output.strip()
    assert len(out.splitlines()) == 1 and "monthly_usd" in out and "line 2" in out, out
    assert instances_in_ledger() == 0


def test_spent_monthly_cap_refuses_the_launch(tmp_path: Path) -> None:
    from orchestrator.money.budgets_file import load_budgets

    default = load_budgets()
    budgets = tmp_path / "budgets.yaml"
    budgets.write_text(default.path.read_text().replace("monthly_usd: ", "monthly_usd: 0.05 #", 1))
    assert load_budgets(budgets).monthly_usd == 0.05
    ledger = Ledger()
    ledger.create_run("20260101-000000-aaaa", "local", 0.05, {}, str(tmp_path / "old"))
    ledger.add_hold("20260101-000000-aaaa", "local", 0.05)
    ledger.settle("20260101-000000-aaaa", 0.05)
    result = CliRunner().invoke(
        main, ["launch", "--budgets", str(budgets), "--max-usd", "0.02", "--usd-per-hour", "1.2", "--yes"]
    )
    assert result.exit_code != 0
    out = result.output.strip()
    assert len(out.splitlines()) == 1 and "monthly" in out, out
    assert instances_in_ledger() == 0
    assert [r.run_id for r in ledger.list_runs()] == ["20260101-000000-aaaa"]


def test_kill_9_then_teardown_finds_the_run_and_proves_it_gone(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli.main", "launch", "--max-usd", "1", "--usd-per-hour", "1.2",
         "--yes", "--set", "max_iters=1000000"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    ledger = Ledger()
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            runs = ledger.list_runs()
            if runs and runs[0].phase == "running":
                sandbox = Path(os.environ["GPURUN_HOME"]) / "sandboxes" / runs[0].run_id
                if (sandbox / "out" / "checkpoints" / "MANIFEST.json").exists():
                    break
            time.sleep(0.5)
        else:
            pytest.fail("the run never reached a first checkpoint")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    (run,) = ledger.list_runs()
    job_pid = int((sandbox / "job.pid").read_text())
    assert pgid_alive(job_pid), "the job must outlive the killed controller"

    before = gpurun("status", cwd=tmp_path)
    assert run.run_id in before.stdout and "running" in before.stdout, before.stdout

    down = gpurun("teardown", run.run_id, "--verify", cwd=tmp_path)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not pgid_alive(job_pid)
    run = ledger.resolve_run(run.run_id)
    assert run.phase == "verified" and run.cost_usd is not None and run.cost_usd <= 1
    proof = json.loads((Path(run.run_dir) / "shutdown_proof.json").read_text())
    assert proof["verified"] is True and proof["zero_match_listing"] == []
    # The job was asked to stop and wrote a final checkpoint that came home.
    assert (Path(run.run_dir) / "out" / "checkpoints" / "MANIFEST.json").exists()

    after = gpurun("status", "--all", cwd=tmp_path)
    assert run.run_id in after.stdout and "verified" in after.stdout, after.stdout
    assert "no open runs" in gpurun("status", cwd=tmp_path).stdout
