"""HTTPS downloads for data preparation: bounded timeouts, retries with backoff, resumable `.part` files.

Only the standard library (urllib), so the instance needs nothing beyond torch + numpy to fetch data.
"""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

CHUNK = 1 << 20
TIMEOUT_S = 30.0  # per socket operation (connect, each read), not for the whole file
RETRIES = 4
BACKOFF_S = 2.0  # 2, 4, 8, 16 s between attempts
USER_AGENT = "gpurun-trainer/1"
# (bytes so far, expected total or None)
OnBytes = Callable[[int, "int | None"], None]


class DownloadError(Exception):
    """A download that failed for good; `missing` when the server says the file is not there."""

    def __init__(self, url: str, reason: str, missing: bool = False) -> None:
        super().__init__(f"{url}: {reason}")
        self.url, self.reason, self.missing = url, reason, missing


def _request(url: str, offset: int, end: int | None) -> urllib.request.Request:
    headers = {"User-Agent": USER_AGENT}
    if offset or end is not None:
        headers["Range"] = f"bytes={offset}-{'' if end is None else end - 1}"
    token = os.environ.get("HF_TOKEN")
    if token and "huggingface" in url.split("/")[2]:
        headers["Authorization"] = f"Bearer {token}"  # public files need none; it only lifts rate limits
    return urllib.request.Request(url, headers=headers)


def _attempt(url: str, part: Path, max_bytes: int | None, on_bytes: OnBytes | None) -> None:
    """One try: continue `part` from where it stops (Range) or restart it when the server ignores ranges."""
    have = part.stat().st_size if part.exists() else 0
    if max_bytes is not None and have >= max_bytes:
        return
    with urllib.request.urlopen(_request(url, have, max_bytes), timeout=TIMEOUT_S) as resp:
        if have and resp.status != 206:
            have = 0  # the server sent the whole file: start over
        length = resp.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        if max_bytes is not None:
            total = min(total, max_bytes) if total is not None else max_bytes
        with open(part, "ab" if have else "wb") as f:
            got = have
            while max_bytes is None or got < max_bytes:
                chunk = resp.read(CHUNK if max_bytes is None else min(CHUNK, max_bytes - got))
                if not chunk:
                    break
                f.write(chunk)
                got += len(chunk)
                if on_bytes:
                    on_bytes(got, total)
    if length is not None and total is not None and got < total:  # retried, resuming from here
        raise ConnectionError(f"connection closed after {got} of {total} bytes")


def fetch(url: str, dest: str | os.PathLike[str], max_bytes: int | None = None,
          on_bytes: OnBytes | None = None) -> Path:
    """Download `url` (its first `max_bytes` bytes if given) to `dest` via `dest.part`; returns `dest`.

    An existing `dest` is taken as complete (it only appears by the final rename). Client errors
    (404, 401, 403) fail at once; network errors and 5xx/429 are retried with exponential backoff.
    """
    dest = Path(dest)
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    last = ""
    for attempt in range(RETRIES + 1):
        if attempt:
            time.sleep(BACKOFF_S * 2 ** (attempt - 1))
        try:
            _attempt(url, part, max_bytes, on_bytes)
            os.replace(part, dest)
            return dest
        except urllib.error.HTTPError as e:
            last = f"HTTP {e.code} {e.reason}"
            if e.code == 416:  # asked past the end: the .part is useless
                part.unlink(missing_ok=True)
            elif 400 <= e.code < 500 and e.code not in (408, 429):
                raise DownloadError(url, last, missing=e.code in (401, 403, 404)) from None
        except urllib.error.URLError as e:
            last = str(e.reason)
        except (OSError, ValueError) as e:  # timeouts, resets, truncated bodies
            last = str(e) or type(e).__name__
    raise DownloadError(url, f"{last} (after {RETRIES + 1} attempts)")
