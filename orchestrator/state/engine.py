"""Which database holds the ledger, and the SQLAlchemy engine that reaches it.

Without configuration the ledger is `$GPURUN_HOME/ledger.db`, a SQLite file shared by every gpurun
process on the machine. `GPURUN_LEDGER=postgresql://...`, or `ledger:` in budgets.yaml (./budgets.yaml,
else $GPURUN_HOME/budgets.yaml), puts it in a PostgreSQL database that a team shares (psycopg 3).

SQLite: WAL, synchronous=FULL, and write transactions take the write lock up front (BEGIN IMMEDIATE),
so two launches checking one cap are serialised instead of both seeing the old total. PostgreSQL:
`state.db` locks the ledger's lock row in every write transaction, to the same effect across machines.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from orchestrator import settings
from orchestrator.redact import register_secret
from orchestrator.state.values import LedgerError

BUSY_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 5  # a shared ledger that does not answer: the launch refuses instead of hanging
# A server that vanished without closing the connection (a cut network) is given up on in seconds, not
# the kernel's minutes: libpq's TCP keepalives and tcp_user_timeout (ms of unacknowledged data).
_PG_SOCKET = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3,
              "tcp_user_timeout": 10_000}
WRITE = "gpurun_write"  # connection.info key: the transaction about to begin writes (BEGIN IMMEDIATE)
_LEDGER_KEY = re.compile(r"^ledger\s*:", re.MULTILINE)
_PG_SCHEMES = ("postgresql://", "postgres://", "postgresql+psycopg://")


def configured_url(home: Path, cwd: Path | None = None) -> str | None:
    """$GPURUN_LEDGER, else `ledger:` in ./budgets.yaml or $GPURUN_HOME/budgets.yaml, else None (ledger.db)."""
    url = settings.ledger_url()
    if url is not None:
        return url
    for file in ((cwd or Path.cwd()) / "budgets.yaml", home / "budgets.yaml"):
        if file.is_file():
            return _ledger_key(file)  # the first budgets file found is the one in use (budgets_file)
    return None


def _ledger_key(file: Path) -> str | None:
    try:
        text = file.read_text()
        if not _LEDGER_KEY.search(text):
            return None  # most budgets files: no need to parse YAML on every open
        doc = yaml.safe_load(text)
    except (OSError, yaml.YAMLError):
        return None  # load_budgets reports a broken file with its line; the ledger is not its judge
    value = doc.get("ledger") if isinstance(doc, dict) else None
    if value is None:
        return None
    return settings.ledger_url({settings.LEDGER: str(value)})


def is_postgres(url: str | None) -> bool:
    return bool(url) and str(url).startswith(_PG_SCHEMES)


def shown(url: str) -> str:
    """The URL without its password: what messages and `gpurun status` may print."""
    try:
        return make_url(_driver_url(url)).render_as_string(hide_password=True).replace("+psycopg", "")
    except Exception:  # noqa: BLE001 - malformed: name the scheme only, never the rest
        return url.split("://", 1)[0] + "://..."


def _driver_url(url: str) -> str:
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url[len(scheme):]
    return url


_ENGINES: dict[tuple[str, int], Engine] = {}  # one engine per database and process (a fork makes its own)


def _cached(key: str, make: Callable[[], Engine]) -> Engine:
    slot = (key, os.getpid())
    if slot not in _ENGINES:
        _ENGINES[slot] = make()
    return _ENGINES[slot]


def sqlite_engine(path: Path) -> Engine:
    return _cached(f"sqlite:///{path}", lambda: _sqlite_engine(path))


def _sqlite_engine(path: Path) -> Engine:
    engine = create_engine(f"sqlite:///{path}", poolclass=NullPool, connect_args={"timeout": BUSY_TIMEOUT_S})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # no implicit BEGIN from sqlite3: `_on_begin` issues ours
        for pragma in (f"busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}", "journal_mode = WAL",
                       "synchronous = FULL"):  # money and write-ahead intent: durability first
            dbapi_conn.execute(f"PRAGMA {pragma}")

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.info.get(WRITE) else "BEGIN")

    return engine


def postgres_engine(url: str) -> Engine:
    """An engine for a team's PostgreSQL; its password joins the redactor's secrets first."""
    return _cached(url, lambda: _postgres_engine(url))


def _postgres_engine(url: str) -> Engine:
    try:
        password = make_url(_driver_url(url)).password
        if password:
            register_secret(str(password))  # never in a log, an event, a card or an error line
        return create_engine(_driver_url(url), poolclass=NullPool,
                             connect_args={"connect_timeout": CONNECT_TIMEOUT_S, "application_name": "gpurun",
                                           **_PG_SOCKET})
    except Exception as exc:  # a malformed URL: one line, without the password
        raise LedgerError(f"ledger URL {shown(url)}: {exc}: fix GPURUN_LEDGER or ledger: in budgets.yaml") from None
