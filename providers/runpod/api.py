"""The `runpod` SDK and its GraphQL endpoint, wrapped: key, bounds, retries, errors, safe strings.

Facts this module relies on (read from runpod 1.12.0, `runpod/api/graphql.py` and friends):

- Every SDK call is `run_graphql_query(query, api_key=None)`: it POSTs `{"query": ...}` to
  `os.environ["RUNPOD_API_BASE_URL"] + "/graphql"` (read on every call, default
  https://api.runpod.io) with `Authorization: Bearer <key>`, where the key is the argument or the
  module global `runpod.api_key` (imported from the package at call time). `create_pod`,
  `terminate_pod` and `stop_pod` take no key argument (and older SDKs take none anywhere), so the
  global is set before every call and is the only way the key is passed.
- A 401 raises `runpod.error.AuthenticationError`; any other status is parsed as JSON: a body with
  `errors` raises `QueryError(first message)`, a non-JSON body (a gateway's 502 page, a CDN's 403)
  raises `requests.JSONDecodeError`, whose `.doc` is the body text. The status code is not exposed,
  so errors are classified by type and message (see `classify`).
- Requests use a fixed 30 s timeout; we bound each call with `request_timeout_s` (a create waits
  longer than the SDK does, so an abandoned create cannot land behind our back).
- The package's `__init__` loads its serverless worker (`runpod.serverless`: aiohttp, FastAPI, a
  py-cpuinfo subprocess in `serverless/utils/rp_debugger.py`), the `runpod` CLI (paramiko) and the
  endpoint client: 1.7 CPU-s, which every gpurun command on RunPod paid. The control plane is
  `runpod/api/` (ctl_commands, graphql, mutations, queries) and `runpod/error.py`, which import
  nothing of the rest and read the key as `from runpod import api_key`: `import_runpod` loads that
  layer alone, under a package object whose `__init__` is not run (0.1 CPU-s).
- The full package (a layout other than that) runs `logging.basicConfig(level=INFO)`
  (serverless/utils/rp_upload.py); undone.
- Strings are pasted into the GraphQL text unescaped, so everything we pass is validated first.
- Spot (`podRentInterruptable`) and the balance (`myself { clientBalance ... }`) have no SDK
  function: they go through the SDK's own `run_graphql_query` (`RunPodClient.graphql`).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import math
import os
import random
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from tenacity import Retrying

from providers.base import CredentialsError, NoCapacityError, ProviderError, TransientProviderError
from providers.common import bounded_call, classified, one_line, retry_policy

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: tomli, which the runpod SDK depends on
    import tomli as tomllib

log = logging.getLogger("gpurun.providers.runpod")

T = TypeVar("T")

DEFAULT_API_BASE = "https://api.runpod.io"

# ------------------------------------------------------------------ strings pasted into GraphQL

# What may be pasted into a GraphQL string literal. Everything else (quotes, backslashes, braces,
# control characters, newlines) is refused: the SDK does not escape, so a quote would end the
# literal and let the rest of the value rewrite the mutation.
_FORBIDDEN_IN_STRING = re.compile(r"[\"'\\{}\x00-\x1f\x7f`$]")
IMAGE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,254}$")
GPU_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._()+-]{0,99}$")
ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
POD_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
MOUNT_PATH_RE = re.compile(r"^/[A-Za-z0-9._/-]*$")
_API_KEY_RE = re.compile(r"^[A-Za-z0-9_.-]{8,512}$")


def check_string(field: str, value: str, pattern: re.Pattern[str] | None = None) -> str:
    """Refuse a value that would break out of a GraphQL string literal (the SDK does not escape)."""
    if not isinstance(value, str):
        raise ProviderError(f"RunPod {field} must be a string, got {type(value).__name__}")
    if _FORBIDDEN_IN_STRING.search(value):
        raise ProviderError(
            f"RunPod {field} contains a character that is not allowed (quotes, backslashes, braces, "
            f"`, $ or control characters such as newlines): refusing to send it to the API"
        )
    if pattern is not None and not pattern.match(value):
        raise ProviderError(f"RunPod {field} {value!r} is not valid (expected {pattern.pattern})")
    return value


def check_pod_id(pod_id: str) -> str:
    return check_string("pod id", pod_id, POD_ID_RE)


def gql_str(value: str) -> str:
    """A GraphQL string literal (JSON escaping is valid GraphQL), for queries we write ourselves."""
    return json.dumps(value, ensure_ascii=True)


def to_float(value: Any) -> float | None:
    """A number from an API answer, or None where it is missing or not a number."""
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


# ------------------------------------------------------------------ errors

# Error texts the real API uses for "this pod is already gone".
GONE_MESSAGES = ("not found", "does not exist", "no pod", "already terminated")
_AUTH_MESSAGES = ("unauthorized", "unauthorised", "forbidden", "permission denied", "invalid api key",
                  "api key is invalid", "not authorized")
# A deploy refused for capacity. The first is the API's text word for word (runpodctl
# cmd/pods/createPods.go falls back to the next GPU on it); the console's wording of the same is in
# TheLastBen/fast-stable-diffusion#2484 ("this machine does not have the resources to deploy this pod").
NO_CAPACITY_MESSAGES = ("no longer any instances available", "no instances available",
                        "does not have the resources to deploy", "out of capacity")
# A deploy refused for credit: RunPod wants one hour of the pod's price in the balance
# (https://docs.runpod.io/accounts-billing/billing). Its GraphQL wording is not published; REST v2
# calls it "402 Insufficient balance" (api-reference-v2/openapi.json, createPod), so match the forms.
LOW_BALANCE_MESSAGES = ("insufficient balance", "insufficient funds", "not enough funds",
                        "enough credit", "balance is too low", "low balance", "add funds")
_TRANSIENT_MESSAGES = ("internal server error", "something went wrong", "timeout", "timed out",
                       "temporarily", "try again", "bad gateway", "service unavailable",
                       "gateway time", "rate limit", "too many requests")


def is_gone_error(exc: ProviderError) -> bool:
    """A definite "no such pod" answer (never a transient failure that happens to say "not found")."""
    return not isinstance(exc, TransientProviderError) and any(m in str(exc).lower() for m in GONE_MESSAGES)


def _first_line(text: str | None) -> str:
    # The SDK's messages can carry a second line with the query text: only the first is shown.
    lines = (text or "").strip().splitlines()
    return one_line(lines[0]) if lines else ""


def classify(exc: BaseException) -> ProviderError:
    """Turn an SDK/requests exception into our error types, without ever quoting a key."""
    import requests  # the SDK's HTTP client: only ever used through it, so loaded with it
    from runpod import error as rp_error

    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, rp_error.AuthenticationError):
        return CredentialsError(
            "RunPod rejected the API key (401): check RUNPOD_API_KEY or ~/.runpod/config.toml"
        )
    if isinstance(exc, rp_error.QueryError):
        msg = _first_line(exc.message) or "unknown error"
        low = msg.lower()
        if any(m in low for m in NO_CAPACITY_MESSAGES):
            return NoCapacityError(
                "RunPod has no machine free for this GPU type / count / cloud right now: try another "
                "GPU, cloud type or count (`gpurun offers`)"
            )
        if any(m in low for m in LOW_BALANCE_MESSAGES):
            return ProviderError(
                f"RunPod refused the deploy for credit ({msg}): a pod needs at least one hour of its "
                f"price in the balance (https://docs.runpod.io/accounts-billing/billing); add funds"
            )
        if any(m in low for m in _AUTH_MESSAGES):
            return CredentialsError(
                f"RunPod refused the API key ({msg}): check RUNPOD_API_KEY and the key's permissions"
            )
        if any(m in low for m in _TRANSIENT_MESSAGES):
            return TransientProviderError(f"RunPod API error (will retry): {msg}")
        return ProviderError(f"RunPod API error: {msg}")
    if isinstance(exc, requests.exceptions.JSONDecodeError):
        # A non-JSON body: a gateway error page, a CDN block. Only the body tells which.
        body = (getattr(exc, "doc", "") or "")[:2000].lower()
        if re.search(r"\b40[13]\b", body) or "forbidden" in body or "unauthori" in body:
            return CredentialsError(
                "RunPod refused the request (401/403): check RUNPOD_API_KEY and the key's permissions"
            )
        return TransientProviderError("RunPod API answered with a non-JSON error page (5xx?)")
    if isinstance(exc, (requests.exceptions.Timeout, requests.exceptions.ConnectionError, TimeoutError)):
        return TransientProviderError(f"RunPod API unreachable or slow: {type(exc).__name__}")
    if isinstance(exc, requests.exceptions.RequestException):
        return TransientProviderError(f"RunPod API request failed: {type(exc).__name__}")
    if isinstance(exc, ValueError):
        # The SDK's own checks, e.g. create_pod's "No GPU found with the specified ID".
        return ProviderError(f"RunPod refused the request: {_first_line(str(exc))}")
    if isinstance(exc, (KeyError, TypeError)):
        # A 5xx with a JSON body but no "errors" makes the SDK index a missing "data".
        return TransientProviderError(f"RunPod API answered without data ({type(exc).__name__})")
    return ProviderError(f"RunPod SDK error: {type(exc).__name__}: {one_line(exc)}")


# ------------------------------------------------------------------ the SDK, loaded lazily

_IMPORT_LOCK = threading.Lock()


# What the package's __init__ re-exports from runpod/api/ctl_commands.py (runpod 1.12.0), the names
# gpurun and a user's code in the same process reach as `runpod.<name>`.
_CONTROL_PLANE_NAMES = (
    "create_container_registry_auth", "create_endpoint", "create_pod", "create_template",
    "delete_container_registry_auth", "get_endpoints", "get_gpu", "get_gpus", "get_pod", "get_pods",
    "get_user", "resume_pod", "stop_pod", "terminate_pod", "update_container_registry_auth",
    "update_endpoint_template", "update_user_settings",
)


def import_runpod() -> Any:
    """The SDK as a module: its control-plane layer alone when it has the layout read above, else the
    whole package (with its import-time `logging.basicConfig(level=INFO)` undone)."""
    with _IMPORT_LOCK:
        if "runpod" in sys.modules:
            return sys.modules["runpod"]
        try:
            return _import_control_plane()
        except ImportError:
            return _import_whole_package()


def _import_control_plane() -> Any:
    """`runpod` as a package object whose __init__ is not run, carrying runpod/api and runpod/error.

    Its submodules import as usual (`runpod.serverless` too, should anyone ask for it).
    """
    spec = importlib.util.find_spec("runpod")
    if spec is None or spec.submodule_search_locations is None:
        raise ImportError("runpod is not a package here")
    package = importlib.util.module_from_spec(spec)
    package.api_key = None  # the global run_graphql_query reads (set by RunPodClient.sdk)
    sys.modules["runpod"] = package
    try:
        ctl_commands = importlib.import_module("runpod.api.ctl_commands")
        package.error = importlib.import_module("runpod.error")
        for name in _CONTROL_PLANE_NAMES:
            setattr(package, name, getattr(ctl_commands, name))
    except (ImportError, AttributeError) as exc:  # another SDK layout: forget the partial load
        for name in [m for m in sys.modules if m == "runpod" or m.startswith("runpod.")]:
            del sys.modules[name]
        raise ImportError(f"runpod's control plane is not where runpod 1.12 has it: {exc}") from exc
    return package


def _import_whole_package() -> Any:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    import runpod  # slow and heavy (aiohttp, FastAPI, paramiko, a py-cpuinfo subprocess)

    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)
    return runpod


# ------------------------------------------------------------------ the client


@dataclass(frozen=True)
class CallPolicy:
    """How long one call may take and how often a transient failure is tried again."""

    request_timeout_s: float = 30.0
    max_attempts: int = 5
    retry_deadline_s: float = 90.0
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 15.0

    @property
    def create_timeout_s(self) -> float:
        # Longer than the SDK's own 30 s request timeout: an abandoned create could still land and
        # leave a second pod behind, so we wait for the SDK to give up first.
        return max(self.request_timeout_s, 30.0) + 15.0


class RateLimited(TransientProviderError):
    """REST v2's 429 (components.responses.TooManyRequestsError in api-reference-v2/openapi.json):
    "The caller exceeded its per-user rate limit"; its `Retry-After` header is "Seconds to wait before
    retrying, per the exceeded window" (an integer). `retry_after_s` is None where it was missing or
    not a number of seconds."""

    def __init__(self, message: str, retry_after_s: float | None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds: an integer on this API (openapi.json: `schema: {type: integer}`; its
    createPod sample: "Retry-After is integer seconds on this API"). An HTTP-date or junk: None."""
    try:
        seconds = float(str(value).strip())
    except (TypeError, ValueError):
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


class RunPodClient:
    """One account's way into the API: finds the key, then bounds, classifies and retries each call.

    `sleep` and `clock` (time.sleep, time.monotonic) are what the REST retries wait with and measure
    their bound by; a test swaps them for a virtual clock."""

    def __init__(self, *, api_key: str | None, config_path: Path, profile: str, policy: CallPolicy,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._explicit_key = api_key
        self.config_path = config_path
        self.profile = profile
        self.policy = policy
        self.sleep = sleep
        self.clock = clock

    def api_key(self) -> str | None:
        """The argument, else RUNPOD_API_KEY, else the SDK's config file (what `runpod config` writes)."""
        key = self._explicit_key or os.environ.get("RUNPOD_API_KEY")
        if not key and self.config_path.is_file():
            try:
                with self.config_path.open("rb") as fh:
                    data = tomllib.load(fh)
            except (OSError, ValueError) as exc:
                raise CredentialsError(
                    f"{self.config_path} is not readable TOML ({type(exc).__name__}): fix it or set "
                    f"RUNPOD_API_KEY"
                ) from None
            section = data.get(self.profile)
            if isinstance(section, dict):
                key = section.get("api_key")
        if not key:
            return None
        return str(key).strip()

    def require_key(self) -> str:
        key = self.api_key()
        if not key:
            raise CredentialsError(
                f"no RunPod API key: set RUNPOD_API_KEY or run `runpod config` (writes "
                f"{self.config_path}, [{self.profile}] api_key)"
            )
        if not _API_KEY_RE.match(key):
            # A stray newline or quote would corrupt the Authorization header; never echo the key.
            raise CredentialsError(
                "the RunPod API key has unexpected characters (whitespace, quotes?): copy it again"
            )
        return key

    def retrying(self) -> Retrying:
        p = self.policy
        return retry_policy(attempts=p.max_attempts, deadline_s=p.retry_deadline_s,
                            initial_s=p.backoff_initial_s, max_wait_s=p.backoff_max_s, logger=log)

    def sdk(self, what: str, fn: Callable[[Any], T], *, timeout_s: float | None = None,
            retry: bool = True) -> T:
        """Call fn(runpod_module) with the key set, bounded, classified and (unless retry=False) retried."""
        key = self.require_key()
        bound = self.policy.request_timeout_s if timeout_s is None else timeout_s

        def once() -> T:
            runpod = import_runpod()
            # Set on every call: create_pod/terminate_pod read only this global.
            runpod.api_key = key
            return classified(lambda: bounded_call(lambda: fn(runpod), bound, "RunPod API"), classify)

        if not retry:
            return once()
        try:
            return self.retrying()(once)
        except TransientProviderError as exc:
            raise TransientProviderError(f"{what}: {exc} (gave up after retries)") from None

    def graphql(self, what: str, query: str, *, timeout_s: float | None = None,
                retry: bool = True) -> dict[str, Any]:
        """A query the SDK has no function for, through the SDK's own helper (same URL, key, errors)."""
        def call(runpod: Any) -> dict[str, Any]:
            from runpod.api.graphql import run_graphql_query

            return run_graphql_query(query)  # the key: runpod.api_key, set by sdk()

        return self.sdk(what, call, timeout_s=timeout_s, retry=retry)

    def rest_get(self, what: str, path: str, params: dict[str, str]) -> Any:
        """GET on REST v2 (`https://api.runpod.io/v2/...`: the same host as GraphQL, so
        RUNPOD_API_BASE_URL points both), bounded, classified and retried.

        The SDK has no REST function; requests is its own HTTP client. Auth is `Authorization:
        Bearer <key>` (api-reference-v2/openapi.json, securitySchemes.bearerAuth); errors are RFC 9457
        problem JSON (`title`, `status`, `detail`). A 429 is retried after its `Retry-After` (see
        `rest_retrying`).
        """
        key = self.require_key()
        timeout = self.policy.request_timeout_s

        def call(runpod: Any) -> Any:
            import requests  # the SDK's HTTP client, loaded with it

            base = os.environ.get("RUNPOD_API_BASE_URL", DEFAULT_API_BASE).rstrip("/")
            resp = requests.get(f"{base}{path}", params=params, timeout=timeout,
                                headers={"Authorization": f"Bearer {key}", "Accept": "application/json"})
            return rest_answer(resp.status_code, resp.text, f"{what} ({path})",
                               retry_after=resp.headers.get("Retry-After"))

        return self.rest_retrying(what, lambda: self.sdk(what, call, retry=False))

    def _backoff_s(self, attempt: int) -> float:
        p = self.policy
        return min(p.backoff_max_s, p.backoff_initial_s * 2 ** (attempt - 1)) + random.uniform(0, p.backoff_initial_s)

    def rest_retrying(self, what: str, once: Callable[[], T]) -> T:
        """Call `once` until it answers, within `max_attempts` tries and `retry_deadline_s` of `clock`.

        A transient failure waits the usual backoff; a 429 waits what its Retry-After asks ("Back off
        using `Retry-After`, then resume", createPod's table in api-reference-v2/openapi.json), never
        less: asking again inside the window only earns another 429. A wait that would end past the
        call's bound is not waited: the call gives up at once, saying so."""
        p = self.policy
        deadline = self.clock() + p.retry_deadline_s
        for attempt in range(1, max(1, p.max_attempts) + 1):
            try:
                return once()
            except RateLimited as exc:
                wait, last = (exc.retry_after_s if exc.retry_after_s is not None else self._backoff_s(attempt)), exc
            except TransientProviderError as exc:
                wait, last = self._backoff_s(attempt), exc
            if attempt >= p.max_attempts:
                break
            left = deadline - self.clock()
            if wait > left:
                asked = " (Retry-After)" if isinstance(last, RateLimited) else ""
                raise TransientProviderError(
                    f"{what}: {last} (the next try is {wait:g}s away{asked}, past this call's "
                    f"{p.retry_deadline_s:g}s bound: gave up)") from None
            log.warning("%s: %s; trying again in %.1fs", what, last, wait)
            self.sleep(wait)
        raise TransientProviderError(f"{what}: {last} (gave up after retries)") from None


def rest_answer(status: int, body: str, what: str, *, retry_after: str | None = None) -> Any:
    """A REST v2 answer: the JSON body on 2xx, else one error line from the problem JSON.

    Status codes per api-reference-v2/openapi.json (components.responses): 401 bad key, 403 the key
    lacks access, 429 back off on `Retry-After` (`RateLimited`), 5xx retry. The key is never part of
    the message."""
    try:
        data = json.loads(body) if body else None
    except ValueError:
        data = None
    if 200 <= status < 300:
        if data is None:
            raise TransientProviderError(f"RunPod {what} answered {status} without JSON")
        return data
    problem = data if isinstance(data, dict) else {}
    detail = one_line(problem.get("detail") or problem.get("title") or f"HTTP {status}")
    if status == 401:
        raise CredentialsError("RunPod rejected the API key (401): check RUNPOD_API_KEY or ~/.runpod/config.toml")
    if status == 403:
        raise CredentialsError(f"RunPod refused {what} (403: {detail}): the API key lacks access to it")
    if status == 429:
        wait = retry_after_seconds(retry_after)
        raise RateLimited(f"RunPod {what} answered 429 (rate limited, Retry-After "
                          f"{'missing' if wait is None else f'{wait:g}s'}): {detail}", wait)
    if status >= 500:
        raise TransientProviderError(f"RunPod {what} answered {status} (will retry): {detail}")
    raise ProviderError(f"RunPod {what} answered {status}: {detail}")
