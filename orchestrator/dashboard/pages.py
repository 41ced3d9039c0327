"""The dashboard's templates: Jinja2 with autoescape on, and every value shown masked.

Two rules keep the pages safe whatever a ledger row or a run directory holds:
- autoescape: a run id, a path or an error text is always text, never markup;
- `finalize`: every `{{ value }}` goes through orchestrator.redact before it is escaped, so a secret
  that reached a row some other way (an older gpurun, a job's own log line) is masked on the page too.
The evidence card is Markdown rendered by markdown-it-py (CommonMark) with raw HTML off: a `<script>`
in the card is shown as text. Its one image, loss.png, is served from the run's directory; any
other image is dropped.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, PackageLoader, select_autoescape
from markdown_it import MarkdownIt
from markupsafe import Markup

from orchestrator.plan.words import duration
from orchestrator.redact import redact, redact_text


def _finalize(value: Any) -> Any:
    if isinstance(value, Markup):  # made here from redacted text (the card, the curves' JSON)
        return value
    if isinstance(value, str):
        return redact_text(value)
    return value


def usd(value: Any) -> str:
    return "-" if value is None else f"{float(value):.4f}"


def when(epoch: Any) -> str:
    return "-" if epoch is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(epoch)))


def ago(epoch: Any, now: float | None = None) -> str:
    if epoch is None:
        return "never"
    return f"{duration(max(0.0, (now or time.time()) - float(epoch)))} ago"


def size(n: Any) -> str:
    value = float(n or 0)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


def seconds_left(value: Any) -> str:
    if value is None:
        return "-"
    return duration(float(value)) if float(value) > 0 else "passed"


def data_json(value: Any) -> Markup:
    """Redacted JSON for a <script type="application/json"> block (`<`, `>`, `&` escaped)."""
    text = json.dumps(redact(value)).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return Markup(text)


def environment() -> Environment:
    env = Environment(loader=PackageLoader("orchestrator.dashboard", "templates"),
                      autoescape=select_autoescape(default=True, default_for_string=True),
                      finalize=_finalize, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(usd=usd, when=when, ago=ago, size=size, seconds_left=seconds_left, data_json=data_json,
                       urlpart=lambda v: quote(str(v), safe=""))
    return env


def render_card(markdown: str, run_id: str) -> Markup:
    """EVIDENCE.md as HTML: redacted, CommonMark without raw HTML, loss.png served from the run."""
    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    image_rule = md.renderer.rules.get("image")

    def image(_renderer: Any, tokens: Any, idx: int, options: Any, env: Any) -> str:
        token = tokens[idx]
        if Path(str(token.attrGet("src") or "")).name != "loss.png":
            return ""
        token.attrSet("src", f"/run/{quote(run_id, safe='')}/loss.png")
        return image_rule(tokens, idx, options, env) if image_rule else ""

    md.add_render_rule("image", image)
    return Markup(md.render(redact_text(markdown)))
