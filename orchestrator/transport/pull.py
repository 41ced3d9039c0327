"""Pull a run's outputs home (`pull_outputs`): rsync over the run's SSH key and PINNED host key, SFTP when rsync is missing.

This module chooses the way and retries; the passes are transport/pull_rsync.py (rsync) and
transport/pull_tree.py (SFTP on the SSH transport's own connection, or a local copy), and
transport/pull_checkpoints.py verifies what came. The SSH connection itself is transport/ssh.py.

What comes back, mirroring the instance layout under the run root: `out/` and the root's `*.log`.
Checkpoints are special: only files listed in `out/checkpoints/MANIFEST.json` are complete, so the
manifest is read first, exactly the listed files are pulled, each is checked against its SHA-256,
and only then is a local MANIFEST.json written (listing what verified). A mismatch is deleted and
pulled again (bounded); a dropped connection is retried with backoff and resumes (--partial-dir).
`Syncer` runs pulls periodically in a background thread.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import paramiko
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    retry_if_result,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
)

from orchestrator.transport.openssh import HostKeyChangedError, SSHOptions
from orchestrator.transport.protocol import SyncResult
from orchestrator.transport.pull_checkpoints import (
    STAGING,
    Moved,
    PullDeadline,
    SyncError,
    keep_of,
    latest_of,
    verify_checkpoints,
)
from orchestrator.transport.pull_rsync import ConnectionDropped, RsyncMissing, rsync_pass
from orchestrator.transport.pull_tree import LocalTree, SftpOpener, sftp_pass, tree_pass

log = logging.getLogger(__name__)

_NO_REMOTE_RSYNC: set[tuple[str, int, str]] = set()  # hosts already found without rsync: go straight to SFTP


@dataclass(frozen=True)
class _Source:
    """Where a pull reads from, and how."""

    root: str
    ssh: SSHOptions | None
    open_sftp: SftpOpener | None
    rsync_bin: str
    remote_rsync: str
    extra_rsync_args: Sequence[str]
    io_timeout_s: int
    deadline_epoch: float | None = None  # a pass still going then is ended (PullDeadline)
    checkpoints: bool = True  # False: logs and metrics only (the checkpoints go to a bucket)


def _choose_method(method: str, ssh: SSHOptions | None, rsync_bin: str, remote_rsync: str) -> str:
    """"auto" resolved (rsync when installed on both sides, else SFTP / plain copy), and checked."""
    if method not in ("auto", "rsync", "sftp", "copy"):
        raise ValueError(f"unknown sync method {method!r}: use auto, rsync, sftp or copy")
    if method == "auto":
        have_rsync = shutil.which(rsync_bin) is not None
        no_remote = ssh is not None and (ssh.host, ssh.port, remote_rsync) in _NO_REMOTE_RSYNC
        method = "rsync" if have_rsync and not no_remote else ("sftp" if ssh else "copy")
    if method == "rsync" and shutil.which(rsync_bin) is None:
        raise SyncError(f"{rsync_bin!r} is not installed here (apt-get install rsync), or use method='auto'")
    if method == "sftp" and ssh is None:
        method = "copy"
    if method == "copy" and ssh is not None:
        raise ValueError("method 'copy' is for a local source; use 'sftp' over SSH")
    return method


def _move(result: SyncResult, source: _Source, local_dir: Path) -> tuple[Moved, bytes | None]:
    """One pass by `result.method`; an instance without rsync switches the pull (and later ones) to SFTP."""
    ssh = source.ssh
    if result.method == "rsync":
        try:
            return rsync_pass(source.root, local_dir, ssh, source.rsync_bin, source.remote_rsync,
                              source.extra_rsync_args, source.io_timeout_s, source.deadline_epoch, source.checkpoints)
        except RsyncMissing:
            assert ssh is not None
            log.warning("rsync is not installed on %s; syncing over SFTP instead", ssh.host)
            _NO_REMOTE_RSYNC.add((ssh.host, ssh.port, source.remote_rsync))
            result.method = "sftp"
    if result.method == "sftp":
        if source.open_sftp is None:
            raise SyncError("SFTP sync needs the transport's connection (open_sftp); "
                            "sync through the run's transport, or install rsync on both sides")
        return sftp_pass(source.root, local_dir, source.open_sftp, source.checkpoints)
    return tree_pass(LocalTree(source.root), local_dir, source.checkpoints)


def pull_outputs(source_root: str, local_dir: Path, ssh: SSHOptions | None = None, *,
                 open_sftp: SftpOpener | None = None, method: str = "auto", rsync_bin: str = "rsync",
                 remote_rsync: str = "rsync", extra_rsync_args: Sequence[str] = (), attempts: int = 6,
                 max_wait_s: float = 120.0, io_timeout_s: int = 60,
                 deadline_epoch: float | None = None, checkpoints: bool = True) -> SyncResult:
    """Pull out/ and *.log from source_root into local_dir; verify checkpoints.

    ssh=None: source_root is a directory on this machine (the local provider). method: "auto"
    (rsync when installed on both sides, else SFTP / plain copy), "rsync", "sftp" or "copy".
    SFTP runs over `open_sftp`, a session on the caller's connection (SSHTransport.open_sftp).
    `deadline_epoch`: no retry starts after it and an rsync pass still going then is killed
    (PullDeadline); what it had moved stays in --partial-dir for the next pull to resume.
    """
    local_dir = Path(local_dir)
    (local_dir / STAGING).mkdir(parents=True, exist_ok=True)
    src = source_root.rstrip("/")
    source = _Source(src, ssh, open_sftp, rsync_bin, remote_rsync, extra_rsync_args, io_timeout_s, deadline_epoch,
                     checkpoints)
    result = SyncResult(method=_choose_method(method, ssh, rsync_bin, remote_rsync))
    began = time.monotonic()
    if deadline_epoch is not None:
        max_wait_s = min(max_wait_s, max(0.0, deadline_epoch - time.time()))

    def one_pass() -> tuple[list[str], list[str]]:
        if deadline_epoch is not None and time.time() >= deadline_epoch:
            raise PullDeadline(f"the pull's deadline passed before it could {'retry' if result.files else 'start'}")
        try:
            moved, manifest = _move(result, source, local_dir)
        except (HostKeyChangedError, PullDeadline):
            raise
        except (paramiko.SSHException, EOFError, OSError) as e:
            if result.method == "copy":
                raise SyncError(f"copy from {src} failed: {e}") from e
            raise ConnectionDropped(f"{type(e).__name__}: {e}") from e
        result.files += moved.files
        result.bytes += moved.bytes
        result.latest, result.keep = latest_of(manifest), keep_of(manifest)
        return verify_checkpoints(local_dir, manifest)

    def give_up(state: RetryCallState) -> tuple[list[str], list[str]]:
        assert state.outcome is not None
        exc = state.outcome.exception()
        if exc is not None:
            where = f"{ssh.host}:{ssh.port}" if ssh else src
            raise SyncError(f"sync from {where} failed after {state.attempt_number} attempts: {exc}") from exc
        return state.outcome.result()  # checkpoints still failing their hash: reported as rejected

    retrying = Retrying(
        stop=stop_after_attempt(attempts) | stop_after_delay(max_wait_s),
        wait=wait_exponential(multiplier=0.5, max=5),
        retry=retry_if_exception_type(ConnectionDropped) | retry_if_result(lambda r: bool(r[1])),
        retry_error_callback=give_up,
        before_sleep=lambda s: log.warning("sync attempt %d did not complete; retrying", s.attempt_number),
    )
    try:
        verified, rejected = retrying(one_pass)
    finally:
        result.seconds = time.monotonic() - began
    result.checkpoints_verified, result.checkpoints_rejected = verified, rejected
    return result


class Syncer:
    """Runs a pull every `interval_s` in a background thread; never two at once."""

    def __init__(self, pull: Callable[[], SyncResult], interval_s: float = 30.0) -> None:
        self.pull, self.interval_s = pull, interval_s
        self.last_result: SyncResult | None = None
        self.last_error: Exception | None = None
        self.count = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sync_now(self) -> SyncResult:
        with self._lock:
            try:
                res = self.pull()
            except Exception as e:
                self.last_error = e
                raise
            self.last_result, self.last_error = res, None
            self.count += 1
            return res

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sync_now()
            except PullDeadline:  # the stop time came: the final pull takes over
                log.info("periodic sync ended at the stop time; the final pull follows")
            except Exception as e:  # a failed periodic sync is logged; the next one tries again
                log.warning("periodic sync failed: %s", e)

    def start(self) -> Syncer:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="gpurun-sync", daemon=True)
            self._thread.start()
        return self

    def stop(self, final: bool = False) -> SyncResult | None:
        """Stop the thread (waiting for a pull in flight); with final=True run one last pull."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        return self.sync_now() if final else self.last_result
