"""The DataCrunch (Verda) HTTP API through the real `verda` SDK: the client, one call, its errors, retries.

Every call goes through the SDK's own HTTP client (`VerdaClient._http_client`: OAuth2 bearer header,
token refresh, path-segment validation, error parsing) rather than its service wrappers, because the
wrappers lose what gpurun needs: `instance_types.get()` turns the price STRING into a float,
`instances.action()` drops the response (a 207 with per-id failures looks like success), and none of
them accept a timeout. The endpoint paths are the SDK's own constants (`sdk_paths`).
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from providers.base import CredentialsError, NoCapacityError, ProviderError, TransientProviderError
from providers.common import bounded_call, first_env, is_transient, one_line, retry_policy

T = TypeVar("T")

# Retries are logged here (tenacity's before_sleep, "Retrying ... in N seconds"), never printed: the
# NullHandler keeps Python's last-resort handler from writing them to the user's stderr when nothing
# is configured; whoever runs gpurun attaches a handler to "gpurun" to put them in the run's log.
log = logging.getLogger("gpurun.providers.datacrunch")
log.addHandler(logging.NullHandler())

DEFAULT_BASE_URL = "https://api.verda.com/v1"
ENV_CLIENT_ID = ("DATACRUNCH_CLIENT_ID", "VERDA_CLIENT_ID")
ENV_CLIENT_SECRET = ("DATACRUNCH_CLIENT_SECRET", "VERDA_CLIENT_SECRET")
ENV_BASE_URL = ("DATACRUNCH_BASE_URL", "VERDA_BASE_URL")


class DataCrunchAPIError(ProviderError):
    """An HTTP error from the API, with what the proof needs (status, parsed body)."""

    def __init__(self, message: str, status: int | None = None, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body
        self.record: dict[str, Any] | None = None  # set by terminate: the request this error answered


class DataCrunchNotFound(DataCrunchAPIError):
    pass


class DataCrunchTransientError(DataCrunchAPIError, TransientProviderError):
    pass


class DataCrunchNoCapacity(DataCrunchAPIError, NoCapacityError):
    """A create refused because the type is not to be had there now: another offer may be."""


class DataCrunchInsufficientFunds(DataCrunchAPIError):
    """The prepaid balance does not cover the deploy (code `insufficient_funds`, HTTP 402)."""


class ProvisioningRefusedError(DataCrunchTransientError):
    """Delete refused while the instance is ordered/provisioning: worth sending again once it is up.

    Transient, but the per-call retry leaves it alone unless asked: the wait is minutes, and the
    teardown's verify loop is what re-sends it."""


@dataclass(frozen=True)
class SDKPaths:
    token: str
    balance: str
    instance_types: str
    availability: str
    instances: str
    ssh_keys: str
    scripts: str
    volumes: str
    volume_types: str
    images: str


@functools.cache
def sdk_paths() -> SDKPaths:
    """The API paths as the SDK spells them; imported on first use so `import providers` stays cheap."""
    from verda.authentication._authentication import TOKEN_ENDPOINT
    from verda.balance._balance import BALANCE_ENDPOINT
    from verda.images._images import IMAGES_ENDPOINT
    from verda.instance_types._instance_types import INSTANCE_TYPES_ENDPOINT
    from verda.instances._instances import INSTANCE_AVAILABILITY_ENDPOINT, INSTANCES_ENDPOINT
    from verda.ssh_keys._ssh_keys import SSHKEYS_ENDPOINT
    from verda.startup_scripts._startup_scripts import STARTUP_SCRIPTS_ENDPOINT
    from verda.volume_types._volume_types import VOLUME_TYPES_ENDPOINT
    from verda.volumes._volumes import VOLUMES_ENDPOINT

    return SDKPaths(token=TOKEN_ENDPOINT, balance=BALANCE_ENDPOINT, instance_types=INSTANCE_TYPES_ENDPOINT,
                    availability=INSTANCE_AVAILABILITY_ENDPOINT, instances=INSTANCES_ENDPOINT,
                    ssh_keys=SSHKEYS_ENDPOINT, scripts=STARTUP_SCRIPTS_ENDPOINT, volumes=VOLUMES_ENDPOINT,
                    volume_types=VOLUME_TYPES_ENDPOINT, images=IMAGES_ENDPOINT)


def body_of(resp: Any) -> Any:
    """The parsed JSON body, or the text where it is not JSON (plain-text ids, proxy error pages)."""
    try:
        return resp.json()
    except ValueError:
        return resp.text


# The words of a create refused for capacity are in no SDK's ErrorCodes (dstack maps every create error to
# NoCapacityError with a FIXME): match the message. A 4xx is matched loosely; a 503 only by words that name
# resources or capacity, since "Service Unavailable" is what any overloaded gateway says.
_CAPACITY_RE = re.compile(r"capacity|not available|unavailable|out of stock|sold out|not enough resources"
                          r"|no (?:available )?(?:resources|servers|hosts)", re.I)
# The API answers "no capacity" as HTTP 503: verda-cli issue 4 ("API error 503: Not enough resources to
# deploy a 1 GPU instance type 1V100.6V in FIN-03"; the Go SDK's errors.go formats `API error %d: %s`
# from the status and the JSON body's `message`, pkg/verda/instances.go Create).
_CAPACITY_503_RE = re.compile(r"not enough resources|insufficient (?:capacity|resources)|no capacity"
                              r"|out of capacity|out of stock|sold out", re.I)


def said(exc: BaseException) -> str:
    """What the API answered, in one line (`HTTP 503 service_unavailable: upstream timed out`), or what
    went wrong on the way when nothing answered (a timeout, a refused connection)."""
    status = getattr(exc, "status", None)
    if status is None:
        return one_line(str(exc).removeprefix("DataCrunch "), 200)
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        code, message = body.get("code") or "", body.get("message") or body
    else:
        code, message = "", body
    return f"HTTP {status}{' ' + str(code) if code else ''}: {one_line(message, 160)}"


def classify(method: str, path: str, resp: Any, code: str | None, message: Any) -> ProviderError:
    """An HTTP failure -> the ProviderError that says what to do: fix credentials, stop, or retry."""
    status = getattr(resp, "status_code", None)
    body = body_of(resp) if resp is not None else None
    what = f"DataCrunch {method.upper()} {path}: HTTP {status} {code or ''} {one_line(message)}".replace("  ", " ")
    if status == 401 or code == "unauthorized_request":
        return CredentialsError(f"{what}; check DATACRUNCH_CLIENT_ID / DATACRUNCH_CLIENT_SECRET")
    if status == 403:
        return DataCrunchAPIError(f"{what}; these API credentials may not do that", status, body)
    if status == 404:
        return DataCrunchNotFound(what, status, body)
    if status == 400 and "provisioning" in str(message).lower():
        return ProvisioningRefusedError(what, status, body)
    if status == 402 or code == "insufficient_funds":  # verda.constants.ErrorCodes; verda-cli agent_error.go
        return DataCrunchInsufficientFunds(f"{what}; add credit to the DataCrunch account", status, body)
    if status is not None and 400 <= status < 500 and _CAPACITY_RE.search(str(message)):
        return DataCrunchNoCapacity(f"{what}; try another location or GPU", status, body)
    if status == 503 and _CAPACITY_503_RE.search(f"{code or ''} {message}"):
        return DataCrunchNoCapacity(f"{what}; try another location or GPU", status, body)
    if status is None or status == 429 or status >= 500:
        return DataCrunchTransientError(what, status, body)
    return DataCrunchAPIError(what, status, body)


class DataCrunchAPI:
    """One authenticated SDK client, made on first use, and every call through it bounded and retried."""

    def __init__(
        self,
        client_id: str | None = None,
        client_secret: str | None = None,
        base_url: str | None = None,
        *,
        timeout_s: float = 20.0,
        retry_attempts: int = 5,
        retry_budget_s: float = 60.0,
        retry_wait_s: float = 1.0,
        retry_max_wait_s: float = 10.0,
    ) -> None:
        self.client_id = client_id or first_env(ENV_CLIENT_ID)
        self.client_secret = client_secret or first_env(ENV_CLIENT_SECRET)
        self.base_url = (base_url or first_env(ENV_BASE_URL) or DEFAULT_BASE_URL).rstrip("/")
        self.timeout_s = float(timeout_s)
        self.retry_attempts = int(retry_attempts)
        self.retry_budget_s = float(retry_budget_s)
        self.retry_wait_s = float(retry_wait_s)
        self.retry_max_wait_s = float(retry_max_wait_s)
        self._client: Any = None
        self._client_lock = threading.Lock()

    # ---- credentials and the SDK client ----------------------------------------------------------------
    def check_credentials(self) -> None:
        """One clear line when the id/secret are missing; otherwise authenticate (the client's constructor)."""
        missing = [names[0] for names, v in ((ENV_CLIENT_ID, self.client_id), (ENV_CLIENT_SECRET, self.client_secret))
                   if not v]
        if missing:
            raise CredentialsError(
                f"DataCrunch credentials missing: set {' and '.join(missing)} (or VERDA_*) to an API client id/secret "
                "from the Verda/DataCrunch console (Keys -> Cloud API credentials)"
            )
        self.sdk()

    def sdk(self) -> Any:
        with self._client_lock:
            if self._client is None:
                self._client = self.retrying(self._connect)
            return self._client

    def _connect(self) -> Any:
        if not self.client_id or not self.client_secret:
            self.check_credentials()  # raises the one clear line
        try:
            from verda import VerdaClient
            from verda.exceptions import APIException
        except ModuleNotFoundError as exc:
            raise ProviderError("provider 'datacrunch' needs the 'verda' package: pip install 'gpurun[datacrunch]'") \
                from exc
        import requests  # the SDK's transport: its exceptions are what a dead network raises

        try:
            # The constructor authenticates (POST /oauth2/token) with no timeout of its own: bound it.
            return self._bounded(lambda: VerdaClient(self.client_id, self.client_secret, base_url=self.base_url))
        except APIException as exc:
            if exc.code in ("server_error", "service_unavailable"):
                raise DataCrunchTransientError(f"DataCrunch auth failed ({exc.code}): {one_line(exc.message)}") from None
            raise CredentialsError(
                f"DataCrunch rejected the API credentials ({exc.code or 'error'}: {one_line(exc.message)}): "
                f"check DATACRUNCH_CLIENT_ID / DATACRUNCH_CLIENT_SECRET and DATACRUNCH_BASE_URL ({self.base_url})"
            ) from None
        except (requests.Timeout, requests.ConnectionError) as exc:
            raise DataCrunchTransientError(f"DataCrunch API unreachable at {self.base_url}: {type(exc).__name__}") \
                from None
        except ValueError as exc:  # handle_error() json-decoding a non-JSON (proxy/HTML) error page
            raise DataCrunchTransientError(f"DataCrunch auth answered a non-JSON error ({one_line(exc)})") from None
        except KeyError as exc:
            raise ProviderError(f"DataCrunch token answer lacks {exc}: is {self.base_url} the API?") from None

    # ---- bounding and retrying -------------------------------------------------------------------------
    def _bounded(self, fn: Callable[[], T]) -> T:
        """fn with a hard wall-clock bound: requests' own timeouts do not cover the SDK's auth calls.
        Generous (connect + read + slack) so that it only catches what requests' timeouts miss."""
        try:
            return bounded_call(fn, 2 * self.timeout_s + 5, "DataCrunch API")
        except DataCrunchAPIError:
            raise
        except TransientProviderError as exc:  # the bound itself: keep the DataCrunch error type
            raise DataCrunchTransientError(str(exc)) from None

    def retrying(self, fn: Callable[[], T], *, retry_refusals: bool = False) -> T:
        """5xx / 429 / timeouts retried with backoff, bounded in tries and time; 4xx (401/403 above all)
        never, and a delete refused while provisioning only where the caller asks for it."""

        def retry_on(exc: BaseException) -> bool:
            return is_transient(exc) and (retry_refusals or not isinstance(exc, ProvisioningRefusedError))

        policy = retry_policy(attempts=self.retry_attempts, deadline_s=self.retry_budget_s,
                              initial_s=self.retry_wait_s, max_wait_s=self.retry_max_wait_s, retry_on=retry_on,
                              logger=log)
        return policy(fn)

    # ---- one call ----------------------------------------------------------------------------------------
    def request(self, method: str, path: str, *, path_params: dict[str, str] | None = None,
                json_body: Any = None, params: dict[str, Any] | None = None, retry: bool = True) -> Any:
        """One API call; returns the requests.Response (2xx, 207 included). retry=False for calls whose
        repeat the caller must guard itself (a create that may have landed)."""

        def once() -> Any:
            return self._request_once(method, path, path_params, json_body, params)

        return self.retrying(once) if retry else once()

    def _request_once(self, method: str, path: str, path_params: dict[str, str] | None, json_body: Any,
                      params: dict[str, Any] | None) -> Any:
        import requests
        from verda.exceptions import APIException

        http = self.sdk()._http_client
        seen: list[Any] = []

        def keep(resp: Any, *args: Any, **kwargs: Any) -> Any:
            seen.append(resp)  # the SDK's APIException has no status code: keep the response to classify it
            return resp

        kwargs: dict[str, Any] = {"params": params, "path_params": path_params,
                                  "timeout": (self.timeout_s, self.timeout_s), "hooks": {"response": keep}}
        if method in ("post", "put", "delete"):
            kwargs["json"] = json_body
        shown = path.format(**path_params) if path_params else path
        try:
            return self._bounded(lambda: getattr(http, method)(path, **kwargs))
        except APIException as exc:
            raise classify(method, shown, seen[-1] if seen else None, exc.code, exc.message) from None
        except (requests.Timeout, requests.ConnectionError) as exc:
            raise DataCrunchTransientError(
                f"DataCrunch {method.upper()} {shown}: {type(exc).__name__} talking to {self.base_url}") from None
        except ValueError as exc:
            if seen:  # an error page that is not JSON (a proxy's 502): classify by status
                raise classify(method, shown, seen[-1], None, one_line(seen[-1].text, 120)) from None
            raise ProviderError(f"DataCrunch {method.upper()} {shown}: invalid request ({one_line(exc)})") from None
