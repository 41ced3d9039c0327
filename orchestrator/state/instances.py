"""The ledger's instances: which run owns which instance, its state, and its pinned SSH host key."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import func, insert, select, update

from orchestrator.state.db import Database
from orchestrator.state.journal import journaled, remembered
from orchestrator.state.rows import InstanceRow, instance_from_row
from orchestrator.state.tables import instances
from orchestrator.state.values import LedgerError, dumps, loads

_ID = instances.c.instance_id


class InstanceStore(Database):
    @journaled
    def add_instance(
        self, run_id: str, provider: str, instance_id: str, state: str, info: dict[str, Any] | None = None
    ) -> None:
        """Record an instance for a run. Re-adding it for the same run (a resumed create) updates it."""
        now = time.time()
        with self.transaction() as conn:
            self._require_run(conn, run_id)
            row = conn.execute(select(instances.c.run_id, instances.c.info).where(_ID == instance_id)).first()
            if row is not None:
                if row.run_id != run_id:
                    raise LedgerError(
                        f"instance {instance_id!r} already belongs to run {row.run_id!r}, not {run_id!r}"
                    )
                merged = loads(row.info)
                merged.update(info or {})
                conn.execute(update(instances).where(_ID == instance_id)
                             .values(state=state, info=dumps(merged), updated_at=now))
                return
            conn.execute(insert(instances).values(instance_id=instance_id, run_id=run_id, provider=provider,
                                                  state=state, info=dumps(info or {}), created_at=now, updated_at=now))

    def update_instance(self, instance_id: str, state: str | None = None, info: dict[str, Any] | None = None) -> None:
        """Set the state and/or merge `info` into the stored info."""
        with self.transaction() as conn:
            stored = conn.execute(select(instances.c.info).where(_ID == instance_id)).scalar()
            if stored is None:
                raise LedgerError(f"no instance {instance_id!r} in the ledger")
            merged = loads(stored)
            merged.update(info or {})
            conn.execute(update(instances).where(_ID == instance_id).values(
                state=func.coalesce(state, instances.c.state), info=dumps(merged), updated_at=time.time()))

    @remembered("instances")
    def instances(self, run_id: str) -> list[InstanceRow]:
        query = select(instances).where(instances.c.run_id == run_id).order_by(instances.c.created_at, _ID)
        with self.reading() as conn:
            rows = conn.execute(query).mappings().all()
        return [instance_from_row(r) for r in rows]

    def instance_owner(self, instance_id: str) -> str | None:
        with self.reading() as conn:
            return conn.execute(select(instances.c.run_id).where(_ID == instance_id)).scalar()

    def pin_host_key(self, instance_id: str, key_type: str, key_b64: str) -> None:
        """Trust on first use: pin the key; pinning a DIFFERENT key later is refused."""
        with self.transaction() as conn:
            row = conn.execute(select(instances.c.host_key_type, instances.c.host_key).where(_ID == instance_id)).first()
            if row is None:
                raise LedgerError(f"no instance {instance_id!r} in the ledger: add it before pinning its host key")
            if row.host_key is not None:
                if (row.host_key_type, row.host_key) == (key_type, key_b64):
                    return
                raise LedgerError(
                    f"instance {instance_id!r} already has a different pinned host key ({row.host_key_type}):"
                    " refusing to replace it (possible man-in-the-middle)"
                )
            conn.execute(update(instances).where(_ID == instance_id)
                         .values(host_key_type=key_type, host_key=key_b64, updated_at=time.time()))

    def host_key(self, instance_id: str) -> tuple[str, str] | None:
        with self.reading() as conn:
            row = conn.execute(select(instances.c.host_key_type, instances.c.host_key).where(_ID == instance_id)).first()
        if row is None or row.host_key is None:
            return None
        return row.host_key_type, row.host_key
