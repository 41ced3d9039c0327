"""Pull a run's outputs home: rsync over the run's SSH key and PINNED host key, SFTP when rsync is missing.

The SFTP fallback opens no connection of its own: it asks the caller (the SSH transport) for an
SFTP session on the transport's live connection (`open_sftp`).

What comes back, mirroring the instance layout under the run root: `out/` and the root's `*.log`.
Checkpoints are special: only files listed in `out/checkpoints/MANIFEST.json` are complete, so the
manifest is read first, exactly the listed files are pulled, each is checked against its SHA-256,
and only then is a local MANIFEST.json written (listing what verified). A mismatch is deleted and
pulled again (bounded); a dropped connection is retried with backoff and resumes (--partial-dir).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import stat
import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

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
from trainer.manifest import sha256_file

log = logging.getLogger(__name__)

STAGING = ".gpurun-sync"  # under the local run dir: the fetched remote manifest + hash cache
CKPT = "out/checkpoints"
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # no paths, no rsync wildcards
DROP_CODES = {10, 11, 12, 14, 20, 30, 35, 255}  # socket/protocol/timeout/ssh failures: worth a retry
_NO_REMOTE_RSYNC: set[tuple[str, int, str]] = set()  # hosts already found without rsync: go straight to SFTP


class SyncError(Exception):
    """A sync failed for good (after retries); the message says why."""


class _Drop(Exception):
    """The connection went away mid-sync: retried."""


class _RsyncMissing(Exception):
    """rsync is not installed on the instance: fall back to SFTP."""


#: Opens an SFTP session on the transport's connection (SSHTransport.open_sftp); the caller closes it.
SftpOpener = Callable[[], paramiko.SFTPClient]


# ---------------------------------------------------------------- manifests


def _parse_manifest(data: bytes | None) -> dict[str, Any]:
    if not data:
        return {"latest": None, "checkpoints": []}
    try:
        m = json.loads(data)
        if not isinstance(m, dict) or not isinstance(m.get("checkpoints", []), list):
            raise ValueError("not a manifest")
        return m
    except ValueError as e:
        raise SyncError(f"remote {CKPT}/MANIFEST.json is not valid JSON ({e})") from e


# ---------------------------------------------------------------- rsync


@dataclass
class _Pass:
    files: int = 0
    bytes: int = 0


def _parse_stats(text: str) -> _Pass:
    def num(label: str) -> int:
        m = re.search(rf"^{label}:\s*([\d,.]+)", text, re.M)
        return int(re.sub(r"[,.]", "", m.group(1))) if m else 0

    return _Pass(num("Number of regular files transferred"), num("Total transferred file size"))


def _run_rsync(rsync_bin: str, args: list[str], ssh: SSHOptions | None, known_hosts: Path | None,
               remote_rsync: str, io_timeout_s: int, control_path: str | None = None) -> _Pass:
    cmd = [rsync_bin, "-a", "--partial", "--partial-dir=.rsync-partial", "--stats", f"--timeout={io_timeout_s}"]
    if ssh is not None:
        assert known_hosts is not None
        cmd += ["-e", ssh.ssh_command(known_hosts, control_path), f"--rsync-path={remote_rsync}"]
    p = subprocess.run([*cmd, *args], capture_output=True, text=True)
    if p.returncode in (0, 24):  # 24: a source file vanished (rotated checkpoint): not an error here
        return _parse_stats(p.stdout)
    err = p.stderr.strip()
    changed = ssh.host_key_error(err) if ssh is not None else None
    if changed is not None:
        raise changed
    if re.search(r"rsync: (command )?not found|rsync: No such file or directory$", err, re.M):
        raise _RsyncMissing(err)
    if p.returncode in DROP_CODES:
        raise _Drop(f"rsync exit {p.returncode}: {err[-300:]}")
    raise SyncError(f"rsync failed (exit {p.returncode}): {err[-500:]}")


def _rsync_pass(src: str, local_dir: Path, ssh: SSHOptions | None, rsync_bin: str, remote_rsync: str,
                extra: Sequence[str], io_timeout_s: int) -> tuple[_Pass, bytes | None]:
    staging = local_dir / STAGING
    known_hosts = control = None
    if ssh is not None:
        known_hosts = staging / "known_hosts"
        known_hosts.write_text(ssh.known_hosts_line())
        control = ssh.control_path(local_dir)
    source = (ssh.remote(src) if ssh else src) + "/"
    # 1) the manifest alone, into staging (nothing there yet is not an error: no checkpoint so far)
    first = _run_rsync(rsync_bin, [*extra, "--include=/out/", "--include=/out/checkpoints/",
                                   "--include=/out/checkpoints/MANIFEST.json", "--exclude=*",
                                   source, str(staging / "remote") + "/"],
                       ssh, known_hosts, remote_rsync, io_timeout_s, control)
    mpath = staging / "remote" / CKPT / "MANIFEST.json"
    manifest_bytes = mpath.read_bytes() if mpath.exists() else None
    listed = _listed_files(_parse_manifest(manifest_bytes))
    # 2) out/ (checkpoints: exactly the listed ones) and the root's *.log
    filters = ["--exclude=/out/checkpoints/MANIFEST.json"]
    filters += [f"--include=/out/checkpoints/{f}" for f in listed]
    filters += ["--exclude=/out/checkpoints/**", "--exclude=.rsync-partial/", "--include=/out/***",
                "--include=/*.log", "--exclude=*"]
    second = _run_rsync(rsync_bin, [*extra, *filters, source, str(local_dir) + "/"],
                        ssh, known_hosts, remote_rsync, io_timeout_s, control)
    # The manifest counts as moved only when it changed (rsync skipped it otherwise).
    return _Pass(first.files + second.files, first.bytes + second.bytes), manifest_bytes


def _listed_files(manifest: dict[str, Any]) -> list[str]:
    return [str(c.get("file")) for c in manifest.get("checkpoints", []) if SAFE_NAME.match(str(c.get("file", "")))]


# ---------------------------------------------------------------- SFTP / local copy


class _Tree(Protocol):
    def read(self, rel: str) -> bytes | None: ...

    def list(self, rel: str) -> list[tuple[str, bool, int, float]]: ...  # name, is_dir, size, mtime

    def get(self, rel: str, dest: Path) -> None: ...


class _LocalTree:
    def __init__(self, root: str) -> None:
        self.root = Path(root)

    def read(self, rel: str) -> bytes | None:
        try:
            return (self.root / rel).read_bytes()
        except FileNotFoundError:
            return None

    def list(self, rel: str) -> list[tuple[str, bool, int, float]]:
        try:
            entries = list(os.scandir(self.root / rel))
        except (FileNotFoundError, NotADirectoryError):
            return []
        out = []
        for e in entries:
            st = e.stat()
            out.append((e.name, e.is_dir(), st.st_size, st.st_mtime))
        return out

    def get(self, rel: str, dest: Path) -> None:
        shutil.copyfile(self.root / rel, dest)


class _SftpTree:
    def __init__(self, sftp: paramiko.SFTPClient, root: str) -> None:
        self.sftp, self.root = sftp, root

    def read(self, rel: str) -> bytes | None:
        try:
            with self.sftp.open(f"{self.root}/{rel}", "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def list(self, rel: str) -> list[tuple[str, bool, int, float]]:
        try:
            attrs = self.sftp.listdir_attr(f"{self.root}/{rel}")
        except FileNotFoundError:
            return []
        return [(a.filename, stat.S_ISDIR(a.st_mode or 0), a.st_size or 0, float(a.st_mtime or 0)) for a in attrs]

    def get(self, rel: str, dest: Path) -> None:
        self.sftp.get(f"{self.root}/{rel}", str(dest))


def _tree_pass(tree: _Tree, local_dir: Path) -> tuple[_Pass, bytes | None]:
    manifest_bytes = tree.read(f"{CKPT}/MANIFEST.json")
    staged = local_dir / STAGING / "remote" / CKPT / "MANIFEST.json"
    if manifest_bytes is not None:
        staged.parent.mkdir(parents=True, exist_ok=True)
        staged.write_bytes(manifest_bytes)
    listed = set(_listed_files(_parse_manifest(manifest_bytes)))
    res = _Pass()

    def want(rel: str, is_dir: bool) -> bool:
        if rel.startswith(CKPT + "/"):
            return not is_dir and rel.rsplit("/", 1)[1] in listed
        return True

    def fetch(rel: str, size: int, mtime: float) -> None:
        dest = local_dir / rel
        if dest.exists() and dest.stat().st_size == size and int(dest.stat().st_mtime) == int(mtime):
            return  # rsync's quick check: same size and mtime = unchanged
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.gpurun-part")
        tree.get(rel, tmp)
        os.utime(tmp, (mtime, mtime))
        os.replace(tmp, dest)
        res.files += 1
        res.bytes += size

    stack = ["out"]
    while stack:
        d = stack.pop()
        for name, is_dir, size, mtime in tree.list(d):
            rel = f"{d}/{name}"
            if not want(rel, is_dir) or name.startswith(".rsync-partial"):
                continue
            if is_dir:
                stack.append(rel)
            else:
                fetch(rel, size, mtime)
    for name, is_dir, size, mtime in tree.list("."):
        if not is_dir and name.endswith(".log"):
            fetch(name, size, mtime)
    return res, manifest_bytes


def _sftp_pass(src: str, local_dir: Path, open_sftp: SftpOpener) -> tuple[_Pass, bytes | None]:
    sftp = open_sftp()
    try:
        return _tree_pass(_SftpTree(sftp, src), local_dir)
    finally:
        sftp.close()  # the session only: the connection is the transport's


# ---------------------------------------------------------------- verification


def _verify(local_dir: Path, manifest_bytes: bytes | None) -> tuple[list[str], list[str]]:
    """Check every listed checkpoint against its SHA-256; delete mismatches; write the local manifest."""
    manifest = _parse_manifest(manifest_bytes)
    ckpt = local_dir / CKPT
    cache_path = local_dir / STAGING / "verified.json"
    cache: dict[str, list[Any]] = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    verified: list[str] = []
    rejected: list[str] = []
    good_entries = []
    for entry in manifest.get("checkpoints", []):
        name = str(entry.get("file", ""))
        if not SAFE_NAME.match(name):
            rejected.append(name)
            continue
        p = ckpt / name
        if not p.is_file():
            rejected.append(name)
            continue
        st = p.stat()
        sig = [entry.get("sha256"), st.st_size, st.st_mtime_ns]
        if cache.get(name) == sig:  # hashed before and untouched since: skip rehashing big files
            ok = True
        else:
            ok = sha256_file(p) == entry.get("sha256")
            if ok:
                cache[name] = sig
        if ok:
            verified.append(name)
            good_entries.append(entry)
        else:
            log.warning("checkpoint %s failed its SHA-256 check; deleting it to pull it again", name)
            p.unlink()
            cache.pop(name, None)
            rejected.append(name)
    cache_path.write_text(json.dumps(cache))
    if manifest_bytes is not None:
        _write_local_manifest(ckpt, manifest, manifest_bytes, good_entries, rejected)
    return verified, rejected


def _write_local_manifest(ckpt: Path, remote: dict[str, Any], raw: bytes, good: list[dict[str, Any]],
                          rejected: list[str]) -> None:
    """Local MANIFEST.json = what verified here, plus older local entries the instance has rotated away."""
    local_path = ckpt / "MANIFEST.json"
    old: list[dict[str, Any]] = []
    if local_path.exists():
        try:
            old = json.loads(local_path.read_text()).get("checkpoints", [])
        except ValueError:
            old = []
    names = {e.get("file") for e in remote.get("checkpoints", [])}
    kept = [e for e in old if e.get("file") not in names and (ckpt / str(e.get("file"))).is_file()]
    if not rejected and not kept:
        data = raw  # byte-identical to the instance's manifest
    else:
        entries = sorted(kept + good, key=lambda e: (e.get("step") or 0))
        files = {e.get("file") for e in entries}
        latest = remote.get("latest") if remote.get("latest") in files else (entries[-1]["file"] if entries else None)
        data = (json.dumps({**remote, "latest": latest, "checkpoints": entries}, indent=1) + "\n").encode()
    ckpt.mkdir(parents=True, exist_ok=True)
    tmp = ckpt / ".MANIFEST.json.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, local_path)


# ---------------------------------------------------------------- entry point


def pull_outputs(source_root: str, local_dir: Path, ssh: SSHOptions | None = None, *,
                 open_sftp: SftpOpener | None = None, method: str = "auto", rsync_bin: str = "rsync",
                 remote_rsync: str = "rsync", extra_rsync_args: Sequence[str] = (), attempts: int = 6,
                 max_wait_s: float = 120.0, io_timeout_s: int = 60) -> SyncResult:
    """Pull out/ and *.log from source_root into local_dir; verify checkpoints.

    ssh=None: source_root is a directory on this machine (the local provider). method: "auto"
    (rsync when installed on both sides, else SFTP / plain copy), "rsync", "sftp" or "copy".
    SFTP runs over `open_sftp`, a session on the caller's connection (SSHTransport.open_sftp).
    """
    local_dir = Path(local_dir)
    (local_dir / STAGING).mkdir(parents=True, exist_ok=True)
    src = source_root.rstrip("/")
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
    result = SyncResult(method=method)

    def one_pass() -> tuple[list[str], list[str]]:
        try:
            if result.method == "rsync":
                try:
                    moved, manifest = _rsync_pass(src, local_dir, ssh, rsync_bin, remote_rsync,
                                                  extra_rsync_args, io_timeout_s)
                except _RsyncMissing:
                    assert ssh is not None
                    log.warning("rsync is not installed on %s; syncing over SFTP instead", ssh.host)
                    _NO_REMOTE_RSYNC.add((ssh.host, ssh.port, remote_rsync))
                    result.method = "sftp"
                    return one_pass()
            elif result.method == "sftp":
                if open_sftp is None:
                    raise SyncError("SFTP sync needs the transport's connection (open_sftp); "
                                    "sync through the run's transport, or install rsync on both sides")
                moved, manifest = _sftp_pass(src, local_dir, open_sftp)
            else:
                moved, manifest = _tree_pass(_LocalTree(src), local_dir)
        except HostKeyChangedError:
            raise
        except (paramiko.SSHException, EOFError, OSError) as e:
            if result.method == "copy":
                raise SyncError(f"copy from {src} failed: {e}") from e
            raise _Drop(f"{type(e).__name__}: {e}") from e
        result.files += moved.files
        result.bytes += moved.bytes
        return _verify(local_dir, manifest)

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
        retry=retry_if_exception_type(_Drop) | retry_if_result(lambda r: bool(r[1])),
        retry_error_callback=give_up,
        before_sleep=lambda s: log.warning("sync attempt %d did not complete; retrying", s.attempt_number),
    )
    verified, rejected = retrying(one_pass)
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
