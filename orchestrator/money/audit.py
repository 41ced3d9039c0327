"""`gpurun audit`: everything that bills on the user's accounts now, and whose it is.

For each provider whose credentials are present, `Provider.inventory()` lists every instance, pod,
volume and disk that bills, tagged gpurun or not. Each is marked:
- `open run`: it belongs to a run of this ledger that is still open (its guard or teardown owns it);
- `gpurun orphan`: it carries a gpurun run id (tag/name) but no open run of this ledger owns it:
  `gpurun sweep --provider P` ends it with a proof;
- `not gpurun's`: no gpurun marker; listed so that nothing billing is invisible, and left alone.
Besides, from the ledger: every run whose provider cleanup raised after its instances were verified
gone (an event `cleanup_failed` with no `cleanup_done` after it), with what may be left, what it
bills and the command that removes it (`gpurun audit --cleanup`, which runs the cleanup again).
The audit is clean when everything billing belongs to an open run and no cleanup is unfinished;
otherwise the CLI exits Exit.UNOWNED_BILLING, so it can run from cron.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from orchestrator.state.events import EventKind
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


@dataclass(frozen=True)
class Leftover:
    """A run whose provider cleanup raised after its instances were verified gone (teardown's
    `cleanup_failures`): the failure as the proof records it (error, left, bills, remove)."""

    run_id: str
    provider: str
    failure: dict[str, Any]

    @property
    def tag(self) -> str:
        return str(self.failure.get("tag") or self.run_id)


@dataclass
class Audit:
    rows: list[AuditRow]
    skipped: list[tuple[str, str]]  # (provider, why it was not listed: no credentials, an error)
    leftovers: list[Leftover] = field(default_factory=list)  # cleanups that did not finish

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


def leftovers(ledger: Ledger, providers: list[str] | None = None) -> list[Leftover]:
    """Every run (of `providers`, None: all) whose last cleanup failed and was not done since."""
    found: list[Leftover] = []
    for run in ledger.list_runs():
        if providers is not None and run.provider not in providers:
            continue
        last: dict[str, Any] | None = None
        for event in ledger.events(run.run_id):
            if event.phase == EventKind.CLEANUP_FAILED.value:
                last = event.payload
            elif event.phase == EventKind.CLEANUP_DONE.value:
                last = None
        if last is not None:
            found.append(Leftover(run.run_id, run.provider, dict(last)))
    return found


def retry_cleanup(ledger: Ledger, leftover: Leftover, provider: Provider) -> list[str]:
    """Run the provider's cleanup for the run again; on success the leftover is done (event
    `cleanup_done`, with what went). ProviderError (or the SDK's own error) when it fails again."""
    deleted = list(provider.cleanup(leftover.tag))
    ledger.record_event(leftover.run_id, EventKind.CLEANUP_DONE, tag=leftover.tag, deleted=deleted)
    return deleted


def audit(ledger: Ledger, providers: list[Provider], names: list[str] | None = None) -> Audit:
    """Every billing item of every provider given, classified; a provider that cannot list is skipped with
    why. The unfinished cleanups are those of the runs of `names` (None: the providers given)."""
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
    return Audit(rows, skipped, leftovers(ledger, [p.name for p in providers] if names is None else names))
