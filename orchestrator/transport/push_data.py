"""Data in (`--data-from DIR`, any size): the directory's files (the upload rule's selection,
transport/upload.py) sent to the instance with rsync, resumable, then verified there by SHA-256.

rsync runs with `--partial --partial-dir`: a connection that drops mid-file is retried (bounded,
with backoff) and the retry goes on from what had arrived, never from the start. After the last
pass, a list of every file's SHA-256 taken here is written next to the data on the instance and
`sha256sum -c` checks it there: a file that arrived damaged fails the send (DataSendError) with its
name, before anything trains on it. Both transports use this (a local sandbox is rsync'ed to the
same way, with no SSH); `deadline_epoch` ends a send still going at the stop time.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from pathlib import Path

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from orchestrator.transport.openssh import SSHOptions
from orchestrator.transport.protocol import CommandResult, DataSent
from orchestrator.transport.pull_checkpoints import STAGING
from orchestrator.transport.pull_rsync import ConnectionDropped, RsyncMissing, run_rsync
from orchestrator.transport.upload import check_destination, upload_files
from trainer.manifest import sha256_file

HASH_SUFFIX = ".sha256"  # root/<sub>.sha256, beside (not inside) the data: what `sha256sum -c` checks


class DataSendError(Exception):
    """The data did not arrive whole (after retries), or failed its hash check on the instance."""


def hash_list(local_dir: Path, files: list[str]) -> str:
    """`sha256sum` check-file lines for `files` (names relative to the data's root)."""
    for rel in files:
        if "\n" in rel or "\\" in rel:
            raise DataSendError(f"--data-from {local_dir}: {rel!r}: a file name with a newline or backslash")
    return "".join(f"{sha256_file(local_dir / rel)}  {rel}\n" for rel in files)


def send_data(local_dir: Path, remote_root: str, remote_subdir: str, ssh: SSHOptions | None, work_dir: Path,
              run: Callable[[str, float], CommandResult], write: Callable[[str, str], None],
              deadline_epoch: float | None = None, attempts: int = 6) -> DataSent:
    """rsync `local_dir` to remote_root/remote_subdir (resumable, retried), then verify every file's
    SHA-256 there with `run` (the transport's command runner); `write` puts the hash list there."""
    local_dir = Path(local_dir)
    sub = check_destination(local_dir, remote_subdir)
    files = upload_files(local_dir)
    total = sum((local_dir / f).stat().st_size for f in files)
    staging = Path(work_dir) / STAGING
    staging.mkdir(parents=True, exist_ok=True)
    listing = staging / "data-files"
    listing.write_text("".join(f + "\n" for f in files))
    known_hosts = control = None
    if ssh is not None:
        known_hosts = staging / "known_hosts"
        known_hosts.write_text(ssh.known_hosts_line())
        control = ssh.control_path(Path(work_dir))
    dest = f"{remote_root.rstrip('/')}/{sub}/"
    target = ssh.remote(dest) if ssh is not None else dest
    made = run(f"mkdir -p {shlex.quote(dest)}", 60)  # an empty data set still leaves its directory
    if not made.ok:
        raise DataSendError(f"--data-from {local_dir}: cannot make {dest} on the instance: {made.stderr.strip()[-300:]}")
    if not files:
        return DataSent(0, 0, 0, 0.0)
    began = time.monotonic()
    args = [f"--files-from={listing}", str(local_dir) + "/", target]
    try:
        moved = Retrying(stop=stop_after_attempt(attempts), wait=wait_exponential(multiplier=0.5, max=5),
                         retry=retry_if_exception_type(ConnectionDropped), reraise=True)(
            run_rsync, "rsync", args, ssh, known_hosts, "rsync", 60, control, deadline_epoch)
    except (ConnectionDropped, RsyncMissing) as exc:
        raise DataSendError(f"--data-from {local_dir}: could not send it ({exc}); an image without rsync"
                            " cannot take a data set this way") from exc
    write(sub + HASH_SUFFIX, hash_list(local_dir, files))
    hashes = f"{remote_root.rstrip('/')}/{sub}{HASH_SUFFIX}"
    check = run(f"cd {shlex.quote(dest)} && sha256sum --quiet --strict -c {shlex.quote(hashes)}", 600)
    if not check.ok:
        failed = (check.stdout + check.stderr).strip().splitlines()[:5]
        raise DataSendError(f"--data-from {local_dir}: failed its SHA-256 check on the instance: {'; '.join(failed)}")
    return DataSent(len(files), moved.bytes, total, time.monotonic() - began)
