"""The object-store tier in a run (`--checkpoints-to`): armed after bootstrap, waited for at the
end, its credential removed before the teardown, and the checkpoints fetched home from the bucket
once the instance is verified gone (docs/DESIGN.md, "Checkpoints to a bucket").

Armed: credentials scoped to s3://bucket/prefix/<run id> (orchestrator/transport/bucket.py) go to
a 0600 file on the instance, as the DataCrunch switch's credential does, and trainer/bucket_upload.py
starts detached beside the job. The guard sizes its reserve from the uploads' own bytes and
seconds (out/bucket.json, pulled home with the logs): the final upload is what must fit before
the switch. Home pulls bring the logs only.
"""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path
from typing import Any

from orchestrator.errors import RunFailed
from orchestrator.run.bootstrap import ensure_packages
from orchestrator.run.context import RunContext
from orchestrator.run.nodes import NodeGroup
from orchestrator.state.events import EventKind
from orchestrator.transport.bucket import BucketDest, credentials_file, fetch_checkpoints, scoped_credentials
from orchestrator.transport.protocol import Transport
from trainer import contract

UPLOADER = "bucket"  # the detached job's name on the instance (bucket.pid, bucket.log, bucket.exit)
CREDENTIALS = ".gpurun/bucket.env"  # under the run root, mode 0600; removed before the teardown
RESUME_CREDENTIALS = ".gpurun/fetch.env"  # read-only (a resume's or --data-from's prefix); removed once fetched
STATE_PATH = f"{contract.OUT_DIR}/bucket.json"  # trainer/bucket_upload.py's progress, pulled home
TOKEN_SLACK_S = 3600  # the credentials outlive the run's whole billed time by this much, no more


def dest_of(ctx: RunContext) -> BucketDest | None:
    url = ctx.options.checkpoints_to
    return BucketDest.parse(url).for_run(ctx.run_id) if url else None


def arm(ctx: RunContext, group: NodeGroup) -> None:
    """Node 0: the scoped credential written, boto3 there, the uploader started (before the job)."""
    dest = dest_of(ctx)
    transport, python = group.head.transport, group.head.python
    if dest is None or transport is None or python is None:
        return
    creds = scoped_credentials(dest, ctx.options.endpoint_url, ctx.allowance.max_runtime_s + TOKEN_SLACK_S)
    transport.run(f"mkdir -p {shlex.quote(transport.root + '/.gpurun')} && chmod 700 "
                  f"{shlex.quote(transport.root + '/.gpurun')}", timeout_s=30)
    transport.write_file(CREDENTIALS, credentials_file(creds), mode=0o600)
    installed = ensure_packages(transport, python, ["boto3"])
    root = transport.root.rstrip("/")
    args = ["-m", "trainer.bucket_upload", "--root", root, "--dest", f"s3://{dest.bucket}/{dest.prefix}",
            "--credentials", f"{root}/{CREDENTIALS}"]
    if ctx.options.endpoint_url:
        args += ["--endpoint-url", ctx.options.endpoint_url]
    transport.start_detached(UPLOADER, shlex.join([python, *args]), env={"PYTHONUNBUFFERED": "1"})
    ctx.event(EventKind.BUCKET_ARMED, dest=dest.url, installed=installed)


def fetch_on_instance(ctx: RunContext, transport: Transport, python: str, earlier: BucketDest) -> dict[str, Any]:
    """`--resume RUN` whose checkpoints are in a bucket: the instance fetches the newest over the
    datacenter's link with read-only credentials scoped to that run's prefix (removed after); its entry."""
    creds = scoped_credentials(earlier, ctx.options.endpoint_url, TOKEN_SLACK_S, read_only=True)
    gpurun_dir = shlex.quote(transport.root.rstrip("/") + "/.gpurun")
    transport.run(f"mkdir -p {gpurun_dir} && chmod 700 {gpurun_dir}", timeout_s=30)
    transport.write_file(RESUME_CREDENTIALS, credentials_file(creds), mode=0o600)
    root = transport.root.rstrip("/")
    try:
        ensure_packages(transport, python, ["boto3"])
        args = ["-m", "trainer.bucket_upload", "--fetch", "--root", root, "--dest", f"s3://{earlier.bucket}/{earlier.prefix}",
                "--credentials", f"{root}/{RESUME_CREDENTIALS}"]
        if ctx.options.endpoint_url:
            args += ["--endpoint-url", ctx.options.endpoint_url]
        res = transport.run(f"cd {shlex.quote(root + '/code')} && {shlex.join([python, *args])}", timeout_s=1800)
    finally:
        transport.run(f"rm -f {shlex.quote(root + '/' + RESUME_CREDENTIALS)}", timeout_s=30)
    if not res.ok:
        raise RunFailed(f"fetching the checkpoint from {earlier.url} failed: {res.stderr.strip()[-300:]}")
    return dict(json.loads(res.stdout.strip().splitlines()[-1]))


def fetch_data_on_instance(ctx: RunContext, transport: Transport, python: str, src: str,
                           remote_subdir: str) -> dict[str, Any]:
    """`--data-from s3://bucket/prefix`: the instance fetches the data set into root/remote_subdir
    with read-only credentials scoped to that prefix (removed after), each object checked. Transport
    only (it runs in bootstrap's worker thread): what was fetched, for the caller to record."""
    began = time.monotonic()
    dest = BucketDest.parse(src)
    creds = scoped_credentials(dest, ctx.options.endpoint_url, TOKEN_SLACK_S, read_only=True)
    root = transport.root.rstrip("/")
    transport.run(f"mkdir -p {shlex.quote(root + '/.gpurun')} && chmod 700 {shlex.quote(root + '/.gpurun')}",
                  timeout_s=30)
    transport.write_file(RESUME_CREDENTIALS, credentials_file(creds), mode=0o600)
    try:
        ensure_packages(transport, python, ["boto3"])
        args = ["-m", "trainer.bucket_upload", "--root", root, "--dest", dest.url, "--credentials",
                f"{root}/{RESUME_CREDENTIALS}", "--fetch-tree", f"{root}/{remote_subdir}"]
        if ctx.options.endpoint_url:
            args += ["--endpoint-url", ctx.options.endpoint_url]
        res = transport.run(f"cd {shlex.quote(root + '/code')} && {shlex.join([python, *args])}", timeout_s=None)
    finally:
        transport.run(f"rm -f {shlex.quote(root + '/' + RESUME_CREDENTIALS)}", timeout_s=30)
    if not res.ok:
        raise RunFailed(f"--data-from {src}: the instance could not fetch it: {res.stderr.strip()[-300:]}")
    got = json.loads(res.stdout.strip().splitlines()[-1])
    return {"path": src, "files": got["files"], "bytes": got["bytes"], "total_bytes": got["bytes"],
            "seconds": round(time.monotonic() - began, 3), "verified": "sha256 / md5 / size", "source": "bucket"}


def wait_uploaded(ctx: RunContext, transport: Transport, until_epoch: float) -> bool:
    """The uploader's last pass after the job ended (True), or the time to stop waiting came first."""
    while time.time() < until_epoch:
        state = transport.job_state(UPLOADER)
        if not state.running:
            return state.exit_code == 0
        time.sleep(1.0)
    return False


def remove_credentials(transport: Transport) -> None:
    """Best effort before the teardown (the instance's end removes it anyway, and it expires)."""
    transport.run(f"rm -f {shlex.quote(transport.root.rstrip('/') + '/' + CREDENTIALS)}", timeout_s=30)


def uploads(run_dir: Path) -> list[dict[str, Any]]:
    """The uploads trainer/bucket_upload.py reported (out/bucket.json, as last pulled home)."""
    try:
        state = json.loads((Path(run_dir) / STATE_PATH).read_text())
    except (OSError, ValueError):
        return []
    return [u for u in state.get("uploaded") or [] if isinstance(u, dict)]


def fetch_home(ctx: RunContext) -> None:
    """After the instance is gone: the bucket's newest checkpoint and export into the run directory,
    verified; recorded as the run's final pull (the outcome and the card read it)."""
    dest = dest_of(ctx)
    if dest is None:
        return
    began = time.monotonic()
    try:
        verified, rejected = fetch_checkpoints(dest, ctx.options.endpoint_url, ctx.run_dir)
    except Exception as exc:  # noqa: BLE001 - recorded: the outcome fails the run that lost its checkpoint
        ctx.event(EventKind.SYNC, final=True, complete=False, method="bucket", error=f"{type(exc).__name__}: {exc}")
        return
    try:
        latest = json.loads((ctx.run_dir / contract.MANIFEST_PATH).read_text()).get(contract.MANIFEST_LATEST)
    except (OSError, ValueError):
        latest = None
    ctx.event(EventKind.SYNC, final=True, complete=True, method="bucket", source=dest.url, files=len(verified),
              bytes=0, verified=verified, rejected=rejected, latest=latest,
              latest_home=latest is not None and latest in verified and not rejected,
              seconds=round(time.monotonic() - began, 3))
