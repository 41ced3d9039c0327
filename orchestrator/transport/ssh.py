"""SSHTransport: the Transport protocol (transport/protocol.py) over paramiko, for every cloud instance.

Not to be confused with transport/openssh.py, the options and pinned known_hosts line for the
OpenSSH client that rsync runs; transport/factory.py picks this transport or transport/local.py.

- Host keys are trusted on first use and pinned per instance in a `HostKeyStore`
  (transport/hostkeys.py: the ledger in production, `MemoryHostKeyStore` in tests); a different key
  later is refused (HostKeyChangedError).
- `wait_ready` is bounded: TCP + SSH banner, then `true` over an authenticated session, with
  exponential backoff, never longer than its timeout.
- Every operation that loses the connection reconnects (bounded) and is retried once. Operations
  are written to be safe to repeat: uploads replace atomically, `start_detached` returns the live
  job instead of starting a second one.
- One SSH connection per transport: the guard's commands and the sync's SFTP fallback (on its own
  channel, from the sync thread) share it; rsync, the primary sync, runs its own OpenSSH client.
"""

from __future__ import annotations

import logging
import select
import shlex
import signal as _signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import paramiko
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception,
    stop_before_delay,
    wait_exponential,
)

from orchestrator.transport import upload as upload_rule
from orchestrator.transport.hostkeys import HostKeyStore
from orchestrator.transport.keys import load_private_key
from orchestrator.transport.openssh import HostKeyChangedError, SSHOptions, connect
from orchestrator.transport.protocol import CommandResult, DataSent, JobState, SyncResult, detached_script
from orchestrator.transport.pull import pull_outputs
from orchestrator.transport.push_data import send_data
from providers.base import SSHEndpoint

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_UPLOAD_LIMIT = 64 * 1024 * 1024


class SSHUnreachableError(Exception):
    """No working SSH session within the bounded wait."""


class CommandTimeoutError(Exception):
    """A remote command ran past its timeout (deliberately not an OSError: it is not a drop)."""


def _is_drop(e: BaseException) -> bool:
    if isinstance(e, (HostKeyChangedError, CommandTimeoutError, paramiko.AuthenticationException)):
        return False
    return isinstance(e, (paramiko.SSHException, EOFError, ConnectionError, socket.timeout, socket.gaierror))


# ---------------------------------------------------------------- the transport


@dataclass
class _Conn:
    transport: paramiko.Transport
    sftp: paramiko.SFTPClient | None = None


class SSHTransport:
    """Transport over SSH. `root` is the run's directory on the instance: absolute, or relative to
    the login user's home ("gpurun/<run>" or "~/gpurun/<run>"), resolved to absolute on connect."""

    def __init__(self, endpoint: SSHEndpoint, key_path: Path, root: str, instance_id: str,
                 host_keys: HostKeyStore, connect_timeout: float = 10.0, reconnect_timeout: float = 60.0,
                 upload_limit_bytes: int = DEFAULT_UPLOAD_LIMIT) -> None:
        if not root.strip("/~"):
            raise ValueError(f"remote root must be a directory below / or the home dir: {root!r}")
        if not root.startswith(("/", "~/")):
            root = "~/" + root  # relative = under the login user's home, resolved on connect
        self.endpoint = endpoint
        self.python: str | None = None  # a cloud instance's python is looked for (orchestrator.run.bootstrap)
        self.key_path = Path(key_path)
        self.root = root.rstrip("/")
        self.instance_id = instance_id
        self.host_keys = host_keys
        self.connect_timeout = connect_timeout
        self.reconnect_timeout = reconnect_timeout
        self.upload_limit_bytes = upload_limit_bytes
        self._pkey = load_private_key(self.key_path)
        self._conn: _Conn | None = None
        # The guard thread and the sync thread share the connection: one of them (re)connects at a time.
        self._lock = threading.RLock()

    # -- connection ------------------------------------------------------------------------

    def _connect_once(self, timeout_s: float) -> _Conn:
        ep = self.endpoint
        pinned = self.host_keys.get(self.instance_id)
        t = connect(ep.host, ep.port, ep.user, self._pkey, pinned, timeout_s)
        if pinned is None:
            key = t.get_remote_server_key()
            self.host_keys.put(self.instance_id, key.get_name(), key.get_base64())
            log.info("pinned host key %s %s for %s", key.get_name(), key.get_fingerprint().hex(), self.instance_id)
        conn = _Conn(t)
        if self.root.startswith("~/"):
            home = self._exec(conn, "printf %s \"$HOME\"", None, timeout_s).stdout
            self.root = home.rstrip("/") + self.root[1:]
        return conn

    def _connect(self, budget_s: float, probe_banner: bool = False) -> _Conn:
        """Connect with exponential backoff, never starting an attempt after budget_s."""
        deadline = time.monotonic() + budget_s

        def attempt() -> _Conn:
            remaining = max(0.2, deadline - time.monotonic())
            timeout = min(self.connect_timeout, remaining)
            if probe_banner:
                self._probe_banner(timeout)
            conn = self._connect_once(timeout)
            if probe_banner:
                res = self._exec(conn, "true", None, max(0.5, min(timeout, deadline - time.monotonic())))
                if not res.ok:
                    conn.transport.close()
                    raise paramiko.SSHException(f"`true` exited {res.exit_code}: {res.stderr.strip()[:200]}")
            return conn

        retrying = Retrying(
            stop=stop_before_delay(budget_s),
            wait=wait_exponential(multiplier=0.25, max=5),
            # AuthenticationException too: on a booting instance the key may not be installed yet.
            retry=retry_if_exception(lambda e: not isinstance(e, HostKeyChangedError) and isinstance(
                e, (OSError, EOFError, paramiko.SSHException, CommandTimeoutError))),
            reraise=False,
        )
        try:
            return retrying(attempt)
        except RetryError as e:
            last = e.last_attempt.exception()
            ep = self.endpoint
            raise SSHUnreachableError(
                f"no SSH session to {ep.user}@{ep.host}:{ep.port} within {budget_s:.0f}s "
                f"(last error: {type(last).__name__}: {last})") from last

    def _probe_banner(self, timeout: float) -> None:
        with socket.create_connection((self.endpoint.host, self.endpoint.port), timeout=timeout) as s:
            s.settimeout(timeout)
            banner = s.recv(256)
        if not banner.startswith(b"SSH-"):
            raise paramiko.SSHException(f"port open but no SSH banner (got {banner[:40]!r})")

    def _ensure(self) -> _Conn:
        with self._lock:
            if self._conn is None or not self._conn.transport.is_active():
                self._drop()
                self._conn = self._connect(self.reconnect_timeout)
            return self._conn

    def _drop(self, conn: _Conn | None = None) -> None:
        """Close the connection; given `conn`, only if it is still the current one (another thread
        may already have replaced a connection that dropped under both)."""
        with self._lock:
            if self._conn is not None and (conn is None or conn is self._conn):
                self._conn.transport.close()
                self._conn = None

    def _call(self, fn: Callable[[_Conn], T]) -> T:
        """Run fn on a live connection; on a drop, reconnect (bounded) and run it once more."""
        conn = self._ensure()
        try:
            return fn(conn)
        except Exception as e:
            if not (_is_drop(e) or not conn.transport.is_active()):
                raise
            log.warning("SSH connection to %s lost (%s); reconnecting", self.endpoint.host, e)
            self._drop(conn)
            return fn(self._ensure())

    def _sftp(self, conn: _Conn) -> paramiko.SFTPClient:
        if conn.sftp is None or conn.sftp.sock.closed:
            conn.sftp = paramiko.SFTPClient.from_transport(conn.transport)
            conn.sftp.get_channel().settimeout(max(30.0, self.connect_timeout))
        return conn.sftp

    @staticmethod
    def _exec(conn: _Conn, command: str, stdin: bytes | None, timeout_s: float | None) -> CommandResult:
        chan = conn.transport.open_session(timeout=timeout_s or 30)
        try:
            chan.exec_command(command)
            if stdin:
                chan.sendall(stdin)
            chan.shutdown_write()  # the command sees EOF on stdin rather than waiting for input
            out, err = bytearray(), bytearray()
            deadline = None if timeout_s is None else time.monotonic() + timeout_s
            while True:
                while chan.recv_ready():
                    out += chan.recv(65536)
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(65536)
                # Channel messages arrive in order: once the exit status is here, so is all output.
                if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                    break
                if not conn.transport.is_active():
                    raise paramiko.SSHException("connection lost while the command ran")
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise CommandTimeoutError(f"remote command timed out after {timeout_s}s: {command[:120]}")
                select.select([chan], [], [], 0.5 if left is None else min(0.5, left))
            return CommandResult(chan.recv_exit_status(), out.decode(errors="replace"),
                                 err.decode(errors="replace"))
        finally:
            chan.close()

    # -- Transport protocol ----------------------------------------------------------------

    def wait_ready(self, timeout_s: float) -> None:
        """Bounded wait for banner + authenticated `true`; pins the host key on first contact."""
        with self._lock:
            self._drop()
            self._conn = self._connect(timeout_s, probe_banner=True)

    def run(self, command: str, timeout_s: float | None = None) -> CommandResult:
        return self._call(lambda c: self._exec(c, command, None, timeout_s))

    def _q(self, rel: str) -> str:
        return shlex.quote(f"{self.root}/{rel}")

    def upload(self, local_dir: Path, remote_subdir: str = "code") -> None:
        """Ship local_dir's files (orchestrator/transport/upload.py's rule) to root/remote_subdir, replacing it atomically."""
        local_dir = Path(local_dir)
        sub = upload_rule.check_destination(local_dir, remote_subdir)
        files = upload_rule.upload_files(local_dir)
        total = upload_rule.check_size(local_dir, files, self.upload_limit_bytes)
        data = upload_rule.tarball(local_dir, files)
        dest, part = self._q(sub), self._q(sub + ".partial")
        cmd = (f"rm -rf {part} && mkdir -p {part} && tar -xzf - --no-same-owner -C {part} && "
               f"rm -rf {dest} && mv {part} {dest}")

        def go(c: _Conn) -> None:
            res = self._exec(c, cmd, data, max(60.0, len(data) / 1e6))
            if not res.ok:
                raise RuntimeError(f"upload to {self.root}/{sub} failed ({res.exit_code}): {res.stderr.strip()[-500:]}")

        self._call(go)
        log.info("uploaded %d files (%d bytes) to %s/%s", len(files), total, self.root, sub)

    def send_data(self, local_dir: Path, remote_subdir: str, work_dir: Path,
                  deadline_epoch: float | None = None) -> DataSent:
        if self.root.startswith("~/"):
            self._ensure()
        return send_data(Path(local_dir), self.root, remote_subdir, self.ssh_options(), work_dir,
                         lambda cmd, t: self.run(cmd, timeout_s=t), lambda path, text: self.write_file(path, text),
                         deadline_epoch)

    def push_files(self, files: list[Path], remote_subdir: str) -> None:
        """SFTP, file by file into a .partial name then renamed: a big checkpoint streams, and a drop
        mid-way never leaves a truncated file under the real name."""
        sub = remote_subdir.strip("/")
        if not sub or ".." in sub.split("/"):
            raise ValueError(f"remote_subdir must be a relative path inside the run root: {remote_subdir!r}")
        res = self.run(f"mkdir -p {self._q(sub)}", timeout_s=30)
        if not res.ok:
            raise RuntimeError(f"push to {self.root}/{sub}: mkdir failed: {res.stderr.strip()[-300:]}")
        sftp = self.open_sftp()
        try:
            home = sftp.normalize(".")
            base = f"{self.root}/{sub}".replace("~", home, 1) if self.root.startswith("~") else f"{self.root}/{sub}"
            for src in files:
                part = f"{base}/{src.name}.partial"
                sftp.put(str(src), part)
                sftp.posix_rename(part, f"{base}/{src.name}")
        finally:
            sftp.close()
        log.info("pushed %d files to %s/%s", len(files), self.root, sub)

    def write_file(self, remote_path: str, content: str, mode: int = 0o644) -> None:
        """Write atomically (temp + rename); a relative path is taken under root."""
        path = remote_path if remote_path.startswith("/") else f"{self.root}/{remote_path}"

        def go(c: _Conn) -> None:
            sftp = self._sftp(c)
            parent = path.rsplit("/", 1)[0] or "/"
            self._sftp_makedirs(sftp, parent)
            tmp = f"{path}.tmp-gpurun"
            with sftp.open(tmp, "wb") as f:
                f.write(content.encode())
            sftp.chmod(tmp, mode)
            sftp.posix_rename(tmp, path)

        self._call(go)

    @staticmethod
    def _sftp_makedirs(sftp: paramiko.SFTPClient, path: str) -> None:
        missing: list[str] = []
        p = path
        while p not in ("", "/"):
            try:
                sftp.stat(p)
                break
            except FileNotFoundError:
                missing.append(p)
                p = p.rsplit("/", 1)[0]
        for d in reversed(missing):
            sftp.mkdir(d)

    def start_detached(self, name: str, command: str, env: dict[str, str] | None = None, cwd: str = "code") -> int:
        """Start `command` detached under root (cwd root/`cwd`); returns its pid (= process group id).

        If a job of that name is already running, its pid is returned and nothing new starts, so a
        retry after a drop (or a resumed controller) can never start a second copy.
        """
        if not name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"bad job name {name!r}")
        pid_f, exit_f = self._q(f"{name}.pid"), self._q(f"{name}.exit")
        script = detached_script(self.root, name, command, f"{self.root}/{cwd}".rstrip("/"), env)
        cmd = (
            f"mkdir -p {self._q('code')} {self._q('out')} || exit 1; "
            f"if [ -s {pid_f} ] && [ ! -e {exit_f} ] && kill -0 \"$(cat {pid_f})\" 2>/dev/null; "
            f"then cat {pid_f}; exit 0; fi; "
            f"rm -f {pid_f}; {script} "
            f"i=0; while [ ! -s {pid_f} ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done; cat {pid_f}"
        )
        res = self.run(cmd, timeout_s=30)
        pid = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else ""
        if not res.ok or not pid.isdigit():
            raise RuntimeError(f"could not start job {name!r} ({res.exit_code}): {res.stderr.strip()[-500:]}")
        return int(pid)

    def job_state(self, name: str) -> JobState:
        pid_f, exit_f = self._q(f"{name}.pid"), self._q(f"{name}.exit")
        # The exit status is read after the liveness look: a job that ended between the two wrote it
        # before it exited (read first, a clean end in between looked like a kill).
        cmd = (f"p=$(cat {pid_f} 2>/dev/null); a=0; "
               f"[ -n \"$p\" ] && kill -0 \"$p\" 2>/dev/null && a=1; "
               # an unreaped zombie (PID 1 of some containers never reaps) accepts kill -0: not alive
               f"[ \"$(sed 's/.*) //' /proc/$p/stat 2>/dev/null | cut -c1)\" = Z ] && a=0; "
               f"e=$(cat {exit_f} 2>/dev/null); echo \"$p|$e|$a\"")
        res = self.run(cmd, timeout_s=30)
        p, e, a = (res.stdout.strip().split("|") + ["", "", "0"])[:3]
        exit_code = int(e) if e.lstrip("-").isdigit() else None
        return JobState(running=a == "1" and exit_code is None, exit_code=exit_code,
                        pid=int(p) if p.isdigit() else None)

    def signal(self, name: str, signum: int) -> None:
        """Signal the job's whole process group. Sent by NAME: numbers differ between macOS and Linux."""
        sig = _signal.Signals(signum).name.removeprefix("SIG")
        pid_f, exit_f = self._q(f"{name}.pid"), self._q(f"{name}.exit")
        # .exit first: a reaped-late (zombie) group would still accept the kill
        res = self.run(f"p=$(cat {pid_f} 2>/dev/null) && [ -n \"$p\" ] || exit 3; "
                       f"[ -e {exit_f} ] && {{ echo ended >&2; exit 4; }}; "
                       f"kill -s {sig} -- -\"$p\" 2>/dev/null || kill -s {sig} \"$p\"", timeout_s=30)
        if res.exit_code == 3:
            raise RuntimeError(f"no job {name!r} under {self.root} (no {name}.pid)")
        if not res.ok:
            raise ProcessLookupError(f"job {name!r} is not running: {res.stderr.strip()[:200]}")

    def ssh_options(self) -> SSHOptions:
        """What rsync/ssh need to reach this instance with the same key and the PINNED host key."""
        pinned = self.host_keys.get(self.instance_id)
        if pinned is None:
            self._ensure()  # first contact pins it
            pinned = self.host_keys.get(self.instance_id)
        assert pinned is not None
        ep = self.endpoint
        return SSHOptions(ep.host, ep.port, ep.user, self.key_path, pinned[0], pinned[1],
                          connect_timeout=self.connect_timeout)

    def open_sftp(self) -> paramiko.SFTPClient:
        """A new SFTP session on this transport's connection (reconnecting if it dropped): the sync's
        fallback. Its own channel, so it never shares an SFTPClient with write_file across threads."""
        sftp = paramiko.SFTPClient.from_transport(self._ensure().transport)
        if sftp is None:
            raise paramiko.SSHException("the server refused an SFTP session")
        sftp.get_channel().settimeout(max(60.0, self.connect_timeout))
        return sftp

    def pull(self, local_dir: Path, deadline_epoch: float | None = None, checkpoints: bool = True) -> SyncResult:
        if self.root.startswith("~/"):
            self._ensure()
        return pull_outputs(self.root, Path(local_dir), self.ssh_options(), open_sftp=self.open_sftp,
                            deadline_epoch=deadline_epoch, checkpoints=checkpoints)

    def close(self) -> None:
        self._drop()

    def __enter__(self) -> SSHTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
