"""RunPod pods through the official `runpod` SDK (GraphQL under the hood).

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
  so errors are classified by type and message (see `_classify`).
- Requests use a fixed 30 s timeout; we bound each call with `request_timeout_s` (a create waits
  longer than the SDK does, so an abandoned create cannot land behind our back).
- Importing `runpod` runs `logging.basicConfig(level=INFO)` (serverless/utils/rp_upload.py); undone.
- Strings are pasted into the GraphQL text unescaped, so everything we pass is validated first.
- `create_pod` first runs `gpuTypes(input: {id})` and raises ValueError for an unknown GPU.
- Spot (`podRentInterruptable`) and the balance (`myself { clientBalance ... }`) have no SDK
  function: they go through the SDK's own `run_graphql_query`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from tenacity import (
    Retrying,
    before_sleep_log,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
    wait_random,
)

from providers.base import (
    NOT_FOUND,
    PENDING,
    RUN_ID_RE,
    RUNNING,
    STOPPED,
    STOPPING,
    TERMINATED,
    BillingRule,
    CredentialsError,
    Instance,
    InstanceSpec,
    Offer,
    Provider,
    ProviderError,
    SSHEndpoint,
    TransientProviderError,
)

log = logging.getLogger("gpurun.providers.runpod")

T = TypeVar("T")

NAME_PREFIX = "gpurun-"
DEFAULT_IMAGE = "runpod/pytorch:2.4.0-py3.11-cuda12.4.1-devel-ubuntu22.04"
DEFAULT_API_BASE = "https://api.runpod.io"
CLOUD_TYPES = ("SECURE", "COMMUNITY", "ALL")

# Storage is billed on top of the GPU price. Source: https://docs.runpod.io/pods/storage (the
# "Comparison" table, read 2025): container disk $0.10/GB/month, volume disk $0.10/GB/month while
# the pod runs and $0.20/GB/month while it is stopped. gpurun terminates rather than stops, so the
# running rate applies; a month is taken as 730 h (365 * 24 / 12).
CONTAINER_DISK_USD_PER_GB_MONTH = 0.10
VOLUME_DISK_USD_PER_GB_MONTH = 0.10
HOURS_PER_MONTH = 730.0

# Pods are billed by the second with no minimum (same rule and source as budgets.yaml, which the plan uses).
BILLING = BillingRule(increment_s=1, minimum_s=0,
                      source="https://docs.runpod.io/accounts-billing/billing (billed per second)")

# What may be pasted into a GraphQL string literal. Everything else (quotes, backslashes, braces,
# control characters, newlines) is refused: the SDK does not escape, so a quote would end the
# literal and let the rest of the value rewrite the mutation.
_FORBIDDEN_IN_STRING = re.compile(r"[\"'\\{}\x00-\x1f\x7f`$]")
_IMAGE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,254}$")
_GPU_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._()+-]{0,99}$")
_ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_POD_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_API_KEY_RE = re.compile(r"^[A-Za-z0-9_.-]{8,512}$")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")

# Error texts the real API uses for "this pod is already gone".
_GONE_MESSAGES = ("not found", "does not exist", "no pod", "already terminated")
_AUTH_MESSAGES = ("unauthorized", "unauthorised", "forbidden", "permission denied", "invalid api key",
                  "api key is invalid", "not authorized")
_TRANSIENT_MESSAGES = ("internal server error", "something went wrong", "timeout", "timed out",
                       "temporarily", "try again", "bad gateway", "service unavailable",
                       "gateway time", "rate limit", "too many requests")


def _check_string(field: str, value: str, pattern: re.Pattern[str] | None = None) -> str:
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


def _check_pod_id(pod_id: str) -> str:
    return _check_string("pod id", pod_id, _POD_ID_RE)


def run_id_from_name(name: str | None) -> str | None:
    """`gpurun-<run id>` -> run id, or None for a pod gpurun did not name."""
    if not name or not name.startswith(NAME_PREFIX):
        return None
    run_id = name[len(NAME_PREFIX):]
    return run_id if RUN_ID_RE.match(run_id) else None


def _float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _classify(exc: BaseException) -> ProviderError:
    """Turn an SDK/requests exception into our error types, without ever quoting a key."""
    import requests
    from runpod import error as rp_error

    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, rp_error.AuthenticationError):
        return CredentialsError(
            "RunPod rejected the API key (401): check RUNPOD_API_KEY or ~/.runpod/config.toml"
        )
    if isinstance(exc, rp_error.QueryError):
        msg = (exc.message or "").strip().splitlines()[0][:300] if exc.message else "unknown error"
        low = msg.lower()
        if "no longer any instances available" in low or "no instances available" in low:
            return ProviderError(
                "RunPod has no machine free for this GPU type / count / cloud right now: try another "
                "GPU, cloud type or count (`gpurun offers`)"
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
        return ProviderError(f"RunPod refused the request: {str(exc).splitlines()[0][:300]}")
    if isinstance(exc, (KeyError, TypeError)):
        # A 5xx with a JSON body but no "errors" makes the SDK index a missing "data".
        return TransientProviderError(f"RunPod API answered without data ({type(exc).__name__})")
    return ProviderError(f"RunPod SDK error: {type(exc).__name__}: {str(exc)[:300]}")


_IMPORT_LOCK = threading.Lock()


def _import_runpod() -> Any:
    """Import the SDK lazily, undoing its import-time `logging.basicConfig(level=INFO)`.

    runpod 1.12's serverless/utils/rp_upload.py configures the ROOT logger on import; left alone it
    would turn on INFO output for every library in the controller.
    """
    import sys

    with _IMPORT_LOCK:
        if "runpod" in sys.modules:
            return sys.modules["runpod"]
        root = logging.getLogger()
        handlers, level = list(root.handlers), root.level
        import runpod

        for h in list(root.handlers):
            if h not in handlers:
                root.removeHandler(h)
        root.setLevel(level)
        return runpod


def _call_with_timeout(fn: Callable[[], T], timeout_s: float | None) -> T:
    """Run fn in a daemon thread and stop waiting after timeout_s (the SDK's own limit is 30 s)."""
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

    threading.Thread(target=target, name="runpod-api", daemon=True).start()
    if not done.wait(timeout_s):
        raise TransientProviderError(f"RunPod API did not answer within {timeout_s:g}s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _gql_str(value: str) -> str:
    """A GraphQL string literal (JSON escaping is valid GraphQL), for queries we write ourselves."""
    return json.dumps(value, ensure_ascii=True)


class RunPodProvider(Provider):
    """RunPod pods. Options (all keyword, all optional):

    api_key              instead of RUNPOD_API_KEY / ~/.runpod/config.toml
    config_path          the SDK's credentials file (default ~/.runpod/config.toml)
    profile              section of that file (default "default")
    image                container image (default: a RunPod PyTorch 2.4 / CUDA 12.4 image)
    container_disk_gb    container disk priced into offers (default 40)
    volume_gb            pod volume priced into offers (default 0: nothing survives the pod)
    cloud_type           "ALL" (both), "SECURE" or "COMMUNITY": which clouds offers() lists
    request_timeout_s    bound on one API call (default 30)
    max_attempts         tries per call on 5xx/timeouts (default 5)
    retry_deadline_s     bound on all tries of one call (default 90)
    backoff_initial_s / backoff_max_s   exponential backoff with jitter (default 1 / 15)
    self_destruct_api_base   API base the on-instance watchdog calls (default https://api.runpod.io;
                         tests point it at the fake). Never read from the environment on purpose.
    pid1_environ_path    where the watchdog reads RUNPOD_POD_ID/RUNPOD_API_KEY (default /proc/1/environ)
    """

    name = "runpod"
    transport = "ssh"

    def __init__(
        self,
        *,
        api_key: str | None = None,
        config_path: str | os.PathLike[str] | None = None,
        profile: str = "default",
        image: str = DEFAULT_IMAGE,
        container_disk_gb: int = 40,
        volume_gb: int = 0,
        cloud_type: str = "ALL",
        request_timeout_s: float = 30.0,
        max_attempts: int = 5,
        retry_deadline_s: float = 90.0,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 15.0,
        self_destruct_api_base: str | None = None,
        pid1_environ_path: str = "/proc/1/environ",
        volume_mount_path: str = "/workspace",
    ) -> None:
        self._explicit_key = api_key
        self.config_path = Path(config_path) if config_path else Path.home() / ".runpod" / "config.toml"
        self.profile = profile
        self.image = _check_string("image", image, _IMAGE_RE)
        if int(container_disk_gb) < 1 or int(volume_gb) < 0:
            raise ProviderError("RunPod container_disk_gb must be >= 1 and volume_gb >= 0")
        self.container_disk_gb = int(container_disk_gb)
        self.volume_gb = int(volume_gb)
        cloud = str(cloud_type).upper()
        if cloud not in CLOUD_TYPES:
            raise ProviderError(f"RunPod cloud_type {cloud_type!r} is not one of {', '.join(CLOUD_TYPES)}")
        self.cloud_type = cloud
        self.request_timeout_s = float(request_timeout_s)
        self.max_attempts = max(1, int(max_attempts))
        self.retry_deadline_s = float(retry_deadline_s)
        self.backoff_initial_s = float(backoff_initial_s)
        self.backoff_max_s = float(backoff_max_s)
        base = (self_destruct_api_base or DEFAULT_API_BASE).rstrip("/")
        if not re.match(r"^https?://[A-Za-z0-9.:\[\]_-]+(/[A-Za-z0-9._/-]*)?$", base):
            raise ProviderError(f"RunPod self_destruct_api_base {base!r} is not a plain http(s) URL")
        self.self_destruct_api_base = base
        self.pid1_environ_path = pid1_environ_path
        self.volume_mount_path = _check_string("volume_mount_path", volume_mount_path,
                                               re.compile(r"^/[A-Za-z0-9._/-]*$"))

    # ------------------------------------------------------------------ credentials

    def _api_key(self) -> str | None:
        key = self._explicit_key or os.environ.get("RUNPOD_API_KEY")
        if not key and self.config_path.is_file():
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib  # type: ignore[no-redef]
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

    def _require_key(self) -> str:
        key = self._api_key()
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

    def check_credentials(self) -> None:
        """Local check only (no network): the first API call reports a rejected key."""
        self._require_key()

    # ------------------------------------------------------------------ calling the SDK

    def _retrying(self) -> Retrying:
        return Retrying(
            retry=retry_if_exception_type(TransientProviderError),
            stop=stop_after_attempt(self.max_attempts) | stop_after_delay(self.retry_deadline_s),
            wait=wait_exponential(multiplier=self.backoff_initial_s, max=self.backoff_max_s)
            + wait_random(0, self.backoff_initial_s),
            before_sleep=before_sleep_log(log, logging.WARNING),
            reraise=True,
        )

    def _sdk(self, what: str, fn: Callable[[Any, str], T], *, timeout_s: float | None = None,
             retry: bool = True) -> T:
        """Call fn(runpod_module, api_key) with the key set, bounded, classified and retried."""
        key = self._require_key()
        bound = self.request_timeout_s if timeout_s is None else timeout_s

        def once() -> T:
            runpod = _import_runpod()  # lazy: the SDK pulls in aiohttp, boto3, ... (seconds)

            # Set on every call: create_pod/terminate_pod read only this global.
            runpod.api_key = key
            try:
                return _call_with_timeout(lambda: fn(runpod, key), bound)
            except Exception as exc:  # noqa: BLE001 - classified into ProviderError subclasses
                err = _classify(exc)
                if err is exc:
                    raise
                raise err from None  # the SDK's exception carries the query text: keep it out

        if not retry:
            return once()
        try:
            return self._retrying()(once)
        except TransientProviderError as exc:
            raise TransientProviderError(f"{what}: {exc} (gave up after retries)") from None

    def _graphql(self, what: str, query: str, *, timeout_s: float | None = None,
                 retry: bool = True) -> dict[str, Any]:
        def call(runpod: Any, key: str) -> dict[str, Any]:
            from runpod.api.graphql import run_graphql_query

            return run_graphql_query(query)  # the key: runpod.api_key, set by _sdk

        return self._sdk(what, call, timeout_s=timeout_s, retry=retry)

    @property
    def _create_timeout_s(self) -> float:
        # Longer than the SDK's own 30 s request timeout: an abandoned create could still land and
        # leave a second pod behind, so we wait for the SDK to give up first.
        return max(self.request_timeout_s, 30.0) + 15.0

    # ------------------------------------------------------------------ offers

    def _gpu_types_query(self, count: int) -> str:
        # The SDK's get_gpus() asks only id/displayName/memoryInGb and get_gpu() one type at a time;
        # this is get_gpu()'s field list for all types in one round trip.
        return f"""
        query GpuTypes {{
          gpuTypes {{
            id
            displayName
            memoryInGb
            maxGpuCount
            secureCloud
            communityCloud
            securePrice
            communityPrice
            secureSpotPrice
            communitySpotPrice
            lowestPrice(input: {{gpuCount: {int(count)}}}) {{
              minimumBidPrice
              uninterruptablePrice
            }}
          }}
        }}
        """

    def storage_usd_per_hour(self, container_disk_gb: int | None = None, volume_gb: int | None = None) -> float:
        disk = self.container_disk_gb if container_disk_gb is None else container_disk_gb
        vol = self.volume_gb if volume_gb is None else volume_gb
        return (disk * CONTAINER_DISK_USD_PER_GB_MONTH + vol * VOLUME_DISK_USD_PER_GB_MONTH) / HOURS_PER_MONTH

    def offers(self, gpu: str | None = None, count: int = 1, spot: bool = False) -> list[Offer]:
        if int(count) < 1:
            raise ProviderError(f"GPU count must be >= 1, got {count}")
        data = self._graphql("list GPU types", self._gpu_types_query(count))
        types = ((data.get("data") or {}).get("gpuTypes")) or []
        extra = self.storage_usd_per_hour()
        want = gpu.lower().replace(" ", "") if gpu else None
        out: list[Offer] = []
        for t in types:
            gpu_id = t.get("id") or ""
            display = t.get("displayName") or gpu_id
            if not gpu_id or gpu_id.lower() == "unknown":
                continue
            if want and want not in display.lower().replace(" ", "") and want not in gpu_id.lower().replace(" ", ""):
                continue
            max_count = t.get("maxGpuCount")
            if max_count is not None and int(count) > int(max_count):
                continue
            lowest = t.get("lowestPrice") or {}
            # lowestPrice.uninterruptablePrice is null when no machine has `count` of these free.
            in_stock = not lowest or lowest.get("uninterruptablePrice") is not None
            clouds = []
            if self.cloud_type in ("ALL", "SECURE") and t.get("secureCloud"):
                clouds.append(("SECURE", t.get("securePrice"), t.get("secureSpotPrice")))
            if self.cloud_type in ("ALL", "COMMUNITY") and t.get("communityCloud"):
                clouds.append(("COMMUNITY", t.get("communityPrice"), t.get("communitySpotPrice")))
            for cloud, on_demand, spot_price in clouds:
                per_gpu = _float(spot_price if spot else on_demand)
                if spot and not per_gpu:
                    per_gpu = _float(lowest.get("minimumBidPrice"))
                if not per_gpu or per_gpu <= 0:
                    continue
                details: dict[str, Any] = {
                    "cloud_type": cloud,
                    "usd_per_gpu_hour": per_gpu,
                    "container_disk_gb": self.container_disk_gb,
                    "volume_gb": self.volume_gb,
                    "storage_rates": "container $0.10/GB-month, volume $0.10/GB-month (running)",
                    "max_gpu_count": max_count,
                    "in_stock": in_stock,
                }
                if spot:
                    details["bid_per_gpu"] = per_gpu
                out.append(Offer(
                    provider=self.name,
                    gpu=display,
                    gpu_count=int(count),
                    instance_type=gpu_id,
                    usd_per_hour=round(per_gpu * int(count), 6),
                    extra_usd_per_hour=round(extra, 6),
                    price_source="live",
                    billing=BILLING,
                    spot=spot,
                    region=cloud.lower(),
                    available=in_stock,
                    memory_gb=_float(t.get("memoryInGb")),
                    details=details,
                ))
        out.sort(key=lambda o: o.total_usd_per_hour)
        return out

    # ------------------------------------------------------------------ pods

    def _to_instance(self, pod: dict[str, Any] | None, pod_id: str) -> Instance:
        if not pod:
            return Instance(id=pod_id, provider=self.name, state=NOT_FOUND, raw={"pod": None})
        name = pod.get("name") or ""
        runtime = pod.get("runtime")
        desired = str(pod.get("desiredStatus") or "").upper()
        if desired == "TERMINATED":
            state = TERMINATED
        elif desired == "RUNNING":
            state = RUNNING if runtime else PENDING  # runtime is null until the container is up
        elif desired in ("EXITED", "PAUSED", "DEAD", "STOPPED"):
            state = STOPPING if runtime else STOPPED  # stopped pods still pay for their volume
        else:  # CREATED, RESTARTING, anything new: not gone, so teardown still acts on it
            state = PENDING
        machine = pod.get("machine") or {}
        return Instance(
            id=str(pod.get("id") or pod_id),
            provider=self.name,
            state=state,
            run_id=run_id_from_name(name),
            name=name,
            instance_type=str(machine.get("gpuDisplayName") or ""),
            gpu_count=int(pod.get("gpuCount") or 0),
            usd_per_hour=_float(pod.get("costPerHr")),
            ssh=self._endpoint_from_runtime(runtime) if state == RUNNING else None,
            raw=pod,
        )

    @staticmethod
    def _endpoint_from_runtime(runtime: dict[str, Any] | None) -> SSHEndpoint | None:
        """The public mapping of container port 22; a private-only one is unreachable from here."""
        for p in (runtime or {}).get("ports") or []:
            if p.get("privatePort") == 22 and p.get("isIpPublic") and p.get("ip") and p.get("publicPort"):
                return SSHEndpoint(host=str(p["ip"]), port=int(p["publicPort"]), user="root")
        return None

    def ssh_endpoint(self, instance: Instance) -> SSHEndpoint | None:
        return instance.ssh or self._endpoint_from_runtime((instance.raw or {}).get("runtime"))

    def get(self, instance_id: str) -> Instance:
        pod_id = _check_pod_id(instance_id)
        try:
            pod = self._sdk("get pod", lambda rp, key: rp.get_pod(pod_id))
        except CredentialsError:
            raise
        except ProviderError as exc:
            if any(m in str(exc).lower() for m in _GONE_MESSAGES) and not isinstance(
                exc, TransientProviderError
            ):
                return Instance(id=pod_id, provider=self.name, state=NOT_FOUND, raw={"error": str(exc)})
            raise
        return self._to_instance(pod, pod_id)

    def _list_pods(self) -> list[dict[str, Any]]:
        pods = self._sdk("list pods", lambda rp, key: rp.get_pods())
        return list(pods or [])

    def list_owned(self) -> list[Instance]:
        return [self._to_instance(p, str(p.get("id")))
                for p in self._list_pods() if str(p.get("name") or "").startswith(NAME_PREFIX)]

    def _find_by_name(self, name: str) -> Instance | None:
        live = [i for i in self.list_owned() if i.name == name and not i.gone]
        if len(live) > 1:
            log.warning("%d RunPod pods are named %s; using %s", len(live), name, live[0].id)
        return live[0] if live else None

    def _validated_env(self, spec: InstanceSpec) -> dict[str, str]:
        env: dict[str, str] = {}
        if spec.ssh_public_key:
            # The RunPod images' start script appends $PUBLIC_KEY to root's authorized_keys.
            env["PUBLIC_KEY"] = spec.ssh_public_key.strip()
        env["GPURUN_RUN_ID"] = spec.run_id
        env.update(spec.env)
        for k, v in env.items():
            _check_string("env key", str(k), _ENV_KEY_RE)
            if k in ("RUNPOD_API_KEY", "RUNPOD_POD_ID"):
                raise ProviderError(f"RunPod env key {k} is set by RunPod itself; do not pass it")
            _check_string(f"env value of {k}", str(v))
        return {str(k): str(v) for k, v in env.items()}

    def create(self, spec: InstanceSpec) -> Instance:
        # Validate everything before any call, so a refused spec creates nothing.
        if not RUN_ID_RE.match(spec.run_id or ""):
            raise ProviderError(f"run id {spec.run_id!r} is not valid (expected {RUN_ID_RE.pattern})")
        name = _check_string("pod name", spec.name, _NAME_RE)
        image = _check_string("image", spec.image or self.image, _IMAGE_RE)
        offer = spec.offer
        gpu_id = _check_string("GPU type id", offer.instance_type, _GPU_ID_RE)
        cloud = str(offer.details.get("cloud_type") or self.cloud_type).upper()
        if cloud not in CLOUD_TYPES:
            raise ProviderError(f"RunPod cloud type {cloud!r} is not one of {', '.join(CLOUD_TYPES)}")
        count = int(offer.gpu_count or 1)
        disk = int(spec.disk_gb)
        volume = int(spec.volume_gb)
        priced_disk = int(offer.details.get("container_disk_gb", self.container_disk_gb))
        priced_volume = int(offer.details.get("volume_gb", self.volume_gb))
        if disk > priced_disk or volume > priced_volume:
            raise ProviderError(
                f"the plan priced {priced_disk} GB container disk + {priced_volume} GB volume but the "
                f"spec asks {disk} + {volume}: re-plan with container_disk_gb/volume_gb set"
            )
        env = self._validated_env(spec)
        self._require_key()

        existing = self._find_by_name(name)
        if existing is not None:
            log.info("RunPod pod %s already exists for run %s; reusing it", existing.id, spec.run_id)
            return existing

        if offer.spot:
            bid = _float(offer.details.get("bid_per_gpu")) or (offer.usd_per_hour / max(1, count))
            create_call = lambda: self._create_spot(  # noqa: E731
                name, image, gpu_id, cloud, count, disk, volume, env, bid)
        else:
            create_call = lambda: self._create_on_demand(  # noqa: E731
                name, image, gpu_id, cloud, count, disk, volume, env)

        created_at = time.time()
        pod = self._create_idempotently(name, create_call)
        try:
            inst: Instance | None = self.get(str(pod["id"]))
        except ProviderError as exc:  # the pod exists: hand its id back rather than lose it
            log.warning("RunPod pod %s created but not readable yet: %s", pod["id"], exc)
            inst = None
        if inst is None or inst.state == NOT_FOUND:
            # Eventual consistency: the create answered but the read lags; report it as pending.
            inst = Instance(id=str(pod.get("id")), provider=self.name, state=PENDING, run_id=spec.run_id,
                            name=name, raw=pod)
        inst.created_at = created_at
        inst.run_id = spec.run_id
        if inst.usd_per_hour is None:
            inst.usd_per_hour = offer.usd_per_hour
        return inst

    def _create_idempotently(self, name: str, create_call: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Create once; after a transient failure (the create may have landed) look the name up first."""
        last: TransientProviderError | None = None
        for attempt in self._retrying():
            with attempt:
                if last is not None:
                    found = self._find_by_name(name)
                    if found is not None:
                        return found.raw or {"id": found.id}
                try:
                    return create_call()
                except TransientProviderError as exc:
                    last = exc
                    raise
        raise TransientProviderError("create pod: gave up")  # unreachable: reraise=True

    def _create_on_demand(self, name: str, image: str, gpu_id: str, cloud: str, count: int, disk: int,
                          volume: int, env: dict[str, str]) -> dict[str, Any]:
        def call(rp: Any, key: str) -> dict[str, Any]:
            return rp.create_pod(
                name=name, image_name=image, gpu_type_id=gpu_id, cloud_type=cloud,
                gpu_count=count, volume_in_gb=volume, container_disk_in_gb=disk,
                ports="22/tcp", env=env, support_public_ip=True, start_ssh=True,
                volume_mount_path=self.volume_mount_path,
            )

        pod = self._sdk("create pod", call, timeout_s=self._create_timeout_s, retry=False)
        if not pod or not pod.get("id"):
            raise ProviderError("RunPod create answered without a pod id (no capacity?)")
        return pod

    def _create_spot(self, name: str, image: str, gpu_id: str, cloud: str, count: int, disk: int,
                     volume: int, env: dict[str, str], bid_per_gpu: float) -> dict[str, Any]:
        # Same input fields as podFindAndDeployOnDemand plus bidPerGpu (RunPod's GraphQL docs and
        # dstack's RunPod backend build both mutations from one field list). Values are validated
        # above and JSON-escaped here as well.
        env_items = ", ".join(f"{{ key: {_gql_str(k)}, value: {_gql_str(v)} }}" for k, v in env.items())
        fields = [
            f"bidPerGpu: {float(bid_per_gpu):.4f}",
            f"cloudType: {cloud}",
            f"gpuCount: {int(count)}",
            f"volumeInGb: {int(volume)}",
            f"containerDiskInGb: {int(disk)}",
            "minVcpuCount: 1",
            "minMemoryInGb: 1",
            f"gpuTypeId: {_gql_str(gpu_id)}",
            f"name: {_gql_str(name)}",
            f"imageName: {_gql_str(image)}",
            'dockerArgs: ""',
            'ports: "22/tcp"',
            f"volumeMountPath: {_gql_str(self.volume_mount_path)}",
            "startSsh: true",
            "supportPublicIp: true",
            f"env: [{env_items}]",
        ]
        query = (
            "mutation { podRentInterruptable(input: { " + ", ".join(fields) + " }) "
            "{ id imageName env machineId machine { podHostId } } }"
        )
        data = self._graphql("create spot pod", query, timeout_s=self._create_timeout_s, retry=False)
        pod = (data.get("data") or {}).get("podRentInterruptable")
        if not pod or not pod.get("id"):
            raise ProviderError("RunPod spot create answered without a pod id (bid too low? no capacity?)")
        return pod

    def terminate(self, instance_id: str) -> dict[str, Any]:
        pod_id = _check_pod_id(instance_id)
        from_ts = time.time()

        def call(rp: Any, key: str) -> dict[str, Any]:
            from runpod.api.graphql import run_graphql_query
            from runpod.api.mutations.pods import generate_pod_terminate_mutation

            # terminate_pod() drops the response; the proof wants it, so call the helper directly.
            return run_graphql_query(generate_pod_terminate_mutation(pod_id))

        try:
            response = self._sdk("terminate pod", call)
        except CredentialsError:
            raise
        except ProviderError as exc:
            if isinstance(exc, TransientProviderError) or not any(
                m in str(exc).lower() for m in _GONE_MESSAGES
            ):
                raise
            # "pod not found to terminate": already gone, which is what we wanted.
            return {"pod_id": pod_id, "requested_at": from_ts, "answered_at": time.time(),
                    "already_gone": True, "response": {"error": str(exc)}}
        return {"pod_id": pod_id, "requested_at": from_ts, "answered_at": time.time(),
                "already_gone": False, "response": response}

    def stop(self, instance_id: str) -> dict[str, Any]:
        """podStop: the GPU stops billing but the volume keeps billing. gpurun uses terminate."""
        pod_id = _check_pod_id(instance_id)
        return self._sdk("stop pod", lambda rp, key: rp.stop_pod(pod_id)) or {}

    # ------------------------------------------------------------------ the watchdog's way out

    def self_destruct_command(self, instance: Instance) -> str:
        """POSIX sh: terminate this pod with the pod's own RUNPOD_POD_ID / RUNPOD_API_KEY.

        RunPod sets both for PID 1 only (ssh sessions do not inherit them), so they are read from
        /proc/1/environ. Our own account key is never put on the instance. The key is handed to curl
        through stdin (`--config -`) and to python through the environment, never on a command line
        that `ps` would show. Bounded: 5 tries, a 20 s timeout each.
        """
        env_path = shlex.quote(self.pid1_environ_path)
        url = shlex.quote(self.self_destruct_api_base + "/graphql")
        expected = shlex.quote(instance.id) if instance.id and _POD_ID_RE.match(instance.id) else "''"
        py = (
            "import json,os,sys,urllib.request as u\n"
            "q='mutation { podTerminate(input: {podId: \"%s\"}) }'%os.environ['GPURUN_POD']\n"
            "r=u.Request(os.environ['GPURUN_URL'],data=json.dumps({'query':q}).encode(),"
            "headers={'Content-Type':'application/json','Authorization':'Bearer '+os.environ['GPURUN_KEY']})\n"
            "b=u.urlopen(r,timeout=20).read().decode()\n"
            "sys.stdout.write(b)\n"
        )
        script = f"""
_gp_env() {{ tr '\\000' '\\n' < {env_path} 2>/dev/null | sed -n "s/^$1=//p" | head -n 1; }}
POD=$(_gp_env RUNPOD_POD_ID); KEY=$(_gp_env RUNPOD_API_KEY); URL={url}; WANT={expected}
case "$POD" in ''|*[!A-Za-z0-9_-]*) echo "gpurun self-destruct: no usable RUNPOD_POD_ID in {env_path}" >&2; exit 2;; esac
[ -n "$KEY" ] || {{ echo "gpurun self-destruct: no RUNPOD_API_KEY in {env_path}" >&2; exit 2; }}
[ -z "$WANT" ] || [ "$WANT" = "$POD" ] || echo "gpurun self-destruct: pod id $POD differs from $WANT" >&2
BODY='{{"query":"mutation {{ podTerminate(input: {{podId: \\"'"$POD"'\\"}}) }}"}}'
i=0
while [ $i -lt 5 ]; do
  i=$((i+1))
  if command -v curl >/dev/null 2>&1; then
    OUT=$(printf 'header = "Authorization: Bearer %s"\\n' "$KEY" | curl -sS -m 20 --config - \\
      -H 'Content-Type: application/json' -X POST --data "$BODY" "$URL" 2>&1)
  elif command -v python3 >/dev/null 2>&1; then
    OUT=$(GPURUN_POD="$POD" GPURUN_KEY="$KEY" GPURUN_URL="$URL" python3 -c {shlex.quote(py)} 2>&1)
  elif command -v runpodctl >/dev/null 2>&1; then
    OUT=$(RUNPOD_API_KEY="$KEY" runpodctl remove pod "$POD" 2>&1 && echo '"podTerminate"')
  else
    echo "gpurun self-destruct: neither curl, python3 nor runpodctl is installed" >&2; exit 3
  fi
  case "$OUT" in
    *"not found to terminate"*) echo "gpurun self-destruct: pod $POD already gone"; exit 0;;
    *'"errors"'*) ;;
    *podTerminate*) echo "gpurun self-destruct: terminate requested for pod $POD"; exit 0;;
  esac
  echo "gpurun self-destruct: try $i failed: $(printf %s "$OUT" | head -c 300)" >&2
  sleep $((i*3))
done
exit 1
"""
        return "sh -c " + shlex.quote(script.strip() + "\n")

    # ------------------------------------------------------------------ money

    def account(self) -> dict[str, Any]:
        data = self._graphql("read balance", "query { myself { clientBalance currentSpendPerHr spendLimit } }")
        me = (data.get("data") or {}).get("myself") or {}
        return {
            "balance_usd": _float(me.get("clientBalance")),
            "current_spend_usd_per_hour": _float(me.get("currentSpendPerHr")),
            "spend_limit_usd_per_hour": _float(me.get("spendLimit")),
            "raw": me,
        }

    def check_balance_covers(self, max_usd: float, usd_per_hour: float | None = None) -> dict[str, Any]:
        """Refuse a budget the account cannot pay, and a price over the hourly spend limit."""
        acct = self.account()
        balance = acct["balance_usd"]
        if balance is not None and balance < float(max_usd):
            raise ProviderError(
                f"RunPod balance {balance:.2f} USD cannot cover --max-usd {float(max_usd):g}: add funds "
                f"or lower the budget"
            )
        limit = acct["spend_limit_usd_per_hour"]
        if usd_per_hour is not None and limit is not None:
            current = acct["current_spend_usd_per_hour"] or 0.0
            if current + float(usd_per_hour) > limit:
                raise ProviderError(
                    f"RunPod spend limit {limit:g} USD/h would be exceeded ({current:g} already running + "
                    f"{float(usd_per_hour):g}): raise the limit in the RunPod console or stop other pods"
                )
        return acct
