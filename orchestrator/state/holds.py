"""The ledger's money: one hold per run against the account caps (like a card hold), then its cost."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from orchestrator.state.db import Database
from orchestrator.state.values import LedgerError, check_usd


class HoldStore(Database):
    def add_hold(self, run_id: str, provider: str, usd: float, at: float | None = None) -> None:
        """Hold `usd` against the account caps for this run (like a card hold).

        Holding again for the same unsettled run replaces the hold (a resumed launch); a settled
        run cannot be held again.
        """
        usd = check_usd("hold", usd)
        when = time.time() if at is None else float(at)
        with self.transaction() as conn:
            row = conn.execute("SELECT settled_at FROM holds WHERE run_id = ?", (run_id,)).fetchone()
            if row is not None and row["settled_at"] is not None:
                raise LedgerError(f"run {run_id!r} is already settled: it cannot hold money again")
            conn.execute(
                "INSERT INTO holds (run_id, provider, held_usd, created_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(run_id) DO UPDATE SET provider = excluded.provider,"
                " held_usd = excluded.held_usd, created_at = excluded.created_at",
                (run_id, provider, usd, when),
            )

    def settle(self, run_id: str, actual_usd: float) -> None:
        """Release the run's hold and record what it really cost (settling again corrects it)."""
        actual = check_usd("actual cost", actual_usd)
        now = time.time()
        with self.transaction() as conn:
            run = conn.execute("SELECT provider, created_at FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            hold = conn.execute("SELECT 1 FROM holds WHERE run_id = ?", (run_id,)).fetchone()
            if run is None and hold is None:
                raise LedgerError(f"no run {run_id!r} in the ledger (see `gpurun status`)")
            if hold is None:
                # Settled without a hold (e.g. caps were off): still count the money it cost.
                conn.execute(
                    "INSERT INTO holds (run_id, provider, held_usd, created_at) VALUES (?, ?, 0, ?)",
                    (run_id, run["provider"], run["created_at"]),
                )
            conn.execute(
                "UPDATE holds SET settled_usd = ?, settled_at = ? WHERE run_id = ?", (actual, now, run_id)
            )
            conn.execute(
                "UPDATE runs SET cost_usd = ?, settled = 1, updated_at = ? WHERE run_id = ?", (actual, now, run_id)
            )

    def committed_usd(
        self, since_epoch: float, provider: str | None = None, exclude_run: str | None = None
    ) -> float:
        """Open holds + settled costs of holds made at/after `since_epoch` (optionally one provider).

        `exclude_run` leaves one run out: a resumed launch re-holding must not count itself twice.
        """
        sql = (
            "SELECT COALESCE(SUM(CASE WHEN settled_at IS NULL THEN held_usd ELSE settled_usd END), 0)"
            " FROM holds WHERE created_at >= ?"
        )
        args: list[Any] = [since_epoch]
        if provider is not None:
            sql += " AND provider = ?"
            args.append(provider)
        if exclude_run is not None:
            sql += " AND run_id != ?"
            args.append(exclude_run)
        return float(self._conn().execute(sql, args).fetchone()[0])

    def hold(self, run_id: str) -> dict[str, Any] | None:
        """The run's hold row: {run_id, provider, held_usd, created_at, settled_usd, settled_at}."""
        row = self._conn().execute("SELECT * FROM holds WHERE run_id = ?", (run_id,)).fetchone()
        return dict(row) if row else None

    def _spend_entries(self) -> list[tuple[float, str, float, float]]:
        """(created_at, provider, cost, held) for every hold, and every run that never held money."""
        conn = self._conn()
        entries: list[tuple[float, str, float, float]] = []
        for r in conn.execute("SELECT * FROM holds").fetchall():
            if r["settled_at"] is None:
                entries.append((r["created_at"], r["provider"], 0.0, r["held_usd"]))
            else:
                entries.append((r["created_at"], r["provider"], r["settled_usd"], 0.0))
        for r in conn.execute(
            "SELECT created_at, provider, cost_usd FROM runs WHERE run_id NOT IN (SELECT run_id FROM holds)"
        ).fetchall():
            entries.append((r["created_at"], r["provider"], r["cost_usd"] or 0.0, 0.0))
        return entries

    def spend_by(self, group: str = "day") -> list[dict[str, Any]]:
        """Rows {key, provider, runs, cost_usd, held_usd} grouped by local day, month or provider.

        cost_usd sums settled costs, held_usd the holds still open. Newest key first for day/month.
        """
        if group not in ("day", "month", "provider"):
            raise LedgerError(f"cannot group spend by {group!r}: use day, month or provider")
        groups: dict[tuple[str, str], dict[str, Any]] = {}
        for created, prov, cost, held in self._spend_entries():
            if group == "provider":
                key = prov
            else:
                fmt = "%Y-%m-%d" if group == "day" else "%Y-%m"
                key = datetime.fromtimestamp(created).strftime(fmt)  # local time, as the caps are
            row = groups.setdefault(
                (key, prov), {"key": key, "provider": prov, "runs": 0, "cost_usd": 0.0, "held_usd": 0.0}
            )
            row["runs"] += 1
            row["cost_usd"] += cost
            row["held_usd"] += held
        rows = list(groups.values())
        if group == "provider":
            rows.sort(key=lambda r: r["provider"])
        else:
            rows.sort(key=lambda r: (r["key"], r["provider"]))
            rows.sort(key=lambda r: r["key"], reverse=True)
        return rows
