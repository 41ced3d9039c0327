"""The ledger's instances: which run owns which instance, its state, and its pinned SSH host key."""

from __future__ import annotations

import time
from typing import Any

from orchestrator.state.db import Database
from orchestrator.state.rows import InstanceRow, instance_from_row
from orchestrator.state.values import LedgerError, dumps, loads


class InstanceStore(Database):
    def add_instance(
        self, run_id: str, provider: str, instance_id: str, state: str, info: dict[str, Any] | None = None
    ) -> None:
        """Record an instance for a run. Re-adding it for the same run (a resumed create) updates it."""
        now = time.time()
        with self.transaction() as conn:
            self._require_run(conn, run_id)
            row = conn.execute("SELECT run_id, info FROM instances WHERE instance_id = ?", (instance_id,)).fetchone()
            if row is not None:
                if row["run_id"] != run_id:
                    raise LedgerError(
                        f"instance {instance_id!r} already belongs to run {row['run_id']!r}, not {run_id!r}"
                    )
                merged = loads(row["info"])
                merged.update(info or {})
                conn.execute(
                    "UPDATE instances SET state = ?, info = ?, updated_at = ? WHERE instance_id = ?",
                    (state, dumps(merged), now, instance_id),
                )
                return
            conn.execute(
                "INSERT INTO instances (instance_id, run_id, provider, state, info, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (instance_id, run_id, provider, state, dumps(info or {}), now, now),
            )

    def update_instance(self, instance_id: str, state: str | None = None, info: dict[str, Any] | None = None) -> None:
        """Set the state and/or merge `info` into the stored info."""
        with self.transaction() as conn:
            row = conn.execute("SELECT info FROM instances WHERE instance_id = ?", (instance_id,)).fetchone()
            if row is None:
                raise LedgerError(f"no instance {instance_id!r} in the ledger")
            merged = loads(row["info"])
            merged.update(info or {})
            conn.execute(
                "UPDATE instances SET state = COALESCE(?, state), info = ?, updated_at = ? WHERE instance_id = ?",
                (state, dumps(merged), time.time(), instance_id),
            )

    def instances(self, run_id: str) -> list[InstanceRow]:
        rows = self._conn().execute(
            "SELECT * FROM instances WHERE run_id = ? ORDER BY created_at, rowid", (run_id,)
        ).fetchall()
        return [instance_from_row(r) for r in rows]

    def instance_owner(self, instance_id: str) -> str | None:
        row = self._conn().execute("SELECT run_id FROM instances WHERE instance_id = ?", (instance_id,)).fetchone()
        return row["run_id"] if row else None

    def pin_host_key(self, instance_id: str, key_type: str, key_b64: str) -> None:
        """Trust on first use: pin the key; pinning a DIFFERENT key later is refused."""
        with self.transaction() as conn:
            row = conn.execute(
                "SELECT host_key_type, host_key FROM instances WHERE instance_id = ?", (instance_id,)
            ).fetchone()
            if row is None:
                raise LedgerError(f"no instance {instance_id!r} in the ledger: add it before pinning its host key")
            if row["host_key"] is not None:
                if (row["host_key_type"], row["host_key"]) == (key_type, key_b64):
                    return
                raise LedgerError(
                    f"instance {instance_id!r} already has a different pinned host key ({row['host_key_type']}):"
                    " refusing to replace it (possible man-in-the-middle)"
                )
            conn.execute(
                "UPDATE instances SET host_key_type = ?, host_key = ?, updated_at = ? WHERE instance_id = ?",
                (key_type, key_b64, time.time(), instance_id),
            )

    def host_key(self, instance_id: str) -> tuple[str, str] | None:
        row = self._conn().execute(
            "SELECT host_key_type, host_key FROM instances WHERE instance_id = ?", (instance_id,)
        ).fetchone()
        if row is None or row["host_key"] is None:
            return None
        return row["host_key_type"], row["host_key"]
