"""The watchdog's way out on RunPod: providers/scripts/runpod_self_destruct.sh, with its arguments.

The script is shipped as package data and run as `sh -c SCRIPT NAME ARGS...`, so it needs no file
of its own on the instance and its text is never edited: every dynamic value is an argument.
"""

from __future__ import annotations

import shlex
from functools import cache
from importlib import resources

from providers.runpod.api import POD_ID_RE

SCRIPT = "runpod_self_destruct.sh"


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
