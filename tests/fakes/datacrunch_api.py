"""A local stand-in for the DataCrunch (Verda) public REST API, for the real `verda` SDK to talk to.

It speaks the wire format the SDK 1.25 sends and parses (see verda/*/_*.py) and the official Go SDK
(github.com/verda-cloud/verdacloud-sdk-go, pkg/verda/*.go) parses: OAuth2 client credentials at
/oauth2/token, /balance, /instance-types (prices as STRINGS, `supported_os`), /instance-availability,
/volume-types, /images (`?instance_type=`), /sshkeys, /scripts, /volumes and /instances (POST answers
the new id as plain text or as JSON; PUT carries actions and answers a JSON results array).
Instances walk ordered -> [pending] -> provisioning -> running, or ordered -> pending -> no_capacity,
and, after a delete, deleting -> discontinued, each step after a configurable delay; the ip stays
null until running. A billing meter per instance runs from the create call until the instance is
discontinued; volumes are listed (and so billed) until permanently deleted.

Knobs (attributes; see the dataclass fields) for what a real account meets: `create_answer` (the
shape of the POST /instances body), `pending_s` (an order waits for capacity), `no_capacity_where`
(orders that end in no_capacity), `refuse_create_where` (a create refused for capacity),
`spot_availability`, `refuse_delete_in`, `min_deploy_balance`, `lost_create_answers` (a create that
lands but answers 503), `volume_price_field` (the /volume-types price in its current or legacy
spelling), `list_purged_in_trash`, `preempt_after_s` (spot instances reclaimed that long after they
run); and methods: 5xx / slow answers for the next N calls, a 207 that silently does nothing for one
id, `reclaim_spot` (the cloud takes a spot instance back now: `discontinued`, no delete recorded), and
what someone else's account holds: `add_instance` (any hostname, any status: a non-gpurun instance,
an `offline` one), `shut_down`, `add_volume` (a detached volume) and `trash_volume`. Volumes are also made and deleted over HTTP (POST /volumes, DELETE /volumes/{id}
to the trash or permanently), and GET /volumes/trash lists the trash.

There is no billing endpoint here because the real API has none: no per-instance cost, usage,
invoice or transaction route in the Python SDK 1.25 (verda/*), the Go SDK's services
(pkg/verda/client.go: Balance is the account balance now) or verda-cli (`cost` = estimate, running,
balance). The meter below is the fake's own ground truth for tests, not an API.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from providers.base import BillingRule

API_PREFIX = "/v1"

DEFAULT_INSTANCE_TYPES: list[dict[str, Any]] = [
    {
        "id": "c9d8e7f6-0000-4000-8000-000000000001",
        "instance_type": "1H100.80S.30V",
        "price_per_hour": "2.19",
        "spot_price": "0.99",
        "description": "Dedicated Hardware Instance",
        "cpu": {"description": "30 CPU", "number_of_cores": 30},
        "gpu": {"description": "1x H100 SXM5 80GB", "number_of_gpus": 1},
        "memory": {"description": "120GB RAM", "size_in_gigabytes": 120},
        "gpu_memory": {"description": "80GB GPU RAM", "size_in_gigabytes": 80},
        "storage": {"description": "dynamic"},
        "best_for": ["Large model training"],
        "model": "H100",
        "name": "H100 SXM5 80GB",
        "p2p": "",
        "currency": "usd",
        "manufacturer": "NVIDIA",
        "display_name": "H100 SXM5 80GB",
        "supported_os": ["ubuntu-24.04-cuda-12.8-open-docker"],
    },
    {
        "id": "c9d8e7f6-0000-4000-8000-000000000002",
        "instance_type": "1A100.22V",
        "price_per_hour": "1.2900",
        "spot_price": "0.4300",
        "description": "Dedicated Hardware Instance",
        "cpu": {"description": "22 CPU", "number_of_cores": 22},
        "gpu": {"description": "1x A100 SXM4 80GB", "number_of_gpus": 1},
        "memory": {"description": "120GB RAM", "size_in_gigabytes": 120},
        "gpu_memory": {"description": "80GB GPU RAM", "size_in_gigabytes": 80},
        "storage": {"description": "dynamic"},
        "best_for": ["Training"],
        "model": "A100",
        "name": "A100 SXM4 80GB",
        "p2p": "",
        "currency": "usd",
        "manufacturer": "NVIDIA",
        "display_name": "A100 SXM4 80GB",
        "supported_os": ["ubuntu-24.04-cuda-12.8-open-docker", "ubuntu-22.04-cuda-12.0-docker"],
    },
    {
        "id": "c9d8e7f6-0000-4000-8000-000000000003",
        "instance_type": "2A100.44V",
        "price_per_hour": "2.58",
        "spot_price": "0.86",
        "description": "Dedicated Hardware Instance",
        "cpu": {"description": "44 CPU", "number_of_cores": 44},
        "gpu": {"description": "2x A100 SXM4 80GB", "number_of_gpus": 2},
        "memory": {"description": "240GB RAM", "size_in_gigabytes": 240},
        "gpu_memory": {"description": "160GB GPU RAM", "size_in_gigabytes": 160},
        "storage": {"description": "dynamic"},
        "best_for": ["Training"],
        "model": "A100",
        "name": "A100 SXM4 80GB",
        "p2p": "",
        "currency": "usd",
        "manufacturer": "NVIDIA",
        "display_name": "2x A100 SXM4 80GB",
        "supported_os": ["ubuntu-24.04-cuda-12.8-open-docker"],
    },
    {
        # price_per_hour is the price of the WHOLE instance (all 8 GPUs), not per GPU: verda-cli
        # commit 26d3b11 "API price_per_hour is total, not per-GPU" and cmd/vm/CLAUDE.md "Pricing";
        # the Python SDK's examples/advanced_create_instance.py multiplies it by hours alone.
        "id": "c9d8e7f6-0000-4000-8000-000000000004",
        "instance_type": "8H100.80S.176V",
        "price_per_hour": "17.52",
        "spot_price": "7.92",
        "description": "Dedicated Hardware Instance",
        "cpu": {"description": "176 CPU", "number_of_cores": 176},
        "gpu": {"description": "8x H100 SXM5 80GB", "number_of_gpus": 8},
        "memory": {"description": "1480GB RAM", "size_in_gigabytes": 1480},
        "gpu_memory": {"description": "640GB GPU RAM", "size_in_gigabytes": 640},
        "storage": {"description": "dynamic"},
        "best_for": ["Large model training"],
        "model": "H100",
        "name": "H100 SXM5 80GB",
        "p2p": "900 GB/s",
        "currency": "usd",
        "manufacturer": "NVIDIA",
        "display_name": "8x H100 SXM5 80GB",
        "supported_os": ["ubuntu-24.04-cuda-12.8-open-docker", "ubuntu-24.04-cuda-12.8-pytorch-docker"],
    },
    {
        # Not every image runs on every type: dstack deploys V100s with "Ubuntu 22.04 + CUDA 12.0 +
        # Docker" and the rest with the 24.04 / CUDA 12.8 image (dstack datacrunch/compute.py
        # _get_vm_image_id); the SDK's InstanceType.supported_os lists what a type takes.
        "id": "c9d8e7f6-0000-4000-8000-000000000005",
        "instance_type": "1V100.6V",
        "price_per_hour": "0.39",
        "spot_price": "0.13",
        "description": "Dedicated Hardware Instance",
        "cpu": {"description": "6 CPU", "number_of_cores": 6},
        "gpu": {"description": "1x Tesla V100 16GB", "number_of_gpus": 1},
        "memory": {"description": "23GB RAM", "size_in_gigabytes": 23},
        "gpu_memory": {"description": "16GB GPU RAM", "size_in_gigabytes": 16},
        "storage": {"description": "dynamic"},
        "best_for": ["Experimentation"],
        "model": "V100",
        "name": "Tesla V100 16GB",
        "p2p": "",
        "currency": "usd",
        "manufacturer": "NVIDIA",
        "display_name": "Tesla V100 16GB",
        "supported_os": ["ubuntu-22.04-cuda-12.0-docker"],
    },
]

# GET /images: the SDK's Image (id, name, image_type, details); the Go SDK adds is_default, category.
DEFAULT_IMAGES: list[dict[str, Any]] = [
    {"id": "77777777-4f48-4249-82b3-f199fb9b701b", "name": "Ubuntu 24.04 + CUDA 12.8 Open + Docker",
     "image_type": "ubuntu-24.04-cuda-12.8-open-docker", "details": ["Ubuntu 24.04", "CUDA 12.8", "Docker"],
     "is_default": True, "is_cluster": False, "category": "ubuntu"},
    {"id": "88888888-4f48-4249-82b3-f199fb9b701b", "name": "Ubuntu 24.04 + CUDA 12.8 + PyTorch + Docker",
     "image_type": "ubuntu-24.04-cuda-12.8-pytorch-docker",
     "details": ["Ubuntu 24.04", "CUDA 12.8", "PyTorch 2.7", "Docker"],
     "is_default": False, "is_cluster": False, "category": "ml"},
    {"id": "2088da25-bb0d-41cc-a191-dccae45d96fd", "name": "Ubuntu 22.04 + CUDA 12.0 + Docker",
     "image_type": "ubuntu-22.04-cuda-12.0-docker", "details": ["Ubuntu 22.04", "CUDA 12.0", "Docker"],
     "is_default": False, "is_cluster": False, "category": "ubuntu"},
]

DEFAULT_AVAILABILITY: dict[str, list[str]] = {
    "FIN-01": ["1A100.22V", "2A100.44V", "8H100.80S.176V"],
    "FIN-03": ["1H100.80S.30V", "1A100.22V", "1V100.6V"],
}

PROVISIONING_REFUSAL = "Can't discontinue a provisioning instance"
# A create refused for capacity is HTTP 503 with these words: verda-cli issue 4 quotes the Go SDK's
# error for one ("API error 503: Not enough resources to deploy a 1 GPU instance type 1V100.6V in
# FIN-03"; errors.go formats `API error %d: %s` from the status and the JSON body's `message`,
# pkg/verda/instances.go Create). The body's `code` is not quoted anywhere: this fake sends the same
# `service_unavailable` as a gateway's 503 (verda.constants.ErrorCodes), so only the words tell them apart.
CAPACITY_REFUSAL = "Not enough resources to deploy a {n} GPU instance type {itype} in {location}"
# verda.constants.ErrorCodes.INSUFFICIENT_FUNDS; verda-cli maps HTTP 402 to "insufficient balance"
# (cmd/util/agent_error.go).
FUNDS_REFUSAL = "Not enough balance to deploy this instance"


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).isoformat().replace("+00:00", "Z")


@dataclass
class FakeInstance:
    id: str
    body: dict[str, Any]
    price: float
    created: float
    status: str = "ordered"
    status_since: float = 0.0
    billing_stopped: float | None = None
    delete_requests: int = 0
    ends_in_no_capacity: bool = False
    reclaimed_at: float | None = None  # when the platform took this spot instance back (not our delete)


@dataclass
class _Fault:
    remaining: int
    status: int = 503
    delay_s: float = 0.0
    method: str | None = None
    path_prefix: str | None = None
    json_body: bool = True

    def matches(self, method: str, path: str) -> bool:
        if self.method and self.method.upper() != method:
            return False
        return not self.path_prefix or path.startswith(self.path_prefix)


@dataclass
class FakeDataCrunchAPI:
    client_id: str = "gpurun-fake-client"
    client_secret: str = "gpurun-fake-secret"
    billing: BillingRule = field(default_factory=lambda: BillingRule(1, 0, "fake default"))
    ordered_s: float = 0.2
    provisioning_s: float = 0.6
    deleting_s: float = 0.3
    ip: str = "127.0.0.1"
    balance: float = 250.75
    currency: str = "usd"
    token_ttl_s: int = 3600
    forget_discontinued_after_s: float | None = None  # GET by id answers 404 after this
    instance_types: list[dict[str, Any]] = field(default_factory=lambda: json.loads(json.dumps(DEFAULT_INSTANCE_TYPES)))
    availability: dict[str, list[str]] = field(default_factory=lambda: json.loads(json.dumps(DEFAULT_AVAILABILITY)))
    # Spot stock is asked for separately (`isSpot` / `is_spot` on /instance-availability); None: as on-demand.
    spot_availability: dict[str, list[str]] | None = None
    images: list[dict[str, Any]] = field(default_factory=lambda: json.loads(json.dumps(DEFAULT_IMAGES)))
    nvme_price_per_month_per_gb: float = 0.2
    # The POST /instances body: "text" (the id, as the Python SDK reads it: `.text`), "json" (the
    # instance object, as the Go SDK's mock answers and createWithPlainTextResponse unmarshals first),
    # "json_string" (the id as a JSON string) or "garbage" (a 2xx body that is no id at all).
    create_answer: str = "text"
    # Seconds an order waits in `pending` ("Waiting for capacity...", verda-cli status_messages.go;
    # StatusPending in the Go SDK's instances_types.go) after `ordered`; 0 skips it.
    pending_s: float = 0.0
    # Orders for these instance types / locations / "type@location" go pending -> no_capacity
    # (StatusNoCapacity, terminal in verda-cli InstanceTerminalStatuses) instead of provisioning.
    no_capacity_where: set[str] = field(default_factory=set)
    # Creates for these are refused outright (CAPACITY_REFUSAL, HTTP `capacity_refusal_status`), nothing
    # created; so is a create for a type the location does not have in stock.
    refuse_create_where: set[str] = field(default_factory=set)
    capacity_refusal_status: int = 503
    # Statuses in which a delete is refused with PROVISIONING_REFUSAL (the SDK's instance_actions example:
    # "encounter an error (because it's still provisioning)"; dstack's messages). What the API does for
    # `pending` is not documented: add it here to model a refusal.
    refuse_delete_in: set[str] = field(default_factory=lambda: {"ordered", "provisioning"})
    # A create is refused with insufficient_funds when the balance is below this (no documented minimum).
    min_deploy_balance: float = 0.0
    # The next N creates land (the instance exists and bills) but answer 503, like a gateway that timed
    # out after the backend took the order: the answer is lost, the instance is not.
    lost_create_answers: int = 0
    # The /volume-types price field: "price_per_month_per_gb" (the current API) or "monthly_per_gb" (the
    # legacy spelling the Go SDK's VolumeTypePrice.UnmarshalJSON still accepts, pkg/verda/volume_types.go).
    volume_price_field: str = "price_per_month_per_gb"
    # GET /volumes/trash also lists volumes deleted permanently, flagged `is_permanently_deleted` (Go SDK
    # VolumeInTrash.IsPermanentlyDeleted; verda-cli cmd/volume/trash.go shows them "(permanently deleted)").
    list_purged_in_trash: bool = True
    # Spot instances are reclaimed (spot-discontinued by the platform, see reclaim_spot) this many seconds
    # after they reach `running`; None: only on request. On-demand instances never are.
    preempt_after_s: float | None = None

    def __post_init__(self) -> None:
        self.lock = threading.RLock()
        self.instances: dict[str, FakeInstance] = {}
        self.ssh_keys: dict[str, dict[str, str]] = {}
        self.scripts: dict[str, dict[str, str]] = {}
        self.volumes: dict[str, dict[str, Any]] = {}
        self.trash: dict[str, dict[str, Any]] = {}  # volumes moved to the trash (still billed)
        self.purged: dict[str, dict[str, Any]] = {}  # permanently deleted: in the trash listing, not billed
        self.creates: list[dict[str, Any]] = []  # every POST /instances body as received
        self.spot_flags: list[dict[str, Any]] = []  # where/how a spot flag came in: {"where", "key", "value"}
        self.tokens: dict[str, float] = {}
        self.refresh_tokens: set[str] = set()
        self.requests: list[dict[str, Any]] = []  # (method, path, status) of every call, for assertions
        self._faults: list[_Fault] = []
        self._silent_delete_fail: set[str] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> FakeDataCrunchAPI:
        api = self

        class Handler(_Handler):
            fake = api

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-datacrunch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def base_url(self) -> str:
        assert self._server is not None, "start() the fake first"
        return f"http://127.0.0.1:{self._server.server_address[1]}{API_PREFIX}"

    def __enter__(self) -> FakeDataCrunchAPI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- fault injection -------------------------------------------------------------------------------
    def fail_next(self, n: int, status: int = 503, *, method: str | None = None,
                  path_prefix: str | None = None, json_body: bool = True) -> None:
        """The next `n` matching calls answer `status` (JSON error body, or an HTML page like a proxy's)."""
        with self.lock:
            self._faults.append(_Fault(n, status, 0.0, method, path_prefix, json_body))

    def delay_next(self, n: int, seconds: float, *, method: str | None = None, path_prefix: str | None = None) -> None:
        """The next `n` matching calls sleep `seconds` before answering normally."""
        with self.lock:
            self._faults.append(_Fault(n, 0, seconds, method, path_prefix))

    def fail_next_delete_silently(self, instance_id: str) -> None:
        """The next delete of this id answers 207 with a per-id error and does nothing (the SDK ignores it)."""
        with self.lock:
            self._silent_delete_fail.add(instance_id)

    def reclaim_spot(self, instance_id: str) -> None:
        """The cloud takes a spot instance back now (see _reclaim). Only a spot instance can be: the
        discontinue policy exists only with is_spot (verda-cli cmd/vm/create.go: "--os-volume-on-spot-
        discontinue requires --is-spot"). No delete is recorded: `delete_requests` stays what gpurun sent."""
        with self.lock:
            inst = self.instances[instance_id]
            now = time.time()
            self._advance(inst, now)
            if not inst.body.get("is_spot"):
                raise ValueError(f"{instance_id} is on-demand: the platform only reclaims spot instances")
            if inst.status in ("deleting", "discontinued"):
                raise ValueError(f"{instance_id} is already {inst.status}")
            self._reclaim(inst, now)

    def _reclaim(self, inst: FakeInstance, at: float) -> None:
        """A spot discontinue: the instance goes straight to `discontinued` (the Go SDK's StatusDiscontinued,
        the only end status; no preempted / reclaimed status exists in either SDK), keeps is_spot and
        contract SPOT in GET /instances/{id}, loses its ip, stops billing, and each of its volumes follows
        its `on_spot_discontinue` (keep_detached, the default, keeps it detached and billing; move_to_trash;
        delete_permanently): verda/instances/_instances.py OSVolume; Go SDK SpotDiscontinue* constants.
        Whether the real API walks a reclaim through `deleting` first is not documented."""
        self._set_status(inst, "discontinued", at)
        inst.billing_stopped, inst.reclaimed_at, inst.body["ip"] = at, at, None
        for vid, vol in list(self.volumes.items()):
            if vol.get("instance_id") != inst.id:
                continue
            policy = vol.get("_on_spot_discontinue") or "keep_detached"
            if policy == "delete_permanently":
                self._purge(vid, at)
            elif policy == "move_to_trash":
                self._to_trash(vid, at)
            else:
                vol["instance_id"], vol["status"] = None, "detached"

    def billed_volumes(self) -> list[dict[str, Any]]:
        """Every volume that still bills: attached, detached or in the trash."""
        with self.lock:
            for inst in self.instances.values():
                self._advance(inst, time.time())
            return [*self.volumes.values(), *self.trash.values()]

    # ---- what else an account holds (someone else's instances, leftovers) --------------------------------
    def add_instance(self, hostname: str, *, instance_type: str = "1A100.22V", status: str = "running",
                     location: str = "FIN-03", description: str = "", spot: bool = False,
                     os_volume_gb: int = 50, volume_gb: int = 0, age_s: float = 0.0) -> str:
        """An instance made outside gpurun (the console, another tool), already in `status` ("running",
        "offline", "error", "no_capacity", ...), created `age_s` ago; its meter runs from then.
        Returns its id."""
        with self.lock:
            itype = self._type(instance_type)
            assert itype is not None, f"unknown instance type {instance_type!r}"
            then = time.time() - age_s
            p = {"hostname": hostname, "description": description, "os_volume": {"size": os_volume_gb},
                 "volumes": [{"name": f"{hostname}-data", "size": volume_gb}] if volume_gb else []}
            inst = self._place(itype, p, spot, itype["supported_os"][0], location, None, then)
            self._set_status(inst, status, then)
            inst.body["ip"] = self.ip if status == "running" else None
            return inst.id

    def shut_down(self, instance_id: str) -> None:
        """The `shutdown` action (PUT /instances): the instance goes `offline` and keeps billing (verda-cli
        cmd/vm/action.go: "Shutdown instances continue to charge your account")."""
        with self.lock:
            inst = self.instances[instance_id]
            self._advance(inst, time.time())
            self._set_status(inst, "offline", time.time())
            inst.body["ip"] = None

    def add_volume(self, name: str, size: int = 100, *, vtype: str = "NVMe", location: str = "FIN-03",
                   instance_id: str | None = None, age_s: float = 0.0) -> str:
        """A volume made on its own (POST /volumes), detached unless `instance_id`; it bills until permanently
        deleted. Returns its id."""
        with self.lock:
            vid = self._new_volume(name, size, vtype, instance_id or "", False, time.time() - age_s, location)
            if not instance_id:
                self.volumes[vid].update(instance_id=None, status="detached")
            return vid

    def trash_volume(self, volume_id: str) -> None:
        """DELETE /volumes/{id} without is_permanent: the volume moves to the trash and keeps billing."""
        with self.lock:
            self._to_trash(volume_id, time.time())

    # ---- inspection ------------------------------------------------------------------------------------
    def status_of(self, instance_id: str) -> str:
        with self.lock:
            inst = self.instances[instance_id]
            self._advance(inst, time.time())
            return inst.status

    def meter(self, instance_id: str) -> dict[str, Any]:
        with self.lock:
            inst = self.instances[instance_id]
            self._advance(inst, time.time())
            end = inst.billing_stopped if inst.billing_stopped is not None else time.time()
            elapsed = max(0.0, end - inst.created)
            return {
                "elapsed_s": elapsed,
                "billed_s": self.billing.billed_seconds(elapsed),
                "usd": self.billing.cost(elapsed, inst.price),
                "running": inst.billing_stopped is None,
            }

    def total_usd(self) -> float:
        return sum(self.meter(i)["usd"] for i in list(self.instances))

    def calls(self, method: str, path_prefix: str) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r["method"] == method and r["path"].startswith(path_prefix)]

    # ---- state machine ---------------------------------------------------------------------------------
    def _set_status(self, inst: FakeInstance, status: str, at: float) -> None:
        inst.status, inst.status_since = status, at
        inst.body["status"] = status

    def _to_trash(self, vid: str, at: float) -> None:
        """Deleted, not permanently: listed by GET /volumes/trash (deleted_at; restorable for 96 h, verda-cli
        cmd/volume/trash.go) and billed until permanently deleted."""
        vol = self.volumes.pop(vid)
        self.trash[vid] = dict(vol, status="deleted", instance_id=None, deleted_at=_iso(at),
                               is_permanently_deleted=False)

    def _purge(self, vid: str, at: float) -> None:
        """Deleted permanently: billing stops; the trash listing may still show it, flagged."""
        vol = self.volumes.pop(vid, None) or self.trash.pop(vid)
        self.purged[vid] = dict(vol, status="deleted", instance_id=None, deleted_at=_iso(at),
                                is_permanently_deleted=True)

    def _next(self, inst: FakeInstance) -> tuple[float, str] | None:
        """The next status of the walk and how long the current one lasts (None: it stays)."""
        if inst.status == "ordered":
            if self.pending_s > 0 or inst.ends_in_no_capacity:
                return self.ordered_s, "pending"
            return self.ordered_s, "provisioning"
        if inst.status == "pending":
            return self.pending_s, "no_capacity" if inst.ends_in_no_capacity else "provisioning"
        if inst.status == "running" and inst.body.get("is_spot") and self.preempt_after_s is not None:
            return self.preempt_after_s, "discontinued"  # the platform's reclaim (_advance -> _reclaim)
        steps = {"provisioning": (self.provisioning_s, "running"), "deleting": (self.deleting_s, "discontinued")}
        return steps.get(inst.status)

    def _advance(self, inst: FakeInstance, now: float) -> None:
        while (step := self._next(inst)) is not None:
            delay, nxt = step
            at = inst.status_since + delay
            if now < at:
                return
            if inst.status == "running" and nxt == "discontinued":
                self._reclaim(inst, at)
                continue
            self._set_status(inst, nxt, at)
            if nxt == "running":
                inst.body["ip"] = self.ip
            if nxt == "discontinued":
                inst.billing_stopped = at
                inst.body["ip"] = None
                for vid in inst.body.get("_delete_volumes", []):
                    if vid not in self.volumes:
                        continue
                    # volume_ids without delete_permanently go to the trash, where they keep billing
                    # (SDK 1.20.0 release notes: delete_permanently "skipping trash").
                    if inst.body.get("_delete_permanently"):
                        self._purge(vid, at)
                    else:
                        self._to_trash(vid, at)
                for vol in self.volumes.values():
                    if vol.get("instance_id") == inst.id:
                        vol["instance_id"], vol["status"] = None, "detached"

    def _visible(self, inst: FakeInstance, now: float) -> bool:
        return not (self.forget_discontinued_after_s is not None and inst.status == "discontinued"
                    and now - inst.status_since >= self.forget_discontinued_after_s)

    # ---- request handling (called by the handler under no lock) -----------------------------------------
    def handle(self, method: str, raw_path: str, headers: Any, body: bytes) -> tuple[int, str, str]:
        parts = urlsplit(raw_path)
        path = parts.path[len(API_PREFIX):] if parts.path.startswith(API_PREFIX) else parts.path
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        fault = self._take_fault(method, path)
        if fault is not None and fault.delay_s:
            time.sleep(fault.delay_s)
        payload: Any = None
        with self.lock:
            if fault is not None and fault.status:
                result = self._error(fault.status, "service_unavailable" if fault.status >= 500 else "invalid_request",
                                     "injected failure", fault.json_body)
            else:
                try:
                    payload = json.loads(body) if body else None
                except ValueError:
                    result = self._error(400, "invalid_request", "body is not JSON")
                else:
                    result = self._route(method, path, query, headers, payload)
                    if (method == "POST" and path == "/instances" and result[0] < 300
                            and self.lost_create_answers > 0):
                        self.lost_create_answers -= 1
                        result = self._error(503, "service_unavailable", "upstream timed out")
            action = payload.get("action") if fault is None and isinstance(payload, dict) else None
            self.requests.append({"method": method, "path": path, "status": result[0], "action": action,
                                  "time": time.time()})
            return result

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        with self.lock:
            for f in self._faults:
                if f.remaining > 0 and f.matches(method, path):
                    f.remaining -= 1
                    return f
        return None

    @staticmethod
    def _error(status: int, code: str, message: str, json_body: bool = True) -> tuple[int, str, str]:
        if not json_body:
            return status, "text/html", f"<html><body><h1>{status}</h1>{message}</body></html>"
        return status, "application/json", json.dumps({"code": code, "message": message})

    @staticmethod
    def _json(obj: Any, status: int = 200) -> tuple[int, str, str]:
        return status, "application/json", json.dumps(obj)

    def _authorized(self, headers: Any) -> bool:
        auth = headers.get("Authorization", "")
        tok = auth[7:] if auth.startswith("Bearer ") else ""
        return tok in self.tokens and self.tokens[tok] > time.time()

    def _issue_tokens(self) -> tuple[int, str, str]:
        access, refresh = secrets.token_hex(16), secrets.token_hex(16)
        self.tokens[access] = time.time() + self.token_ttl_s
        self.refresh_tokens.add(refresh)
        return self._json({"access_token": access, "refresh_token": refresh, "scope": "fullAccess",
                           "token_type": "Bearer", "expires_in": self.token_ttl_s})

    def _route(self, method: str, path: str, query: dict[str, str], headers: Any,
               payload: Any) -> tuple[int, str, str]:
        now = time.time()
        if path == "/oauth2/token" and method == "POST":
            p = payload if isinstance(payload, dict) else {}
            if p.get("grant_type") == "client_credentials":
                if p.get("client_id") == self.client_id and p.get("client_secret") == self.client_secret:
                    return self._issue_tokens()
                return self._error(401, "unauthorized_request", "Invalid client credentials")
            if p.get("grant_type") == "refresh_token" and p.get("refresh_token") in self.refresh_tokens:
                self.refresh_tokens.discard(p["refresh_token"])
                return self._issue_tokens()
            return self._error(401, "unauthorized_request", "Invalid grant")
        if not self._authorized(headers):
            return self._error(401, "unauthorized_request", "Invalid or expired access token")

        seg = [s for s in path.split("/") if s]
        root = seg[0] if seg else ""
        if root == "balance" and method == "GET":
            return self._json({"amount": self.balance, "currency": self.currency})
        if root == "instance-types" and method == "GET":
            return self._json(self.instance_types)
        if root == "instance-availability" and method == "GET":
            stock = self._stock(self._spot_query(query))
            loc = query.get("location_code")
            if len(seg) == 2:  # GET /instance-availability/{type}: a JSON bool (Go SDK also reads "true")
                return self._json(any(seg[1] in v for k, v in stock.items() if not loc or loc == k))
            return self._json([{"location_code": k, "availabilities": v} for k, v in stock.items()
                               if not loc or loc == k])
        if root == "volume-types" and method == "GET":
            key = self.volume_price_field
            return self._json([
                {"type": "NVMe", "price": {key: self.nvme_price_per_month_per_gb, "currency": "usd"}},
                {"type": "HDD", "price": {key: 0.05, "currency": "usd"}},
            ])
        if root == "images" and method == "GET":
            # ImagesService.get(instance_type=) / Go GetImagesByInstanceType: `?instance_type=` filters
            # to the images that type supports (its supported_os).
            want = query.get("instance_type")
            if not want:
                return self._json(self.images)
            itype = self._type(want)
            if itype is None:
                return self._error(400, "invalid_request", f"unknown instance type {want!r}")
            return self._json([i for i in self.images if i["image_type"] in itype.get("supported_os", [])])
        if root == "sshkeys":
            return self._named(self.ssh_keys, "key", "keys", method, seg, payload)
        if root == "scripts":
            return self._named(self.scripts, "script", "scripts", method, seg, payload)
        if root == "volumes":
            return self._volumes(method, seg, query, payload, now)
        if root == "instances":
            return self._instances(method, seg, query, payload, now)
        return self._error(404, "not_found", f"no route {method} {path}")

    def _type(self, name: Any) -> dict[str, Any] | None:
        return next((t for t in self.instance_types if t["instance_type"] == name), None)

    def _spot_query(self, query: dict[str, str]) -> bool:
        """Spot stock is asked for with `is_spot=true`: the Go SDK sends that and nothing for on-demand
        (pkg/verda/instance_availability.go), verda-cli through it, and the API's parameter list names
        `is_spot` (listInstanceAvailability). The Python SDK's `isSpot=true|false` (verda/instances/
        _instances.py) is not what those agree on, so this fake records it and answers as if it were
        absent: on-demand stock, the unpleasant reading of a spot launch that asks with `isSpot` alone."""
        for key in ("isSpot", "is_spot"):
            if key in query:
                self.spot_flags.append({"where": "availability", "key": key, "value": query[key]})
        return query.get("is_spot", "false").lower() == "true"

    def _stock(self, spot: bool) -> dict[str, list[str]]:
        return self.spot_availability if spot and self.spot_availability is not None else self.availability

    @staticmethod
    def _matches(where: set[str], itype: str, location: str) -> bool:
        return bool(where & {itype, location, f"{itype}@{location}"})

    def _named(self, store: dict[str, dict[str, str]], field_name: str, list_key: str, method: str,
               seg: list[str], payload: Any) -> tuple[int, str, str]:
        if method == "GET" and len(seg) == 1:
            return self._json(list(store.values()))
        if method == "GET" and len(seg) == 2:
            return self._json([store[seg[1]]]) if seg[1] in store else self._error(404, "not_found", "not found")
        if method == "POST" and len(seg) == 1:
            if not isinstance(payload, dict) or not payload.get("name") or not payload.get(field_name):
                return self._error(400, "invalid_request", f"name and {field_name} are required")
            new_id = str(uuid.uuid4())
            store[new_id] = {"id": new_id, "name": payload["name"], field_name: payload[field_name]}
            return 201, "text/plain", new_id
        if method == "DELETE" and len(seg) == 2:
            return (200, "text/plain", "") if store.pop(seg[1], None) else self._error(404, "not_found", "not found")
        if method == "DELETE" and len(seg) == 1:
            for i in (payload or {}).get(list_key, []):
                store.pop(i, None)
            return 200, "text/plain", ""
        return self._error(405, "invalid_request", "method not allowed")

    def _volumes(self, method: str, seg: list[str], query: dict[str, str], payload: Any,
                 now: float) -> tuple[int, str, str]:
        for inst in self.instances.values():
            self._advance(inst, now)
        if method == "GET" and seg == ["volumes", "trash"]:  # SDK get_in_trash; Go GetVolumesInTrash
            rows = [*self.trash.values(), *(self.purged.values() if self.list_purged_in_trash else [])]
            return self._json([self._public_dict(v) for v in rows])
        if method == "GET" and len(seg) == 1:
            # "all of the client's non-deleted volumes, or volumes with specific status" (SDK
            # VolumesService.get)
            wanted = query.get("status")
            return self._json([self._public_dict(v) for v in self.volumes.values()
                               if not wanted or v.get("status") == wanted])
        if method == "GET" and len(seg) == 2:
            vol = self.volumes.get(seg[1])
            return self._json(self._public_dict(vol)) if vol else self._error(404, "not_found", "volume not found")
        if method == "POST" and len(seg) == 1:
            # VolumesService.create: {type, name, size, instance_id, location_code}; the id comes back as text
            # (Python `.text`, Go createVolumeWithPlainTextResponse); location_code required since 2026-03-23
            # (docs.verda.com release notes, "Verda API changes").
            p = payload if isinstance(payload, dict) else {}
            if not p.get("name") or not p.get("size") or not p.get("type") or not p.get("location_code"):
                return self._error(400, "invalid_request", "type, name, size and location_code are required")
            iid = p.get("instance_id")
            if iid and iid not in self.instances:
                return self._error(400, "invalid_request", f"unknown instance {iid}")
            vid = self._new_volume(str(p["name"]), int(p["size"]), str(p["type"]), iid or "", False, now,
                                   str(p["location_code"]))
            if not iid:
                self.volumes[vid].update(instance_id=None, status="detached")
            return 202, "text/plain", vid
        if method == "DELETE" and len(seg) == 2:
            vol = self.volumes.get(seg[1])
            if not vol:
                return self._error(404, "not_found", "volume not found")
            if vol.get("instance_id"):
                return self._error(400, "invalid_request", "volume is attached")
            # VolumesService.delete_by_id: {"is_permanent": true} removes it, false (the default) moves it
            # to the trash. The Go SDK's DeleteVolume sends `?force=true` instead, whose meaning is not
            # documented: it is read here as not permanent (the trash, still billing), the costlier reading.
            if isinstance(payload, dict) and payload.get("is_permanent"):
                self._purge(seg[1], now)
            else:
                self._to_trash(seg[1], now)
            return 202, "text/plain", ""
        return self._error(405, "invalid_request", "method not allowed")

    def _new_volume(self, name: str, size: int, vtype: str, instance_id: str, is_os: bool, now: float,
                    location: str, on_spot_discontinue: str | None = None) -> str:
        vid = str(uuid.uuid4())
        self.volumes[vid] = {"id": vid, "status": "attached", "name": name, "size": size, "type": vtype,
                             "is_os_volume": is_os, "created_at": _iso(now), "instance_id": instance_id,
                             "location": location, "_on_spot_discontinue": on_spot_discontinue}
        return vid

    def _instances(self, method: str, seg: list[str], query: dict[str, str], payload: Any,
                   now: float) -> tuple[int, str, str]:
        if method == "POST" and len(seg) == 1:
            return self._create(payload, now)
        if method == "GET" and len(seg) == 1:
            out = []
            for inst in self.instances.values():
                self._advance(inst, now)
                wanted = query.get("status")
                if (wanted and inst.status == wanted) or (not wanted and inst.status != "discontinued"):
                    out.append(self._public(inst))
            return self._json(out)
        if method == "GET" and len(seg) == 2:
            inst = self.instances.get(seg[1])
            if inst is None:
                return self._error(404, "not_found", "Instance not found")
            self._advance(inst, now)
            if not self._visible(inst, now):
                return self._error(404, "not_found", "Instance not found")
            return self._json(self._public(inst))
        if method == "PUT" and len(seg) == 1:
            return self._action(payload, now)
        return self._error(405, "invalid_request", "method not allowed")

    @staticmethod
    def _public_dict(d: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in d.items() if not k.startswith("_")}

    def _public(self, inst: FakeInstance) -> dict[str, Any]:
        return self._public_dict(inst.body)

    def _create(self, p: Any, now: float) -> tuple[int, str, str]:
        if not isinstance(p, dict):
            return self._error(400, "invalid_request", "JSON body required")
        self.creates.append(json.loads(json.dumps(p)))
        itype = self._type(p.get("instance_type"))
        if itype is None:
            return self._error(400, "invalid_request", f"unknown instance type {p.get('instance_type')!r}")
        for k in ("image", "hostname", "location_code"):
            if not p.get(k):
                return self._error(400, "invalid_request", f"{k} is required")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]{0,62}", str(p["hostname"])):
            return self._error(400, "invalid_request", "invalid hostname")
        for kid in p.get("ssh_key_ids") or []:
            if kid not in self.ssh_keys:
                return self._error(400, "invalid_request", f"unknown ssh key {kid}")
        script = p.get("startup_script_id")
        if script and script not in self.scripts:
            return self._error(400, "invalid_request", f"unknown startup script {script}")
        # The SDKs send `is_spot` (InstancesService.create; Go CreateInstanceRequest `is_spot,omitempty`);
        # `isSpot` is the availability query's spelling in the Python SDK: accept both, record which came.
        spot = False
        for key in ("is_spot", "isSpot"):
            if key in p:
                self.spot_flags.append({"where": "create", "key": key, "value": p[key]})
                spot = spot or bool(p[key])
        image = str(p["image"])
        # An image is an image_type from supported_os, or an existing OS volume id (SDK create() docstring).
        if image not in itype.get("supported_os", []) and image not in self.volumes:
            return self._error(400, "invalid_request",
                               f"image {image!r} is not supported on {itype['instance_type']}")
        location = str(p["location_code"])
        if self.balance is not None and self.balance < self.min_deploy_balance:
            return self._error(402, "insufficient_funds", FUNDS_REFUSAL)
        if (self._matches(self.refuse_create_where, itype["instance_type"], location)
                or itype["instance_type"] not in self._stock(spot).get(location, [])):
            code = "service_unavailable" if self.capacity_refusal_status >= 500 else "invalid_request"
            return self._error(self.capacity_refusal_status, code, CAPACITY_REFUSAL.format(
                n=itype["gpu"]["number_of_gpus"], itype=itype["instance_type"], location=location))
        inst = self._place(itype, p, spot, image, location, script, now)
        new_id = inst.id
        # The real API answers the id as plain text (the Python SDK reads `.text`), or sometimes as JSON
        # (Go SDK createWithPlainTextResponse: "sometimes JSON, sometimes plain text ID"; its mock answers
        # 201 with the instance object).
        if self.create_answer == "json":
            return 201, "application/json", json.dumps(self._public(inst))
        if self.create_answer == "json_string":
            return 202, "application/json", json.dumps(new_id)
        if self.create_answer == "garbage":
            return 202, "text/html", "<html><body>Accepted</body></html>"
        return 202, "text/plain", new_id

    def _place(self, itype: dict[str, Any], p: dict[str, Any], spot: bool, image: str, location: str,
               script: str | None, now: float) -> FakeInstance:
        """An accepted order: the instance record (the SDK's Instance fields) and its volumes, `ordered`."""
        price = float(itype["spot_price"] if spot else itype["price_per_hour"])
        new_id = str(uuid.uuid4())
        osv = p.get("os_volume") or {}
        os_vol = self._new_volume(osv.get("name") or f"{p['hostname']}-os", int(osv.get("size") or 50), "NVMe",
                                  new_id, True, now, location, osv.get("on_spot_discontinue"))
        data_vols = [self._new_volume(v.get("name", "data"), int(v.get("size", 1)), v.get("type", "NVMe"), new_id,
                                      False, now, location, v.get("on_spot_discontinue"))
                     for v in p.get("volumes") or []]
        body = {
            "id": new_id, "instance_type": itype["instance_type"], "price_per_hour": price,
            "hostname": p["hostname"], "description": p.get("description") or "", "status": "ordered",
            "created_at": _iso(now), "ssh_key_ids": list(p.get("ssh_key_ids") or []),
            "cpu": itype["cpu"], "gpu": itype["gpu"], "memory": itype["memory"], "storage": itype["storage"],
            "gpu_memory": itype["gpu_memory"], "ip": None, "os_volume_id": os_vol, "volume_ids": data_vols,
            "location": location, "image": image, "startup_script_id": script,
            "is_spot": spot, "contract": p.get("contract") or ("SPOT" if spot else "PAY_AS_YOU_GO"),
            "pricing": p.get("pricing") or "FIXED_PRICE",
        }
        inst = FakeInstance(new_id, body, price, now, "ordered", now,
                            ends_in_no_capacity=self._matches(self.no_capacity_where, itype["instance_type"], location))
        self.instances[new_id] = inst
        return inst

    def _action(self, p: Any, now: float) -> tuple[int, str, str]:
        """PUT /instances: 202 with a JSON results array when every id succeeded, 207 when some failed, each
        entry {action, instanceId, status, error?, statusCode?} (Go SDK InstanceActionResult and its mock's
        handleInstanceAction; TestInstanceService_Action_207_PartialFailure). A single-id refusal is a plain
        4xx error (TestInstanceService_Action_400_BadRequest)."""
        if not isinstance(p, dict) or not p.get("id") or not p.get("action"):
            return self._error(400, "invalid_request", "id and action are required")
        ids = p["id"] if isinstance(p["id"], list) else [p["id"]]
        action = p["action"]
        results: list[dict[str, Any]] = []

        def fail(iid: str, message: str, code: int) -> None:
            results.append({"action": action, "instanceId": iid, "status": "error", "error": message,
                            "statusCode": code})

        for iid in ids:
            inst = self.instances.get(iid)
            if inst is None:
                if len(ids) == 1:
                    return self._error(404, "not_found", "Instance not found")
                fail(iid, "instance not found", 404)
                continue
            self._advance(inst, now)
            if action == "delete":
                inst.delete_requests += 1
                if iid in self._silent_delete_fail:
                    self._silent_delete_fail.discard(iid)
                    fail(iid, "internal error while discontinuing", 500)
                    continue
                if inst.status in self.refuse_delete_in:
                    if len(ids) == 1:
                        return self._error(400, "invalid_request", PROVISIONING_REFUSAL)
                    fail(iid, PROVISIONING_REFUSAL, 400)
                    continue
                if inst.status == "discontinued":  # dstack datacrunch/compute.py terminate_instance
                    if len(ids) == 1:
                        return self._error(400, "invalid_request", "Can't discontinue a discontinued instance")
                    fail(iid, "Can't discontinue a discontinued instance", 400)
                    continue
                if inst.status != "deleting":
                    # A no_capacity order is still an instance record: the sources are silent on it, so
                    # the conservative reading is that it needs (and takes) a delete like any other and
                    # bills until discontinued (verda-cli: "Delete: always available").
                    self._set_status(inst, "deleting", now)
                    # Go SDK InstanceActionRequest: "nil omits the field (API default: OS volume deleted,
                    # rest detached), empty slice sends [] (no volumes deleted), slice with IDs deletes those
                    # volumes". Whether the default's OS-volume delete is permanent is not said: the trash
                    # (still billing), the costlier reading, unless delete_permanently came.
                    listed = p.get("volume_ids")
                    if listed is None:
                        listed = [inst.body.get("os_volume_id")]
                    vols = [v for v in listed if v in self.volumes and self.volumes[v].get("instance_id") == iid]
                    inst.body["_delete_volumes"] = vols  # listed volumes go with the instance
                    inst.body["_delete_permanently"] = bool(p.get("delete_permanently"))
                results.append({"action": action, "instanceId": iid, "status": "success"})
            elif action == "shutdown":
                if inst.status == "running":
                    self._set_status(inst, "offline", now)  # still billing: only delete stops the meter
                results.append({"action": action, "instanceId": iid, "status": "success"})
            elif action == "start":
                if inst.status == "offline":
                    self._set_status(inst, "running", now)
                results.append({"action": action, "instanceId": iid, "status": "success"})
            else:
                return self._error(400, "invalid_request", f"unsupported action {action!r}")
        return self._json(results, 207 if any(r["status"] == "error" for r in results) else 202)


class _Handler(BaseHTTPRequestHandler):
    fake: FakeDataCrunchAPI
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep test output quiet
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        status, ctype, text = self.fake.handle(self.command, self.path, self.headers, body)
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve
