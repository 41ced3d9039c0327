"""Every GPURUN_* environment variable the controller reads, and nowhere else in orchestrator/.

Each accessor reads the environment when it is called, never at import: tests and the CLI set
these per process and per test. An empty value counts as unset. A malformed value is refused with
one SettingsError line that names the variable and the form it expects.

Read elsewhere, because their packages must not import orchestrator/ (see VARIABLES_ELSEWHERE):
providers/ (GPURUN_PROVIDERS, GPURUN_AWS_PRICES, GPURUN_HOME for the local sandboxes), trainer/
(GPURUN_CPU_LINEAR, GPURUN_CPU_GELU, GPURUN_CPU_MALLOC,
GPURUN_GPT2_BPE_DIR), the on-instance watchdog.sh (GPURUN_WATCHDOG_RETRY_S)
and bench/ (GPURUN_SHAKESPEARE).
"""

from __future__ import annotations

import getpass
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

HOME = "GPURUN_HOME"
RUNS_DIR = "GPURUN_RUNS_DIR"
SSH_OVERRIDE = "GPURUN_SSH_OVERRIDE"
REMOTE_ROOT = "GPURUN_REMOTE_ROOT"
SELF_DESTRUCT_CMD = "GPURUN_SELF_DESTRUCT_CMD"
VERIFY_TIMEOUT_S = "GPURUN_VERIFY_TIMEOUT_S"
RECONCILE_EVERY_S = "GPURUN_RECONCILE_EVERY_S"
RDZV_PORT = "GPURUN_RDZV_PORT"
LEDGER = "GPURUN_LEDGER"
USER = "GPURUN_USER"

# What each one does (docs and `--help` texts can quote these).
VARIABLES: dict[str, str] = {
    HOME: "the controller's home: ledger.db, keys/, budgets.yaml, local sandboxes (default ~/.gpurun)",
    RUNS_DIR: "where run directories (logs, checkpoints, proofs) go (default ./runs)",
    SSH_OVERRIDE: "host:port[:user] to reach every instance through (a tunnel, a bastion, the tests' sshd)",
    REMOTE_ROOT: "the parent of each run's directory on an SSH instance (default gpurun, under the login home)",
    SELF_DESTRUCT_CMD: "the dead-man's switch's command instead of the provider's (an 'instance' that is a "
                       "machine of yours)",
    VERIFY_TIMEOUT_S: "how long teardown waits for the provider to confirm an instance gone (default 600)",
    RECONCILE_EVERY_S: "`gpurun cost --reconcile` asks again about a run whose figure is not final at most "
                       "this often (default 3600: an AWS Cost Explorer request costs 0.01 USD)",
    RDZV_PORT: "the TCP port on node 0 where the nodes of a --nodes run meet (default 29500, torchrun's)",
    LEDGER: "postgresql://user:pass@host/db: a ledger shared by a team (default: ledger.db under GPURUN_HOME; "
            "budgets.yaml's ledger: says the same)",
    USER: "who launches: recorded on every run, held against the person's pool caps (default the login name)",
}
VARIABLES_ELSEWHERE: dict[str, str] = {
    "GPURUN_PROVIDERS": "providers/__init__.py: extra providers, name=module:Class,...",
    "GPURUN_AWS_PRICES": "providers/aws/catalog.py: on-demand prices instead of the Pricing API",
    "GPURUN_HOME": "providers/local.py: the local provider's sandboxes under $GPURUN_HOME/sandboxes",
    "GPURUN_CPU_LINEAR": "trainer/onednn.py: aten: no oneDNN CPU linears; onednn: them even without AVX-512",
    "GPURUN_CPU_GELU": "trainer/cpu_gelu.py: aten runs ATen's tanh GELU on the CPU instead of the sigmoid form",
    "GPURUN_CPU_MALLOC": "trainer/cpu_speed.py: default leaves glibc malloc's trim/mmap thresholds alone on the CPU",
    "GPURUN_GPT2_BPE_DIR": "trainer/tokenizer.py: local GPT-2 encoder.json + vocab.bpe",
    "GPURUN_WATCHDOG_RETRY_S": "orchestrator/run/watchdog.sh, on the instance: seconds between self-destruct retries",
    "GPURUN_SHAKESPEARE": "bench/compare_nanogpt.py: a local tinyshakespeare input.txt",
    # Set (not read) by the controller for the job on each node of a `--nodes N` run (orchestrator/run/nodes.py).
    "GPURUN_NODE_RANK": "set for a --nodes job: this node's rank (0 hosts the rendezvous)",
    "GPURUN_NUM_NODES": "set for a --nodes job: how many nodes the run has",
    "GPURUN_NODE_IPS": "set for a --nodes job: every node's address, space-separated, node 0 first",
    "GPURUN_MASTER_ADDR": "set for a --nodes job: node 0's address (also MASTER_ADDR)",
    "GPURUN_MASTER_PORT": "set for a --nodes job: the rendezvous port on node 0 (also MASTER_PORT)",
    "GPURUN_GPUS_PER_NODE": "set for a --nodes job: the ranks each node runs",
}

DEFAULT_REMOTE_ROOT = "gpurun"
DEFAULT_RUNS_DIR = "runs"
DEFAULT_VERIFY_TIMEOUT_S = 600.0
DEFAULT_RECONCILE_EVERY_S = 3600.0
DEFAULT_RDZV_PORT = 29500  # torchrun's --master-port default


class SettingsError(ValueError):
    """A GPURUN_* variable holds a value of the wrong form (one line: the variable and the fix)."""


@dataclass(frozen=True)
class SSHOverride:
    """GPURUN_SSH_OVERRIDE parsed: user None keeps the provider's login user."""

    host: str
    port: int
    user: str | None = None


def _get(name: str, env: Mapping[str, str] | None) -> str | None:
    value = (os.environ if env is None else env).get(name, "").strip()
    return value or None


def home(env: Mapping[str, str] | None = None) -> Path:
    """$GPURUN_HOME, else ~/.gpurun (not created here: ledger.ensure_home does that, 0700)."""
    value = _get(HOME, env)
    return Path(value).expanduser() if value else Path.home() / ".gpurun"


def ledger_url(env: Mapping[str, str] | None = None) -> str | None:
    """$GPURUN_LEDGER (a postgresql:// URL, or sqlite:///FILE), or None: budgets.yaml's ledger:, else ledger.db."""
    value = _get(LEDGER, env)
    if value is not None and not value.startswith(("postgresql://", "postgres://", "postgresql+psycopg://",
                                                   "sqlite:///")):
        raise SettingsError(f"{LEDGER}={_without_password(value)!r}: expected postgresql://user:password@host:5432/db"
                            " (or sqlite:///path/ledger.db)")
    return value


def _without_password(url: str) -> str:
    head, at, tail = url.rpartition("@")
    if not at or "://" not in head:
        return url
    scheme, _, userinfo = head.partition("://")
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{tail}" if ":" in userinfo else url


def person(env: Mapping[str, str] | None = None) -> str:
    """Who launches: $GPURUN_USER, else the login name."""
    value = _get(USER, env)
    if value is None:
        try:
            value = getpass.getuser()
        except (OSError, KeyError):  # a container's uid with no name: still someone, and the same one each time
            value = f"uid{os.getuid()}"
    if any(c.isspace() for c in value) or len(value) > 64:
        raise SettingsError(f"{USER}={value!r}: expected one short name without spaces, e.g. alice")
    return value


def runs_dir(explicit: str | Path | None = None, env: Mapping[str, str] | None = None) -> Path:
    """--runs-dir, else $GPURUN_RUNS_DIR, else ./runs; absolute."""
    return Path(explicit or _get(RUNS_DIR, env) or DEFAULT_RUNS_DIR).resolve()


def ssh_override(env: Mapping[str, str] | None = None) -> SSHOverride | None:
    """$GPURUN_SSH_OVERRIDE=host:port[:user], or None when it is not set."""
    value = _get(SSH_OVERRIDE, env)
    if value is None:
        return None
    parts = value.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1].isdigit() or (len(parts) == 3 and not parts[2]):
        raise SettingsError(f"{SSH_OVERRIDE}={value!r}: expected host:port[:user], e.g. 127.0.0.1:2222")
    return SSHOverride(parts[0], int(parts[1]), parts[2] if len(parts) == 3 else None)


def remote_root(env: Mapping[str, str] | None = None) -> str:
    """The parent of the run directories on an SSH instance; relative means under the login home."""
    return _get(REMOTE_ROOT, env) or DEFAULT_REMOTE_ROOT


def self_destruct_cmd(env: Mapping[str, str] | None = None) -> str | None:
    """$GPURUN_SELF_DESTRUCT_CMD, or None: use the provider's own command."""
    return _get(SELF_DESTRUCT_CMD, env)


def verify_timeout_s(explicit: float | None = None, env: Mapping[str, str] | None = None) -> float:
    """An explicit timeout (e.g. `teardown --timeout`), else $GPURUN_VERIFY_TIMEOUT_S, else 600 s."""
    if explicit:
        return float(explicit)
    value = _get(VERIFY_TIMEOUT_S, env)
    if value is None:
        return DEFAULT_VERIFY_TIMEOUT_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise SettingsError(f"{VERIFY_TIMEOUT_S}={value!r}: expected a number of seconds > 0, e.g. 600")
    return seconds


def reconcile_every_s(env: Mapping[str, str] | None = None) -> float:
    """$GPURUN_RECONCILE_EVERY_S (seconds >= 0), else an hour."""
    value = _get(RECONCILE_EVERY_S, env)
    if value is None:
        return DEFAULT_RECONCILE_EVERY_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise SettingsError(f"{RECONCILE_EVERY_S}={value!r}: expected a number of seconds >= 0, e.g. 3600")
    return seconds


def rdzv_port(env: Mapping[str, str] | None = None) -> int:
    """$GPURUN_RDZV_PORT, else torchrun's 29500."""
    value = _get(RDZV_PORT, env)
    if value is None:
        return DEFAULT_RDZV_PORT
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise SettingsError(f"{RDZV_PORT}={value!r}: expected a TCP port number, e.g. 29500")
    return int(value)
