"""The watchdog's way out on RunPod: providers/scripts/runpod_self_destruct.sh, with its arguments.

The script is shipped as package data and run as `sh -c SCRIPT NAME ARGS...`, so it needs no file
of its own on the instance and its text is never edited: every dynamic value is an argument.
"""

from __future__ import annotations

import shlex
from functools import cache
from importlib import resources

from providers.common import first_env
from providers.runpod.api import DEFAULT_API_BASE, POD_ID_RE

SCRIPT = "runpod_self_destruct.sh"
# Where RunPod puts the pod's own RUNPOD_POD_ID / RUNPOD_API_KEY: PID 1's environment only.
DEFAULT_PID1_ENVIRON = "/proc/1/environ"
# Overrides for an "instance" that is not a RunPod container (the tests' loopback sshd with the
# GraphQL fake). Dedicated names on purpose: the SDK's RUNPOD_API_BASE_URL (a proxy on the laptop)
# must never decide where the pod's key is sent from the pod.
ENV_PID1_ENVIRON = "RUNPOD_PID1_ENVIRON"
ENV_API_BASE = "RUNPOD_SELF_DESTRUCT_API_BASE"


def pid1_environ_default() -> str:
    """$RUNPOD_PID1_ENVIRON, else /proc/1/environ: where the script reads the pod's id and key."""
    return first_env([ENV_PID1_ENVIRON]) or DEFAULT_PID1_ENVIRON


def api_base_default() -> str:
    """$RUNPOD_SELF_DESTRUCT_API_BASE, else RunPod's public API: where the script posts podTerminate."""
    return first_env([ENV_API_BASE]) or DEFAULT_API_BASE


@cache
def script_text() -> str:
    return resources.files("providers").joinpath("scripts").joinpath(SCRIPT).read_text(encoding="utf-8")


def self_destruct_shell(*, pod_id: str | None, pid1_environ_path: str, api_base: str) -> str:
    """POSIX sh that terminates this pod with the pod's own RUNPOD_POD_ID / RUNPOD_API_KEY.

    `pod_id` is the pod the controller made (only compared with what the pod says it is); a value
    that is not a plain id is left out rather than passed on.
    """
    want = pod_id if pod_id and POD_ID_RE.match(pod_id) else ""
    args = [pid1_environ_path, api_base.rstrip("/") + "/graphql", want]
    return " ".join(["sh", "-c", shlex.quote(script_text()), "gpurun-self-destruct",
                     *(shlex.quote(a) for a in args)])
