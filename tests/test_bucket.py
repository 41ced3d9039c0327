"""The object-store tier end to end (`--checkpoints-to s3://bucket/prefix`) against moto's real S3
and STS server: the real CLI, the local provider's instance, the real trainer and uploader
(trainer/bucket_upload.py). The checkpoints are in the bucket with their hashes, home fetches them
after the instance is verified gone, the credential the instance had reached only the run's prefix,
left the instance before the teardown, and appears in no file gpurun wrote."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import boto3
import pytest

from orchestrator.plan.bucket import plan_bucket
from orchestrator.plan.options import LaunchError, LaunchOptions
from orchestrator.state.ledger import Ledger
from orchestrator.transport.bucket import BucketDest, prefix_policy
from tests.e2e_helpers import files_holding, write_budgets
from tests.fixtures.moto_server import MotoAWS, moto_aws, moto_server  # noqa: F401
from tests.test_launch_local import gpurun

# What moto's STS answers GetFederationToken with (moto/sts/responses.py): the instance's credential.
MINTED = ("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY", "AQoDYXdzEPT//////////wEXAMPLE")
ENDLESS = ["--set", "max_iters=1000000", "--set", "ckpt_interval_s=2", "--set", "eval_interval=100000",
           "--set", "eval_iters=2", "--set", "sample_tokens=10"]


def files_under(*roots: Path) -> list[Path]:
    return [p for root in roots if root.exists() for p in root.rglob("*") if p.is_file() and not p.is_symlink()]


def test_checkpoints_go_to_the_bucket_and_come_home_after_the_teardown(moto_aws: MotoAWS, tmp_path: Path) -> None:  # noqa: F811
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="ckpts")
    # 0.06 USD at 3.6 USD/h buys 60 s: ~36 s of training, checkpoints every 2 s. A 24 s reserve
    # (the local provider's is 15 s) leaves the uploader's last pass ~8 s after the job ends: it
    # starts a Python process and puts two files, which on a busy machine outlasted the 3.5 s that
    # the default reserve leaves it.
    budgets = write_budgets(tmp_path / "budgets.yaml", "local", reserve_s=24, min_runtime_s=20)
    res = gpurun("launch", "--provider", "local", "--max-usd", "0.06", "--usd-per-hour", "3.6", "--yes",
                 "--budgets", str(budgets), "--sync-interval", "2", "--checkpoints-to", "s3://ckpts/team/runs",
                 "--endpoint-url", moto_aws.endpoint, *ENDLESS, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "checkpoints to" in " ".join(res.stdout.split())  # the plan showed the bucket and its cost
    ledger = Ledger()
    (run,) = ledger.list_runs()
    events = ledger.events(run.run_id)
    names = [e.phase for e in events]
    assert names.index("bucket_armed") < names.index("job_started")
    assert names.index("bucket_final") < names.index("terminating") < names.index("verified")
    assert next(e.payload for e in events if e.phase == "bucket_final")["uploaded"] is True
    # In the bucket: the newest K=2 checkpoints, the final weights export, its manifest; each with its hash.
    prefix = f"team/runs/{run.run_id}/checkpoints/"
    keys = sorted(o["Key"][len(prefix):] for o in s3.list_objects_v2(Bucket="ckpts", Prefix=prefix)["Contents"])
    bucket_manifest = json.loads(s3.get_object(Bucket="ckpts", Key=prefix + "MANIFEST.json")["Body"].read())
    held = [e["file"] for e in bucket_manifest["checkpoints"]]
    assert len(held) == 2 and keys == sorted([*held, "MANIFEST.json", bucket_manifest["exports"][0]["file"]])
    for entry in [*bucket_manifest["checkpoints"], *bucket_manifest["exports"]]:
        obj = s3.get_object(Bucket="ckpts", Key=prefix + entry["file"])
        body = obj["Body"].read()
        assert hashlib.sha256(body).hexdigest() == entry["sha256"] == obj["Metadata"]["sha256"]
    # Home fetched the newest and the export from the bucket after the instance was verified gone.
    final = [e for e in events if e.phase == "sync" and e.payload.get("final")][-1]
    assert final.payload["method"] == "bucket" and final.payload["complete"] and final.payload["latest_home"]
    assert final.time > next(e.time for e in events if e.phase == "verified" or e.phase == "terminating")
    run_dir = Path(run.run_dir)
    ends = [json.loads(x) for x in (run_dir / "out" / "metrics.jsonl").read_text().splitlines()]
    home = json.loads((run_dir / "out" / "checkpoints" / "MANIFEST.json").read_text())
    assert home["latest"] == bucket_manifest["latest"] and home["checkpoints"][-1]["step"] == ends[-1]["step"]
    assert "came home: " in (run_dir / "EVIDENCE.md").read_text()
    # The credential: gone from the instance before the teardown, and in no file gpurun wrote anywhere.
    sandbox = Path(os.environ["GPURUN_HOME"]) / "sandboxes" / run.run_id
    assert not (sandbox / ".gpurun" / "bucket.env").exists()
    written = files_under(Path(os.environ["GPURUN_HOME"]), run_dir, tmp_path)
    assert any(p.name == "bucket.log" for p in written) and len(written) > 10
    assert files_holding(written, list(MINTED)) == []

    # `launch --resume` starts from the bucket's newest checkpoint, fetched by the instance from the
    # bucket (home's copies are gone here: the bucket is the only place it is).
    for ckpt in (run_dir / "out" / "checkpoints").glob("*.pt"):
        ckpt.unlink()
    again = gpurun("launch", "--resume", run.run_id, "--max-usd", "0.044", "--yes", cwd=tmp_path)  # 20 s of training
    assert again.returncode == 0, again.stdout + again.stderr
    (second,) = [r for r in Ledger().list_runs() if r.run_id != run.run_id]
    resuming = next(e.payload for e in Ledger().events(second.run_id) if e.phase == "resuming")
    assert resuming["source"] == f"s3://ckpts/team/runs/{run.run_id}"
    assert (resuming["checkpoint"], resuming["step"]) == (bucket_manifest["latest"], ends[-1]["step"])
    later = (run_dir / "out" / "train.log").read_text()
    assert f"resumed: checkpoints/{bucket_manifest['latest']} at step {ends[-1]['step']}" in later
    second_sandbox = Path(os.environ["GPURUN_HOME"]) / "sandboxes" / second.run_id
    assert not (second_sandbox / ".gpurun" / "fetch.env").exists()


def test_the_instances_credential_reaches_only_the_runs_prefix() -> None:
    policy = json.loads(prefix_policy(BucketDest.parse("s3://ckpts/team/runs").for_run("r1")))
    objects, listing = policy["Statement"]
    assert objects["Resource"] == ["arn:aws:s3:::ckpts/team/runs/r1/*"]
    assert listing["Condition"]["StringLike"]["s3:prefix"] == ["team/runs/r1/*"]


def test_a_bucket_that_cannot_be_reached_is_refused_before_renting(moto_aws: MotoAWS, tmp_path: Path) -> None:  # noqa: F811
    res = gpurun("launch", "--provider", "local", "--max-usd", "0.05", "--usd-per-hour", "3.6", "--yes",
                 "--checkpoints-to", "s3://no-such-bucket/x", cwd=tmp_path)
    assert res.returncode == 2 and "not reachable" in res.stderr and "no-such-bucket" in res.stderr, res.stderr
    assert Ledger().list_runs() == []
    with pytest.raises(LaunchError, match="expected s3://bucket/prefix"):
        plan_bucket(LaunchOptions(checkpoints_to="ckpts/x"), None, None, 30)  # type: ignore[arg-type]


def test_data_from_a_bucket_is_fetched_by_the_instance_and_checked(moto_aws: MotoAWS, tmp_path: Path) -> None:  # noqa: F811
    from tests.test_e2e_recipe import SMALL, VERSE

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="data")
    text = (VERSE * 200).encode()
    s3.put_object(Bucket="data", Key="tiny/input.txt", Body=text,
                  Metadata={"sha256": hashlib.sha256(text).hexdigest()})
    s3.put_object(Bucket="data", Key="tiny/README", Body=b"checked by its ETag (MD5)\n")
    res = gpurun("launch", "--provider", "local", "--recipe", "shakespeare-char", "--data-from", "s3://data/tiny",
                 "--endpoint-url", moto_aws.endpoint, "--yes", *SMALL, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "fetched by the instance" in " ".join(res.stdout.split())  # the plan's data-in row
    ledger = Ledger()
    (run,) = ledger.list_runs()
    (sent,) = [e.payload for e in ledger.events(run.run_id) if e.phase == "data_sent"]
    assert sent["source"] == "bucket" and sent["files"] == 2 and sent["bytes"] == len(text) + 26
    sandbox = Path(os.environ["GPURUN_HOME"]) / "sandboxes" / run.run_id
    assert (sandbox / "data-src" / "input.txt").read_bytes() == text
    assert not (sandbox / ".gpurun" / "fetch.env").exists()
    metrics = [json.loads(x) for x in (Path(run.run_dir) / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [m["reason"] for m in metrics if m.get("type") == "end"] == ["max_iters"]
    assert files_holding(files_under(Path(os.environ["GPURUN_HOME"]), Path(run.run_dir)), [MINTED[1]]) == []
