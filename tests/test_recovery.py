"""Spot recovery (orchestrator/run/recovery.py): a preempted instance is verified gone, the run resumes
on the next offer from the checkpoint that came home, and every attempt stays inside one cap.
Driven through the scripted provider of tests/fakes/shelf_provider.py with the real trainer; the
providers' own preemption signals against their API fakes are in tests/test_<provider>_preemption.py."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from orchestrator.plan.launch import make_plan
from orchestrator.plan.options import LaunchError, LaunchOptions
from orchestrator.plan.record import RunRecord
from orchestrator.run.controller import Controller
from orchestrator.state.ledger import Ledger
from orchestrator.state.phases import is_phase

PRICE = 3.6  # USD/h: 0.001 USD a second
TRAIN = ["--max-iters", "400", "--log-interval", "10", "--eval-interval", "100000", "--eval-iters", "2",
         "--ckpt-interval-s", "1", "--sample-tokens", "10"]


@pytest.fixture(autouse=True)
def shelf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPURUN_PROVIDERS", "shelf=tests.fakes.shelf_provider:ShelfProvider")


def stock(monkeypatch: pytest.MonkeyPatch, *offers: dict[str, Any]) -> None:
    monkeypatch.setenv("GPURUN_SHELF", json.dumps(list(offers)))


def budgets(tmp_path: Path, min_runtime_s: int = 5) -> str:
    path = tmp_path / "budgets.yaml"
    path.write_text("per_run_default_usd: 1\nper_run_max_usd: 20\ndaily_usd: null\nmonthly_usd: null\n"
                    f"reserve_s: 10\nmin_runtime_s: {min_runtime_s}\n"
                    "providers:\n  shelf:\n    billing: {increment_s: 1, minimum_s: 0, source: test}\n")
    return str(path)


def launch(tmp_path: Path, **kw: Any) -> Controller:
    if "budgets" not in kw:  # (setdefault would write the default file over the one given)
        kw["budgets"] = budgets(tmp_path)
    opts = LaunchOptions(**{**dict(provider="shelf", max_usd=0.5, spot=True, runs_dir=str(tmp_path / "runs"),
                                   trainer_args=TRAIN, sync_interval_s=1.0), **kw})
    ctl = Controller.create(Ledger(), make_plan(opts))
    ctl.launch(attach=True)
    return ctl


def test_a_preempted_spot_run_resumes_from_its_checkpoint_on_the_same_offer(tmp_path, monkeypatch) -> None:
    stock(monkeypatch, {"gpu": "H100", "region": "r1", "usd_per_hour": PRICE, "boot": "ok", "spot": True,
                        "preempt_after_s": 2, "preempt_during": "training", "preempt_once": True},
          {"gpu": "H100", "region": "r2", "usd_per_hour": PRICE * 1.5, "boot": "ok", "spot": True})
    ctl = launch(tmp_path, gpu="H100")
    run = ctl.refresh()
    assert run.phase == "verified" and run.job_exit_code == 0, (run.end_reason, run.error)
    (lost,) = RunRecord.of_run(run).attempts
    assert lost["cause"] == "preempted" and "reclaimed" in lost["reason"] and lost["cost_usd"] > 0
    names = [e.phase for e in Ledger().events(run.run_id)]
    # Preempted -> the lost instance asked to go -> created again -> resumed -> verified.
    assert names.index("preempted") < names.index("terminate_request") < len(names) - 1
    phases = [n for n in names if is_phase(n)]
    assert phases.count("creating") == 2 and phases.count("running") == 2 and phases[-1] == "verified"
    resuming = next(e for e in Ledger().events(run.run_id) if e.phase == "resuming")
    assert resuming.payload["step"] and resuming.payload["step"] > 0
    log = (Path(run.run_dir) / "out" / "train.log").read_text()
    assert f"resumed: checkpoints/{resuming.payload['checkpoint']} at step {resuming.payload['step']}" in log
    assert "stopped: max_iters" in log or "max_iters" in log
    # Both instances in the ledger and the proof, each verified gone; all of it inside the one cap.
    proof = json.loads((Path(run.run_dir) / "shutdown_proof.json").read_text())
    assert len(proof["instance_ids"]) == 2 and proof["verified"] is True
    assert [a["cause"] for a in proof["attempts"]] == ["preempted"]
    assert run.cost_usd is not None and lost["cost_usd"] < run.cost_usd <= 0.5


def test_a_preemption_the_rest_of_the_cap_cannot_carry_ends_the_run_cleanly(tmp_path, monkeypatch) -> None:
    # 0.1 USD at 0.001 USD/s: 100 s, and a run needs 85 s of training + 10 s reserve: 5 s to spare.
    # The preemption comes 5 s after the job started (boot and bootstrap came first), so what is left
    # is under 95 s on this offer, and less on the pricier next one: not resumed, whatever the timing.
    stock(monkeypatch, {"gpu": "H100", "region": "r1", "usd_per_hour": PRICE, "boot": "ok", "spot": True,
                        "preempt_after_s": 5},
          {"gpu": "H100", "region": "r2", "usd_per_hour": PRICE * 1.5, "boot": "ok", "spot": True})
    endless = [*TRAIN[:1], "1000000", *TRAIN[2:]]  # only the guard or the preemption ends it
    ctl = launch(tmp_path, gpu="H100", max_usd=0.1, budgets=budgets(tmp_path, min_runtime_s=85), trainer_args=endless)
    run = ctl.refresh()
    assert run.phase == "verified" and run.end_reason is not None
    assert run.end_reason.startswith("preempted") and "not resumed" in run.end_reason, run.end_reason
    assert "raise --max-usd" in run.end_reason and "already spent on a preempted instance" in run.end_reason
    assert f"gpurun launch --resume {run.run_id}" in run.end_reason  # what to do next, in the reason
    assert len(Ledger().instances(run.run_id)) == 1  # nothing else was rented
    assert all(r.state in ("terminated", "not_found") for r in Ledger().instances(run.run_id))
    assert run.cost_usd is not None and run.cost_usd <= 0.1


def test_a_reclaim_notice_has_the_job_checkpoint_and_that_checkpoint_resumes(tmp_path, monkeypatch) -> None:
    # The provider warns 1 s after the job's first checkpoint (EC2: two minutes ahead): the job
    # checkpoints and stops, the controller pulls that checkpoint and resumes from exactly its step.
    # 1000 steps take ~10 s here, so the notice lands mid-training even on a loaded machine.
    stock(monkeypatch, {"gpu": "H100", "region": "r1", "usd_per_hour": PRICE, "boot": "ok", "spot": True,
                        "notice_after_s": 1})
    longer = [*TRAIN[:1], "1000", *TRAIN[2:]]
    ctl = launch(tmp_path, gpu="H100", sync_interval_s=30.0,  # no periodic pull in between: only the notice's
                 trainer_args=longer)
    run = ctl.refresh()
    assert run.phase == "verified" and run.job_exit_code == 0, (run.end_reason, run.error)
    (lost,) = RunRecord.of_run(run).attempts
    assert lost["cause"] == "preempted" and "interruption notice" in lost["reason"]
    resuming = next(e for e in Ledger().events(run.run_id) if e.phase == "resuming")
    out = Path(run.run_dir) / "out"
    first = (out / "train.attempt-1.log").read_text()  # the lost instance's log, kept home
    assert f"stopped: signal at step {resuming.payload['step']}" in first
    log = (out / "train.log").read_text()
    assert f"resumed: checkpoints/{resuming.payload['checkpoint']} at step {resuming.payload['step']}" in log


def test_spot_fallback_needs_spot(tmp_path, monkeypatch) -> None:
    stock(monkeypatch, {"gpu": "H100", "region": "r1", "usd_per_hour": PRICE, "boot": "ok"})
    with pytest.raises(LaunchError, match="--spot-fallback goes with --spot"):
        make_plan(LaunchOptions(provider="shelf", max_usd=0.5, spot_fallback=True, budgets=budgets(tmp_path)))


def loss_lines(text: str) -> list[float]:
    return [float(line.split("| loss ")[1].split()[0]) for line in text.splitlines() if "| loss " in line]


def test_launch_resume_continues_a_stopped_run_from_its_last_checkpoint(tmp_path: Path) -> None:
    from tests.test_launch_local import gpurun

    # A loss line every 2 steps: the resumed run's 20 s may train only a few steps on a busy machine.
    endless = ["--set", "max_iters=1000000", "--set", "log_interval=2", "--set", "eval_interval=100000",
               "--set", "eval_iters=2", "--set", "ckpt_interval_s=2", "--set", "sample_tokens=10"]
    # 0.05 USD at 3.6 USD/h buys 50 s (the local provider's 15 s reserve + 35 s): room for a loaded
    # machine's slow start (bootstrap took 14-19 s beside other work), then the guard stops the job with a checkpoint.
    first = gpurun("launch", "--max-usd", "0.05", "--usd-per-hour", "3.6", "--yes", *endless, cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    (run,) = Ledger().list_runs()
    assert "deadline" in (run.end_reason or "")
    # Checkpoints every 2 s for ~35 s, K = 2: only the newest two stay, on the instance and at home,
    # and the final step's weights-only export came home beside them.
    home_ckpts = Path(run.run_dir) / "out" / "checkpoints"
    (instance_ckpts,) = {p.parent for p in (Path(os.environ["GPURUN_HOME"]) / "sandboxes").glob("**/MANIFEST.json")}
    for side in (instance_ckpts, home_ckpts):
        listed = json.loads((side / "MANIFEST.json").read_text())
        files = sorted(p.name for p in side.glob("ckpt-*.pt"))
        assert len(files) == 2 and files == [e["file"] for e in listed["checkpoints"]], side
        assert [e["file"] for e in listed["exports"]] == [f"weights-{listed['checkpoints'][-1]['step']:06d}.pt"]
        assert (side / listed["exports"][0]["file"]).is_file()
    newest = json.loads((home_ckpts / "MANIFEST.json").read_text())["latest"]
    assert "came home: " in (Path(run.run_dir) / "EVIDENCE.md").read_text()
    # 0.035 USD buys the least a run may have: 20 s of training after the 15 s reserve.
    again = gpurun("launch", "--resume", run.run_id, "--max-usd", "0.035", "--yes", cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"run {run.run_id} from its last checkpoint" in again.stdout  # the plan says what it resumes
    runs = {r.run_id: r for r in Ledger().list_runs()}
    (second,) = [r for r in runs.values() if r.run_id != run.run_id]
    assert second.run_dir == run.run_dir and second.plan["resumed_from"] == run.run_id
    assert second.phase == "verified" and len(Ledger().proofs()) == 2  # its own proof, on the same chain
    resuming = next(e for e in Ledger().events(second.run_id) if e.phase == "resuming")
    assert resuming.payload["checkpoint"] == newest  # resumed from the newest of the K kept
    assert len(list(home_ckpts.glob("ckpt-*.pt"))) == 2
    out = Path(run.run_dir) / "out"
    earlier, later = (out / f"train.{run.run_id}.log").read_text(), (out / "train.log").read_text()
    assert f"resumed: checkpoints/{resuming.payload['checkpoint']} at step {resuming.payload['step']}" in later
    # The same loss curve: the resumed run starts where the first left off, not at the initial loss.
    first_losses, resumed_losses = loss_lines(earlier), loss_lines(later)
    assert resumed_losses[0] < first_losses[0] - 0.5 and abs(resumed_losses[0] - first_losses[-1]) < 0.5
    # Nothing of the first run was lost: its card and its proof stay beside the new ones.
    assert (Path(run.run_dir) / f"EVIDENCE.{run.run_id}.md").exists()


def test_resume_refuses_an_open_run_or_one_without_a_checkpoint(tmp_path: Path) -> None:
    from tests.test_launch_local import gpurun

    ledger = Ledger()
    ledger.create_run("open-run-1", "local", 1.0, {}, str(tmp_path / "open"))
    res = gpurun("launch", "--resume", "open-run-1", "--yes", cwd=tmp_path)
    assert res.returncode == 2 and "is still open" in res.stderr and "Traceback" not in res.stderr


def test_the_plan_says_how_recovery_draws_on_the_cap(tmp_path, monkeypatch) -> None:
    stock(monkeypatch, {"gpu": "H100", "region": "r1", "usd_per_hour": PRICE, "boot": "ok", "spot": True},
          {"gpu": "H100", "region": "r2", "usd_per_hour": PRICE * 1.5, "boot": "ok", "spot": True})
    plan = make_plan(LaunchOptions(provider="shelf", max_usd=0.5, spot=True, gpu="H100",
                                   budgets=budgets(tmp_path, min_runtime_s=30)))
    row = dict(plan.rows())["preemption"]
    # 30 s of training + 10 s reserve at 0.001 USD/s: 0.04 USD; resumes stay possible up to 0.46 USD spent.
    assert "same offer, then the fallbacks" in row and "0.0400 USD at this price" in row, row
    assert "up to 0.4600 USD spent" in row and "nothing left billing" in row
    stock(monkeypatch, {"gpu": "H100", "region": "r1", "usd_per_hour": PRICE, "boot": "ok"})
    on_demand = make_plan(LaunchOptions(provider="shelf", max_usd=0.5, budgets=budgets(tmp_path)))
    assert "preemption" not in dict(on_demand.rows())  # on-demand: nothing takes the machine back


def test_a_reclaim_while_the_data_is_prepared_resumes_on_the_next_instance(tmp_path, monkeypatch) -> None:
    # 20 MB of text takes the preparer seconds: the cloud takes the machine back while it tokenizes.
    src = tmp_path / "corpus"
    src.mkdir()
    (src / "input.txt").write_text("Speak, speak. Before we proceed any further, hear me speak.\n" * 340_000)
    stock(monkeypatch, {"gpu": "H100", "region": "r1", "usd_per_hour": PRICE, "boot": "ok", "spot": True,
                        "preempt_after_s": 0, "preempt_once": True, "preempt_during": "data"})
    small = ["--max-iters", "6", "--n-layer", "1", "--n-head", "1", "--n-embd", "32", "--block-size", "32",
             "--batch-size", "4", "--eval-iters", "1", "--eval-interval", "3", "--sample-tokens", "5",
             "--log-interval", "1"]
    ctl = launch(tmp_path, gpu="H100", recipe="shakespeare-char", data_from=str(src), trainer_args=small)
    run = ctl.refresh()
    assert run.phase == "verified" and run.job_exit_code == 0, (run.end_reason, run.error)
    (lost,) = RunRecord.of_run(run).attempts
    assert lost["cause"] == "preempted" and "while preparing the data" in lost["reason"], lost
    phases = [e.phase for e in Ledger().events(run.run_id) if is_phase(e.phase)]
    # Reclaimed in the data phase -> a new instance prepares the data again -> trains -> verified.
    assert phases.count("preparing_data") == 2 and phases.count("creating") == 2, phases
    first_data = phases.index("preparing_data")
    assert "running" not in phases[:first_data] and phases.index("creating", first_data) < phases.index("running")
    resuming = next(e for e in Ledger().events(run.run_id) if e.phase == "resuming")
    assert resuming.payload["step"] is None  # nothing had trained: the job starts from scratch
    assert "max_iters" in (Path(run.run_dir) / "out" / "train.log").read_text()
    assert run.cost_usd is not None and run.cost_usd <= 0.5
