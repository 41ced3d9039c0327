"""The ledger's shutdown proofs: a hash chain, each proof naming the one recorded before it."""

from __future__ import annotations

import re
import time
from typing import Any

from orchestrator.state.db import Database
from orchestrator.state.values import LedgerError

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class ProofStore(Database):
    def last_proof_sha256(self) -> str | None:
        row = self._conn().execute("SELECT sha256 FROM proofs ORDER BY id DESC LIMIT 1").fetchone()
        return row["sha256"] if row else None

    def add_proof(self, run_id: str, sha256: str, path: str, prev_sha256: str | None) -> None:
        """Append a proof. `prev_sha256` must be the current chain head, so the chain never forks."""
        for name, value in (("sha256", sha256), ("prev_sha256", prev_sha256)):
            if value is not None and not _SHA256_RE.match(value):
                raise LedgerError(f"{name} must be 64 lower-case hex digits, got {value!r}")
        with self.transaction() as conn:
            row = conn.execute("SELECT sha256 FROM proofs ORDER BY id DESC LIMIT 1").fetchone()
            head = row["sha256"] if row else None
            if prev_sha256 != head:
                raise LedgerError(
                    f"proof for run {run_id!r} chains to {prev_sha256!r} but the ledger's last proof is"
                    f" {head!r}: rewrite the proof with the current last_proof_sha256()"
                )
            conn.execute(
                "INSERT INTO proofs (run_id, sha256, path, prev_sha256, created_at) VALUES (?, ?, ?, ?, ?)",
                (run_id, sha256, str(path), prev_sha256, time.time()),
            )

    def proofs(self, run_id: str | None = None) -> list[dict[str, Any]]:
        """Proof rows {run_id, sha256, path, prev_sha256, created_at} in chain order."""
        sql = "SELECT run_id, sha256, path, prev_sha256, created_at FROM proofs"
        args: tuple[Any, ...] = ()
        if run_id is not None:
            sql += " WHERE run_id = ?"
            args = (run_id,)
        return [dict(r) for r in self._conn().execute(sql + " ORDER BY id", args).fetchall()]
