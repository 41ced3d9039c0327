"""Plumbing every cloud provider shares: bounded calls, the retry policy, error classification.

Each cloud's own module decides WHAT an error means (its classifier); this module decides HOW a
call is bounded, retried and turned into one ProviderError line, so that is written once.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from tenacity import (
    Retrying,
    before_sleep_log,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
    wait_random,
)

from providers.base import ProviderError, TransientProviderError

T = TypeVar("T")

# The providers quote storage prices per GB-month; 730 h is the month they divide by
# (RunPod's and DataCrunch's pricing pages, AWS's EBS pricing page all use 730).
HOURS_PER_MONTH = 730.0

log = logging.getLogger("gpurun.providers")


def one_line(text: Any, limit: int = 300) -> str:
    """Any message squeezed onto one line, cut at `limit` characters (errors are shown as one line)."""
    return " ".join(str(text).split())[:limit]


def first_env(names: tuple[str, ...] | list[str]) -> str | None:
    """The first non-empty environment variable of `names` (a renamed cloud reads both spellings)."""
    for name in names:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


def bounded_call(fn: Callable[[], T], timeout_s: float | None, what: str = "the API") -> T:
    """Run fn in a daemon thread and stop waiting after timeout_s.

    SDK calls have timeouts of their own that do not cover everything (DNS, token refresh, a hung
    TLS read), and a controller waiting forever on one is a controller that misses its stop time.
    The abandoned thread may still finish; callers whose call has side effects (create) must find
    what it made by name afterwards.
    """
    if timeout_s is None:
        return fn()
    box: dict[str, Any] = {}
    done = threading.Event()

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller's thread
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=target, name=f"gpurun-call: {what}", daemon=True).start()
    if not done.wait(timeout_s):
        raise TransientProviderError(f"{what} did not answer within {timeout_s:g}s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, TransientProviderError)


def retry_policy(
    *,
    attempts: int,
    deadline_s: float,
    initial_s: float,
    max_wait_s: float,
    retry_on: Callable[[BaseException], bool] = is_transient,
    jitter: bool = True,
    logger: logging.Logger | None = None,
) -> Retrying:
    """The one retry policy: transient errors only, exponential backoff with jitter, bounded in
    tries AND in time (a cap on tries alone can outlast the guard's stop time); the last error is
    re-raised as it was, never wrapped in tenacity's RetryError."""
    wait = wait_exponential(multiplier=initial_s, max=max_wait_s)
    if jitter:
        wait = wait + wait_random(0, initial_s)
    return Retrying(
        retry=retry_if_exception(retry_on),
        stop=stop_after_attempt(max(1, attempts)) | stop_after_delay(deadline_s),
        wait=wait,
        before_sleep=before_sleep_log(logger or log, logging.WARNING),
        reraise=True,
    )


def classified(fn: Callable[[], T], classify: Callable[[BaseException], ProviderError | None]) -> T:
    """Call fn; an exception the cloud's classifier recognises becomes its ProviderError.

    The original exception is dropped (`from None`): SDK exceptions carry request bodies and query
    texts, which can hold credentials. An exception the classifier does not know is re-raised.
    """
    try:
        return fn()
    except ProviderError:
        raise
    except Exception as exc:  # noqa: BLE001 - classified below, or re-raised untouched
        mapped = classify(exc)
        if mapped is None:
            raise
        raise mapped from None
