"""What the ledger stores besides plain numbers: redacted JSON payloads and checked USD amounts.

Nothing secret is stored: every JSON payload (events, plans, instance info) goes through
`orchestrator.redact.redact` on its way in.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from orchestrator.redact import redact


class LedgerError(Exception):
    """A ledger operation was refused; the message is one line a user can act on."""


class LedgerUnavailable(LedgerError):
    """The ledger's database cannot be reached (a shared server down, the network gone): nothing was
    written. A launch refuses; a running controller keeps guarding and queues its events (`state.journal`)."""


def _json_default(obj: Any) -> Any:
    if is_dataclass(obj) and not isinstance(obj, type):
        return asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if isinstance(obj, bytes):
        return f"<{len(obj)} bytes>"
    return str(obj)


def dumps(obj: Any) -> str:
    """Redacted, key-sorted JSON text for a payload column."""
    # Round-trip through JSON first so the redactor sees plain dicts/lists/strings only.
    plain = json.loads(json.dumps(obj, default=_json_default))
    return json.dumps(redact(plain), sort_keys=True, default=_json_default)


def loads(text: str | None) -> dict[str, Any]:
    """A payload column back as a dict (a stored non-object comes back as {"value": ...})."""
    if not text:
        return {}
    value = json.loads(text)
    return value if isinstance(value, dict) else {"value": value}


def check_usd(name: str, usd: float) -> float:
    """`usd` as a finite float >= 0, else LedgerError naming `name`."""
    try:
        value = float(usd)
    except (TypeError, ValueError):
        raise LedgerError(f"{name} must be a number of USD, got {usd!r}") from None
    if isinstance(usd, bool) or not math.isfinite(value) or value < 0:
        raise LedgerError(f"{name} must be a finite number of USD >= 0, got {usd!r}")
    return value
