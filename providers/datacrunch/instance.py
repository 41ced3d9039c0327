"""DataCrunch (renamed Verda) behind the Provider interface: the lifecycle calls.

create (idempotent by the run's hostname), get, terminate (a 207 with per-id failures is not a
success), list_owned, cleanup of the run's ssh keys / scripts / volumes, the prepaid balance, and
the on-instance self-destruct. Calls go through `api.DataCrunchAPI`; prices come from `catalog`.

Only the `delete` action stops the money. `shutdown` leaves the instance `offline` and billing.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shlex
import time
from datetime import datetime
from decimal import Decimal
from importlib import resources
from typing import Any

from providers.base import (
    NOT_FOUND,
    OWNER_TAG,
    PENDING,
    RUN_ID_RE,
    RUNNING,
    STOPPED,
    STOPPING,
    TERMINATED,
    Billable,
    BilledCost,
    CredentialsError,
    ImageFacts,
    Instance,
    InstanceSpec,
    NoCapacityError,
    Offer,
    Provider,
    ProviderError,
    SSHEndpoint,
    TorchOnImage,
    TransientProviderError,
    owned_name,
)
from providers.common import first_env, one_line
from providers.datacrunch import billing, catalog, inventory
from providers.datacrunch import image as os_image
from providers.datacrunch.api import (
    DataCrunchAPI,
    DataCrunchAPIError,
    DataCrunchNotFound,
    DataCrunchTransientError,
    body_of,
    said,
    sdk_paths,
)
from providers.datacrunch.preemption import PreemptionWatch

# The image the SDK's own examples deploy: Ubuntu 24.04 + NVIDIA open driver + CUDA 12.8 (+ docker).
# PyTorch is not in it; bootstrap installs torch where missing. Override with image= / DATACRUNCH_IMAGE.
DEFAULT_IMAGE = "ubuntu-24.04-cuda-12.8-open-docker"
DEFAULT_LOCATION = "FIN-03"
# Where ON THE INSTANCE the self-destruct credential file goes (its scripts go beside it).
DEFAULT_CREDENTIALS_PATH = "/root/.gpurun/dc_credentials"
ENV_CREDENTIALS_PATH = ("DATACRUNCH_CREDENTIALS_PATH", "VERDA_CREDENTIALS_PATH")
ENV_WATCHDOG_ID = ("DATACRUNCH_WATCHDOG_CLIENT_ID", "VERDA_WATCHDOG_CLIENT_ID")
ENV_WATCHDOG_SECRET = ("DATACRUNCH_WATCHDOG_CLIENT_SECRET", "VERDA_WATCHDOG_CLIENT_SECRET")
# The self-destruct, shipped as package data (providers/scripts/); the .sh is the entry point.
SELF_DESTRUCT_SCRIPTS = ("datacrunch_self_destruct.sh", "datacrunch_self_destruct.py")

# Statuses: verda.constants.InstanceStatus and the Go SDK's Status* constants (pkg/verda/instances_types.go).
# A status not listed here reads as PENDING: never gone, so teardown keeps deleting and verifying it.
_STATES: dict[str, str] = {
    "new": PENDING,
    "ordered": PENDING,
    "pending": PENDING,  # waiting for capacity (verda-cli: "Waiting for capacity..."); may end in no_capacity
    "provisioning": PENDING,
    "validating": PENDING,
    "restoring": PENDING,
    "no_capacity": STOPPED,  # terminal (verda-cli InstanceTerminalStatuses): never boots, needs a delete
    "running": RUNNING,
    "offline": STOPPED,  # powered off but still billed: only delete stops the money
    "error": STOPPED,  # not gone, may bill: needs a delete like any other
    "deleting": STOPPING,
    "starting_hibernation": STOPPING,
    "hibernating": STOPPED,
    "discontinued": TERMINATED,
}
NO_CAPACITY = "no_capacity"
# What a reclaimed spot instance does with its volumes (OSVolume.on_spot_discontinue; the Go SDK's
# SpotDiscontinueDeletePermanent): the default, keep_detached, leaves a detached volume billing.
SPOT_VOLUME_POLICY = "delete_permanently"
# An instance's run: its hostname, gpurun-<run id> (-n<rank> for node 1.. of a multi-node run:
# providers.base.owned_name reads both), else the description gpurun writes.
_DESC_RE = re.compile(rf"\b{OWNER_TAG} run ([a-z0-9][a-z0-9-]{{2,40}})\b")
_INSTANCE_ID_RE = re.compile(r"[A-Za-z0-9-]+")


def _parse_time(value: Any) -> float | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _script_text(name: str) -> str:
    return resources.files("providers").joinpath("scripts", name).read_text()


def per_id_failures(instance_id: str, status: int, body: Any) -> list[Any]:
    """202 and 207 carry a JSON array of per-id results (Go SDK InstanceService.Action / InstanceActionResult;
    the Python SDK ignores them). Any entry for our id that is not a success."""
    rows = body if isinstance(body, list) else (body.get("results") if isinstance(body, dict) else None)
    if status != 207 and not isinstance(rows, list):
        return []  # a 202 without results (older answers were empty) or a 204: nothing to read
    if not isinstance(rows, list):
        return [body]  # an unreadable 207: assume it failed, verification decides
    bad = []
    for r in rows:
        if not isinstance(r, dict):
            continue
        rid = r.get("instanceId") or r.get("instance_id") or r.get("id")
        ok = str(r.get("status", "")).lower() in ("success", "ok", "accepted") and not r.get("error")
        if rid in (instance_id, None) and not ok:
            bad.append(r)
    return bad


class _NotListedYet(DataCrunchTransientError):
    """A doubtful create's instance is not in GET /instances (yet): look again, a few times."""


def created_id(body: Any) -> str | None:
    """The new instance's id from a POST /instances answer: plain text (what the Python SDK reads), a JSON
    string, or a JSON instance object (the Go SDK's createWithPlainTextResponse tries JSON first, then
    falls back to the trimmed text). None when the body holds no usable id."""
    if isinstance(body, dict):
        body = body.get("id")
    if isinstance(body, str):
        text = body.strip().strip('"').strip()
        if _INSTANCE_ID_RE.fullmatch(text):
            return text
    return None


class DataCrunchProvider(Provider):
    name = "datacrunch"

    def __init__(
        self,
        client_id: str | None = None,
        client_secret: str | None = None,
        base_url: str | None = None,
        *,
        image: str | None = None,
        location: str | None = None,
        disk_gb: int = 40,
        currency: str = "usd",
        ssh_user: str = "root",
        startup_script: str | None = None,
        credentials_path: str | None = None,
        watchdog_client_id: str | None = None,
        watchdog_client_secret: str | None = None,
        self_destruct_timeout_s: int = 900,
        self_destruct_pause_s: float = 2.0,
        timeout_s: float = 20.0,
        retry_attempts: int = 5,
        retry_budget_s: float = 60.0,
        retry_wait_s: float = 1.0,
        retry_max_wait_s: float = 10.0,
    ) -> None:
        self.api = DataCrunchAPI(client_id, client_secret, base_url, timeout_s=timeout_s,
                                 retry_attempts=retry_attempts, retry_budget_s=retry_budget_s,
                                 retry_wait_s=retry_wait_s, retry_max_wait_s=retry_max_wait_s)
        # What the user asked for (--image / DATACRUNCH_IMAGE) is checked against the type at plan time;
        # without one, check_launchable picks a CUDA (+ PyTorch) image the type takes.
        self.image_given = image or os.environ.get("DATACRUNCH_IMAGE") or None
        self.image = self.image_given or DEFAULT_IMAGE
        self.location = location or os.environ.get("DATACRUNCH_LOCATION") or DEFAULT_LOCATION
        self.disk_gb = int(disk_gb)
        self.currency = currency
        self.ssh_user = ssh_user
        self.startup_script = startup_script
        self.credentials_path = credentials_path or first_env(ENV_CREDENTIALS_PATH) or DEFAULT_CREDENTIALS_PATH
        if not posixpath.isabs(self.credentials_path):  # the scripts go beside it: it must name one place
            raise ProviderError(f"DataCrunch credentials path {self.credentials_path!r} must be absolute "
                                "(a path on the instance; set DATACRUNCH_CREDENTIALS_PATH)")
        # A separate API client for the instance lets the user revoke it without touching their main one.
        self.watchdog_client_id = watchdog_client_id or first_env(ENV_WATCHDOG_ID)
        self.watchdog_client_secret = watchdog_client_secret or first_env(ENV_WATCHDOG_SECRET)
        self.self_destruct_timeout_s = int(self_destruct_timeout_s)
        self.self_destruct_pause_s = float(self_destruct_pause_s)
        # Which deletes were ours: the API does not say who discontinued a spot instance (preemption.py).
        self.preemption = PreemptionWatch()

    def check_credentials(self) -> None:
        self.api.check_credentials()

    # ---- offers, balance ---------------------------------------------------------------------------------
    def offers(self, gpu: str | None = None, count: int = 1, spot: bool = False) -> list[Offer]:
        return catalog.offers(self.api, provider=self.name, gpu=gpu, count=count, spot=spot,
                              currency=self.currency, disk_gb=self.disk_gb)

    def account(self) -> dict[str, Any]:
        raw = self.api.request("get", sdk_paths().balance).json()
        amount = catalog.decimal_or_none(raw.get("amount"))
        return {"provider": self.name, "balance": str(amount) if amount is not None else None,
                "balance_usd": float(amount) if amount is not None else None,
                "currency": str(raw.get("currency", "")).lower(), "raw": raw}

    def check_spend(self, max_usd: float, usd_per_hour: float) -> None:
        """DataCrunch is prepaid: refuse a cap the balance cannot pay. It has no hourly spend limit,
        so the price is not compared with anything. A non-USD balance is compared as if USD."""
        acct = self.account()
        balance = catalog.decimal_or_none(acct.get("balance"))
        if balance is None:
            raise ProviderError("DataCrunch did not report a balance: cannot check it covers --max-usd")
        if balance < Decimal(str(max_usd)):
            raise ProviderError(
                f"DataCrunch balance {balance} {acct['currency'] or 'usd'} is below --max-usd {max_usd}: "
                "top up the account or lower --max-usd"
            )

    def image_facts(self, image: str | None, offer: Offer) -> ImageFacts:
        """The image check_launchable picked (or --image): one whose name or details say PyTorch
        carries it; the plain OS images (ubuntu-*-cuda-*, the default) have CUDA and no PyTorch, so
        bootstrap pip-installs it; anything else is not known."""
        name = image or str(offer.details.get("image") or self.image)
        said = f"{name} {offer.details.get('image_choice') or ''}".lower()
        if "torch" in said:
            return ImageFacts(name, TorchOnImage.CARRIED)
        return ImageFacts(name, TorchOnImage.ABSENT if name.startswith("ubuntu-") else TorchOnImage.UNKNOWN)

    def check_launchable(self, offer: Offer) -> None:
        """Plan time: the OS image must run on the offer's type (supported_os, GET /images?instance_type=).
        The user's --image is refused in one line naming what the type takes; without one, the best CUDA
        (+ PyTorch) image it takes goes into offer.details["image"] for create."""
        rows = os_image.supported_images(self.api, offer.instance_type, offer.details.get("supported_os"))
        choice = os_image.choose(rows, wanted=self.image_given, default=self.image,
                                 instance_type=offer.instance_type)
        offer.details["image"] = choice.image
        offer.details["image_choice"] = choice.reason

    # ---- instances ---------------------------------------------------------------------------------------
    def _to_instance(self, raw: dict[str, Any]) -> Instance:
        status = str(raw.get("status", "")).lower()
        state = _STATES.get(status, PENDING)
        boot_failure = ""
        if status == NO_CAPACITY:
            boot_failure = (f"DataCrunch had no capacity for {raw.get('instance_type') or 'this type'} in "
                            f"{raw.get('location') or 'this location'}: the order ended in no_capacity")
        hostname = str(raw.get("hostname") or "")
        owned = owned_name(hostname)
        m = _DESC_RE.search(str(raw.get("description") or ""))
        run_id = owned[0] if owned else (m.group(1) if m else None)
        ip = raw.get("ip")
        price = catalog.decimal_or_none(raw.get("price_per_hour"))
        self.preemption.observe(raw)
        return Instance(
            id=str(raw.get("id")), provider=self.name, state=state, run_id=run_id,
            name=hostname, instance_type=str(raw.get("instance_type") or ""),
            gpu_count=int((raw.get("gpu") or {}).get("number_of_gpus") or 0),
            created_at=_parse_time(raw.get("created_at")),
            usd_per_hour=float(price) if price is not None else None,
            ssh=SSHEndpoint(str(ip), 22, self.ssh_user) if ip and state == RUNNING else None,
            # The instances API gives one address, `ip` (verda/instances/_instances.py, Instance.ip:
            # "IP address assigned to the instance"), the PUBLIC one: no private address, no network
            # between instances. It is what the other nodes of a multi-node run connect to. (Verda's
            # private-network multi-node offering is its clusters API, verda/clusters/_clusters.py,
            # POST /clusters with worker_nodes[].private_ip, which gpurun does not drive.)
            private_ip=str(ip) if ip else "",
            raw=raw, boot_failure=boot_failure,
        )

    def _get_raw(self, instance_id: str) -> dict[str, Any] | None:
        try:
            return self.api.request("get", sdk_paths().instances + "/{id}", path_params={"id": instance_id}).json()
        except DataCrunchNotFound:
            return None

    def get(self, instance_id: str) -> Instance:
        """The instance as the API shows it; `preempted` set for a spot instance leaving (deleting,
        discontinued, 404) that this provider never sent a delete for."""
        raw = self._get_raw(instance_id)
        verdict = self.preemption.verdict(instance_id, raw)
        if raw is None:
            return Instance(id=instance_id, provider=self.name, state=NOT_FOUND, raw={"status": 404},
                            preempted=verdict.preempted)
        inst = self._to_instance(raw)
        inst.preempted = verdict.preempted
        inst.boot_failure = inst.boot_failure or verdict.boot_failure
        return inst

    def check_nodes(self, nodes: int) -> None:
        """Multi-node runs are accepted: every node of a run is created in node 0's location, and
        the nodes reach one another at their `ip`, the public address (the instances API has no
        private one; docs/PROVIDERS.md, "Multi-node")."""

    def _node_instances(self, spec: InstanceSpec, rank: int | None = None) -> list[Instance]:
        """The run's live instances of node `rank` (the spec's by default), by hostname; an instance
        known by its description only (a renamed hostname) counts as node 0."""
        want = spec.node_rank if rank is None else rank
        return [i for i in self.list_run(spec.run_id) if (owned_name(i.name) or ("", 0))[1] == want]

    def _node0_location(self, spec: InstanceSpec) -> str:
        """Where node 0 of the run is: every other node of a multi-node run goes there."""
        node0 = self._node_instances(spec, 0)
        location = str(node0[0].raw.get("location") or "") if node0 else ""
        if not location:
            raise ProviderError(f"run {spec.run_id}: node 0 has no live DataCrunch instance with a location: "
                                "create node 0 first (the other nodes go to its location)")
        return location

    def list_owned(self) -> list[Instance]:
        rows = self.api.request("get", sdk_paths().instances).json()
        owned = []
        for raw in rows:
            inst = self._to_instance(raw)
            if inst.run_id or str(raw.get("hostname", "")).startswith(f"{OWNER_TAG}-"):
                owned.append(inst)
        return owned

    def _find_named(self, endpoint: str, name: str) -> list[dict[str, Any]]:
        return [r for r in self.api.request("get", endpoint).json() if r.get("name") == name]

    def _ensure_named(self, endpoint: str, name: str, field: str, value: str) -> str:
        """Find-or-create an ssh key / startup script by the run's name (idempotent across retries/resumes)."""
        for row in self._find_named(endpoint, name):
            if row.get(field) == value:
                return str(row["id"])

        def create_once() -> str:
            found = [r for r in self._find_named(endpoint, name) if r.get(field) == value]
            if found:  # an earlier try that timed out may have landed
                return str(found[0]["id"])
            resp = self.api.request("post", endpoint, json_body={"name": name, field: value}, retry=False)
            return resp.text.strip().strip('"')

        return self.api.retrying(create_once)

    def create(self, spec: InstanceSpec) -> Instance:
        """POST /instances, idempotent by the run's hostname. The id comes back as text or JSON; on any doubt
        (an unreadable answer, a lost one, a 5xx after the request may have landed) the run's instance is
        looked for by hostname before giving up. A create refused for capacity raises NoCapacityError with
        nothing left billing: whatever of it landed is deleted first."""
        paths = sdk_paths()
        if not RUN_ID_RE.match(spec.run_id or ""):
            raise ProviderError(f"invalid run id {spec.run_id!r}: lower-case letters, digits and '-', 3-41 chars")
        self.check_credentials()
        for inst in self._node_instances(spec):
            return inst  # idempotent: this run (this node of it) already has a live instance
        offer = spec.offer
        what = f"{offer.instance_type}{' spot' if offer.spot else ''}"
        if spec.node_rank > 0:
            # Every node of a run in one location: the nodes' only network is the public internet
            # (see _to_instance), and one location keeps them near each other.
            location = self._node0_location(spec)
            if catalog.in_stock(self.api, offer.instance_type, location, offer.spot) is False:
                raise NoCapacityError(f"DataCrunch has no {what} left in {location} for node {spec.node_rank} of run "
                                      f"{spec.run_id} (every node must be in node 0's location): try another GPU")
        else:
            location = offer.region or self.location
            if catalog.in_stock(self.api, offer.instance_type, location, offer.spot) is False:
                raise NoCapacityError(f"DataCrunch has no {what} in stock in {location} now: "
                                      "try another location or GPU")
        # The ssh key and startup script are the run's (gpurun-<run id>), shared by its nodes.
        run_name = f"{OWNER_TAG}-{spec.run_id}"
        key_ids = []
        if spec.ssh_public_key.strip():
            key_ids.append(self._ensure_named(paths.ssh_keys, run_name, "key", spec.ssh_public_key.strip()))
        script_id = None
        if self.startup_script:
            script_id = self._ensure_named(paths.scripts, run_name, "script", self.startup_script)
        payload = self._create_payload(spec, location, key_ids, script_id)

        def create_once() -> str | None:
            live = self._node_instances(spec)
            if live:  # a POST that timed out may have created it: never make a second one
                return live[0].id
            resp = self.api.request("post", paths.instances, json_body=payload, retry=False)
            return created_id(body_of(resp))

        try:
            new_id = self.api.retrying(create_once)
        except CredentialsError:
            raise
        except TransientProviderError as exc:  # retries spent: it may still have landed
            return self._landed_or_raise(spec, f"DataCrunch did not take the create of {what} in {location}, "
                                               f"retried; the API said {said(exc)}")
        except ProviderError:  # refused (capacity, image, funds): nothing of this attempt may bill
            self._discard_landed(spec)
            raise
        if new_id is None:  # a 2xx whose body is no id: the request landed, find it by hostname
            return self._landed_or_raise(spec, "DataCrunch accepted the create but its answer held no instance id")
        raw = self._get_raw(new_id)
        if raw is None:  # accepted but not yet readable: report it pending, never lose the id
            return Instance(id=new_id, provider=self.name, state=PENDING, run_id=spec.run_id, name=spec.name,
                            instance_type=offer.instance_type, created_at=time.time(),
                            usd_per_hour=offer.usd_per_hour, raw={"id": new_id, "status": "ordered"})
        return self._to_instance(raw)

    def _create_payload(self, spec: InstanceSpec, location: str, key_ids: list[str],
                        script_id: str | None) -> dict[str, Any]:
        """The keys InstancesService.create() sends. Spot volumes are deleted with a reclaimed instance."""
        spot = bool(spec.offer.spot)
        os_volume: dict[str, Any] = {"name": f"{spec.name}-os", "size": int(spec.disk_gb or self.disk_gb)}
        volumes = ([{"name": f"{spec.name}-data", "size": int(spec.volume_gb), "type": "NVMe"}]
                   if spec.volume_gb else [])
        if spot:  # only with is_spot (verda-cli: "--os-volume-on-spot-discontinue requires --is-spot")
            os_volume["on_spot_discontinue"] = SPOT_VOLUME_POLICY
            for vol in volumes:
                vol["on_spot_discontinue"] = SPOT_VOLUME_POLICY
        return {
            "instance_type": spec.offer.instance_type,
            "image": spec.image or str(spec.offer.details.get("image") or "") or self.image,
            "ssh_key_ids": key_ids,
            "startup_script_id": script_id,
            "hostname": spec.name,
            "description": f"{OWNER_TAG} run {spec.run_id}" + (f" by {spec.owner}" if spec.owner else "")
            + (f", node {spec.node_rank} of {spec.nodes}" if spec.nodes > 1 or spec.node_rank else ""),
            "location_code": location,
            "os_volume": os_volume,
            "volumes": volumes,
            "existing_volumes": [],
            "is_spot": spot,  # as both SDKs send it (Go: `is_spot,omitempty`)
            "coupon": None,
        }

    def _find_landed(self, spec: InstanceSpec) -> list[Instance]:
        """The run's instances of this node, looked for a few times (a fresh order may take a moment
        to be listed)."""
        run_id = spec.run_id

        def look() -> list[Instance]:
            found = self._node_instances(spec)
            if not found:
                raise _NotListedYet(f"no instance listed for {spec.name} yet")
            return found

        try:
            return self.api.retrying(look)
        except _NotListedYet:
            return []
        except ProviderError as exc:
            raise ProviderError(f"DataCrunch create may have landed but GET /instances fails ({one_line(exc, 120)}):"
                                f" run `gpurun teardown` for run {run_id} once the API answers") from None

    def _landed_or_raise(self, spec: InstanceSpec, why: str) -> Instance:
        """After a doubtful create: the run's instance if it landed (extra copies deleted), else one line."""
        found = self._find_landed(spec)
        if not found:
            raise ProviderError(f"{why}; no instance named {spec.name} was found, so nothing is billing")
        keep, *extra = sorted(found, key=lambda i: (i.created_at or 0.0, i.id))
        for dup in extra:
            self._delete_quietly(dup.id)
        return keep

    def _discard_landed(self, spec: InstanceSpec) -> None:
        """A refused create may still have made something under this node's name: delete it (best
        effort). The run's other nodes are not this create's to touch."""
        try:
            leftovers = self._node_instances(spec)
        except ProviderError:
            return
        for inst in leftovers:
            self._delete_quietly(inst.id)

    def _delete_quietly(self, instance_id: str) -> None:
        """Delete, waiting out a "still provisioning" refusal within the retry budget; the teardown's
        verify loop (list_run by the run id) catches whatever this could not."""
        try:
            self.api.retrying(lambda: self.terminate(instance_id), retry_refusals=True)
        except ProviderError:
            pass

    # ---- teardown ----------------------------------------------------------------------------------------
    def _run_volume_ids(self, raw: dict[str, Any]) -> list[str]:
        """The OS volume and any volume attached to the instance: deleted with it so storage stops billing."""
        ids = [str(raw["os_volume_id"])] if raw.get("os_volume_id") else []
        try:
            for vol in self.api.request("get", sdk_paths().volumes).json():
                if vol.get("instance_id") == raw.get("id") and str(vol.get("id")) not in ids:
                    ids.append(str(vol["id"]))
        except CredentialsError:
            raise
        except ProviderError:
            pass  # the OS volume at least; cleanup() sweeps leftovers by name
        return ids

    def terminate(self, instance_id: str) -> dict[str, Any]:
        """PUT /instances {"action": "delete"}; returns request + raw response. Never `shutdown` (still bills).

        A refusal (e.g. "Can't discontinue a provisioning instance") raises with the same record on the
        exception (`.record`); the teardown's verify loop sends it again. A 207 whose entry for this id
        failed comes back with accepted=False and the per-id errors: only a later GET tells."""
        raw = self._get_raw(instance_id)
        if raw is None:
            return {"action": "delete", "instance_id": instance_id, "already_gone": True, "accepted": True,
                    "request": None, "response": {"status": 404, "time": time.time()}}
        status = str(raw.get("status", "")).lower()
        if status in ("discontinued", "deleting"):  # nothing to send; verification waits for the end state
            return {"action": "delete", "instance_id": instance_id, "already_gone": status == "discontinued",
                    "accepted": True, "request": None, "response": {"status": status, "time": time.time()}}
        endpoint = sdk_paths().instances
        volume_ids = self._run_volume_ids(raw)
        payload: dict[str, Any] = {"id": [instance_id], "action": "delete", "volume_ids": volume_ids or None}
        if volume_ids:
            payload["delete_permanently"] = True  # not the trash, where volumes keep billing
        record: dict[str, Any] = {"action": "delete", "instance_id": instance_id,
                                  "request": {"method": "PUT", "path": endpoint, "json": payload,
                                              "time": time.time()}}
        self.preemption.deleting(instance_id)  # before sending: a delete that lands unanswered is still ours
        try:
            resp = self.api.request("put", endpoint, json_body=payload)
        except DataCrunchNotFound as exc:
            record.update(already_gone=True, accepted=True,
                          response={"status": exc.status, "body": exc.body, "time": time.time()})
            return record
        except DataCrunchAPIError as exc:
            record.update(accepted=False, response={"status": exc.status, "body": exc.body, "time": time.time()})
            exc.record = record
            raise
        body = body_of(resp)
        failures = per_id_failures(instance_id, resp.status_code, body)
        record.update(accepted=not failures, per_id_errors=failures,
                      response={"status": resp.status_code, "body": body, "time": time.time()})
        return record

    def cleanup(self, run_id: str) -> list[str]:
        """Delete the run's ssh key(s), startup script(s) and leftover detached volumes (all named gpurun-<run>)."""
        paths = sdk_paths()
        name = f"{OWNER_TAG}-{run_id}"
        deleted: list[str] = []
        for endpoint, kind in ((paths.ssh_keys, "ssh_key"), (paths.scripts, "startup_script")):
            for row in self._find_named(endpoint, name):
                try:
                    self.api.request("delete", endpoint + "/{id}", path_params={"id": str(row["id"])})
                except DataCrunchNotFound:
                    pass
                deleted.append(f"{kind}:{row['id']} ({name})")
        for vol in self.api.request("get", paths.volumes).json():
            vname = str(vol.get("name") or "")
            if (vname == name or vname.startswith(name + "-")) and not vol.get("instance_id"):
                try:
                    self.api.request("delete", paths.volumes + "/{id}", path_params={"id": str(vol["id"])},
                                     json_body={"is_permanent": True})
                except DataCrunchNotFound:
                    pass
                deleted.append(f"volume:{vol['id']} ({vname})")
        return deleted

    # ---- reconciliation and audit -----------------------------------------------------------------------
    def billed_cost(self, run_id: str, instance_ids: list[str], start: float, end: float) -> BilledCost:
        """Not available: the Verda API has no per-instance cost (billing.py says what was checked)."""
        return billing.billed_cost(self.api, run_id, instance_ids, start, end)

    def inventory(self) -> list[Billable]:
        """Every instance (offline ones bill too) and every volume, detached or in the trash, with $/h."""
        return inventory.billables(self.api, self.name, self._to_instance)

    # ---- the on-instance dead-man's switch -------------------------------------------------------------
    def self_destruct_credentials(self) -> str:
        """Content of the 0600 file the lifecycle uploads to `credentials_path`: the OAuth token request body.

        Uses the dedicated watchdog API client when configured (DATACRUNCH_WATCHDOG_CLIENT_ID/SECRET),
        else the main one. This is a full-account credential: DataCrunch has no instance-scoped token.
        """
        cid = self.watchdog_client_id or self.api.client_id
        secret = self.watchdog_client_secret or self.api.client_secret
        if not cid or not secret:
            self.check_credentials()
        return json.dumps({"grant_type": "client_credentials", "client_id": cid, "client_secret": secret}) + "\n"

    def _script_path(self, name: str) -> str:
        return posixpath.join(posixpath.dirname(self.credentials_path), name)

    def self_destruct_files(self, instance: Instance) -> list[tuple[str, str, int]]:
        """(path, content, mode) to write on the instance before the watchdog is armed: the credential
        (0600) and the self-destruct scripts beside it."""
        scripts = [(self._script_path(n), _script_text(n), 0o700) for n in SELF_DESTRUCT_SCRIPTS]
        return [(self.credentials_path, self.self_destruct_credentials(), 0o600), *scripts]

    def self_destruct_command(self, instance: Instance) -> str:
        """The shipped script with this instance's id, the API base, the credential file and the time
        bound as arguments: it deletes the instance (+ its OS volume), retried until the API shows it
        deleting/discontinued/404 or the bound passes. The secret stays in the file, never in argv."""
        if not _INSTANCE_ID_RE.fullmatch(instance.id or ""):
            raise ProviderError(f"refusing a self-destruct for an odd instance id {instance.id!r}")
        args = [self._script_path(SELF_DESTRUCT_SCRIPTS[0]), self.api.base_url, instance.id, self.credentials_path,
                str(self.self_destruct_timeout_s), f"{self.self_destruct_pause_s:g}"]
        return " ".join(shlex.quote(a) for a in args)
