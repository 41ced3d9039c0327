"""A team's ledger, end to end with the real CLI on the embedded `local` provider: two "machines"
(two GPURUN_HOMEs) racing for one pool cap, and who may tear down whose run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.state.ledger import Ledger
from tests.fixtures.postgres import Cluster

REPO = Path(__file__).resolve().parent.parent

BUDGETS = """\
per_run_default_usd: 0.3
per_run_max_usd: 1
daily_usd: 10
monthly_usd: null
ledger: {url}
providers:
  local:
    billing: {{increment_s: 1, minimum_s: 0, source: "gpurun local provider: simulated per-second meter"}}
    reserve_s: 15
    min_runtime_s: 20
pools:
  course:
    members: [ana, ben]
    admin: teacher
    daily_usd: 0.5
    per_person: {{per_run_usd: 0.4, daily_usd: 0.4}}
"""
LAUNCH = ("launch", "--provider", "local", "--max-usd", "0.3", "--usd-per-hour", "1.2", "--yes")


def machine(tmp_path: Path, name: str, url: str) -> Path:
    """A GPURUN_HOME of its own whose budgets.yaml points at the shared ledger (`ledger:`)."""
    home = tmp_path / name
    home.mkdir()
    (home / "budgets.yaml").write_text(BUDGETS.format(url=url))
    return home


def gpurun(home: Path, person: str, *args: str, cwd: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200", "GPURUN_HOME": str(home),
           "GPURUN_RUNS_DIR": str(home / "runs"), "GPURUN_USER": person}
    env.pop("GPURUN_LEDGER", None)  # each machine finds the shared ledger in its own budgets.yaml
    return subprocess.Popen([sys.executable, "-m", "orchestrator.cli.main", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)


def done(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=240)
    return proc.returncode, out, err


@pytest.mark.parametrize("engine", ["postgresql", "sqlite"])
def test_two_machines_racing_for_a_pool_cap_that_fits_one_one_is_refused(
        engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if engine == "postgresql":
        url = request.getfixturevalue("pg_cluster").new_database()
    else:  # one file both homes name: the same race on SQLite's write lock
        url = f"sqlite:///{tmp_path / 'shared-ledger.db'}"
    homes = {"ana": machine(tmp_path, "ana-laptop", url), "ben": machine(tmp_path, "ben-workstation", url)}
    # Both at the same moment; 0.3 + 0.3 is over the pool's 0.5 a day.
    procs = {p: gpurun(home, p, *LAUNCH, "--", "true", cwd=tmp_path) for p, home in homes.items()}
    results = {p: done(proc) for p, proc in procs.items()}
    codes = sorted(code for code, _, _ in results.values())
    assert codes == [0, 2], results
    loser = next(p for p, (code, _, _) in results.items() if code == 2)
    winner = "ben" if loser == "ana" else "ana"
    refusal = [line for line in results[loser][2].splitlines() if line.strip()]
    assert len(refusal) == 1 and "pool course daily cap 0.50 USD: 0.30 already spent or held" in refusal[0], refusal
    ledger = Ledger(tmp_path / "reader", url=url)
    (run,) = ledger.list_runs()
    assert run.person == winner and run.pool == "course" and run.phase == "verified"
    assert ledger.hold(run.run_id) is not None and ledger.committed_usd(0.0) <= 0.3
    # Nothing was created for the refused launch: no run, no hold, no sandbox, no run directory.
    assert ledger.list_runs(person=loser) == [] and len(ledger.proofs()) == 1
    assert not (homes[loser] / "sandboxes").exists() or not any((homes[loser] / "sandboxes").iterdir())
    assert not (homes[loser] / "runs").exists()


def test_tearing_down_another_persons_run_is_refused_and_the_admin_may(
        tmp_path: Path, gpurun_home: Path, pg_cluster: Cluster) -> None:
    url = pg_cluster.new_database()
    (gpurun_home / "budgets.yaml").write_text(BUDGETS.format(url=url))
    code, out, err = done(gpurun(gpurun_home, "ana", *LAUNCH, "--detach", "--", "sleep", "600", cwd=tmp_path))
    assert code == 0, out + err
    ledger = Ledger(tmp_path / "reader", url=url)
    (run,) = ledger.list_runs(open_only=True)
    assert run.person == "ana"
    code, out, err = done(gpurun(gpurun_home, "ben", "teardown", run.run_id, cwd=tmp_path))
    assert code == 2 and f"cannot tear down run {run.run_id}: it is ana's run: only ana or pool course's admin" \
        " (teacher)" in err, out + err
    assert ledger.get_run(run.run_id).open  # type: ignore[union-attr]
    # ben sees no open run of his; --all shows everyone's, with who launched it.
    assert "no open runs of yours" in done(gpurun(gpurun_home, "ben", "status", cwd=tmp_path))[1]
    listed = done(gpurun(gpurun_home, "ben", "status", "--all", cwd=tmp_path))[1]
    assert run.run_id in listed and "ana" in listed
    spend = done(gpurun(gpurun_home, "ben", "cost", "--by", "person", cwd=tmp_path))[1]
    assert "ana" in spend and "0.3000" in spend
    pool = done(gpurun(gpurun_home, "teacher", "pool", cwd=tmp_path))[1]
    assert "ana" in pool and "0.30 / 0.40" in pool and "teacher (admin)" in pool and "0.30 / 0.50" in pool
    code, out, err = done(gpurun(gpurun_home, "teacher", "teardown", run.run_id, cwd=tmp_path))
    assert code == 0, out + err
    ended = ledger.get_run(run.run_id)
    assert ended is not None and ended.phase == "verified" and ended.cost_usd is not None and ended.cost_usd <= 0.3
