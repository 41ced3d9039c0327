"""The transport factory (`open_transport`): builds the Transport (transport/protocol.py) for an instance.

Picked by what the provider's `access(instance)` answered (providers/base.py), never by the provider's name:

    LocalSandbox(path)  -> LocalTransport, the sandbox directory on this machine, jobs run with its python
    SSHEndpoint         -> SSHTransport with the run key, after GPURUN_SSH_OVERRIDE, host keys pinned
                           in the ledger, under $GPURUN_REMOTE_ROOT/<run-id> (default ~/gpurun/<run-id>)

The transport is built, not connected: the caller runs `wait_ready` with its own time budget.
"""

from __future__ import annotations

from pathlib import Path

from orchestrator import settings
from orchestrator.state.ledger import Ledger
from orchestrator.transport.hostkeys import LedgerHostKeys
from orchestrator.transport.keys import run_key
from orchestrator.transport.local import LocalTransport
from orchestrator.transport.openssh import resolve_endpoint
from orchestrator.transport.protocol import Transport
from orchestrator.transport.ssh import SSHTransport
from providers.base import Access, LocalSandbox, SSHEndpoint


def remote_root(run_id: str) -> str:
    """The run's directory on an SSH instance; relative means under the login user's home."""
    return f"{settings.remote_root()}/{run_id}"


def open_transport(access: Access, *, run_id: str, instance_id: str, ledger: Ledger,
                   root: str | None = None) -> Transport:
    """The Transport that reaches an instance through `access` (not yet connected); `root`: the run's
    directory on an SSH instance when not the run's own (a multi-node run's other nodes)."""
    if isinstance(access, LocalSandbox):
        return LocalTransport(Path(access.path), python=access.python)
    if isinstance(access, SSHEndpoint):
        return SSHTransport(
            resolve_endpoint(access),
            run_key().private_path,
            root=root or remote_root(run_id),
            instance_id=instance_id,
            host_keys=LedgerHostKeys(ledger),
        )
    raise TypeError(f"no transport for access {access!r}: expected SSHEndpoint or LocalSandbox")
