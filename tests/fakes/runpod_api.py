"""A stand-in for RunPod's GraphQL API on 127.0.0.1, spoken to by the real `runpod` SDK.

Point the SDK at it with `RUNPOD_API_BASE_URL=<fake.base_url>`. Queries are parsed with graphql-core
(so a query the real server would reject for bad syntax is rejected here too, and an injected quote
shows up as a syntax error or an extra field) and answered with only the fields asked for; asking for
a field the fake does not model is an error, as it is on the real server.

Operations: gpuTypes (with prices and lowestPrice), podFindAndDeployOnDemand, podRentInterruptable,
pod, myself { pods, networkVolumes, clientBalance, currentSpendPerHr, spendLimit }, podStop, podTerminate;
and one REST v2 route, GET /v2/billing/pods (see "Billing history" below).

Knobs: `boot_delay_s` (runtime is null until then), `ssh_host`/`ssh_port` (what runtime.ports
reports: point them at a loopback sshd), `fail_next(n, status)` (401/403/5xx for the next n requests),
`lose_answer(op)` (done, but answered 502),
`delay_next(n, seconds)` / `delay_s` (slow answers), `sticky_terminate(polls)` (the next terminate
answers OK but the pod keeps running for that many `pod` polls), `stock` per GPU type (free GPUs,
both clouds), `balance`, `spend_limit` and `other_spend_per_hr` (what `myself` reports as
spendLimit / currentSpendPerHr).

Stock and capacity, per cloud type (issue 13):
- `stock_status[(gpu_id, "SECURE"|"COMMUNITY")]` / `set_stock_status(gpu_id, cloud, status)`: what
  `lowestPrice(input: {gpuCount, secureCloud})` reports as `stockStatus` ("High", "Medium", "Low" or
  None). Default "High" where the type is offered on that cloud, None where it is not. A deploy to a
  cloud whose stockStatus is None is refused for capacity. Out of stock is answered as the STRING
  "None": "Values include `High`, `Medium`, `Low`, and `None`" (runpod/docs sdks/graphql/manage-pods.mdx,
  "Check GPU availability"); `out_of_stock_status = None` answers a JSON null instead.
- `refuse_deploy(gpu_id, cloud=None, times=1)`: the next `times` deploys of that type (to that cloud,
  or any) are refused for capacity although stockStatus says otherwise: stock changes between the
  query and the deploy. This is how an end-to-end test makes the first offer fail at create.
- `host_spec[(gpu_id, cloud)] = (vcpu_per_gpu, ram_gb_per_gpu)`: the biggest machine of that type in
  that cloud. A deploy whose minVcpuCount / minMemoryInGb exceeds it times gpuCount is refused for
  capacity, and lowestPrice given those minimums reports stockStatus None.
- Credit: a deploy is refused (`LOW_BALANCE`) when the balance is below one hour of the pod's price.
Each pod records what its deploy asked for (`docker_args`, `min_vcpu_count`, `min_memory_gb`,
`start_ssh`, `ports`, `cloud_type`), and `sshd_started` says whether the container would open SSH.
Every pod has a per-second billing meter from create until it is really gone (or stopped), at the
GPU price; every pod also gets its own pod-scoped key (`pod_api_key(id)`) as RunPod puts in the
container's RUNPOD_API_KEY, which may act only on that pod. `pid1_environ` (a path): the fake writes
each new pod's container environment there, NUL-separated like /proc/1/environ, for the on-instance
self-destruct to read (RUNPOD_PID1_ENVIRON points gpurun's script at it). Each request records the
`principal` that made it: "account" (the user's key) or "pod" (a pod's own key).

Billing history (issue 15), REST v2 `GET /v2/billing/pods` (runpod/docs api-reference-v2/openapi.json,
listPodBilling; the v2 form of REST v1's /billing/pods that `runpodctl billing pods` reads,
runpodctl internal/api/billing.go). It answers `{"records": [...], "metadata": {...}}`, one record per
pod per bucket that billed anything, each `{startTime, endTime, podId, totalAmount, gpuAmount,
cpuAmount, diskAmount}` in USD, the window snapped to whole buckets. What a pod is charged: its GPU
price and its disks at $0.10/GB-month while running, its volume at $0.20/GB-month while stopped
(docs.runpod.io/pods/pricing), per second rounded up as the meter counts (a pod's GPU amount over all
buckets is exactly `meter_usd(pod)`). Knobs:
- `billing_lag_s`: the history knows only usage older than this (0: up to now). Rows for a new pod
  appear only after it; raise it to get "no rows yet", lower it to let them appear.
- `billing_cycle_s`: usage is counted in cycles of this length (RunPod bills every 5 minutes:
  docs.runpod.io/accounts-billing/billing; default 0: continuous).
- `billing_factor`: what the history charges over what the meter and the docs' rates say (1.05: 5 %
  more), so a test can make the provider's figure differ from gpurun's estimate.
- `billed_usd(pod_id=None)`: what the history reports now (lag, cycle and factor applied).
SSH keys of an account (item 4). `account_ssh_keys`: the public keys registered on the account
(console Settings -> SSH Public Keys, `runpodctl ssh add-key`, REST v2 `PUT /v2/account/ssh-keys`).
What the pod's container gets in PUBLIC_KEY (`FakePod.container_env`), per RunPod's own words:
- "Runpod will attempt to automatically inject the public SSH keys added in your account settings
  ... If you prefer to use a different public key for a specific Pod, you can override the default by
  setting the `SSH_PUBLIC_KEY` environment variable for that Pod" (runpod/docs
  pods/configuration/use-ssh.mdx, "Override your public key for a specific Pod"): a request env
  SSH_PUBLIC_KEY becomes the container's PUBLIC_KEY;
- otherwise, with `startSsh` and registered keys, PUBLIC_KEY carries the account's keys, one a line
  ("each key on its own line", same page). REST v2's startSsh does so "unless the request already sets
  one" (api-reference-v2/openapi.json, CreatePodRequest.startSsh); what GraphQL's deploy does with a
  request's own PUBLIC_KEY is not published, and use-ssh.mdx names only SSH_PUBLIC_KEY as the
  override, so by default the account's keys REPLACE it (`request_public_key_kept = False`); True is
  REST v2's reading. With no key registered nothing is injected ("with none registered the flag does
  nothing").
The image's start script then writes authorized_keys (`FakePod.authorized_keys`): RunPod's images
run `echo "$PUBLIC_KEY" >> ~/.ssh/authorized_keys` (runpod/containers container-template/start.sh,
setup_ssh); a start command (dockerArgs) appends what its own authorized_keys lines name, as the
documented one does (use-ssh.mdx: `echo "$PUBLIC_KEY" >> authorized_keys`). `authorized_keys_file`
(a path): each new pod's lines are appended there, the loopback sshd's AuthorizedKeysFile in the
end-to-end tests, so only a key that really reached the pod opens SSH.
Rate limit (REST v2, components.responses.TooManyRequestsError in api-reference-v2/openapi.json):
"The caller exceeded its per-user rate limit. The response identifies the window that was exceeded
and how long to wait": 429, problem JSON `{"title": "Too Many Requests", "status": 429, "detail":
"rate limit exceeded for the minute window"}`, `Retry-After` ("Seconds to wait before retrying, per
the exceeded window", an integer) and the `RateLimit` / `RateLimit-Policy` headers (IETF draft:
`"minute";r=0;t=12`). `rate_limit_next(n=1, retry_after_s=12)`: the next n REST requests each open
a window of that length; the window holds: a request inside it is answered 429 again, with
Retry-After counting down what is left (rounded up), so only a client that waits it out gets through.
Windows are measured on `clock` (time.monotonic; a test may share a virtual clock with the client).
Inventory (issue 15): `add_pod(name, volume_gb=..., stopped_s=...)` adds a pod made outside gpurun
(console, runpodctl), running or stopped; `stop_pod(id)` stops any pod as podStop does (the GPU stops,
the volume keeps billing at the stopped rate until the pod is terminated); `add_network_volume(name,
size_gb)` adds a network volume, listed by `myself { networkVolumes { id name size dataCenterId } }`
(runpodctl api/volume.go GetNetworkVolumes; runpod-python api/queries/user.py).

Preemption (issue 16): RunPod takes interruptible pods back ("can be stopped at any time to free up
resources for another Pod", REST v1 Pod.interruptible, runpod/docs api-reference/openapi.json).
- `preempt(pod_id, text="Outbid")`: the platform stops that spot pod now. What `pod` then answers:
  the pod is still there (the volume "is retained even if your Spot instance is interrupted",
  pods/pricing.mdx before runpod/docs commit 8e5aebdb; a stopped spot pod is resumed with podBidResume,
  sdks/graphql/manage-pods.mdx, same commit), `desiredStatus` EXITED, `runtime` null,
  `podType` INTERRUPTABLE and `lastStatusChange` "<text>: <date>". The text for a reclaim is not
  published; "Outbid" is what third-party clients report, "Exited by Runpod" another reading.
  Billing: the GPU stops billing at that moment (the meter ends), the volume bills at the stopped rate
  while the pod exists, the container disk is not charged (docs.runpod.io/pods/pricing).
- `preempt_after_s` (None: never): every interruptible pod is taken back that many seconds after it
  starts running (its runtime appears, after `boot_delay_s`), dated exactly then, however late the
  next request comes.
Each pod records who ended it first (`ended_by`: "account" for the user's key - gpurun's podTerminate
/ podStop, or the console -, "pod" for its own key - the self-destruct -, "platform" for a reclaim),
who sent podTerminate (`terminated_by`), and its `lastStatusChange` follows ("Rented by User: <date>",
"Exited by user: <date>", "Terminated by user: <date>", the wording third-party clients report; the
openapi.json example is "Rented by User: Fri Jul 12 2024 15:14:40 GMT-0400 (Eastern Daylight Time)").
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import secrets
import string
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from graphql import FieldNode, GraphQLError, OperationDefinitionNode, SelectionSetNode, parse
from graphql.utilities import value_from_ast_untyped

DEFAULT_GPU_TYPES: list[dict[str, Any]] = [
    {
        "id": "NVIDIA GeForce RTX 4090", "displayName": "RTX 4090", "memoryInGb": 24, "maxGpuCount": 8,
        "secureCloud": True, "communityCloud": True, "securePrice": 0.69, "communityPrice": 0.34,
        "secureSpotPrice": 0.35, "communitySpotPrice": 0.2, "manufacturer": "Nvidia", "cudaCores": 16384,
    },
    {
        "id": "NVIDIA H100 80GB HBM3", "displayName": "H100 SXM", "memoryInGb": 80, "maxGpuCount": 8,
        "secureCloud": True, "communityCloud": False, "securePrice": 2.99, "communityPrice": None,
        "secureSpotPrice": 1.75, "communitySpotPrice": None, "manufacturer": "Nvidia", "cudaCores": 16896,
    },
    {
        "id": "NVIDIA RTX A4000", "displayName": "RTX A4000", "memoryInGb": 16, "maxGpuCount": 4,
        "secureCloud": False, "communityCloud": True, "securePrice": None, "communityPrice": 0.17,
        "secureSpotPrice": None, "communitySpotPrice": 0.09, "manufacturer": "Nvidia", "cudaCores": 6144,
    },
]

# The deploy refusal for capacity, word for word: runpodctl falls back to the next GPU on exactly this
# text (runpod/runpodctl cmd/pods/createPods.go, `strings.Contains(err.Error(), "no longer any
# instances available")`; its e2e/cli_test.go shouldSkipCommunityCreate matches it too).
NO_CAPACITY = ("There are no longer any instances available with the requested specifications. "
               "Please refresh and try again.")
# RunPod refuses a deploy without credit for one hour of the pod ("To deploy a new Pod, your account
# must have at least one hour's worth of credits for your selected configuration",
# https://docs.runpod.io/accounts-billing/billing, runpod/docs accounts-billing/billing.mdx, and
# pods/pricing.mdx). The GraphQL wording of that refusal is in no public source we could find
# (runpod-python, runpodctl, runpod/docs, their issues); REST v2 documents it only as `402
# Insufficient balance` (api-reference-v2/openapi.json, createPod). This stand-in says the same.
LOW_BALANCE = ("Insufficient balance: your account must have at least one hour's worth of credits "
               "for the selected configuration to deploy this pod.")
STOCK_LEVELS = ("High", "Medium", "Low")
# What stockStatus says when nothing can be placed: the documented value `None`, a string
# (runpod/docs sdks/graphql/manage-pods.mdx: "Values include `High`, `Medium`, `Low`, and `None`").
OUT_OF_STOCK = "None"
CLOUDS = ("SECURE", "COMMUNITY")
# Storage billed with the pod (https://docs.runpod.io/pods/storage): part of "the selected configuration".
_DISK_USD_PER_GB_HOUR = 0.10 / 730
# A stopped pod's volume disk: $0.20/GB-month; its container disk is "Not charged" (docs.runpod.io/pods/pricing).
_STOPPED_VOLUME_USD_PER_GB_HOUR = 0.20 / 730
# BillingBucketSize (api-reference-v2/openapi.json); week/month/year are not modelled (calendar buckets).
_BUCKET_S = {"hour": 3600, "day": 86400}
# startTime defaults to "30 days ago" (components.parameters.BillingStartTime).
_DEFAULT_BILLING_WINDOW_S = 30 * 86400


class _QueryFail(Exception):
    def __init__(self, message: str, http_status: int = 200) -> None:
        super().__init__(message)
        self.message = message
        self.http_status = http_status


@dataclass
class FakePod:
    id: str
    name: str
    image: str
    gpu_type_id: str
    gpu_count: int
    cloud_type: str
    usd_per_hour: float
    container_disk_gb: int
    volume_gb: int
    env: dict[str, str]
    spot: bool
    pod_key: str
    docker_args: str = ""
    min_vcpu_count: int = 0
    min_memory_gb: int = 0
    vcpu_count: int = 0
    memory_gb: int = 0
    start_ssh: bool = False
    ports: str = ""
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    desired_status: str = "RUNNING"
    terminate_requests: int = 0
    sticky_polls: int = 0  # `pod` polls left before a requested terminate really happens
    gone: bool = False
    stopped_at: float | None = None  # podStop: the GPU stops billing, the volume bills at the stopped rate
    gone_at: float | None = None  # terminated: nothing bills any more
    last_status_change: str = "Rented by User"  # dated at create (FakeRunPodAPI._status_text)
    ended_by: str | None = None  # who ended it first: "account", "pod" (its own key) or "platform" (reclaim)
    terminated_by: str | None = None  # who sent podTerminate: "account" or "pod"

    container_env: dict[str, str] = field(default_factory=dict)  # env as the container sees it

    @property
    def authorized_keys(self) -> list[str]:
        """What the container's start writes to root's authorized_keys (see "SSH keys" above)."""
        if "22/tcp" not in self.ports.split(","):
            return []
        if self.docker_args:
            names = list(dict.fromkeys(
                n for line in _decoded_start_command(self.docker_args).splitlines()
                if "authorized_keys" in line and ">>" in line
                for n in re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", line.split(">>")[0])))
        else:
            names = ["PUBLIC_KEY"] if self.image.startswith("runpod/") else []
        return [k.strip() for n in names for k in self.container_env.get(n, "").splitlines() if k.strip()]

    @property
    def sshd_started(self) -> bool:
        """Would the container open SSH? RunPod's official images start sshd from PUBLIC_KEY in their
        start script; any other image needs a start command that installs and starts it
        (https://docs.runpod.io/pods/configuration/use-ssh, "Full SSH via public IP": "if you're
        using a custom template, ensure that TCP port 22 is exposed and that the SSH daemon is
        running"). dockerArgs replaces the image's CMD, so on an official image it also replaces
        the start script."""
        if "22/tcp" not in self.ports.split(","):
            return False
        if self.docker_args:
            return "sshd" in _decoded_start_command(self.docker_args)
        return self.image.startswith("runpod/") and bool(self.container_env.get("PUBLIC_KEY"))

    def billed_seconds(self, now: float | None = None) -> int:
        end = self.ended if self.ended is not None else (now or time.monotonic())
        return int(math.ceil(max(0.0, end - self.started)))

    def cost(self, now: float | None = None) -> float:
        return self.billed_seconds(now) * self.usd_per_hour / 3600.0


class FakeRunPodAPI:
    def __init__(
        self,
        api_key: str = "rpa_FAKEKEY0123456789",
        *,
        ssh_host: str = "127.0.0.1",
        ssh_port: int = 22,
        boot_delay_s: float = 0.0,
        gpu_types: list[dict[str, Any]] | None = None,
        balance: float = 25.0,
        spend_limit: float = 80.0,
        pid1_environ: Path | None = None,
        account_ssh_keys: list[str] | None = None,
        authorized_keys_file: Path | None = None,
    ) -> None:
        self.api_key = api_key
        self.pid1_environ = pid1_environ
        # SSH keys registered on the account, and where pods' authorized_keys land (see "SSH keys").
        self.account_ssh_keys = list(account_ssh_keys or [])
        self.request_public_key_kept = False
        self.authorized_keys_file = authorized_keys_file
        self.ssh_host = ssh_host
        self.ssh_port = ssh_port
        self.boot_delay_s = boot_delay_s
        self.gpu_types = [dict(t) for t in (gpu_types or DEFAULT_GPU_TYPES)]
        self.stock: dict[str, int] = {t["id"]: 8 for t in self.gpu_types}
        # lowestPrice(input: {gpuCount, secureCloud: true|false}) { stockStatus }: per cloud type, one of
        # High / Medium / Low / None (runpod/docs sdks/graphql/manage-pods.mdx, "Check GPU availability";
        # `runpodctl gpu list` prints the same field: runpodctl-gpu.mdx, internal/api/gpu.go).
        self.stock_status: dict[tuple[str, str], str | None] = {
            (t["id"], c): ("High" if t.get(f"{c.lower()}Cloud") else None) for t in self.gpu_types for c in CLOUDS
        }
        # The biggest host per type and cloud: (vCPUs per GPU, RAM GB per GPU). podFindAndDeployOnDemand
        # looks for a machine meeting minVcpuCount / minMemoryInGb (its input fields: runpod-python
        # api/mutations/pods.py; runpodctl api/pod.go CreatePodInput) and, finding none, refuses with
        # NO_CAPACITY, as for any spec nothing free can meet.
        self.host_spec: dict[tuple[str, str], tuple[int, int]] = {
            (t["id"], c): (8, 2 * int(t.get("memoryInGb") or 16)) for t in self.gpu_types for c in CLOUDS
        }
        self._refusals: list[tuple[str, str | None]] = []
        # stockStatus where nothing can be placed: the string "None" (the docs' value), or None (null).
        self.out_of_stock_status: str | None = OUT_OF_STOCK
        self.initial_balance = balance
        # myself { clientBalance currentSpendPerHr spendLimit }: the account's balance, what runs now
        # per hour and the hourly cap a new pod must fit under (`runpodctl user` prints these fields:
        # https://docs.runpod.io/runpodctl/reference/runpodctl-user; the cap counts running pods and
        # serverless workers: https://docs.runpod.io/api-reference-v2/account/get-account-limits).
        self.spend_limit = spend_limit
        # Spend the fake has no pods for (serverless workers, pods made elsewhere): part of currentSpendPerHr.
        self.other_spend_per_hr = 0.0
        self.delay_s = 0.0
        self.pods: dict[str, FakePod] = {}
        self.requests: list[dict[str, Any]] = []
        self._faults: list[tuple[int, bool, bool]] = []
        self._delays: list[float] = []
        self._lost_answers: dict[str, int] = {}
        self._sticky_next = 0
        # Preemption: interruptible pods are taken back this many seconds after they start running.
        self.preempt_after_s: float | None = None
        # Billing history (GET /v2/billing/pods): see the module docstring.
        self.billing_lag_s = 0.0
        self.billing_cycle_s = 0.0
        self.billing_factor = 1.0
        self.network_volumes: list[dict[str, Any]] = []
        # REST v2 rate limit: windows still to open, the end of the open one, on `clock`.
        self.clock = time.monotonic
        self._rate_limits: list[float] = []
        self._rate_limited_until: float | None = None
        # Pods keep monotonic times; the billing history speaks wall-clock RFC 3339.
        self._wall_offset = time.time() - time.monotonic()
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ server

    def start(self) -> FakeRunPodAPI:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server naming
                fake._handle(self)

            def do_GET(self) -> None:  # noqa: N802 - http.server naming
                fake._handle_rest(self)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        # A short poll interval keeps stop() (server.shutdown) from costing half a second per test.
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-runpod", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeRunPodAPI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._server is not None, "start() the fake first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # ------------------------------------------------------------------ knobs and meters

    def fail_next(self, n: int = 1, status: int = 503, json_body: bool = False, after: bool = False) -> None:
        """The next n requests answer `status`; a 5xx body is a gateway's HTML page unless json_body.

        after=True: the request is carried out first and only the answer is lost (a create that
        landed although the client saw a 502).
        """
        with self._lock:
            self._faults.extend([(status, json_body, after)] * n)

    def lose_answer(self, op: str, status: int = 502) -> None:
        """The next request for `op` (e.g. podFindAndDeployOnDemand) is carried out, then answered 5xx."""
        with self._lock:
            self._lost_answers[op] = status

    def delay_next(self, n: int, seconds: float) -> None:
        with self._lock:
            self._delays.extend([seconds] * n)

    def rate_limit_next(self, n: int = 1, retry_after_s: int = 12) -> None:
        """The next n REST v2 requests each hit the per-user limit: a 429 with `Retry-After`, and a
        window of `retry_after_s` (on `clock`) inside which every request is answered 429 again."""
        with self._lock:
            self._rate_limits.extend([float(retry_after_s)] * n)

    def _rate_limit(self) -> float | None:
        """Seconds left in the open rate-limit window (opening the next one queued), or None: served."""
        now = self.clock()
        if self._rate_limited_until is not None and now < self._rate_limited_until:
            return self._rate_limited_until - now
        if self._rate_limits:
            window = self._rate_limits.pop(0)
            self._rate_limited_until = now + window
            return window
        return None

    def sticky_terminate(self, polls: int) -> None:
        """The next podTerminate answers OK, but the pod stays RUNNING for `polls` `pod` queries."""
        with self._lock:
            self._sticky_next = polls

    def preempt(self, pod_id: str, text: str = "Outbid") -> FakePod:
        """The platform takes this interruptible pod back now (see "Preemption" in the module docstring)."""
        with self._lock:
            pod = self.pods[pod_id]
            if not pod.spot:
                raise ValueError(f"pod {pod_id} is on-demand: RunPod does not take those back")
            if pod.gone or pod.desired_status != "RUNNING":
                raise ValueError(f"pod {pod_id} is not running ({pod.desired_status})")
            self._reclaim(pod, time.monotonic(), text)
            return pod

    def _reclaim(self, pod: FakePod, at: float, text: str = "Outbid") -> None:
        self._stop(pod, at=at, by="platform", text=text)

    def _reclaim_due(self) -> None:
        """Apply `preempt_after_s` to every interruptible pod whose time has come (called under the lock
        before anything reads pods), dated when it was due so the meter stops exactly there."""
        if self.preempt_after_s is None:
            return
        now = time.monotonic()
        for pod in self.pods.values():
            due = pod.started + self.boot_delay_s + float(self.preempt_after_s)
            # A pod we already asked to terminate (a sticky terminate still running) is ours, not reclaimed.
            if (pod.spot and not pod.gone and pod.desired_status == "RUNNING" and pod.terminate_requests == 0
                    and now >= due):
                self._reclaim(pod, due)

    def _status_text(self, event: str, at: float) -> str:
        """lastStatusChange: "<event>: <JavaScript Date string>" (openapi.json Pod.lastStatusChange)."""
        stamp = datetime.fromtimestamp(at + self._wall_offset, tz=timezone.utc)
        return f"{event}: {stamp.strftime('%a %b %d %Y %H:%M:%S')} GMT+0000 (Coordinated Universal Time)"

    def set_stock_status(self, gpu_id: str, cloud: str, status: str | None) -> None:
        """What lowestPrice reports for `gpu_id` in `cloud` ("SECURE", "COMMUNITY" or "ALL" for both)."""
        assert status is None or status in (*STOCK_LEVELS, OUT_OF_STOCK), status
        status = None if status == OUT_OF_STOCK else status
        with self._lock:
            for c in (CLOUDS if cloud == "ALL" else (cloud,)):
                self.stock_status[(gpu_id, c)] = status

    def refuse_deploy(self, gpu_id: str, cloud: str | None = None, times: int = 1) -> None:
        """The next `times` deploys of `gpu_id` (to `cloud`, or to any cloud) answer NO_CAPACITY,
        whatever stockStatus said: the machine was taken between the query and the deploy."""
        with self._lock:
            self._refusals.extend([(gpu_id, cloud)] * times)

    def pod_api_key(self, pod_id: str) -> str:
        return self.pods[pod_id].pod_key

    def ops(self) -> list[str]:
        """Top-level GraphQL fields of every request, in order ("401" etc. for refused ones)."""
        with self._lock:
            return [op for r in self.requests for op in r["ops"]]

    def count(self, op: str) -> int:
        return self.ops().count(op)

    def live_pods(self) -> list[FakePod]:
        with self._lock:
            self._reclaim_due()
            return [p for p in self.pods.values() if not p.gone]

    def meter_usd(self, pod_id: str | None = None) -> float:
        with self._lock:
            self._reclaim_due()
            now = time.monotonic()
            pods = [self.pods[pod_id]] if pod_id else list(self.pods.values())
            return sum(p.cost(now) for p in pods)

    def add_pod(self, name: str, *, gpu_type_id: str = "NVIDIA GeForce RTX 4090", gpu_count: int = 1,
                container_disk_gb: int = 20, volume_gb: int = 0, age_s: float = 0.0,
                stopped_s: float | None = None) -> FakePod:
        """A pod made outside gpurun (console, runpodctl), created `age_s` ago; with `stopped_s`, stopped
        that long ago (its volume still bills, at the stopped rate)."""
        t = next(g for g in self.gpu_types if g["id"] == gpu_type_id)
        now = time.monotonic()
        alphabet = string.ascii_lowercase + string.digits
        pod = FakePod(id="".join(secrets.choice(alphabet) for _ in range(14)), name=name, image="runpod/stack",
                      gpu_type_id=gpu_type_id, gpu_count=gpu_count, cloud_type="SECURE",
                      usd_per_hour=float(t.get("securePrice") or t.get("communityPrice")) * gpu_count,
                      container_disk_gb=container_disk_gb, volume_gb=volume_gb, env={}, spot=False,
                      pod_key="rpa_POD" + secrets.token_hex(12), ports="22/tcp", started=now - age_s)
        pod.last_status_change = self._status_text("Rented by User", pod.started)
        with self._lock:
            self.pods[pod.id] = pod
            if stopped_s is not None:
                self._stop(pod, at=now - min(stopped_s, age_s), by="account")
        return pod

    def stop_pod(self, pod_id: str) -> None:
        """podStop, without a request: the pod stays listed (EXITED) and its volume keeps billing."""
        with self._lock:
            self._stop(self.pods[pod_id], by="account")

    def add_network_volume(self, name: str, size_gb: int, data_center_id: str = "EU-RO-1") -> dict[str, Any]:
        """A network volume (NetworkVolume: id, name, size in GB, dataCenterId)."""
        vol = {"id": secrets.token_hex(5), "name": name, "size": int(size_gb), "dataCenterId": data_center_id}
        with self._lock:
            self.network_volumes.append(vol)
        return vol

    def billed_usd(self, pod_id: str | None = None) -> float:
        """What the billing history reports now for `pod_id` (or every pod): lag, cycle and factor applied."""
        with self._lock:
            self._reclaim_due()
            mono_now, cutoff = self._billing_cutoff()
            pods = [self.pods[pod_id]] if pod_id else list(self.pods.values())
            return sum(sum(self._amounts(p, p.started, mono_now, cutoff)) for p in pods)

    def billed_seconds(self, pod_id: str) -> int:
        with self._lock:
            self._reclaim_due()
            return self.pods[pod_id].billed_seconds()

    @property
    def balance(self) -> float:
        return self.initial_balance - self.meter_usd()

    # ------------------------------------------------------------------ HTTP

    def _reply(self, h: BaseHTTPRequestHandler, status: int, body: Any, ctype: str = "application/json",
               headers: dict[str, str] | None = None) -> None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        for name, value in (headers or {}).items():
            h.send_header(name, value)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        try:
            h.wfile.write(data)
        except OSError:  # the client gave up (timeout test)
            pass

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        with self._lock:
            fault = self._faults.pop(0) if self._faults else None
            delay = self._delays.pop(0) if self._delays else self.delay_s
        record: dict[str, Any] = {"ops": [], "status": 200, "time": time.time()}
        with self._lock:
            self.requests.append(record)
        if delay:
            time.sleep(delay)
        url = urlparse(h.path)
        if url.path.rstrip("/") != "/graphql":
            record["status"] = 404
            record["ops"] = ["404"]
            return self._reply(h, 404, "not found", "text/plain")
        if fault is not None and not fault[2]:
            return self._fault_reply(h, record, fault)


        token = ""
        auth = h.headers.get("Authorization") or ""
        if auth.startswith("Bearer "):
            token = auth[len("Bearer "):].strip()
        token = token or (parse_qs(url.query).get("api_key") or [""])[0]
        principal = self._principal(token)
        if principal is None:
            record["status"] = 401
            record["ops"] = ["401"]
            return self._reply(h, 401, {"errors": [{"message": "Unauthorized"}]})
        record["principal"] = principal[0]

        try:
            query = json.loads(raw or b"{}").get("query") or ""
            doc = parse(query)
        except (ValueError, GraphQLError) as exc:
            record["status"] = 400
            record["ops"] = ["syntax-error"]
            msg = exc.message if isinstance(exc, GraphQLError) else "invalid JSON body"
            return self._reply(h, 400, {"errors": [{"message": f"Syntax Error: {msg}"}]})
        record["query"] = query
        op = next((d for d in doc.definitions if isinstance(d, OperationDefinitionNode)), None)
        if op is None:
            return self._reply(h, 400, {"errors": [{"message": "no operation"}]})
        data: dict[str, Any] = {}
        try:
            for sel in op.selection_set.selections:
                assert isinstance(sel, FieldNode)
                fname = sel.name.value
                record["ops"].append(fname)
                args = {a.name.value: value_from_ast_untyped(a.value) for a in sel.arguments or ()}
                value = self._resolve(op.operation.value, fname, args, principal)
                data[sel.alias.value if sel.alias else fname] = _project(value, sel.selection_set, fname)
        except _QueryFail as exc:
            record["status"] = exc.http_status
            return self._reply(h, exc.http_status, {"errors": [{"message": exc.message, "path": [fname]}],
                                                    "data": None})
        with self._lock:
            lost = next((self._lost_answers.pop(o) for o in record["ops"] if o in self._lost_answers), None)
        if lost is not None:
            fault = (lost, False, True)
        if fault is not None:  # carried out, answer lost
            return self._fault_reply(h, record, fault)
        return self._reply(h, 200, {"data": data})

    def _rate_limited_reply(self, h: BaseHTTPRequestHandler, record: dict[str, Any], left_s: float) -> None:
        """REST v2's TooManyRequestsError: problem JSON, Retry-After in whole seconds (rounded up, so
        a client that waits it out arrives after the window), RateLimit / RateLimit-Policy."""
        wait = max(1, math.ceil(left_s))
        record["status"] = 429
        record["retry_after"] = wait
        record["ops"] = ["429"] + record["ops"]
        problem = {"title": "Too Many Requests", "status": 429, "detail": "rate limit exceeded for the minute window"}
        return self._reply(h, 429, problem, "application/problem+json", headers={
            "Retry-After": str(wait),
            "RateLimit": f'"minute";r=0;t={wait}, "hour";r=2800;t=1812, "day";r=49500;t=45012',
            "RateLimit-Policy": '"minute";q=60;w=60, "hour";q=3000;w=3600, "day";q=50000;w=86400',
        })

    def _fault_reply(self, h: BaseHTTPRequestHandler, record: dict[str, Any],
                     fault: tuple[int, bool, bool]) -> None:
        status, as_json, _ = fault
        record["status"] = status
        record["ops"] = [str(status)] + record["ops"]
        if status in (401, 403):
            message = "Forbidden" if status == 403 else "Unauthorized"
            return self._reply(h, status, {"errors": [{"message": message}]})
        if as_json:
            return self._reply(h, status, {"errors": [{"message": "Internal server error"}]})
        page = f"<html><head><title>{status} Bad Gateway</title></head><body>{status}</body></html>"
        return self._reply(h, status, page, "text/html")

    def _principal(self, token: str) -> tuple[str, str | None] | None:
        if token and secrets.compare_digest(token, self.api_key):
            return ("account", None)
        with self._lock:
            for p in self.pods.values():
                if token and secrets.compare_digest(token, p.pod_key):
                    return ("pod", p.id)
        return None

    # ------------------------------------------------------------------ resolvers

    def _resolve(self, kind: str, name: str, args: dict[str, Any], principal: tuple[str, str | None]) -> Any:
        inp = args.get("input") or {}
        with self._lock:
            self._reclaim_due()
            if kind == "query" and name == "gpuTypes":
                types = self.gpu_types
                if inp.get("id") is not None:
                    types = [t for t in types if t["id"] == inp["id"]]
                return [self._gpu_view(t) for t in types]
            if kind == "query" and name == "pod":
                return self._pod_query(str(inp.get("podId")), principal)
            if kind == "query" and name == "myself":
                return self._myself(principal)
            if kind == "mutation" and name in ("podFindAndDeployOnDemand", "podRentInterruptable"):
                if principal[0] != "account":
                    raise _QueryFail("Forbidden")
                return self._pod_view(self._create(inp, spot=name == "podRentInterruptable"))
            if kind == "mutation" and name == "podTerminate":
                return self._terminate(str(inp.get("podId")), principal)
            if kind == "mutation" and name == "podStop":
                pod = self._own_pod(str(inp.get("podId")), principal, "pod not found to stop")
                self._stop(pod, by=principal[0])
                return self._pod_view(pod)
        raise _QueryFail(f'Cannot query field "{name}" on type "{kind.capitalize()}".', 400)

    def _gpu_view(self, t: dict[str, Any]) -> dict[str, Any]:
        view = dict(t)
        gpu_id = t["id"]

        def lowest(args: dict[str, Any]) -> dict[str, Any]:
            # GpuLowestPriceInput: gpuCount, secureCloud, minVcpuCount, minMemoryInGb (runpodctl
            # api/cloud.go GetCloudInput; runpod/docs manage-pods.mdx). secureCloud true / false asks
            # one cloud type; left out, the cheaper of both.
            inp = args.get("input") or {}
            count = int(inp.get("gpuCount") or 1)
            secure = inp.get("secureCloud")
            clouds = CLOUDS if secure is None else (("SECURE",) if secure else ("COMMUNITY",))
            vcpu, mem = int(inp.get("minVcpuCount") or 0), int(inp.get("minMemoryInGb") or 0)
            have = [c for c in clouds if self._can_place(t, c, count, vcpu, mem)]
            prices = [t.get(f"{c.lower()}Price") for c in have if t.get(f"{c.lower()}Price")]
            spots = [t.get(f"{c.lower()}SpotPrice") for c in have if t.get(f"{c.lower()}SpotPrice")]
            levels = [self.stock_status.get((gpu_id, c)) for c in have]
            best = min((lv for lv in levels if lv), key=STOCK_LEVELS.index, default=None)
            host = [self.host_spec[(gpu_id, c)] for c in have]
            return {
                # Nothing to place: no price and no stock (the old reading of a null lowestPrice).
                "minimumBidPrice": min(spots) if spots else None,
                "uninterruptablePrice": min(prices) if prices else None,
                "stockStatus": best or self.out_of_stock_status,
                "minVcpu": min(h[0] for h in host) * count if host else None,
                "minMemory": min(h[1] for h in host) * count if host else None,
                "availableGpuCounts": [n for n in range(1, int(t.get("maxGpuCount") or 8) + 1)
                                       if self.stock.get(gpu_id, 0) >= n] if have else [],
            }

        view["lowestPrice"] = lowest
        for extra in ("oneMonthPrice", "threeMonthPrice", "oneWeekPrice"):
            view.setdefault(extra, None)
        return view

    def _can_place(self, t: dict[str, Any], cloud: str, count: int, vcpu: int, mem: int) -> bool:
        """Is there a machine of this type in this cloud with `count` GPUs free and the host minimums?"""
        gpu_id = t["id"]
        if not t.get(f"{cloud.lower()}Cloud") or self.stock_status.get((gpu_id, cloud)) is None:
            return False
        if self.stock.get(gpu_id, 0) < count:
            return False
        vcpu_per_gpu, ram_per_gpu = self.host_spec[(gpu_id, cloud)]
        return vcpu <= vcpu_per_gpu * count and mem <= ram_per_gpu * count

    def _pod_view(self, pod: FakePod) -> dict[str, Any]:
        booted = time.monotonic() - pod.started >= self.boot_delay_s
        runtime = None
        if booted and pod.desired_status == "RUNNING":
            runtime = {
                "uptimeInSeconds": int(time.monotonic() - pod.started),
                "ports": [
                    # A private mapping first, so a client that ignores isIpPublic picks the wrong one.
                    {"ip": "10.0.0.7", "isIpPublic": False, "privatePort": 22, "publicPort": 22, "type": "tcp"},
                    {"ip": self.ssh_host, "isIpPublic": True, "privatePort": 22,
                     "publicPort": self.ssh_port, "type": "tcp"},
                ],
                "gpus": [{"id": f"GPU-{i}", "gpuUtilPercent": 0} for i in range(pod.gpu_count)],
            }
        display = next((t["displayName"] for t in self.gpu_types if t["id"] == pod.gpu_type_id), "")
        return {
            "id": pod.id,
            "name": pod.name,
            "imageName": pod.image,
            "env": [f"{k}={v}" for k, v in pod.env.items()],
            "machineId": f"m-{pod.id[:6]}",
            "machine": {"podHostId": f"{pod.id}-64410b7e", "gpuDisplayName": display},
            "desiredStatus": pod.desired_status,
            "costPerHr": round(pod.usd_per_hour, 4),
            "gpuCount": pod.gpu_count,
            "containerDiskInGb": pod.container_disk_gb,
            "volumeInGb": pod.volume_gb,
            "volumeMountPath": "/workspace",
            "memoryInGb": pod.memory_gb,
            "vcpuCount": pod.vcpu_count,
            "dockerArgs": pod.docker_args,
            "dockerId": None,
            "lastStatusChange": pod.last_status_change,
            "podType": "INTERRUPTABLE" if pod.spot else "RESERVED",
            "port": None,
            "ports": pod.ports,
            "uptimeSeconds": int(time.monotonic() - pod.started) if runtime else 0,
            "runtime": runtime,
        }

    def _create(self, inp: dict[str, Any], spot: bool) -> FakePod:
        for required in ("name", "imageName", "gpuTypeId"):
            if not inp.get(required):
                raise _QueryFail(f"{required} is required")
        gpu_id = inp["gpuTypeId"]
        t = next((g for g in self.gpu_types if g["id"] == gpu_id), None)
        if t is None:
            raise _QueryFail(f"gpuTypeId {gpu_id} is not valid")
        cloud = str(inp.get("cloudType") or "ALL")
        if cloud not in ("ALL", "SECURE", "COMMUNITY"):
            raise _QueryFail(f'Value "{cloud}" does not exist in "CloudTypeEnum" enum.', 400)
        count = int(inp.get("gpuCount") or 1)
        vcpu, mem = int(inp.get("minVcpuCount") or 0), int(inp.get("minMemoryInGb") or 0)
        # "Find and deploy": the cheapest cloud (of those asked) with a machine that meets the spec.
        wanted = list(CLOUDS) if cloud == "ALL" else [cloud]
        placeable = [c for c in wanted if self._can_place(t, c, count, vcpu, mem)]
        refusal = next((r for r in self._refusals if r[0] == gpu_id and (r[1] is None or r[1] in wanted)), None)
        if refusal is not None:
            self._refusals.remove(refusal)
            raise _QueryFail(NO_CAPACITY)
        kind = "SpotPrice" if spot else "Price"
        priced = sorted((float(t[f"{c.lower()}{kind}"]), c) for c in placeable if t.get(f"{c.lower()}{kind}"))
        if not priced:
            raise _QueryFail(NO_CAPACITY)
        floor, placed = priced[0]
        if spot:
            bid = float(inp.get("bidPerGpu") or 0)
            if bid < floor:
                raise _QueryFail(f"Your bid price ({bid}) is lower than the minimum bid price ({floor}).")
            per_gpu = bid
        else:
            per_gpu = floor
        disk, volume = int(inp.get("containerDiskInGb") or 0), int(inp.get("volumeInGb") or 0)
        hourly = per_gpu * count + (disk + volume) * _DISK_USD_PER_GB_HOUR
        if self.balance < hourly:
            raise _QueryFail(LOW_BALANCE)
        env = {str(e["key"]): str(e["value"]) for e in (inp.get("env") or [])}
        alphabet = string.ascii_lowercase + string.digits
        vcpu_per_gpu, ram_per_gpu = self.host_spec[(gpu_id, placed)]
        pod = FakePod(
            id="".join(secrets.choice(alphabet) for _ in range(14)),
            name=str(inp["name"]),
            image=str(inp["imageName"]),
            gpu_type_id=gpu_id,
            gpu_count=count,
            cloud_type=cloud,
            usd_per_hour=per_gpu * count,
            container_disk_gb=disk,
            volume_gb=volume,
            env=env,
            spot=spot,
            pod_key="rpa_POD" + secrets.token_hex(12),
            docker_args=str(inp.get("dockerArgs") or ""),
            min_vcpu_count=vcpu,
            min_memory_gb=mem,
            vcpu_count=vcpu_per_gpu * count,
            memory_gb=ram_per_gpu * count,
            start_ssh=bool(inp.get("startSsh")),
            ports=str(inp.get("ports") or ""),
        )
        pod.container_env = self._container_env(env, pod.start_ssh)
        pod.last_status_change = self._status_text("Rented by User", pod.started)
        self.pods[pod.id] = pod
        if self.pid1_environ is not None:
            self._write_container_environ(pod)
        if self.authorized_keys_file is not None and pod.authorized_keys:
            with open(self.authorized_keys_file, "a") as fh:
                fh.write("".join(k + "\n" for k in pod.authorized_keys))
        return pod

    def _container_env(self, env: dict[str, str], start_ssh: bool) -> dict[str, str]:
        """The request's env plus what RunPod injects into PUBLIC_KEY (see "SSH keys" above)."""
        out = dict(env)
        if env.get("SSH_PUBLIC_KEY"):  # use-ssh.mdx: the per-pod override of the account's keys
            out["PUBLIC_KEY"] = env["SSH_PUBLIC_KEY"]
        elif start_ssh and self.account_ssh_keys and not (self.request_public_key_kept and env.get("PUBLIC_KEY")):
            out["PUBLIC_KEY"] = "\n".join(self.account_ssh_keys)
        return out

    def _write_container_environ(self, pod: FakePod) -> None:
        """RunPod sets RUNPOD_POD_ID and RUNPOD_API_KEY in the container's environment, which PID 1
        holds and ssh sessions do not inherit (https://docs.runpod.io/pods/templates/environment-variables);
        the key is "a Pod-scoped API key" (https://docs.runpod.io/runpodctl). The file stands in for that
        /proc/1/environ: NUL-separated KEY=VALUE, the user's env from podFindAndDeployOnDemand too."""
        assert self.pid1_environ is not None
        env = {**pod.container_env, "RUNPOD_POD_ID": pod.id, "RUNPOD_API_KEY": pod.pod_key}
        self.pid1_environ.write_bytes(b"".join(f"{k}={v}".encode() + b"\0" for k, v in env.items()))

    def _own_pod(self, pod_id: str, principal: tuple[str, str | None], missing: str) -> FakePod:
        pod = self.pods.get(pod_id)
        if pod is None or pod.gone:
            raise _QueryFail(missing)
        if principal[0] == "pod" and principal[1] != pod_id:
            raise _QueryFail("Forbidden: this key may only act on its own pod")
        return pod

    def _stop(self, pod: FakePod, at: float | None = None, by: str = "account", text: str = "") -> None:
        """The GPU is released (the meter ends), the volume stays and bills at the stopped rate."""
        at = time.monotonic() if at is None else at
        pod.desired_status = "EXITED"
        pod.ended = pod.ended or at
        pod.stopped_at = pod.stopped_at or at
        pod.ended_by = pod.ended_by or by
        pod.last_status_change = self._status_text(text or "Exited by user", at)

    def _finish(self, pod: FakePod) -> None:
        pod.gone = True
        pod.desired_status = "TERMINATED"
        now = time.monotonic()
        pod.last_status_change = self._status_text("Terminated by user", now)  # never shown: `pod` is null
        if pod.ended is None:
            pod.ended = now
        pod.gone_at = pod.gone_at or now

    def _terminate(self, pod_id: str, principal: tuple[str, str | None]) -> None:
        pod = self._own_pod(pod_id, principal, "pod not found to terminate")
        pod.terminate_requests += 1
        pod.terminated_by = pod.terminated_by or principal[0]
        pod.ended_by = pod.ended_by or principal[0]  # a pod reclaimed first stays the platform's
        if pod.terminate_requests == 1 and self._sticky_next > 0:
            pod.sticky_polls = self._sticky_next  # answers OK, keeps running (and billing) a while
            self._sticky_next = 0
        elif pod.sticky_polls <= 0:
            self._finish(pod)
        return None

    def _pod_query(self, pod_id: str, principal: tuple[str, str | None]) -> dict[str, Any] | None:
        pod = self.pods.get(pod_id)
        if pod is None or pod.gone:
            return None
        if principal[0] == "pod" and principal[1] != pod_id:
            raise _QueryFail("Forbidden: this key may only act on its own pod")
        if pod.sticky_polls > 0:
            pod.sticky_polls -= 1
            view = self._pod_view(pod)
            if pod.sticky_polls == 0:
                self._finish(pod)  # the next poll finds it gone
            return view
        return self._pod_view(pod)

    def _myself(self, principal: tuple[str, str | None]) -> dict[str, Any]:
        live = [p for p in self.pods.values() if not p.gone]
        if principal[0] == "pod":
            live = [p for p in live if p.id == principal[1]]
        spend = sum(p.usd_per_hour for p in live if p.ended is None)
        if principal[0] == "account":
            spend += self.other_spend_per_hr
        return {
            "id": "user_fake",
            "email": "fake@example.invalid",
            "pods": [self._pod_view(p) for p in live],
            "clientBalance": round(self.balance, 4),
            "currentSpendPerHr": round(spend, 4),
            "spendLimit": self.spend_limit,
            "networkVolumes": [dict(v) for v in self.network_volumes] if principal[0] == "account" else [],
        }

    # ------------------------------------------------------------------ billing history (REST v2)

    def _billing_cutoff(self) -> tuple[float, float]:
        """(now, the newest moment the history has counted), both monotonic: lag, then whole cycles."""
        mono_now = time.monotonic()
        wall = mono_now + self._wall_offset - self.billing_lag_s
        if self.billing_cycle_s > 0:
            wall = math.floor(wall / self.billing_cycle_s) * self.billing_cycle_s
        return mono_now, wall - self._wall_offset

    def _amounts(self, pod: FakePod, b0: float, b1: float, cutoff: float) -> tuple[float, float]:
        """(GPU, disk) USD the history charges `pod` for [b0, b1) (monotonic), counted up to `cutoff`.

        Whole seconds from each phase's start, rounded up (per-second billing,
        docs.runpod.io/accounts-billing/billing), split between buckets so they add up to the meter."""
        hi = min(b1, cutoff)

        def seconds(start: float, end: float | None) -> int:
            stop = cutoff if end is None else end
            if hi <= b0 or stop <= start:
                return 0
            def upto(t: float) -> int:
                return math.ceil(min(max(t, start), stop) - start)
            return max(0, upto(hi) - upto(b0))

        run_s = seconds(pod.started, pod.ended)
        stopped_s = seconds(pod.stopped_at, pod.gone_at) if pod.stopped_at is not None else 0
        gpu = run_s * pod.usd_per_hour / 3600
        disk = (run_s * (pod.container_disk_gb + pod.volume_gb) * _DISK_USD_PER_GB_HOUR
                + stopped_s * pod.volume_gb * _STOPPED_VOLUME_USD_PER_GB_HOUR) / 3600
        return gpu * self.billing_factor, disk * self.billing_factor

    def _pod_billing(self, query: dict[str, list[str]], principal: tuple[str, str | None]) -> dict[str, Any]:
        """listPodBilling: records per pod per bucket over the snapped window (api-reference-v2/openapi.json)."""
        if principal[0] != "account":
            raise _QueryFail("Forbidden: a pod-scoped key cannot read billing", 403)
        q = {k: v[-1] for k, v in query.items()}
        size = q.get("bucketSize", "day")
        if size not in _BUCKET_S:
            raise _QueryFail(f"bucketSize {size!r} is not modelled by the fake (hour, day)", 400)
        step = _BUCKET_S[size]
        mono_now, cutoff = self._billing_cutoff()
        wall_now = mono_now + self._wall_offset
        if "lastN" in q:
            if "startTime" in q or "endTime" in q:
                raise _QueryFail("lastN is mutually exclusive with startTime/endTime", 400)
            hi = (math.floor(wall_now / step) + 1) * step  # ends with the current, in-progress bucket
            if not q["lastN"].isdigit() or int(q["lastN"]) < 1:
                raise _QueryFail(f"lastN {q['lastN']!r} is not an integer >= 1", 400)
            lo = hi - int(q["lastN"]) * step
        else:
            lo = _parse_time(q["startTime"]) if "startTime" in q else wall_now - _DEFAULT_BILLING_WINDOW_S
            hi = _parse_time(q["endTime"]) if "endTime" in q else wall_now
            lo, hi = math.floor(lo / step) * step, math.ceil(hi / step) * step  # snapped to whole buckets
        pod_id = q.get("podId")
        pods = [p for p in self.pods.values() if pod_id is None or p.id == pod_id]
        records = []
        for b in range(int(lo), int(hi), step):
            b0, b1 = b - self._wall_offset, b + step - self._wall_offset
            for pod in pods:
                if b1 <= pod.started or b0 > mono_now:
                    continue
                gpu, disk = self._amounts(pod, b0, b1, cutoff)
                if gpu or disk:  # a bucket the pod billed nothing in has no record
                    records.append({"startTime": _rfc3339(b), "endTime": _rfc3339(b + step), "podId": pod.id,
                                    "totalAmount": gpu + disk, "gpuAmount": gpu, "cpuAmount": 0.0,
                                    "diskAmount": disk})
        totals = {k: sum(r[k] for r in records) for k in ("totalAmount", "gpuAmount", "cpuAmount", "diskAmount")}
        return {"records": records, "metadata": {
            "query": {"startTime": _rfc3339(lo), "endTime": _rfc3339(hi), "bucketSize": size, "podId": pod_id},
            "recordCount": len(records), "uniquePodCount": len({r["podId"] for r in records}), "totals": totals}}

    def _handle_rest(self, h: BaseHTTPRequestHandler) -> None:
        """REST v2 on the same host as GraphQL (servers: https://api.runpod.io): Bearer auth, RFC 9457
        problem JSON for errors (components.responses.UnauthorizedError / ForbiddenError)."""
        url = urlparse(h.path)
        with self._lock:
            limited = self._rate_limit()
            fault = None if limited is not None else (self._faults.pop(0) if self._faults else None)
            delay = self._delays.pop(0) if self._delays else self.delay_s
            record: dict[str, Any] = {"ops": [f"GET {url.path}"], "status": 200, "time": time.time(),
                                      "clock": self.clock()}
            self.requests.append(record)
        if delay:
            time.sleep(delay)
        if limited is not None:
            return self._rate_limited_reply(h, record, limited)
        if fault is not None:
            return self._fault_reply(h, record, fault)
        auth = h.headers.get("Authorization") or ""
        principal = self._principal(auth[len("Bearer "):].strip() if auth.startswith("Bearer ") else "")
        try:
            if principal is None:
                raise _QueryFail("Missing or invalid API key", 401)
            record["principal"] = principal[0]
            if url.path.rstrip("/") != "/v2/billing/pods":
                raise _QueryFail(f"no route {url.path} (the fake models GET /v2/billing/pods only)", 404)
            with self._lock:
                self._reclaim_due()
                body = self._pod_billing(parse_qs(url.query), principal)
        except _QueryFail as exc:
            record["status"] = exc.http_status
            problem = {"type": "about:blank", "title": h.responses.get(exc.http_status, ("Error",))[0],
                       "status": exc.http_status, "detail": exc.message}
            return self._reply(h, exc.http_status, problem, "application/problem+json")
        return self._reply(h, 200, body)


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(text: str) -> float:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise _QueryFail(f"{text!r} is not an RFC 3339 date-time", 400) from None


def _decoded_start_command(docker_args: str) -> str:
    """dockerArgs as the container would run it, with any base64 payload (SkyPilot's way past the
    API's quoting: sky/provision/runpod/utils.py launch()) decoded, for the fake's sshd_started."""
    text = docker_args
    for word in re.findall(r"[A-Za-z0-9+/=]{16,}", docker_args):
        try:
            text += "\n" + base64.b64decode(word, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            continue
    return text


def _project(value: Any, selection: SelectionSetNode | None, type_name: str) -> Any:
    """Answer only what was asked, like a GraphQL server; an unknown field is an error."""
    if value is None or selection is None:
        return value
    if isinstance(value, list):
        return [_project(v, selection, type_name) for v in value]
    out: dict[str, Any] = {}
    for sel in selection.selections:
        if not isinstance(sel, FieldNode):
            continue
        fname = sel.name.value
        if fname == "__typename":
            out[fname] = type_name
            continue
        if fname not in value:
            raise _QueryFail(f'Cannot query field "{fname}" on type "{type_name}".', 400)
        v = value[fname]
        if callable(v):  # a field with arguments, e.g. lowestPrice(input: {gpuCount: N})
            v = v({a.name.value: value_from_ast_untyped(a.value) for a in sel.arguments or ()})
        out[sel.alias.value if sel.alias else fname] = _project(v, sel.selection_set, fname)
    return out
