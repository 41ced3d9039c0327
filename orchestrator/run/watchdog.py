"""Install and steer the on-instance dead-man's switch (orchestrator/run/watchdog.sh).

The script runs detached under the transport's job convention (name "watchdog"), so it outlives the
SSH session and the controller. At deadline - grace it SIGTERMs the job's process group (the trainer
checkpoints and exits); at the deadline it runs the provider's self-destruct command, and keeps
re-running it while the machine is up. The deadline lives in <root>/watchdog.deadline and can only
move earlier: both this module and the script itself refuse a later value.

With the controller gone (no `heartbeat` for the window) it also acts early: a job that ended and
was left idle for `idle_s`, or one that runs without growing its progress file for `stall_s`
(SIGTERM, SIGKILL after grace, then the idle rule). Why it acted is <root>/watchdog.reason
(`read_reason`) and a "reason: ..." line in watchdog.log (which every sync pulls home).
"""

from __future__ import annotations

import math
import re
import shlex
from importlib import resources

from tenacity import RetryError, Retrying, retry_if_result, stop_after_delay, wait_fixed

from orchestrator.transport.protocol import Transport

NAME = "watchdog"
HEARTBEAT_FILE = "controller.heartbeat"  # touched by a live controller; the script reads its mtime
REASON_FILE = "watchdog.reason"  # stalled | idle | deadline: written when the script acts
REASONS = ("stalled", "idle", "deadline")
# A live controller touches the heartbeat at least this often, and at least 4 times per window, so
# one slow poll never makes the script think it is gone.
HEARTBEAT_MAX_INTERVAL_S = 5.0
_JOB_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_PROGRESS_RE = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")


def script_text() -> str:
    return resources.files("orchestrator.run").joinpath("watchdog.sh").read_text()


def read_deadline(transport: Transport) -> int | None:
    """The deadline in force on the instance (its watchdog.deadline file)."""
    return _read_int(transport, "watchdog.deadline")


def _read_int(transport: Transport, name: str) -> int | None:
    res = transport.run(f"head -n 1 {shlex.quote(transport.root + '/' + name)} 2>/dev/null", timeout_s=30)
    text = res.stdout.strip()
    return int(text) if res.ok and text.isdigit() else None


def _wait_armed(transport: Transport, deadline: int, timeout_s: float) -> None:
    """Wait until the running script says it holds `deadline` or earlier (its watchdog.armed)."""
    try:
        Retrying(stop=stop_after_delay(timeout_s), wait=wait_fixed(0.25),
                 retry=retry_if_result(lambda held: held is None or held > deadline))(
            _read_int, transport, "watchdog.armed")
    except RetryError as e:
        raise RuntimeError(f"the watchdog under {transport.root} did not acknowledge deadline {deadline} within "
                           f"{timeout_s:.0f}s; see {transport.root}/watchdog.log (is it running?)") from e


def install_watchdog(transport: Transport, deadline_epoch: float, grace_s: float, self_destruct_cmd: str,
                     job_name: str = "job", poll_s: float = 1.0, ack_timeout_s: float = 10.0,
                     idle_s: float | None = None, stall_s: float | None = None,
                     progress_file: str | None = None, pre_job: str | None = None,
                     pre_progress_file: str | None = None) -> int:
    """Arm the switch and wait for it to acknowledge; returns its pid.

    idle_s / stall_s (None: that rule is off) are the idle and stall windows; progress_file is the
    file, relative to the root, whose growth is the job's progress (default `<job_name>.log`).
    pre_job / pre_progress_file: a job that runs before `job_name` (a recipe's data preparation),
    watched with the same rules until `job_name` starts; its progress is that file changing.
    Re-installing (a resumed controller) keeps a running watchdog and never moves the deadline later.
    """
    if not _JOB_RE.match(job_name):
        raise ValueError(f"bad job name {job_name!r}")
    if grace_s < 0 or poll_s <= 0:
        raise ValueError("grace_s must be >= 0 and poll_s > 0")
    for what, window in (("idle_s", idle_s), ("stall_s", stall_s)):
        if window is not None and not (math.isfinite(window) and window > 0):
            raise ValueError(f"{what} must be a number of seconds > 0 (or None: rule off), got {window}")
    progress = progress_file or f"{job_name}.log"
    pre = ("", "")
    if pre_job is not None:
        if not _JOB_RE.match(pre_job) or pre_job == job_name or not pre_progress_file:
            raise ValueError(f"bad pre-job {pre_job!r}: another job name, with its progress file")
        pre = (pre_job, pre_progress_file)
    for path in (progress, *pre[1:]):
        if path and (not _PROGRESS_RE.match(path) or ".." in path.split("/")):
            raise ValueError(f"bad progress file {path!r}: a plain path relative to the run root")
    if not self_destruct_cmd.strip():
        raise ValueError("the watchdog needs a self-destruct command (the provider's self_destruct_command)")
    deadline = math.floor(deadline_epoch)  # rounding must never move it later
    existing = read_deadline(transport)
    if existing is not None:
        deadline = min(deadline, existing)
    root = transport.root
    transport.write_file(f"{root}/watchdog.sh", script_text(), 0o755)
    transport.write_file(f"{root}/watchdog.selfdestruct", self_destruct_cmd.rstrip() + "\n", 0o700)
    transport.write_file(f"{root}/watchdog.deadline", f"{deadline}\n", 0o644)
    q = shlex.quote
    cmd = (f"sh {q(root + '/watchdog.sh')} {q(root)} {deadline} {math.ceil(grace_s)} {q(job_name)} {poll_s:g} "
           f"{_whole_s(idle_s)} {_whole_s(stall_s)} {q(progress)}"
           + (f" {q(pre[0])} {q(pre[1])}" if pre[0] else ""))
    # Its cwd is the root: the switch is armed before the upload, which replaces code/.
    pid = transport.start_detached(NAME, cmd, cwd="")
    _wait_armed(transport, deadline, ack_timeout_s)
    return pid


def set_pre_job(transport: Transport, pre_job: str, pre_progress_file: str) -> None:
    """Name the pre-job (a recipe's data phase) to a switch armed before bootstrap decided it: the
    script reads <root>/watchdog.prejob and watches that job, by its progress file, until the job
    proper starts."""
    if not _JOB_RE.match(pre_job) or pre_job == "job":
        raise ValueError(f"bad pre-job {pre_job!r}")
    if not _PROGRESS_RE.match(pre_progress_file) or ".." in pre_progress_file.split("/"):
        raise ValueError(f"bad progress file {pre_progress_file!r}: a plain path relative to the run root")
    transport.write_file(f"{transport.root}/watchdog.prejob", f"{pre_job} {pre_progress_file}\n", 0o644)


def _whole_s(window: float | None) -> int:
    """The script counts whole seconds; 0 turns a rule off, so a tiny window rounds up to 1."""
    return 0 if window is None else max(1, math.ceil(window))


def heartbeat(transport: Transport) -> bool:
    """Tell the switch a controller is alive: one cheap `touch` on the instance, whose own clock
    stamps it (the script compares that mtime with its own `date`, so clock skew does not matter)."""
    res = transport.run(f"touch {shlex.quote(transport.root + '/' + HEARTBEAT_FILE)}", timeout_s=10)
    return res.ok


def heartbeat_interval_s(*windows: float | None) -> float:
    """How often a controller should touch the heartbeat for the script's windows."""
    return min([HEARTBEAT_MAX_INTERVAL_S, *(w / 4 for w in windows if w)])


def read_reason(transport: Transport) -> str | None:
    """Why the switch acted ("stalled", "idle", "deadline"), or None while it has not."""
    res = transport.run(f"head -n 1 {shlex.quote(transport.root + '/' + REASON_FILE)} 2>/dev/null", timeout_s=30)
    text = res.stdout.strip()
    return text if res.ok and text in REASONS else None

