"""`gpurun audit`: everything that bills on the user's accounts now, and whose it is.

For each provider whose credentials are present, `Provider.inventory()` lists every instance, pod,
volume and disk that bills, tagged gpurun or not. Each is marked:
- `open run`: it belongs to a run of this ledger that is still open (its guard or teardown owns it);
- `gpurun orphan`: it carries a gpurun run id (tag/name) but no open run of this ledger owns it:
  `gpurun sweep --provider P` ends it with a proof;
- `not gpurun's`: no gpurun marker; listed so that nothing billing is invisible, and left alone.
The audit is clean when everything billing belongs to an open run; otherwise the CLI exits
Exit.UNOWNED_BILLING, so it can run from cron.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.state.ledger import Ledger
from providers.base import Billable, Provider, ProviderError

OPEN_RUN = "open run"
ORPHAN = "gpurun orphan"
FOREIGN = "not gpurun's"


@dataclass(frozen=True)
class AuditRow:
    item: Billable
    owner: str  # OPEN_RUN | ORPHAN | FOREIGN
    run_id: str | None  # the open run, or the run id an orphan carries
    action: str  # what to do about it, in words

    @property
    def unowned(self) -> bool:
        return self.owner != OPEN_RUN


@dataclass
class Audit:
    rows: list[AuditRow]
    skipped: list[tuple[str, str]]  # (provider, why it was not listed: no credentials, an error)

    @property
    def unowned(self) -> list[AuditRow]:
        return [r for r in self.rows if r.unowned]

    @property
    def usd_per_hour(self) -> float:
        return sum(r.item.usd_per_hour or 0.0 for r in self.rows)


def classify(ledger: Ledger, item: Billable) -> AuditRow:
    owner_id = ledger.instance_owner(item.id) or item.run_id
    run = ledger.get_run(owner_id) if owner_id else None
    if run is not None and run.open:
        return AuditRow(item, OPEN_RUN, run.run_id, f"guarded by run {run.run_id} ({run.phase})")
    if item.run_id is not None or run is not None:
        return AuditRow(item, ORPHAN, owner_id, f"`gpurun sweep --provider {item.provider}` ends it with a proof")
    return AuditRow(item, FOREIGN, None, "not made by gpurun: left alone (end it in the provider's console)")


def audit(ledger: Ledger, providers: list[Provider]) -> Audit:
    """Every billing item of every provider given, classified; a provider that cannot list is skipped with why."""
    rows: list[AuditRow] = []
    skipped: list[tuple[str, str]] = []
    for provider in providers:
        try:
            provider.check_credentials()
            items = provider.inventory()
        except ProviderError as exc:
            skipped.append((provider.name, str(exc)))
            continue
        rows += [classify(ledger, item) for item in items]
    return Audit(rows, skipped)
