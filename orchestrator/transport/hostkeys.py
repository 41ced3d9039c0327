"""Where the SSH transport pins each instance's host key: the `HostKeyStore` protocol and its two stores.

`LedgerHostKeys` keeps the pins in the ledger (production); `MemoryHostKeyStore` in a dict (tests).
transport/ssh.py pins on first contact and refuses a different key later.
"""

from __future__ import annotations

from typing import Any, Protocol


class HostKeyStore(Protocol):
    def get(self, instance_id: str) -> tuple[str, str] | None: ...

    def put(self, instance_id: str, key_type: str, key_b64: str) -> None: ...


class MemoryHostKeyStore:
    """A HostKeyStore in a dict (tests; the ledger implements the same two methods)."""

    def __init__(self) -> None:
        self.keys: dict[str, tuple[str, str]] = {}

    def get(self, instance_id: str) -> tuple[str, str] | None:
        return self.keys.get(instance_id)

    def put(self, instance_id: str, key_type: str, key_b64: str) -> None:
        self.keys[instance_id] = (key_type, key_b64)


class LedgerHostKeys:
    """HostKeyStore over the ledger's `host_key` / `pin_host_key` (duck-typed: no ledger import here)."""

    def __init__(self, ledger: Any) -> None:
        self.ledger = ledger

    def get(self, instance_id: str) -> tuple[str, str] | None:
        return self.ledger.host_key(instance_id)

    def put(self, instance_id: str, key_type: str, key_b64: str) -> None:
        self.ledger.pin_host_key(instance_id, key_type, key_b64)
