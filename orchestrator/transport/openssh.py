"""Reaching an instance with the run's key and the PINNED host key: paramiko's `connect` and OpenSSH's options.

Shared by the paramiko transport (transport/ssh.py, through `connect`) and the rsync pull
(transport/pull_rsync.py, whose OpenSSH client gets `SSHOptions.ssh_command` and a known_hosts line
holding only the pin). A host key other than the pin is `HostKeyChangedError` on either path.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

import paramiko

from orchestrator import settings
from providers.base import SSHEndpoint

HOST_ALIAS = "gpurun-instance"  # known_hosts holds only the pinned key, under this alias
# What OpenSSH prints when the server's key is not the one in known_hosts.
_OPENSSH_HOST_KEY_ERRORS = ("REMOTE HOST IDENTIFICATION HAS CHANGED", "Host key verification failed")


class HostKeyChangedError(Exception):
    """The instance presented a host key other than the one pinned on first contact."""


def resolve_endpoint(endpoint: SSHEndpoint) -> SSHEndpoint:
    """Apply GPURUN_SSH_OVERRIDE=host:port[:user] (a tunnel or bastion; the tests' loopback sshd)."""
    override = settings.ssh_override()
    if override is None:
        return endpoint
    return SSHEndpoint(override.host, override.port, override.user or endpoint.user)


def _key_family(name: str) -> str:
    return "rsa" if name.startswith(("ssh-rsa", "rsa-sha2")) else name


def connect(host: str, port: int, user: str, pkey: paramiko.PKey,
            pinned: tuple[str, str] | None, timeout_s: float) -> paramiko.Transport:
    """An authenticated paramiko Transport whose host key equals `pinned` (when given).

    With a pin, only the pinned key's algorithm is negotiated, so a server that merely prefers
    another key type cannot slip past the comparison.
    """
    sock = socket.create_connection((host, port), timeout=timeout_s)
    disabled = None
    if pinned:
        family = _key_family(pinned[0])
        disabled = {"keys": [k for k in paramiko.Transport._preferred_keys if _key_family(k) != family]}
    t = paramiko.Transport(sock, disabled_algorithms=disabled)
    t.banner_timeout = timeout_s
    t.auth_timeout = timeout_s
    try:
        try:
            t.start_client(timeout=timeout_s)
        except paramiko.SSHException as e:
            if pinned and "host key" in str(e).lower():
                raise HostKeyChangedError(_changed_msg(host, port, pinned, None)) from e
            raise
        key = t.get_remote_server_key()
        if pinned and (key.get_name(), key.get_base64()) != tuple(pinned):
            raise HostKeyChangedError(_changed_msg(host, port, pinned, key))
        t.auth_publickey(user, pkey)
        t.set_keepalive(10)  # a half-dead link shows up as a dropped transport, not a hang
        return t
    except BaseException:
        t.close()
        raise


def _changed_msg(host: str, port: int, pinned: tuple[str, str], key: paramiko.PKey | None) -> str:
    got = f"{key.get_name()} {key.get_fingerprint().hex()}" if key else "no key of that type"
    return (f"host key of {host}:{port} changed: pinned {pinned[0]} {pinned[1][:24]}..., server offered {got}. "
            "Refusing to connect (possible man-in-the-middle, or the instance was replaced); "
            "terminate and relaunch, or clear the pin if you know why it changed")


@dataclass(frozen=True)
class SSHOptions:
    """What an OpenSSH client (rsync's `-e`) needs to reach the instance with the PINNED host key."""

    host: str
    port: int
    user: str
    key_path: Path
    host_key_type: str
    host_key_b64: str
    connect_timeout: float = 10.0

    def known_hosts_line(self) -> str:
        return f"{HOST_ALIAS} {self.host_key_type} {self.host_key_b64}\n"

    def control_path(self, local_dir: Path) -> str:
        """Short socket path (unix limit ~104 bytes) for ssh multiplexing, unique per run dir AND pin,
        so a master connection made under one pinned key is never reused under another."""
        ident = f"{local_dir.resolve()}|{self.user}@{self.host}:{self.port}|{self.host_key_b64}"
        return os.path.join(tempfile.gettempdir(), "gpurun-cm-" + hashlib.sha256(ident.encode()).hexdigest()[:16])

    def ssh_command(self, known_hosts: Path, control_path: str | None = None) -> str:
        algos = "rsa-sha2-512,rsa-sha2-256" if self.host_key_type == "ssh-rsa" else self.host_key_type
        opts = {
            "IdentitiesOnly": "yes", "BatchMode": "yes", "StrictHostKeyChecking": "yes",
            "UserKnownHostsFile": str(known_hosts), "GlobalKnownHostsFile": "/dev/null",
            "HostKeyAlias": HOST_ALIAS, "HostKeyAlgorithms": algos,
            "ConnectTimeout": str(max(1, int(self.connect_timeout))),
            "ServerAliveInterval": "5", "ServerAliveCountMax": "3", "LogLevel": "ERROR",
        }
        if control_path:  # one SSH handshake for the passes of a sync (and the next sync, if soon)
            opts.update(ControlMaster="auto", ControlPath=control_path, ControlPersist="15")
        argv = ["ssh", "-F", "/dev/null", "-i", str(self.key_path), "-p", str(self.port)]
        for k, v in opts.items():
            argv += ["-o", f"{k}={v}"]
        return " ".join(shlex.quote(a) for a in argv)

    def remote(self, path: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{host}:{path}"

    def host_key_error(self, openssh_stderr: str) -> HostKeyChangedError | None:
        """The error to raise when an OpenSSH client's stderr says the pin did not match, else None."""
        if not any(m in openssh_stderr for m in _OPENSSH_HOST_KEY_ERRORS):
            return None
        return HostKeyChangedError(
            f"host key of {self.host}:{self.port} no longer matches the pinned {self.host_key_type} key; "
            "refusing to sync (possible man-in-the-middle, or the instance was replaced)")
