"""The run's own SSH key pair: ed25519, generated once under $GPURUN_HOME/keys.

The private key never leaves this machine and is created 0600 in a 0700 directory (never a
world-readable moment: the file is opened with its final mode). Providers get the OpenSSH public
line; paramiko gets the loaded key; rsync/ssh get the path.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from orchestrator import settings

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
DEFAULT_NAME = "gpurun"


def keys_dir() -> Path:
    d = settings.home() / "keys"
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(d, 0o700)  # mkdir's mode is masked by umask and ignored when the dir exists
    return d


@dataclass(frozen=True)
class KeyPair:
    private_path: Path
    public_line: str  # "ssh-ed25519 AAAA... gpurun-<name>"

    @property
    def public_path(self) -> Path:
        return self.private_path.with_name(self.private_path.name + ".pub")

    def load(self) -> paramiko.PKey:
        return load_private_key(self.private_path)


def _check_name(name: str) -> None:
    if not NAME_RE.match(name):
        raise ValueError(f"bad key name {name!r}: use letters, digits, '.', '_' or '-' (e.g. the run id)")


def ensure_keypair(name: str = DEFAULT_NAME) -> KeyPair:
    """Return keys/<name> (+ .pub), generating the pair the first time. Safe against a concurrent call."""
    _check_name(name)
    d = keys_dir()
    priv = d / name
    pub = d / f"{name}.pub"
    if not priv.exists():
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
        tmp = d / f".{name}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, pem)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, priv)  # atomic, and fails if another process won the race: keep theirs
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    os.chmod(priv, 0o600)
    line = public_key_line(priv, comment=f"gpurun-{name}")
    if not pub.exists() or pub.read_text().strip() != line:
        pub.write_text(line + "\n")
    return KeyPair(priv, line)


def run_key(name: str | None = None) -> KeyPair:
    """The controller's SSH key for runs (one pair per name; default: one shared gpurun pair)."""
    return ensure_keypair(name or DEFAULT_NAME)


def load_private_key(path: Path) -> paramiko.PKey:
    """Load an OpenSSH private key (ed25519 here; RSA/ECDSA work too for user-supplied keys)."""
    try:
        return paramiko.PKey.from_path(str(path))
    except (OSError, paramiko.SSHException, ValueError) as e:
        raise ValueError(f"cannot load SSH private key {path}: {e}") from e


def public_key_line(private_path: Path, comment: str = "") -> str:
    """The OpenSSH one-line public key ("ssh-ed25519 AAAA... comment") for a private key file."""
    key = load_private_key(private_path)
    return f"{key.get_name()} {key.get_base64()}" + (f" {comment}" if comment else "")

