"""What budgets.yaml's `notify:` section says: where run events go, and which. Only the settings:
the notifier that delivers them is orchestrator.notify, so that reading budgets.yaml
(orchestrator.money.budgets_file) never loads the delivery machinery.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Every event a run can notify, in the order a run meets them.
EVENTS = ("started", "cap_50", "cap_80", "cap_100", "stalled", "deadline", "job_failed", "link_too_slow",
          "final_checkpoint_missing", "verified", "not_verified")
DEFAULT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class NotifyConfig:
    webhook: str | None = None
    ntfy: str | None = None
    command: str | None = None
    events: tuple[str, ...] = EVENTS
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def targets(self) -> list[str]:
        return [name for name in ("webhook", "ntfy", "command") if getattr(self, name)]
