"""The last `gpurun audit`, kept as $GPURUN_HOME/last_audit.json so that `gpurun dashboard` can show it.

An audit asks every provider what bills now; that costs API calls and seconds, so a page never
runs one: it shows what the last `gpurun audit` found, and when. The file holds the audit's rows as
plain JSON (redacted, without the providers' raw listings), written atomically; a missing or torn
file reads as "no audit yet" with why.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from orchestrator.money.audit import Audit
from orchestrator.redact import redact
from trainer.manifest import atomic_write_bytes

FILENAME = "last_audit.json"
SCHEMA = "gpurun.audit"


def to_dict(result: Audit, at: float) -> dict[str, Any]:
    """The audit as plain JSON: every billing row (owner, what to do), the skipped providers, the leftovers."""
    rows = [{**{k: v for k, v in row.item.to_dict().items() if k != "raw"},
             "owner": row.owner, "owner_run_id": row.run_id, "action": row.action, "unowned": row.unowned}
            for row in result.rows]
    return redact({
        "schema": SCHEMA, "at": at, "rows": rows, "usd_per_hour": result.usd_per_hour,
        "unowned": len(result.unowned),
        "skipped": [{"provider": name, "why": why} for name, why in result.skipped],
        "leftovers": [{"run_id": left.run_id, "provider": left.provider, **left.failure}
                      for left in result.leftovers],
    })


def save(result: Audit, home: Path, at: float) -> Path:
    path = Path(home) / FILENAME
    atomic_write_bytes(path, (json.dumps(to_dict(result, at), sort_keys=True, indent=1) + "\n").encode())
    return path


def load(home: Path) -> tuple[dict[str, Any] | None, str]:
    """(the last audit, "") or (None, why there is none to show)."""
    path = Path(home) / FILENAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None, "no audit yet: `gpurun audit` lists everything that bills on your accounts"
    except (OSError, ValueError) as exc:
        return None, f"{path} cannot be read ({exc}): run `gpurun audit` again"
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        return None, f"{path} is not an audit gpurun wrote: run `gpurun audit` again"
    return data, ""
