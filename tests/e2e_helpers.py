"""Shared plumbing for the end-to-end tests (tests/test_e2e_*.py).

Each e2e test drives the REAL CLI in a subprocess (`python -m orchestrator.cli.main ...`) against a fake
cloud (or moto's server) that runs in the pytest process, with the loopback sshd standing in for
the instance: the run's key is authorized there, its remote root is a temp dir, and every process
the run leaves on the "instance" (trainer, watchdog) is killed when the test ends, so no dead-man's
switch outlives its test and fires a self-destruct later.

    from tests.e2e_helpers import E2E, e2e, sshd  # noqa: F401  (fixtures)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.state.ledger import Ledger
from orchestrator.state.phases import is_phase
from orchestrator.state.rows import Run
from tests.fixtures.sshd import SSHServer, sshd  # noqa: F401  (re-exported fixture)

REPO = Path(__file__).resolve().parent.parent

# A short trainer run on the tiny preset: a few step lines, one eval, a checkpoint, a sample.
SHORT_TRAIN = ["--set", "max_iters=20", "--set", "log_interval=5", "--set", "eval_interval=10",
               "--set", "eval_iters=2", "--set", "sample_tokens=20"]
# A trainer run that only the budget guard ends (checkpoints every 2 s so one exists early).
ENDLESS_TRAIN = ["--set", "max_iters=1000000", "--set", "log_interval=10", "--set", "eval_interval=100000",
                 "--set", "ckpt_interval_s=2", "--set", "sample_tokens=10", "--set", "eval_iters=2"]


def write_budgets(path: Path, provider: str, *, reserve_s: int = 20, min_runtime_s: int = 10,
                  billing: dict[str, Any] | None = None) -> Path:
    """The packaged budgets.yaml with a test-sized reserve / minimum runtime for `provider`."""
    from orchestrator.money.budgets_file import packaged_budgets_file

    doc = yaml.safe_load(packaged_budgets_file().read_text())
    prov = doc.setdefault("providers", {}).setdefault(provider, {})
    prov["reserve_s"] = reserve_s
    prov["min_runtime_s"] = min_runtime_s
    if billing is not None:
        prov["billing"] = billing
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def kill_processes_under(root: Path) -> list[int]:
    """SIGKILL the process group of every process whose command line names `root` (jobs, watchdogs)."""
    needle = str(root).encode()
    mine = os.getpgrp()
    killed: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            if needle not in cmdline:
                continue
            pgid = os.getpgid(int(entry))
        except (OSError, ProcessLookupError):
            continue
        if pgid in (mine, 0, 1) or pgid in killed:
            continue
        try:
            os.killpg(pgid, signal.SIGKILL)
            killed.append(pgid)
        except (ProcessLookupError, PermissionError):
            pass
    return killed


@dataclass
class E2E:
    """One e2e test's world: its temp dir, the sshd, the CLI's environment and budgets file."""

    tmp: Path
    sshd: SSHServer
    remote_root: Path
    env: dict[str, str] = field(default_factory=dict)

    def budgets(self, provider: str, **kw: Any) -> Path:
        return write_budgets(self.tmp / f"budgets-{provider}.yaml", provider, **kw)

    def gpurun(self, *args: str, timeout: float = 120, input: str | None = None,
               env: dict[str, str | None] | None = None) -> subprocess.CompletedProcess[str]:
        """Run the real CLI in a subprocess; stdout/stderr captured, stdin closed unless `input`.
        An `env` value of None removes that variable."""
        full = {**os.environ, **self.env, **(env or {})}
        full = {k: v for k, v in full.items() if v is not None}
        return subprocess.run(
            [sys.executable, "-m", "orchestrator.cli.main", *args], cwd=self.tmp, env=full,
            capture_output=True, text=True, timeout=timeout,
            input=input, stdin=None if input is not None else subprocess.DEVNULL,
        )

    def popen(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        full = {**os.environ, **self.env, **(env or {})}  # output: stdout and stderr together
        return subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli.main", *args], cwd=self.tmp, env=full, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )


@pytest.fixture
def e2e(tmp_path: Path, sshd: SSHServer, gpurun_home: Path) -> Iterator[E2E]:  # noqa: F811
    """The loopback sshd authorizes this test's run key; the run's files on it live under tmp."""
    from orchestrator.transport.keys import run_key

    sshd.authorize(run_key().public_line)  # the same GPURUN_HOME as the CLI subprocess: the same key
    remote_root = tmp_path / "instance"
    remote_root.mkdir()
    world = E2E(tmp=tmp_path, sshd=sshd, remote_root=remote_root, env={
        "PYTHONPATH": str(REPO),
        "COLUMNS": "200",
        "GPURUN_REMOTE_ROOT": str(remote_root),
        "GPURUN_VERIFY_TIMEOUT_S": "60",
        # The "instance" is this machine: its watchdog must never run a cloud's `shutdown -h now`.
        "GPURUN_SELF_DESTRUCT_CMD": f"date +%s > {remote_root}/self_destruct.ran",
    })
    try:
        yield world
    finally:
        kill_processes_under(remote_root)


# ---- reading the outcome ---------------------------------------------------------------------------


def only_run() -> Run:
    runs = Ledger().list_runs()
    assert len(runs) == 1, [r.run_id for r in runs]
    return runs[0]


def ledger_instances() -> list[str]:
    ledger = Ledger()
    return [i.instance_id for r in ledger.list_runs() for i in ledger.instances(r.run_id)]


def proof_of(run: Run) -> dict[str, Any]:
    return json.loads((Path(run.run_dir) / "shutdown_proof.json").read_text())


def phases(run: Run) -> list[str]:
    """The run's lifecycle phases in order (events such as terminate_request left out)."""
    return [e.phase for e in Ledger().events(run.run_id) if is_phase(e.phase)]


def event_names(run: Run) -> list[str]:
    """Every event of the run in order: phases and the rest (job_started, reconciled, ...)."""
    return [e.phase for e in Ledger().events(run.run_id)]


def event(run: Run, phase: str) -> Any:
    return next(e for e in Ledger().events(run.run_id) if e.phase == phase)


def assert_trained_and_synced(run: Run, *, finished: bool) -> dict[str, Any]:
    """The trainer's outputs came home: log, metrics, a verified checkpoint; returns the manifest."""
    from trainer.manifest import verify_checkpoints

    out = Path(run.run_dir) / "out"
    log = (out / "train.log").read_text()
    # A run the cap stopped may not have reached a step on a busy machine: the trainer still
    # checkpoints on the way out, and that is what must come home.
    assert "device: cpu" in log and log.count("| loss ") >= (3 if finished else 0), log[-2000:]
    assert finished or "stopped: " in log, log[-2000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    ends = [r for r in records if r.get("type") == "end"]
    assert ends, "the trainer never wrote its end record (it did not stop cleanly)"
    if finished:
        assert ends[-1]["reason"] == "max_iters" and (out / "sample.txt").exists()
    else:
        assert ends[-1]["reason"] in ("signal", "deadline"), ends[-1]
    ok, bad = verify_checkpoints(out / "checkpoints")
    assert ok and not bad, (ok, bad)
    return json.loads((out / "checkpoints" / "MANIFEST.json").read_text())


def assert_one_line_error(res: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit != 0 and exactly one non-empty line on stderr, naming the problem; no traceback."""
    assert res.returncode != 0, res.stdout + res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stdout + res.stderr
    low = lines[0].lower()
    for n in needles:
        assert n.lower() in low, lines[0]
    return lines[0]


def wait_for(pred: Callable[[], Any], timeout_s: float, what: str = "the condition",
             diagnose: Callable[[], str] = str, every_s: float = 0.2) -> Any:
    """Poll until pred() is truthy and return it. The timeout is only a hang guard, generous, never
    the assertion: the tests assert the order of what happened, not how long it took."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(every_s)
    pytest.fail(f"{what}: not seen within {timeout_s:.0f} s. {diagnose()}")


def started_job_run_id(ledger: Ledger) -> str | None:
    """The run whose job has started (the ledger's `job_started` event), for wait_for; None before."""
    runs = ledger.list_runs()
    if runs and any(e.phase == "job_started" for e in ledger.events(runs[0].run_id)):
        return runs[0].run_id
    return None


def point_at_datacrunch_fake(e2e: E2E, api: Any) -> None:
    """The environment a launch needs to use the DataCrunch fake, with the instance on the loopback sshd."""
    e2e.env.update({
        "DATACRUNCH_BASE_URL": api.base_url,
        "DATACRUNCH_CLIENT_ID": api.client_id,
        "DATACRUNCH_CLIENT_SECRET": api.client_secret,
        # The self-destruct credential (and its scripts) go to this path ON the instance (this machine).
        "DATACRUNCH_CREDENTIALS_PATH": str(e2e.tmp / "instance-home" / "dc_credentials"),
        "GPURUN_SSH_OVERRIDE": f"{e2e.sshd.host}:{e2e.sshd.port}:{e2e.sshd.user}",
    })


def runpod_pod_self_destructing(e2e: E2E, **fake: Any) -> Iterator[Any]:  # noqa: F811
    """The RunPod fake (tests/fakes/runpod_api.py) with the pod's REAL self-destruct (not the
    GPURUN_SELF_DESTRUCT_CMD hook): its script reads the pod's own id and key from "PID 1's
    environment" (a file the fake writes, RUNPOD_PID1_ENVIRON) and posts podTerminate to the fake.
    For a fixture: `yield from runpod_pod_self_destructing(e2e, boot_delay_s=0.5)`."""
    from tests.fakes.runpod_api import FakeRunPodAPI

    environ = e2e.tmp / "pod-pid1-environ"
    api = FakeRunPodAPI(ssh_host=e2e.sshd.host, ssh_port=e2e.sshd.port, pid1_environ=environ, **fake).start()
    e2e.env.pop("GPURUN_SELF_DESTRUCT_CMD")  # its API calls go to the fake, nowhere else
    e2e.env.update({
        "RUNPOD_API_BASE_URL": api.base_url,
        "RUNPOD_API_KEY": api.api_key,
        "HOME": str(e2e.tmp / "home"),  # no real ~/.runpod/config.toml
        "RUNPOD_PID1_ENVIRON": str(environ),
        "RUNPOD_SELF_DESTRUCT_API_BASE": api.base_url,
    })
    try:
        yield api
    finally:
        api.stop()


def power_off(run_root: Path) -> Path:
    """What a cloud's reclaim does to the loopback "instance" of one run: the machine goes off (every
    process the run started on it dies) and the next instance has a fresh disk. Tell the fake cloud
    FIRST (so the provider already says preempted when the guard notices the job died), then call this.

    Kills the process group named by each <name>.pid under `run_root` (detached jobs run under setsid:
    the pid is the group; jobs with a <name>.exit have ended, their pid may be reused), as
    tests/fakes/loopback_provider.py `terminate` does. Never anything else: killing an sshd session's
    login shell, say mid `pyenv rehash`, leaves pyenv's lock behind and stalls every later SSH session.
    Then the run's directory is renamed to <run id>.lost (kept for a post-mortem; the e2e fixture's
    clean-up still reaches anything under the remote root). Returns where it went."""
    mine = os.getpgrp()
    for pid_file in sorted(run_root.glob("*.pid")):
        if pid_file.with_suffix(".exit").exists():
            continue
        try:
            pgid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            continue
        if pgid in (0, 1, mine):
            continue
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    lost = run_root.with_name(run_root.name + ".lost")
    run_root.rename(lost)
    return lost


# The loopback provider (tests/fakes/loopback_provider.py): an "instance" that is a directory on this
# machine reached over a real sshd, billed per second at 0.001 USD, with a 30 s reserve.
LOOPBACK_BUDGETS = """\
per_run_default_usd: 1.0
per_run_max_usd: 5.0
daily_usd: null
monthly_usd: null
providers:
  loopback:
    billing: {increment_s: 1, minimum_s: 0, source: "test: per second"}
    reserve_s: 30
    min_runtime_s: 10
"""


def loopback_env(ssh_host: str, ssh_port: int, ssh_user: str, remote: Path) -> dict[str, str]:
    """The environment that registers the loopback provider and points it at an sshd (or a proxy before one)."""
    return {
        "GPURUN_PROVIDERS": "loopback=tests.fakes.loopback_provider:LoopbackProvider",
        "GPURUN_LOOPBACK_SSH": f"{ssh_host}:{ssh_port}:{ssh_user}",
        "GPURUN_LOOPBACK_USD_PER_HOUR": "3.6",  # 0.001 USD a second
        "GPURUN_REMOTE_ROOT": str(remote),
        "GPURUN_VERIFY_TIMEOUT_S": "60",
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
    }


def files_holding(paths: list[Path], needles: list[str]) -> list[Path]:
    """The files among `paths` that contain any of `needles`, searched by grep, in a process of its own.

    Never with read_bytes() in the test's process while it holds the SQLite ledger open: POSIX
    advisory locks belong to the process, so closing any descriptor of ledger.db or its -wal/-shm
    drops every lock SQLite holds there. A writer in another process may then take this one's
    connection for gone and reset the write-ahead log under it, and committed runs vanish
    (sqlite.org/howtocorrupt.html, 2.2).
    """
    if not paths:
        return []
    patterns = [arg for needle in needles for arg in ("-e", needle)]
    found = subprocess.run(["grep", "-l", "-F", "-a", *patterns, "--", *map(str, paths)],
                           capture_output=True, text=True, timeout=120)
    assert found.returncode in (0, 1), found.stderr  # 1: no file holds any of them
    return [Path(line) for line in found.stdout.splitlines()]
