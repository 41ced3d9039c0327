"""A pull's rsync pass: the manifest first, then out/ (exactly the listed checkpoints) and the root's *.log.

rsync runs its own OpenSSH client with the run's key and the PINNED host key
(transport/openssh.py's `SSHOptions`); transport/pull.py chooses this pass or the SFTP / copy one
(transport/pull_tree.py) and verifies what came (transport/pull_checkpoints.py).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from orchestrator.transport.openssh import SSHOptions
from orchestrator.transport.pull_checkpoints import (
    CKPT,
    STAGING,
    Moved,
    PullDeadline,
    SyncError,
    export_entries,
    parse_manifest,
    wanted_files,
)

DROP_CODES = {10, 11, 12, 14, 20, 30, 35, 255}  # socket/protocol/timeout/ssh failures: worth a retry


class ConnectionDropped(Exception):
    """The connection went away mid-sync: retried."""


class RsyncMissing(Exception):
    """rsync is not installed on the instance: fall back to SFTP."""


def parse_stats(text: str) -> Moved:
    def num(label: str) -> int:
        m = re.search(rf"^{label}:\s*([\d,.]+)", text, re.M)
        return int(re.sub(r"[,.]", "", m.group(1))) if m else 0

    return Moved(num("Number of regular files transferred"), num("Total transferred file size"))


def _kill(proc: subprocess.Popen[str]) -> None:
    """rsync and its ssh killed, reaped, their pipes closed without waiting on a process that
    escaped the group (an ssh control master detaches into its own session)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def run_rsync(rsync_bin: str, args: list[str], ssh: SSHOptions | None, known_hosts: Path | None,
              remote_rsync: str, io_timeout_s: int, control_path: str | None = None,
              deadline_epoch: float | None = None) -> Moved:
    cmd = [rsync_bin, "-a", "--partial", "--partial-dir=.rsync-partial", "--stats", f"--timeout={io_timeout_s}"]
    if ssh is not None:
        assert known_hosts is not None
        cmd += ["-e", ssh.ssh_command(known_hosts, control_path), f"--rsync-path={remote_rsync}"]
    left = None if deadline_epoch is None else deadline_epoch - time.time()
    if left is not None and left <= 0:
        raise PullDeadline("the pull's deadline passed")
    # Its own session: at the deadline rsync AND the ssh it runs are killed together (a lone
    # ssh would hold the pipes open, and the pull, until the link gave up).
    proc = subprocess.Popen([*cmd, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=left)
    except subprocess.TimeoutExpired as exc:  # killed: what it moved stays in --partial-dir
        _kill(proc)
        raise PullDeadline(f"rsync still moving at the pull's deadline ({left:.0f} s)") from exc
    p = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    if p.returncode in (0, 24):  # 24: a source file vanished (rotated checkpoint): not an error here
        return parse_stats(p.stdout)
    err = p.stderr.strip()
    changed = ssh.host_key_error(err) if ssh is not None else None
    if changed is not None:
        raise changed
    if re.search(r"rsync: (command )?not found|rsync: No such file or directory$", err, re.M):
        raise RsyncMissing(err)
    if p.returncode in DROP_CODES:
        raise ConnectionDropped(f"rsync exit {p.returncode}: {err[-300:]}")
    raise SyncError(f"rsync failed (exit {p.returncode}): {err[-500:]}")


def rsync_pass(src: str, local_dir: Path, ssh: SSHOptions | None, rsync_bin: str, remote_rsync: str,
               extra: Sequence[str], io_timeout_s: int, deadline_epoch: float | None = None,
               checkpoints: bool = True) -> tuple[Moved, bytes | None]:
    staging = local_dir / STAGING
    known_hosts = control = None
    if ssh is not None:
        known_hosts = staging / "known_hosts"
        known_hosts.write_text(ssh.known_hosts_line())
        control = ssh.control_path(local_dir)
    source = (ssh.remote(src) if ssh else src) + "/"

    def rsync(args: list[str]) -> Moved:
        return run_rsync(rsync_bin, [*extra, *args], ssh, known_hosts, remote_rsync, io_timeout_s, control,
                         deadline_epoch)

    if not checkpoints:  # the logs and metrics only: the checkpoints go to a bucket
        return rsync(["--exclude=/out/checkpoints/", "--exclude=.rsync-partial/", "--include=/out/***",
                      "--include=/*.log", "--exclude=*", source, str(local_dir) + "/"]), None
    # 1) the manifest alone, into staging (nothing there yet is not an error: no checkpoint so far)
    first = rsync(["--include=/out/", "--include=/out/checkpoints/", "--include=/out/checkpoints/MANIFEST.json",
                   "--exclude=*", source, str(staging / "remote") + "/"])
    mpath = staging / "remote" / CKPT / "MANIFEST.json"
    manifest_bytes = mpath.read_bytes() if mpath.exists() else None
    manifest = parse_manifest(manifest_bytes)
    wanted = wanted_files(manifest)
    exports = [str(e["file"]) for e in export_entries(manifest)]
    # 2) the weights-only exports alone: a short link brings home a usable model first
    moved = Moved(first.files, first.bytes)
    if exports:
        got = rsync(["--include=/out/", "--include=/out/checkpoints/",
                     *[f"--include=/out/checkpoints/{f}" for f in exports], "--exclude=*", source, str(local_dir) + "/"])
        moved = Moved(moved.files + got.files, moved.bytes + got.bytes)
    # 3) out/ (checkpoints: the newest one) and the root's *.log
    filters = ["--exclude=/out/checkpoints/MANIFEST.json"]
    filters += [f"--include=/out/checkpoints/{f}" for f in wanted]
    filters += ["--exclude=/out/checkpoints/**", "--exclude=.rsync-partial/", "--include=/out/***",
                "--include=/*.log", "--exclude=*"]
    second = rsync([*filters, source, str(local_dir) + "/"])
    # The manifest counts as moved only when it changed (rsync skipped it otherwise).
    return Moved(moved.files + second.files, moved.bytes + second.bytes), manifest_bytes
