"""Notifications: run events to a webhook, an ntfy topic or a local command (budgets.yaml `notify:`).

    notify:
      webhook: https://hooks.example.com/T000/B000/XXXX   # POST, a JSON body
      ntfy: https://ntfy.sh/my-gpurun-topic                # POST, the message as text, a Title header
      command: "notify-send gpurun"                        # run locally, the JSON body on stdin
      events: [started, cap_80, stalled, job_failed, verified, not_verified]   # default: all
      timeout_s: 5

Delivery never blocks or delays the guard: `Notifier.send` only queues; one background thread
delivers each message to each target with a bounded timeout, in order. A target that fails or
hangs costs only its timeout on that thread, and the failure is recorded as a `notify_failed`
event in the ledger. `close()` waits (bounded) for what is queued, so that "verified gone" leaves
before the CLI exits. The URLs are secrets (a webhook URL is its own credential; an ntfy topic is
readable by anyone who knows it): they are registered with `orchestrator.redact`, so they never reach
a log, the ledger or a card, and a body carries only redacted run facts.
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from orchestrator.notify_config import EVENTS, NotifyConfig
from orchestrator.redact import redact, register_secret

__all__ = ["CAP_THRESHOLDS", "CLOSE_WAIT_S", "EVENTS", "FailureSink", "Notifier", "NotifyConfig"]

#: The share of the cap at which cap_NN fires (once per run each).
CAP_THRESHOLDS = ((0.5, "cap_50"), (0.8, "cap_80"), (1.0, "cap_100"))
CLOSE_WAIT_S = 10.0  # how long the CLI waits at exit for queued messages


#: Records a delivery failure: (event, target, error). The lifecycle passes a ledger event writer.
FailureSink = Callable[[str, str, str], None]


@dataclass
class Notifier:
    config: NotifyConfig | None
    on_failure: FailureSink = field(default=lambda event, target, error: None)
    _queue: queue.Queue[dict[str, Any] | None] = field(default_factory=queue.Queue, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)
    _fired: set[str] = field(default_factory=set, init=False)

    def __post_init__(self) -> None:
        if self.config is not None:
            for url in (self.config.webhook, self.config.ntfy):
                if url:
                    register_secret(url)

    @property
    def enabled(self) -> bool:
        return self.config is not None and bool(self.config.targets)

    def send(self, event: str, run_id: str, message: str, **facts: Any) -> None:
        """Queue one event (once per run and event name for the cap thresholds); returns at once."""
        if event not in EVENTS:
            raise ValueError(f"unknown notification event {event!r}")
        if not self.enabled or self.config is None or event not in self.config.events:
            return
        body = redact({"event": event, "run_id": run_id, "message": message, "time": time.time(), **facts})
        self._queue.put(body)
        if self._thread is None:
            self._thread = threading.Thread(target=self._deliver_all, name="gpurun-notify", daemon=True)
            self._thread.start()

    def cap_crossed(self, run_id: str, spent_usd: float, max_usd: float) -> None:
        """Fire cap_50 / cap_80 / cap_100 as the spend passes each share of the cap (each once)."""
        if max_usd <= 0:
            return
        for share, event in CAP_THRESHOLDS:
            if spent_usd >= share * max_usd - 1e-9 and event not in self._fired:
                self._fired.add(event)
                self.send(event, run_id, f"{spent_usd:.4f} USD spent: {share:.0%} of the {max_usd:.4f} USD cap",
                          spent_usd=round(spent_usd, 6), max_usd=max_usd)

    def close(self, wait_s: float = CLOSE_WAIT_S) -> None:
        """Let the queued messages go (bounded); the thread is a daemon, so a hung target never holds the exit."""
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join(timeout=wait_s)

    # --- the delivery thread ---------------------------------------------------------------------
    def _deliver_all(self) -> None:
        while True:
            body = self._queue.get()
            if body is None:
                return
            for target in self.config.targets if self.config else []:
                try:
                    self._deliver(target, body)
                except Exception as exc:  # noqa: BLE001 - a failed notification must never reach the guard
                    self.on_failure(body["event"], target, f"{type(exc).__name__}: {exc}")

    def _deliver(self, target: str, body: dict[str, Any]) -> None:
        cfg = self.config
        assert cfg is not None
        data = json.dumps(body).encode()
        if target == "webhook":
            assert cfg.webhook
            req = urllib.request.Request(cfg.webhook, data=data, method="POST",
                                         headers={"Content-Type": "application/json", "User-Agent": "gpurun"})
            urllib.request.urlopen(req, timeout=cfg.timeout_s).close()
        elif target == "ntfy":
            assert cfg.ntfy
            # ntfy: the POST body is the message; Title and Tags are headers (https://docs.ntfy.sh/publish/).
            req = urllib.request.Request(cfg.ntfy, data=str(body["message"]).encode(), method="POST",
                                         headers={"Title": f"gpurun {body['run_id']}: {body['event']}",
                                                  "Tags": "gpurun", "User-Agent": "gpurun"})
            urllib.request.urlopen(req, timeout=cfg.timeout_s).close()
        else:
            assert cfg.command
            subprocess.run(cfg.command, shell=True, input=data, timeout=cfg.timeout_s, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
