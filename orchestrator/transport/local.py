"""Transport for the `local` provider: the instance is a sandbox directory on this machine.

It follows the same on-instance layout, upload rule (orchestrator/transport/upload.py) and detached-job
convention as the SSH transport, so bootstrap, the watchdog and the lifecycle run unchanged on it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from orchestrator.transport.protocol import CommandResult, DataSent, JobState, SyncResult, detached_script
from orchestrator.transport.pull import pull_outputs
from orchestrator.transport.push_data import send_data
from orchestrator.transport.upload import check_destination, upload_files

# The instance is this machine, so its detached work (the job, the switch) runs below the guard's
# priority: a training job that takes every core must never make the guard late for the money, nor
# the user's own desktop sluggish. Idle cores still go to the job; the switch only sleeps and acts.
JOB_NICENESS = 10


class LocalTransport:
    def __init__(self, root: Path, python: str | None = None) -> None:
        self.root = str(Path(root).resolve())
        self.python = python  # the interpreter the sandbox's jobs run with (the controller's)

    def _path(self, rel: str) -> Path:
        return Path(self.root) / rel

    def wait_ready(self, timeout_s: float) -> None:
        Path(self.root).mkdir(parents=True, exist_ok=True)

    def run(self, command: str, timeout_s: float | None = None) -> CommandResult:
        try:
            proc = subprocess.run(
                ["sh", "-c", command], cwd=self.root, capture_output=True, text=True, timeout=timeout_s
            )
        except subprocess.TimeoutExpired as exc:
            return CommandResult(124, str(exc.stdout or ""), f"timed out after {timeout_s}s")
        return CommandResult(proc.returncode, proc.stdout, proc.stderr)

    def upload(self, local_dir: Path, remote_subdir: str = "code") -> None:
        """Copy the files the upload rule selects to root/remote_subdir, replacing it (as SSH does)."""
        local_dir = Path(local_dir)
        sub = check_destination(local_dir, remote_subdir)
        dest, part = self._path(sub), self._path(sub + ".partial")
        shutil.rmtree(part, ignore_errors=True)
        for rel in upload_files(local_dir):
            src, target = local_dir / rel, part / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if src.is_symlink():  # a link stays a link, as in the SSH transport's tarball
                target.symlink_to(os.readlink(src))
            else:
                shutil.copy2(src, target)
        part.mkdir(parents=True, exist_ok=True)  # an upload with no files still leaves the dir
        shutil.rmtree(dest, ignore_errors=True)
        part.rename(dest)

    def send_data(self, local_dir: Path, remote_subdir: str, work_dir: Path,
                  deadline_epoch: float | None = None) -> DataSent:
        return send_data(Path(local_dir), self.root, remote_subdir, None, work_dir,
                         lambda cmd, t: self.run(cmd, timeout_s=t), lambda path, text: self.write_file(path, text),
                         deadline_epoch)

    def push_files(self, files: list[Path], remote_subdir: str) -> None:
        dest = self._path(remote_subdir.strip("/"))
        dest.mkdir(parents=True, exist_ok=True)
        for src in files:
            part = dest / (src.name + ".partial")
            shutil.copy2(src, part)
            part.rename(dest / src.name)

    def write_file(self, remote_path: str, content: str, mode: int = 0o644) -> None:
        path = self._path(remote_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(content)
        tmp.chmod(mode)
        tmp.replace(path)

    def start_detached(self, name: str, command: str, env: dict[str, str] | None = None, cwd: str = "code") -> int:
        pid_file = self._path(f"{name}.pid")
        pid_file.unlink(missing_ok=True)
        for sub in ("code", "out"):  # as the SSH transport does: a job may start before the upload
            self._path(sub).mkdir(parents=True, exist_ok=True)
        script = detached_script(self.root, name, command, cwd=f"{self.root}/{cwd}".rstrip("/"), env=env)
        subprocess.run(["nice", "-n", str(JOB_NICENESS), "sh", "-c", script], cwd=self.root, check=True)
        deadline = time.monotonic() + 10
        while not pid_file.exists() or not pid_file.read_text().strip():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start: no pid file after 10 s (see {name}.log)")
            time.sleep(0.02)
        pid = int(pid_file.read_text().strip())
        # The job leads its own session, so its pid is its process-group id: the instance's handle.
        with open(self._path("pgids"), "a") as fh:
            fh.write(f"{pid}\n")
        return pid

    def job_state(self, name: str) -> JobState:
        exit_file = self._path(f"{name}.exit")
        pid_file = self._path(f"{name}.pid")
        pid = int(pid_file.read_text().strip()) if pid_file.exists() and pid_file.read_text().strip() else None
        if pid is not None and not exit_file.exists():
            try:
                os.kill(pid, 0)
                return JobState(True, None, pid)
            except ProcessLookupError:
                pass
        # Read after the liveness look: a job that ended between the two wrote its status before it
        # exited. Read before it, that status was missed and a clean end looked like a kill.
        if exit_file.exists():
            text = exit_file.read_text().strip()
            return JobState(False, int(text) if text.lstrip("-").isdigit() else None, pid)
        return JobState(False, None, pid)  # killed before it could write its exit status

    def signal(self, name: str, signum: int) -> None:
        state = self.job_state(name)
        if state.running and state.pid:
            try:
                os.killpg(state.pid, signum)
            except ProcessLookupError:
                pass

    def pull(self, local_dir: Path, deadline_epoch: float | None = None, checkpoints: bool = True) -> SyncResult:
        return pull_outputs(self.root, Path(local_dir), None, deadline_epoch=deadline_epoch, checkpoints=checkpoints)

    def close(self) -> None:
        pass
