"""Notifications (orchestrator/notify.py and budgets.yaml `notify:`): delivered in order to a real
HTTP receiver and a local command, never blocking the sender, secrets redacted, failures recorded."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from orchestrator.money.budgets_file import load_budgets
from orchestrator.money.errors import BudgetError
from orchestrator.notify import Notifier
from orchestrator.notify_config import EVENTS, NotifyConfig
from orchestrator.redact import redact_text
from tests.e2e_helpers import wait_for


class Receiver:
    """A webhook / ntfy endpoint on loopback; `hold` makes every request hang until released."""

    def __init__(self) -> None:
        self.bodies: list[tuple[str, dict[str, str], bytes]] = []
        self.hold = threading.Event()
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server naming
                data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if receiver.hold.is_set():
                    receiver.release.wait(60)
                receiver.bodies.append((self.path, dict(self.headers), data))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def events(self) -> list[str]:
        return [json.loads(b)["event"] for p, _, b in self.bodies if p.startswith("/hook")]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.release.set()
    r.server.shutdown()


SECRET_HOOK = "/hook/T0001/B0002/s3cr3tT0k3n"


def test_events_arrive_in_order_with_no_secret_in_any_body(receiver: Receiver, tmp_path: Path) -> None:
    out = tmp_path / "command.jsonl"
    cfg = NotifyConfig(webhook=receiver.url(SECRET_HOOK), ntfy=receiver.url("/ntfy/my-topic"),
                       command=f"cat >> {out}; echo >> {out}")
    n = Notifier(cfg)
    n.send("started", "run-1", f"started; it posts to {receiver.url(SECRET_HOOK)}", deadline_epoch=123.0)
    n.cap_crossed("run-1", 0.6, 1.0)
    n.cap_crossed("run-1", 0.9, 1.0)
    n.cap_crossed("run-1", 0.95, 1.0)  # each threshold fires once
    n.send("verified", "run-1", "verified gone")
    n.close()
    assert receiver.events() == ["started", "cap_50", "cap_80", "verified"]
    ntfy = [(h, b) for p, h, b in receiver.bodies if p.startswith("/ntfy")]
    assert [h["Title"] for h, _ in ntfy][0] == "gpurun run-1: started" and len(ntfy) == 4
    commands = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    assert [c["event"] for c in commands] == ["started", "cap_50", "cap_80", "verified"]
    everything = b"".join(b for _, _, b in receiver.bodies).decode() + out.read_text()
    assert "s3cr3tT0k3n" not in everything and "my-topic" not in everything
    assert "s3cr3tT0k3n" not in redact_text(f"log line with {receiver.url(SECRET_HOOK)}")


def test_a_hanging_receiver_never_blocks_the_sender(receiver: Receiver) -> None:
    receiver.hold.set()
    failures: list[tuple[str, str, str]] = []
    n = Notifier(NotifyConfig(webhook=receiver.url("/hook/x"), timeout_s=1), on_failure=lambda *f: failures.append(f))
    n.send("started", "run-1", "one")
    n.send("stalled", "run-1", "two")  # queued behind the hung delivery: send returned at once
    sent_before_any_answer = list(receiver.bodies)
    assert sent_before_any_answer == []
    wait_for(lambda: len(failures) == 2, 30, "both deliveries to time out")
    assert [f[:2] for f in failures] == [("started", "webhook"), ("stalled", "webhook")]
    assert "timed out" in failures[0][2].lower() or "timeout" in failures[0][2].lower()
    n.close(wait_s=0.1)


def test_a_failing_command_is_recorded_not_raised() -> None:
    failures: list[tuple[str, str, str]] = []
    n = Notifier(NotifyConfig(command="exit 7"), on_failure=lambda *f: failures.append(f))
    n.send("job_failed", "run-1", "job exited 1")
    n.close()
    assert failures and failures[0][:2] == ("job_failed", "command") and "7" in failures[0][2]


def test_only_the_chosen_events_are_sent(receiver: Receiver) -> None:
    n = Notifier(NotifyConfig(webhook=receiver.url("/hook/y"), events=("verified", "not_verified")))
    for event in EVENTS:
        n.send(event, "run-1", event)
    n.close()
    assert receiver.events() == ["verified", "not_verified"]


MINIMAL = "per_run_default_usd: 1\nper_run_max_usd: 5\ndaily_usd: null\nmonthly_usd: null\n"


def test_budgets_yaml_notify_section_is_read_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "budgets.yaml"
    path.write_text(MINIMAL + "notify:\n  webhook: https://hooks.example.com/T1/B2/zzz\n  events: [verified]\n"
                    "  timeout_s: 3\n")
    cfg = load_budgets(path).notify
    assert cfg is not None and cfg.targets == ["webhook"] and cfg.events == ("verified",) and cfg.timeout_s == 3
    path.write_text(MINIMAL + "notify:\n  webhook: ftp://hooks.example.com/secret-zzz\n")
    with pytest.raises(BudgetError, match="notify.webhook must be an http") as err:
        load_budgets(path)
    assert "secret-zzz" not in str(err.value)  # a URL that may be a credential is never echoed
    path.write_text(MINIMAL + "notify:\n  events: [started, exploded]\n")
    with pytest.raises(BudgetError, match="notify.events"):
        load_budgets(path)
    path.write_text(MINIMAL + "notify: null\n")
    assert load_budgets(path).notify is None
