"""Issue 18 end to end: `gpurun launch --nodes 2 --gpus 1` through the real CLI, two loopback sshd
"instances" (one per node, tests/fakes/loopback_provider.py), the real trainer under our launcher's
static rendezvous on gloo (CPU), real rsync; every node verified gone, one proof for the run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.state.ledger import Ledger
from orchestrator.transport.keys import run_key
from tests.e2e_helpers import LOOPBACK_BUDGETS as BUDGETS  # loopback: per second, 30 s reserve, 10 s minimum
from tests.e2e_helpers import kill_processes_under, only_run, phases, proof_of
from tests.fixtures.sshd import SSHServer, free_port, sshd, sshd_fn  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parent.parent
PRICE = 3.6  # USD/h per node: 0.001 USD a second, 0.002 for the pair
TRAIN = ["--set", "max_iters=30", "--set", "log_interval=5", "--set", "eval_interval=15", "--set", "eval_iters=2",
         "--set", "ckpt_interval_s=2", "--set", "sample_tokens=10"]
# A recipe whose data is prepared on the instance: every node prepares its own copy (no shared disk).
SMALL_MODEL = ["--set", "n_layer=1", "--set", "n_head=1", "--set", "n_embd=32", "--set", "block_size=32",
               "--set", "batch_size=4", "--set", "dropout=0"]
VERSE = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"


@pytest.fixture
def two_nodes(sshd: SSHServer, sshd_fn: SSHServer, tmp_path: Path,  # noqa: F811
              monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Node 0 behind one sshd, node 1 behind another; both authorize the run's key."""
    for server in (sshd, sshd_fn):
        server.authorize(run_key().public_line)
    remote = tmp_path / "instances"
    remote.mkdir()
    (tmp_path / "budgets.yaml").write_text(BUDGETS)
    env = {
        "GPURUN_PROVIDERS": "loopback=tests.fakes.loopback_provider:LoopbackProvider",
        "GPURUN_LOOPBACK_SSH": ",".join(f"{s.host}:{s.port}:{s.user}" for s in (sshd, sshd_fn)),
        "GPURUN_LOOPBACK_USD_PER_HOUR": str(PRICE),
        "GPURUN_REMOTE_ROOT": str(remote),
        "GPURUN_VERIFY_TIMEOUT_S": "60",
        "GPURUN_RDZV_PORT": str(free_port()),  # node 0's rendezvous: not torchrun's 29500, tests run side by side
        # The "instances" are this machine: the switch must never run a cloud's self-destruct here.
        "GPURUN_SELF_DESTRUCT_CMD": "true",
        "PYTHONPATH": str(REPO),
        "COLUMNS": "200",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    try:
        yield remote
    finally:
        kill_processes_under(remote)


def launch(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli.main", "launch", "--provider", "loopback", "--yes",
         "--budgets", str(tmp_path / "budgets.yaml"), "--nodes", "2", "--gpus", "1", *args],
        cwd=tmp_path, env=dict(os.environ), capture_output=True, text=True, stdin=subprocess.DEVNULL,
        timeout=240,  # a hang guard only
    )


def test_two_nodes_train_as_one_world_sync_from_node_0_and_both_are_proven_gone(
        two_nodes: Path, tmp_path: Path) -> None:
    from tests.fakes.loopback_provider import LoopbackProvider

    src = tmp_path / "corpus"
    src.mkdir()
    (src / "input.txt").write_text(VERSE * 400)
    res = launch(tmp_path, "--max-usd", "0.3", "--sync-interval", "2", "--recipe", "shakespeare-char",
                 "--data-from", str(src), *TRAIN, *SMALL_MODEL)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "nodes" in res.stdout and "2 x loopback" in " ".join(res.stdout.split())  # the plan said so
    run = only_run()
    assert run.phase == "verified" and phases(run)[-1] == "verified"
    nodes = run.plan["nodes"]
    assert [n["rank"] for n in nodes] == [0, 1] and all(n["private_ip"] == "127.0.0.1" for n in nodes)
    node0, node1 = (n["instance_id"] for n in nodes)

    # Both ranks trained as one world; rank 0 (node 0) wrote the log and checkpoints, and they came home.
    out = Path(run.run_dir) / "out"
    log = (out / "train.log").read_text()
    assert "world_size: 2" in log and "stopped: max_iters at step 30" in log, log[-2000:]
    from trainer.manifest import verify_checkpoints

    ok, bad = verify_checkpoints(out / "checkpoints")
    assert ok and not bad
    events = Ledger().events(run.run_id)
    running = next(e for e in events if e.phase == "running")
    assert "--nnodes=2 --node-rank=0 --rdzv-backend=static --rdzv-endpoint=127.0.0.1:" in running.payload["command"]
    assert [e.payload["rank"] for e in events if e.phase == "node_job_started"] == [1]
    # Both nodes prepared the recipe's data, each its own copy, before either trained.
    names = [e.phase for e in events]
    assert names.index("node_data_started") < names.index("data_ready") < names.index("running")
    worker = two_nodes / f"{run.run_id}-n1"
    assert (worker / "data" / "shakespeare_char" / "READY").exists() or any(worker.glob("data/*/READY"))
    # Node 1 ran its part under its own directory, with the group's environment and its own switch.
    assert (worker / "job.exit").read_text().strip() == "0"
    assert (worker / "watchdog.pid").exists() or any(worker.glob("watchdog*"))
    assert not (worker / "out" / "checkpoints").exists()  # only rank 0 writes checkpoints

    # Every node verified gone, in one proof; both meters together inside the cap.
    proof = proof_of(run)
    assert proof["verified"] is True and sorted(proof["instance_ids"]) == sorted([node0, node1])
    assert {d["state"] for d in proof["final_describe"]} <= {"terminated", "not_found"}
    assert proof["zero_match_listing"] == []
    provider = LoopbackProvider()
    assert provider.get(node0).gone and provider.get(node1).gone
    assert provider.meter_usd() <= 0.3
    assert run.cost_usd is not None and run.cost_usd <= 0.3
    card = (Path(run.run_dir) / "EVIDENCE.md").read_text()
    assert f"| nodes | 2: node 0 {node0} (127.0.0.1), node 1 {node1} (127.0.0.1)" in card


def test_a_node_that_never_answers_fails_the_run_and_the_other_is_torn_down(
        two_nodes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sshd: SSHServer) -> None:  # noqa: F811
    from tests.fakes.loopback_provider import LoopbackProvider

    # Node 1's endpoint: nothing listens there. Its boot window is what --max-boot-usd buys.
    monkeypatch.setenv("GPURUN_LOOPBACK_SSH", f"{sshd.host}:{sshd.port}:{sshd.user},127.0.0.1:{free_port()}:root")
    res = launch(tmp_path, "--max-usd", "0.3", "--max-boot-usd", "0.02", *TRAIN)
    assert res.returncode != 0, res.stdout + res.stderr
    assert "node 1" in res.stdout + res.stderr
    run = only_run()
    assert run.phase == "verified" and run.error and "node 1" in run.error
    ids = [i.instance_id for i in Ledger().instances(run.run_id)]
    assert len(ids) == 2  # both nodes were made, and both are gone: nothing left billing
    provider = LoopbackProvider()
    assert all(provider.get(i).gone for i in ids)
    assert provider.list_run(run.run_id) == []
    attempt = run.plan["attempts"][0]
    assert sorted(attempt["instance_ids"]) == sorted(ids) and "never answered" in attempt["reason"]
    assert provider.meter_usd() <= 0.3
    # No job ever started on either node.
    assert "running" not in phases(run)
    assert json.loads((Path(run.run_dir) / "shutdown_proof.json").read_text())["verified"] is True


def test_each_nodes_command_sees_the_group_in_its_environment(two_nodes: Path, tmp_path: Path) -> None:
    script = 'env | grep -E "^(GPURUN_(NODE|NUM|MASTER|GPUS)|MASTER_)" | sort > ../out/env-$GPURUN_NODE_RANK.txt'
    res = launch(tmp_path, "--max-usd", "0.3", "--", "sh", "-c", script)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    run = only_run()
    port = os.environ["GPURUN_RDZV_PORT"]
    home = (Path(run.run_dir) / "out" / "env-0.txt").read_text().splitlines()  # pulled from node 0
    worker = (two_nodes / f"{run.run_id}-n1" / "out" / "env-1.txt").read_text().splitlines()
    for rank, lines in ((0, home), (1, worker)):
        assert lines == sorted([
            "GPURUN_GPUS_PER_NODE=1", "GPURUN_MASTER_ADDR=127.0.0.1", f"GPURUN_MASTER_PORT={port}",
            "GPURUN_NODE_IPS=127.0.0.1 127.0.0.1", f"GPURUN_NODE_RANK={rank}", "GPURUN_NUM_NODES=2",
            "MASTER_ADDR=127.0.0.1", f"MASTER_PORT={port}"]), (rank, lines)
    assert run.phase == "verified" and len(proof_of(run)["instance_ids"]) == 2


def test_a_worker_whose_job_dies_ends_the_run_as_failed_and_every_node_goes(two_nodes: Path, tmp_path: Path) -> None:
    """Under a detached guard (`--detach`): the guard that takes the run over reaches node 1 from the
    ledger, sees its job die, and ends the run as failed, every node verified gone."""
    from tests.e2e_helpers import wait_for
    from tests.fakes.loopback_provider import LoopbackProvider

    endless = [a if a != "max_iters=30" else "max_iters=1000000" for a in TRAIN]
    res = launch(tmp_path, "--max-usd", "0.3", "--detach", *endless)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    run = only_run()
    pid_file = two_nodes / f"{run.run_id}-n1" / "job.pid"
    wait_for(lambda: Ledger().get_run(run.run_id).controller_pid not in (None, os.getpid())
             and any(e.phase == "job_started" for e in Ledger().events(run.run_id)), 120, "the guard took over")
    os.killpg(int(pid_file.read_text().strip()), 9)  # node 1's job dies (its wrapper with it)
    run = wait_for(lambda: (r := Ledger().get_run(run.run_id)) and r.phase == "verified" and r, 180,
                   "the run verified gone")
    assert "on node 1" in (run.end_reason or ""), run.end_reason
    assert run.job_exit_code not in (None, 0)  # the launch's exit status would be 4 (job failed)
    provider = LoopbackProvider()
    assert provider.list_run(run.run_id) == [] and len(proof_of(run)["instance_ids"]) == 2
    assert provider.meter_usd() <= 0.3
