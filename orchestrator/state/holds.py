"""The ledger's money: one hold per run against the account caps (like a card hold), then its cost."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from sqlalchemy import case, func, insert, select, update

from orchestrator.state.db import Database
from orchestrator.state.tables import holds, runs
from orchestrator.state.values import LedgerError, check_usd

NOBODY = "(nobody)"  # spend_by("person")'s key for runs no one owns


class HoldStore(Database):
    def add_hold(self, run_id: str, provider: str, usd: float, at: float | None = None, *,
                 person: str | None = None, pool: str | None = None) -> None:
        """Hold `usd` against the account caps for this run (like a card hold); `person` and `pool`
        name whose caps it also counts against.

        Holding again for the same unsettled run replaces the hold (a resumed launch); a settled
        run cannot be held again.
        """
        usd = check_usd("hold", usd)
        when = time.time() if at is None else float(at)
        with self.transaction() as conn:
            row = conn.execute(select(holds.c.settled_at).where(holds.c.run_id == run_id)).first()
            values = {"provider": provider, "held_usd": usd, "created_at": when, "person": person, "pool": pool}
            if row is None:
                conn.execute(insert(holds).values(run_id=run_id, **values))
            elif row.settled_at is not None:
                raise LedgerError(f"run {run_id!r} is already settled: it cannot hold money again")
            else:
                conn.execute(update(holds).where(holds.c.run_id == run_id).values(**values))

    def settle(self, run_id: str, actual_usd: float) -> None:
        """Release the run's hold and record what it really cost (settling again corrects it)."""
        actual = check_usd("actual cost", actual_usd)
        now = time.time()
        with self.transaction() as conn:
            run = conn.execute(select(runs.c.provider, runs.c.created_at, runs.c.person, runs.c.pool)
                               .where(runs.c.run_id == run_id)).first()
            hold = conn.execute(select(holds.c.run_id).where(holds.c.run_id == run_id)).first()
            if run is None and hold is None:
                raise LedgerError(f"no run {run_id!r} in the ledger (see `gpurun status`)")
            if hold is None:
                # Settled without a hold (e.g. caps were off): still count the money it cost.
                conn.execute(insert(holds).values(run_id=run_id, provider=run.provider, held_usd=0.0,
                                                  created_at=run.created_at, person=run.person, pool=run.pool))
            conn.execute(update(holds).where(holds.c.run_id == run_id).values(settled_usd=actual, settled_at=now))
            conn.execute(update(runs).where(runs.c.run_id == run_id).values(cost_usd=actual, settled=1, updated_at=now))

    def committed_usd(
        self, since_epoch: float, provider: str | None = None, exclude_run: str | None = None, *,
        person: str | None = None, pool: str | None = None,
    ) -> float:
        """Open holds + settled costs of holds made at/after `since_epoch` (optionally one provider,
        one person's, one pool's).

        `exclude_run` leaves one run out: a resumed launch re-holding must not count itself twice.
        """
        money = case((holds.c.settled_at.is_(None), holds.c.held_usd), else_=holds.c.settled_usd)
        query = select(func.coalesce(func.sum(money), 0.0)).where(holds.c.created_at >= since_epoch)
        for column, value in ((holds.c.provider, provider), (holds.c.person, person), (holds.c.pool, pool)):
            if value is not None:
                query = query.where(column == value)
        if exclude_run is not None:
            query = query.where(holds.c.run_id != exclude_run)
        with self.reading() as conn:
            return float(conn.execute(query).scalar() or 0.0)

    def hold(self, run_id: str) -> dict[str, Any] | None:
        """The run's hold row: {run_id, provider, held_usd, created_at, settled_usd, settled_at, person, pool}."""
        with self.reading() as conn:
            row = conn.execute(select(holds).where(holds.c.run_id == run_id)).mappings().first()
        return dict(row) if row else None

    def _spend_entries(self) -> list[tuple[float, str, float, float, str | None]]:
        """(created_at, provider, cost, held, person) for every hold, and every run that never held money."""
        entries: list[tuple[float, str, float, float, str | None]] = []
        with self.reading() as conn:
            for r in conn.execute(select(holds)).all():
                if r.settled_at is None:
                    entries.append((r.created_at, r.provider, 0.0, r.held_usd, r.person))
                else:
                    entries.append((r.created_at, r.provider, r.settled_usd, 0.0, r.person))
            unheld = select(runs.c.created_at, runs.c.provider, runs.c.cost_usd, runs.c.person).where(
                runs.c.run_id.not_in(select(holds.c.run_id)))
            for r in conn.execute(unheld).all():
                entries.append((r.created_at, r.provider, r.cost_usd or 0.0, 0.0, r.person))
        return entries

    def spend_by(self, group: str = "day") -> list[dict[str, Any]]:
        """Rows {key, provider, runs, cost_usd, held_usd} grouped by local day, month, provider or person.

        cost_usd sums settled costs, held_usd the holds still open. Newest key first for day/month;
        by person, the key is the person (NOBODY for a run no one owns: an orphan, or one from before schema 5).
        """
        if group not in ("day", "month", "provider", "person"):
            raise LedgerError(f"cannot group spend by {group!r}: use day, month, provider or person")
        groups: dict[tuple[str, str], dict[str, Any]] = {}
        for created, prov, cost, held, person in self._spend_entries():
            if group == "provider":
                key = prov
            elif group == "person":
                key = person or NOBODY
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
        elif group == "person":
            rows.sort(key=lambda r: (r["key"], r["provider"]))
        else:
            rows.sort(key=lambda r: (r["key"], r["provider"]))
            rows.sort(key=lambda r: r["key"], reverse=True)
        return rows
