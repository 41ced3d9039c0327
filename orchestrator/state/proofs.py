"""The ledger's shutdown proofs: one hash chain per ledger, each proof naming the one recorded before it.

A proof is appended in a write transaction (the ledger's write lock, `state.db`): on a ledger shared
by several machines the chain still never forks.
"""

from __future__ import annotations

import re
import time
from typing import Any

from sqlalchemy import insert, select

from orchestrator.state.db import Database
from orchestrator.state.tables import proofs
from orchestrator.state.values import LedgerError

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_HEAD = select(proofs.c.sha256).order_by(proofs.c.id.desc()).limit(1)


class ProofStore(Database):
    def last_proof_sha256(self) -> str | None:
        with self.reading() as conn:
            return conn.execute(_HEAD).scalar()

    def add_proof(self, run_id: str, sha256: str, path: str, prev_sha256: str | None) -> None:
        """Append a proof. `prev_sha256` must be the current chain head, so the chain never forks."""
        for name, value in (("sha256", sha256), ("prev_sha256", prev_sha256)):
            if value is not None and not _SHA256_RE.match(value):
                raise LedgerError(f"{name} must be 64 lower-case hex digits, got {value!r}")
        with self.transaction() as conn:
            head = conn.execute(_HEAD).scalar()
            if prev_sha256 != head:
                raise LedgerError(
                    f"proof for run {run_id!r} chains to {prev_sha256!r} but the ledger's last proof is"
                    f" {head!r}: rewrite the proof with the current last_proof_sha256()"
                )
            conn.execute(insert(proofs).values(run_id=run_id, sha256=sha256, path=str(path), prev_sha256=prev_sha256,
                                               created_at=time.time()))

    def proofs(self, run_id: str | None = None) -> list[dict[str, Any]]:
        """Proof rows {run_id, sha256, path, prev_sha256, created_at} in chain order."""
        query = select(proofs.c.run_id, proofs.c.sha256, proofs.c.path, proofs.c.prev_sha256, proofs.c.created_at)
        if run_id is not None:
            query = query.where(proofs.c.run_id == run_id)
        with self.reading() as conn:
            return [dict(r) for r in conn.execute(query.order_by(proofs.c.id)).mappings().all()]
