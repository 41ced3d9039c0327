"""orchestrator.run.outcome: a bundled-trainer run that produced nothing is not a success."""

from __future__ import annotations

import json
from pathlib import Path

from orchestrator.run.outcome import Produced, nothing_trained, produced
from orchestrator.run.stop import End
from orchestrator.state.endings import Ending, Exit, for_run


def write(run_dir: Path, steps: int, checkpoints: int) -> None:
    out = run_dir / "out"
    (out / "checkpoints").mkdir(parents=True)
    rows = [{"type": "config"}, *({"type": "step", "step": i} for i in range(1, steps + 1))]
    (out / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n{\"type\": \"st")  # torn tail
    files = [{"file": f"ckpt-{i:06d}.pt", "step": i} for i in range(checkpoints)]
    (out / "checkpoints" / "MANIFEST.json").write_text(json.dumps({"latest": None, "checkpoints": files}))


def test_produced_reads_steps_and_checkpoints(tmp_path: Path) -> None:
    assert produced(tmp_path / "none") == Produced(0, False)
    write(tmp_path / "a", steps=3, checkpoints=1)
    assert produced(tmp_path / "a") == Produced(3, True)
    write(tmp_path / "b", steps=0, checkpoints=0)
    assert produced(tmp_path / "b").nothing


def test_a_clean_stop_with_nothing_to_show_fails_the_run_saying_why() -> None:
    failed = nothing_trained(End(Ending.DEADLINE, "deadline: budget guard"), None, Produced(0, False), 52.4, 60)
    assert failed is not None
    reason = failed.reason
    assert reason == ("run failed: nothing trained: no training step logged and no checkpoint saved before deadline:"
                      " budget guard; start-up (boot, bootstrap, data) took 52 s of the 60 s the budget buys:"
                      " raise --max-usd")
    assert for_run(failed.ending, None) is Exit.RUN_FAILED
    never = nothing_trained(End.job_ended(0), 0, Produced(0, False), None, 60)
    assert never is not None and "the job never started" in never.reason


def test_anything_trained_or_another_ending_is_left_as_it_is() -> None:
    deadline = End(Ending.DEADLINE, "deadline: budget guard")
    assert nothing_trained(deadline, None, Produced(1, False), 10, 60) is None
    assert nothing_trained(deadline, None, Produced(0, True), 10, 60) is None
    for end, code in ((End.job_ended(1), 1), (End.noted(Ending.REQUESTED, "SIGTERM"), None),
                      (End.because(Ending.STALLED, "no new step for 10 min"), None),
                      (End.because(Ending.RUN_FAILED, "boom"), None)):
        assert nothing_trained(end, code, Produced(0, False), 10, 60) is None
