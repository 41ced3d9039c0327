"""The `Transport` protocol: how the controller reaches an instance (run a command, upload, start a job, pull).

Two implementations: `LocalTransport` (orchestrator/transport/local.py, the `local` provider's
sandbox on this machine) and `SSHTransport` (orchestrator/transport/ssh.py, every cloud), picked by
orchestrator/transport/factory.py from what the provider's `access()` returns. Both upload the files that
orchestrator/transport/upload.py selects. Bootstrap, the watchdog and the lifecycle are written once against
this protocol.

Layout of a run on the instance, under `transport.root` (the same for both transports):

    code/           the uploaded workdir (the trainer by default); the job runs with cwd=code/
    out/            everything the job writes (trainer: train.log, metrics.jsonl, hardware.json,
                    checkpoints/ with MANIFEST.json, sample.txt)
    <name>.pid      pid of a detached job (also its process-group id: jobs run under setsid)
    <name>.exit     its exit status, written when it ends
    <name>.log      its stdout + stderr
    watchdog.*      the dead-man's switch (same convention, name "watchdog")
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


@dataclass
class CommandResult:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


@dataclass
class JobState:
    running: bool
    exit_code: int | None = None  # set once the job has ended and written <name>.exit
    pid: int | None = None


@dataclass
class SyncResult:
    files: int = 0  # files transferred
    bytes: int = 0  # bytes transferred (rsync's "Total transferred file size")
    checkpoints_verified: list[str] = field(default_factory=list)
    checkpoints_rejected: list[str] = field(default_factory=list)
    method: str = ""  # "rsync", "sftp", "copy"
    seconds: float = 0.0  # how long the pull took, retries included: the link's measured rate
    latest: str | None = None  # the checkpoint the instance's manifest names as its newest
    keep: int | None = None  # how many checkpoints the instance keeps (its manifest's "keep")

    @property
    def latest_home(self) -> bool:
        """The instance's newest checkpoint is home and verified (True when it has none yet)."""
        return self.latest is None or self.latest in self.checkpoints_verified


@dataclass(frozen=True)
class DataSent:
    """A data set sent to the instance (transport/push_data.py)."""

    files: int
    bytes: int  # what rsync moved (a resumed send moves only what was missing)
    total_bytes: int  # the data set's size
    seconds: float


class Transport(Protocol):
    root: str  # the run's directory on the instance
    # The interpreter the instance's owner names for its jobs (the local sandbox: the controller's
    # own); None: bootstrap looks for one on the instance.
    python: str | None

    def wait_ready(self, timeout_s: float) -> None: ...

    def run(self, command: str, timeout_s: float | None = None) -> CommandResult: ...

    def upload(self, local_dir: Path, remote_subdir: str = "code") -> None: ...

    def push_files(self, files: list[Path], remote_subdir: str) -> None:
        """Put these files (gpurun's own outputs, e.g. the checkpoint a resumed run starts from) in
        root/remote_subdir, each written whole before it gets its name; no upload rule, no size limit."""
        ...

    def write_file(self, remote_path: str, content: str, mode: int = 0o644) -> None: ...

    def send_data(self, local_dir: Path, remote_subdir: str, work_dir: Path,
                  deadline_epoch: float | None = None) -> DataSent:
        """A data set of any size to root/remote_subdir: resumable rsync, verified there by SHA-256
        (transport/push_data.py); `work_dir` holds this side's scratch (the run directory)."""
        ...

    def start_detached(self, name: str, command: str, env: dict[str, str] | None = None, cwd: str = "code") -> int:
        """Start `command` detached (its own session) with cwd root/`cwd` ("": the root itself)."""
        ...

    def job_state(self, name: str) -> JobState: ...

    def signal(self, name: str, signum: int) -> None: ...

    def pull(self, local_dir: Path, deadline_epoch: float | None = None, checkpoints: bool = True) -> SyncResult:
        """Bring out/ and *.log home (transport/pull.py); a pull still going at `deadline_epoch`
        is ended there (SyncError), its partial files kept for the next one to resume.
        checkpoints=False: the logs only (the checkpoints go to a bucket: orchestrator/run/bucket.py)."""
        ...

    def close(self) -> None: ...


def detached_script(root: str, name: str, command: str, cwd: str, env: dict[str, str] | None = None) -> str:
    """A POSIX-sh line that starts `command` detached (own session), surviving the caller.

    Writes root/name.pid before the command runs and root/name.exit after it ends, so a later
    controller (or a reconnect) can tell running from finished without holding a connection.
    """
    q = shlex.quote
    exports = "".join(f"export {k}={q(v)}; " for k, v in (env or {}).items())
    # The wrapper shell traps the stop signals (its children get the default back) so that it
    # outlives the job and records its exit status; the job runs in a subshell so `exit` in it
    # cannot skip that record.
    inner = (
        f"echo $$ > {q(root + '/' + name + '.pid')}; trap true TERM INT HUP USR1; "
        f"cd {q(cwd)} && ({exports}{command}); "
        f"echo $? > {q(root + '/' + name + '.exit.tmp')}; "
        f"mv {q(root + '/' + name + '.exit.tmp')} {q(root + '/' + name + '.exit')}"
    )
    log = q(root + "/" + name + ".log")
    return f"rm -f {q(root + '/' + name + '.exit')}; setsid nohup sh -c {q(inner)} > {log} 2>&1 < /dev/null &"
