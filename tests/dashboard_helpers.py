"""What the dashboard tests need around the real server: a ledger's finished runs written the way the
controller writes them (the ledger's API, the proof module, the evidence card's writer), the
`gpurun dashboard` process on a free port, and the system's Chromium driven by Playwright."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from orchestrator.proof.run_card import write_run_evidence
from orchestrator.proof.shutdown import build_proof, write_proof
from orchestrator.state.events import EventKind
from orchestrator.state.ledger import Ledger
from tests.test_launch_local import REPO

CHROMIUM = Path("/usr/bin/chromium")  # Debian's, installed by `make sysdeps` / .ci/run
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SCREENSHOTS = REPO / "docs" / "screenshots"
JOB_PHASES = ("creating", "booting", "ssh_ready", "bootstrapped", "running")
END_PHASES = ("stopping", "syncing_final", "terminating")


def write_metrics(run_dir: Path, t0: float, steps: list[tuple[int, float]], evals: list[tuple[int, float]]) -> None:
    """out/metrics.jsonl as the trainer writes it (trainer/contract.py: step and eval records)."""
    out = run_dir / "out"
    out.mkdir(parents=True, exist_ok=True)
    lines = [{"type": "step", "step": s, "loss": loss, "tokens_per_s": 12000.0 + s, "time": t0 + 5 + s}
             for s, loss in steps]
    lines += [{"type": "eval", "step": s, "train_loss": v - 0.05, "val_loss": v, "time": t0 + 5.5 + s} for s, v in evals]
    (out / "metrics.jsonl").write_text("".join(json.dumps(rec) + "\n" for rec in lines))


def ended_run(ledger: Ledger, run_id: str, plan: dict[str, Any], runs_dir: Path, cap: float) -> Path:
    """A run taken through the job's phases and stopped, as the controller records one."""
    run_dir = runs_dir / run_id
    run_dir.mkdir(parents=True)
    ledger.create_run(run_id, "local", cap, plan, str(run_dir))
    for phase in JOB_PHASES:
        ledger.set_phase(run_id, phase)
    ledger.update_run(run_id, clock_start_epoch=time.time() - 120, usd_per_hour=1.2, stop_at_epoch=time.time() - 10)
    ledger.record_event(run_id, EventKind.SYNC, final=False, files=4, bytes=48_000, method="copy", seconds=0.2)
    for phase in END_PHASES:
        ledger.set_phase(run_id, phase)
    return run_dir


def verified_run(ledger: Ledger, run_id: str, plan: dict[str, Any], runs_dir: Path, cost: float, cap: float,
                 billed: float) -> Path:
    """A run verified gone: its shutdown proof written and chained in the ledger, settled, reconciled,
    its evidence card written by the card's own writer."""
    run_dir = ended_run(ledger, run_id, plan, runs_dir, cap)
    run = ledger.get_run(run_id)
    assert run is not None and run.clock_start_epoch is not None
    write_metrics(run_dir, run.clock_start_epoch, [(s, 4.2 - s / 40) for s in range(0, 81, 10)], [(40, 3.4), (80, 2.4)])
    instance = f"local-{run_id}"
    proof = build_proof(
        run_id=run_id, provider="local", instance_ids=[instance], terminate_requests=[],
        final_describe=[{"id": instance, "state": "terminated"}], zero_match_listing=[], deleted_resources=[],
        estimated_cost_usd=cost, max_usd=cap, billing={}, verified=True, prev_sha256=ledger.last_proof_sha256(),
        started_at=run.clock_start_epoch, verified_at=time.time())
    path, sha = write_proof(run_dir, proof)
    ledger.add_proof(run_id, sha, str(path), proof["prev_sha256"])
    ledger.set_phase(run_id, "verified")
    ledger.settle(run_id, cost)
    ledger.update_run(run_id, billed_usd=billed, billed_source="the provider's billing API", billed_complete=True)
    verified = ledger.get_run(run_id)
    assert verified is not None
    write_run_evidence(verified, path, cost, 110.0)
    return run_dir


def not_verified_run(ledger: Ledger, run_id: str, plan: dict[str, Any], runs_dir: Path, cost: float, cap: float,
                     error: str) -> Path:
    """A run whose teardown could not confirm the instance gone (failed_terminating): it may still bill."""
    run_dir = ended_run(ledger, run_id, plan, runs_dir, cap)
    ledger.update_run(run_id, cost_usd=cost)
    ledger.set_phase(run_id, "failed_terminating", error=error)
    return run_dir


@contextmanager
def dashboard(*args: str, env: dict[str, str] | None = None) -> Iterator[tuple[str, float]]:
    """`gpurun dashboard --port 0 ARGS` (the real CLI): (the URL it printed, seconds to its first answer)."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli.main", "dashboard", "--port", "0", *args],
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        found = re.search(r"(http://\S+)", line)
        assert found, line + (proc.stderr.read() if proc.poll() is not None and proc.stderr else "")
        url = found.group(1)
        wait_answer(url)
        yield url, time.monotonic() - started
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def wait_answer(url: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            status(url)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def status(url: str, headers: dict[str, str] | None = None) -> int:
    """The HTTP status of a GET (redirects not followed)."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(urllib.request.Request(url, headers=headers or {}), timeout=10) as res:
            return int(res.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def launch_chromium(playwright: Any) -> Any:
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
