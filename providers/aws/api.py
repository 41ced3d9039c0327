"""boto3 behind one small object: the session, its clients, and what every call's error means.

boto3 is imported lazily (only a run on AWS needs it). Credentials, region and endpoint come from
boto3's own chain: AWS_PROFILE / ~/.aws, the AWS_ACCESS_KEY_ID family, AWS_DEFAULT_REGION, and
AWS_ENDPOINT_URL (which boto3 >= 1.28 honours for every client: the tests point it at moto's server).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from providers.base import CredentialsError, ProviderError, TransientProviderError
from providers.common import classified, one_line

log = logging.getLogger("gpurun.providers.aws")

# The EC2 instance states in which an instance still exists: it bills (or keeps its volume) and it
# holds its key pair and security group. `shutting-down` is added where a caller must wait it out.
LIVE_STATES = ["pending", "running", "stopping", "stopped"]

_AUTH_CODES = {
    "AuthFailure", "InvalidClientTokenId", "SignatureDoesNotMatch", "ExpiredToken",
    "ExpiredTokenException", "UnrecognizedClientException", "InvalidAccessKeyId",
    "UnauthorizedOperation", "AccessDenied", "AccessDeniedException",
}
# RunInstances refusals that another zone of the region may not give: try the next zone's subnet.
# InsufficientInstanceCapacity: "We currently do not have sufficient <type> capacity in the
# Availability Zone you requested (us-east-1a)..."; Unsupported: "Your requested instance type
# (<type>) is not supported in your requested Availability Zone (us-east-1e)..." (EC2 API error
# codes: https://docs.aws.amazon.com/AWSEC2/latest/APIReference/errors-overview.html).
CAPACITY_CODES = ("InsufficientInstanceCapacity", "InsufficientCapacity", "Unsupported")
# A spot RunInstances refused for its price: "SpotMaxPriceTooLow: Your Spot request price of X is
# lower than the minimum required Spot request fulfillment price of Y" (the EC2 API error codes,
# https://docs.aws.amazon.com/AWSEC2/latest/APIReference/errors-overview.html; the text as AWS sends it
# in aws/aws-parallelcluster-node#415). Without a MaxPrice the request's maximum is the on-demand
# price, so this still comes when the spot price is above it: the offer cannot be had now
# (NoCapacityError), and the next offer of the plan is tried.
PRICE_CODES = ("SpotMaxPriceTooLow",)
_TRANSIENT_CODES = {
    "Throttling", "ThrottlingException", "RequestLimitExceeded", "RequestThrottled",
    "ServiceUnavailable", "InternalError", "InternalFailure", "Unavailable",
}
_HINTS = {
    "VcpuLimitExceeded": "ask for a quota increase ('Running On-Demand G and VT instances' or "
    "'P instances') in the Service Quotas console",
    "MaxSpotInstanceCountExceeded": "ask for a spot quota increase in the Service Quotas console",
    "InsufficientInstanceCapacity": "AWS has no capacity for it right now: try another region or type",
    "SpotMaxPriceTooLow": "the spot price is above what the request may pay: try another offer",
    "Unsupported": "the instance type is not offered in the chosen zone or region",
    # Not a credentials problem: an AWS Marketplace AMI whose terms were not accepted, or a region
    # that is not enabled for the account (opt-in regions).
    "OptInRequired": "opt in to the region/subscription (AWS Marketplace subscription or region opt-in: "
    "https://console.aws.amazon.com/billing/home#/account, 'AWS Regions')",
}


@dataclass(frozen=True)
class Tolerated:
    """An expected AWS error code, handed back by AWSApi.call instead of raised."""

    code: str
    message: str


def boto3_module() -> Any:
    try:
        import boto3
    except ModuleNotFoundError as exc:  # the registry's message, for a lazy import
        raise ProviderError("provider 'aws' needs the 'boto3' package: pip install 'gpurun[aws]'") from exc
    return boto3


_LOADERS: dict[str | None, Any] = {}  # botocore data path -> its Loader, for the whole process
_LOADERS_LOCK = threading.Lock()


def new_session(boto3: Any, profile: str | None) -> Any:
    """A boto3 Session on the process's shared botocore Loader.

    A botocore Session makes its own Loader, which parses the service models again: ec2's JSON and
    endpoints.json, ~0.1 CPU-s per session. Every AWSApi (a region, a provider, each `offers` or
    `sweep` region) has a session, so share one Loader per data path (its caches are keyed by
    service and version). boto3.Session appends its own data folder to the Loader's search paths each
    time: kept once.
    """
    import botocore.session

    core = botocore.session.Session(profile=profile)
    data_path = core.get_config_variable("data_path")  # raises ProfileNotFound for a missing profile
    with _LOADERS_LOCK:
        loader = _LOADERS.get(data_path)
        if loader is None:
            from botocore.loaders import create_loader

            loader = _LOADERS[data_path] = create_loader(data_path)
        core.register_component("data_loader", loader)
        session = boto3.session.Session(botocore_session=core)
        loader.search_paths[:] = list(dict.fromkeys(loader.search_paths))
    return session


def error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def map_error(what: str, exc: BaseException) -> ProviderError | None:
    """A botocore exception as a one-line ProviderError (None: not a botocore error)."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        NoCredentialsError,
        NoRegionError,
        PartialCredentialsError,
    )
    from botocore.exceptions import (
        ConnectionError as BotoConnectionError,
    )

    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return CredentialsError(
            f"AWS credentials not found ({one_line(exc)}): set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE (`aws configure`)"
        )
    if isinstance(exc, NoRegionError):
        return CredentialsError("no AWS region configured: set AWS_DEFAULT_REGION or pass region=...")
    if isinstance(exc, ClientError):
        code = error_code(exc)
        message = one_line(exc.response.get("Error", {}).get("Message", exc))
        if code in _AUTH_CODES:
            return CredentialsError(
                f"AWS refused {what} ({code}: {message}): check the credentials and their IAM permissions"
            )
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if code in _TRANSIENT_CODES or status >= 500:
            return TransientProviderError(f"AWS {what} failed, try again ({code or status}: {message})")
        hint = f"; {_HINTS[code]}" if code in _HINTS else ""
        return ProviderError(f"AWS {what} failed ({code}: {message}){hint}")
    if isinstance(exc, BotoConnectionError):
        return TransientProviderError(f"AWS {what}: cannot reach the endpoint ({one_line(exc)})")
    if isinstance(exc, BotoCoreError):
        return ProviderError(f"AWS {what} failed: {one_line(exc)}")
    return None


class AWSApi:
    """One boto3 session (a named profile or the default chain) and its clients, made on first use."""

    def __init__(self, *, region: str | None = None, profile: str | None = None) -> None:
        self._region_option = region
        self.profile = profile
        self._session_obj: Any = None
        self._clients: dict[str, Any] = {}

    def session(self) -> Any:
        if self._session_obj is None:
            boto3 = boto3_module()
            from botocore.exceptions import ProfileNotFound

            try:
                self._session_obj = new_session(boto3, self.profile)
            except ProfileNotFound as exc:
                raise CredentialsError(
                    f"AWS profile {one_line(exc.kwargs.get('profile', self.profile))!r} not found: "
                    "run `aws configure --profile NAME` or unset AWS_PROFILE"
                ) from exc
        return self._session_obj

    @property
    def region(self) -> str:
        region = self._region_option or self.session().region_name
        if not region:
            raise CredentialsError(
                "no AWS region configured: set AWS_DEFAULT_REGION (or `aws configure`) or pass region=..."
            )
        return region

    def client(self, service: str, region: str | None = None, *, fast: bool = False) -> Any:
        key = f"{service}:{region or ''}:{fast}"
        if key not in self._clients:
            from botocore.config import Config

            if fast:  # optional look-ups (Pricing): fail in seconds rather than stall a plan
                config = Config(connect_timeout=3, read_timeout=10, retries={"mode": "standard", "max_attempts": 2})
            else:
                config = Config(
                    connect_timeout=10, read_timeout=60, retries={"mode": "standard", "max_attempts": 5},
                    user_agent_extra="gpurun",
                )
            self._clients[key] = self.session().client(service, region_name=region or self.region, config=config)
        return self._clients[key]

    @property
    def ec2(self) -> Any:
        return self.client("ec2")

    def call(self, what: str, fn: Callable[..., Any], *args: Any, tolerate: tuple[str, ...] = (),
             **kwargs: Any) -> Any:
        """Run one boto3 call; its errors become one-line ProviderErrors, except the error codes in
        `tolerate`, which are returned as a Tolerated value for the caller to handle.

        (botocore retries throttles and 5xx itself, within the client's max_attempts.)
        """

        def classify(exc: BaseException) -> ProviderError | None:
            return None if error_code(exc) in tolerate else map_error(what, exc)

        try:
            return classified(lambda: fn(*args, **kwargs), classify)
        except Exception as exc:  # a tolerated code, else re-raised as it came
            code = error_code(exc)
            if code and code in tolerate:
                return Tolerated(code, one_line(exc))
            raise

    def paginate(self, what: str, operation: str, key: str, **kwargs: Any) -> list[dict[str, Any]]:
        """Every item under `key` of an EC2 paginated operation, all pages read."""

        def run() -> list[dict[str, Any]]:
            items: list[dict[str, Any]] = []
            for page in self.ec2.get_paginator(operation).paginate(**kwargs):
                items.extend(page.get(key) or [])
            return items

        return self.call(what, run)


def chunks(items: list[str], size: int) -> Iterable[list[str]]:
    """`items` in lists of at most `size` (EC2 caps the values of one filter or id list)."""
    for i in range(0, len(items), size):
        yield items[i:i + size]


def as_utc(value: Any) -> datetime | None:
    """A boto3 timestamp (datetime, or ISO text from a stored record) as an aware UTC datetime."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def jsonable(value: Any) -> Any:
    """boto3 responses (datetimes included) as plain JSON values, for the ledger and proofs."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
