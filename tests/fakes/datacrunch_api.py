"""A local stand-in for the DataCrunch (Verda) public REST API, for the real `verda` SDK to talk to.

It speaks the wire format the SDK 1.25 sends and parses (see verda/*/_*.py): OAuth2 client
credentials at /oauth2/token, /balance, /instance-types (prices as STRINGS), /instance-availability,
/volume-types, /images, /sshkeys, /scripts, /volumes and /instances (POST answers the new id as
plain text; PUT carries actions). Instances walk ordered -> provisioning -> running and, after a
delete, deleting -> discontinued, each step after a configurable delay; the ip stays null until
running. A billing meter per instance runs from the create call until the instance is discontinued.

Knobs for the failure modes a real cloud has: 5xx for the next N calls, slow answers, a 207 that
silently does nothing for one id, and the 400 "Can't discontinue a provisioning instance".
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
        "supported_os": ["ubuntu-24.04-cuda-12.8-open-docker"],
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
]

DEFAULT_AVAILABILITY: dict[str, list[str]] = {
    "FIN-01": ["1A100.22V", "2A100.44V"],
    "FIN-03": ["1H100.80S.30V", "1A100.22V"],
}

PROVISIONING_REFUSAL = "Can't discontinue a provisioning instance"


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
    availability: dict[str, list[str]] = field(default_factory=lambda: dict(DEFAULT_AVAILABILITY))
    nvme_price_per_month_per_gb: float = 0.2

    def __post_init__(self) -> None:
        self.lock = threading.RLock()
        self.instances: dict[str, FakeInstance] = {}
        self.ssh_keys: dict[str, dict[str, str]] = {}
        self.scripts: dict[str, dict[str, str]] = {}
        self.volumes: dict[str, dict[str, Any]] = {}
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

    def _advance(self, inst: FakeInstance, now: float) -> None:
        steps = {"ordered": (self.ordered_s, "provisioning"), "provisioning": (self.provisioning_s, "running"),
                 "deleting": (self.deleting_s, "discontinued")}
        while inst.status in steps:
            delay, nxt = steps[inst.status]
            at = inst.status_since + delay
            if now < at:
                return
            self._set_status(inst, nxt, at)
            if nxt == "running":
                inst.body["ip"] = self.ip
            if nxt == "discontinued":
                inst.billing_stopped = at
                inst.body["ip"] = None
                for vid in inst.body.get("_delete_volumes", []):
                    self.volumes.pop(vid, None)
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
            if len(seg) == 2:
                return self._json(any(seg[1] in v for v in self.availability.values()))
            loc = query.get("location_code")
            return self._json([{"location_code": k, "availabilities": v} for k, v in self.availability.items()
                               if not loc or loc == k])
        if root == "volume-types" and method == "GET":
            return self._json([
                {"type": "NVMe", "price": {"price_per_month_per_gb": self.nvme_price_per_month_per_gb, "currency": "usd"}},
                {"type": "HDD", "price": {"price_per_month_per_gb": 0.05, "currency": "usd"}},
            ])
        if root == "images" and method == "GET":
            return self._json([{"id": "img-1", "name": "Ubuntu 24.04 + CUDA 12.8 Open + Docker",
                                "image_type": "ubuntu-24.04-cuda-12.8-open-docker", "details": ["CUDA 12.8"]}])
        if root == "sshkeys":
            return self._named(self.ssh_keys, "key", "keys", method, seg, payload)
        if root == "scripts":
            return self._named(self.scripts, "script", "scripts", method, seg, payload)
        if root == "volumes":
            return self._volumes(method, seg, payload, now)
        if root == "instances":
            return self._instances(method, seg, query, payload, now)
        return self._error(404, "not_found", f"no route {method} {path}")

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

    def _volumes(self, method: str, seg: list[str], payload: Any, now: float) -> tuple[int, str, str]:
        for inst in self.instances.values():
            self._advance(inst, now)
        if method == "GET" and len(seg) == 1:
            return self._json(list(self.volumes.values()))
        if method == "GET" and len(seg) == 2:
            vol = self.volumes.get(seg[1])
            return self._json(vol) if vol else self._error(404, "not_found", "volume not found")
        if method == "DELETE" and len(seg) == 2:
            vol = self.volumes.get(seg[1])
            if not vol:
                return self._error(404, "not_found", "volume not found")
            if vol.get("instance_id"):
                return self._error(400, "invalid_request", "volume is attached")
            del self.volumes[seg[1]]
            return 202, "text/plain", ""
        return self._error(405, "invalid_request", "method not allowed")

    def _new_volume(self, name: str, size: int, vtype: str, instance_id: str, is_os: bool, now: float) -> str:
        vid = str(uuid.uuid4())
        self.volumes[vid] = {"id": vid, "status": "attached", "name": name, "size": size, "type": vtype,
                             "is_os_volume": is_os, "created_at": _iso(now), "instance_id": instance_id,
                             "location": "FIN-03"}
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
    def _public(inst: FakeInstance) -> dict[str, Any]:
        return {k: v for k, v in inst.body.items() if not k.startswith("_")}

    def _create(self, p: Any, now: float) -> tuple[int, str, str]:
        if not isinstance(p, dict):
            return self._error(400, "invalid_request", "JSON body required")
        itype = next((t for t in self.instance_types if t["instance_type"] == p.get("instance_type")), None)
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
        price = float(itype["spot_price"] if p.get("is_spot") else itype["price_per_hour"])
        new_id = str(uuid.uuid4())
        osv = p.get("os_volume") or {}
        os_vol = self._new_volume(osv.get("name") or f"{p['hostname']}-os", int(osv.get("size") or 50), "NVMe",
                                  new_id, True, now)
        for v in p.get("volumes") or []:
            self._new_volume(v.get("name", "data"), int(v.get("size", 1)), v.get("type", "NVMe"), new_id, False, now)
        body = {
            "id": new_id, "instance_type": itype["instance_type"], "price_per_hour": price,
            "hostname": p["hostname"], "description": p.get("description") or "", "status": "ordered",
            "created_at": _iso(now), "ssh_key_ids": list(p.get("ssh_key_ids") or []),
            "cpu": itype["cpu"], "gpu": itype["gpu"], "memory": itype["memory"], "storage": itype["storage"],
            "gpu_memory": itype["gpu_memory"], "ip": None, "os_volume_id": os_vol,
            "location": p["location_code"], "image": p["image"], "startup_script_id": script,
            "is_spot": bool(p.get("is_spot")), "contract": p.get("contract") or "PAY_AS_YOU_GO",
            "pricing": p.get("pricing") or "FIXED_PRICE",
        }
        self.instances[new_id] = FakeInstance(new_id, body, price, now, "ordered", now)
        return 202, "text/plain", new_id  # the real API answers the id as plain text, not JSON

    def _action(self, p: Any, now: float) -> tuple[int, str, str]:
        if not isinstance(p, dict) or not p.get("id") or not p.get("action"):
            return self._error(400, "invalid_request", "id and action are required")
        ids = p["id"] if isinstance(p["id"], list) else [p["id"]]
        action = p["action"]
        results: list[dict[str, Any]] = []
        for iid in ids:
            inst = self.instances.get(iid)
            if inst is None:
                if len(ids) == 1:
                    return self._error(404, "not_found", "Instance not found")
                results.append({"instanceId": iid, "action": action, "status": "error", "error": "not found"})
                continue
            self._advance(inst, now)
            if action == "delete":
                inst.delete_requests += 1
                if iid in self._silent_delete_fail:
                    self._silent_delete_fail.discard(iid)
                    results.append({"instanceId": iid, "action": action, "status": "error",
                                    "error": "internal error while discontinuing"})
                    continue
                if inst.status in ("ordered", "provisioning"):
                    if len(ids) == 1:
                        return self._error(400, "invalid_request", PROVISIONING_REFUSAL)
                    results.append({"instanceId": iid, "action": action, "status": "error",
                                    "error": PROVISIONING_REFUSAL})
                    continue
                if inst.status in ("running", "offline", "error"):
                    self._set_status(inst, "deleting", now)
                    vols = [v for v in (p.get("volume_ids") or []) if v in self.volumes
                            and self.volumes[v].get("instance_id") == iid]
                    inst.body["_delete_volumes"] = vols  # listed volumes go with the instance
                results.append({"instanceId": iid, "action": action, "status": "success"})
            elif action == "shutdown":
                if inst.status == "running":
                    self._set_status(inst, "offline", now)  # still billing: only delete stops the meter
                results.append({"instanceId": iid, "action": action, "status": "success"})
            elif action == "start":
                if inst.status == "offline":
                    self._set_status(inst, "running", now)
                results.append({"instanceId": iid, "action": action, "status": "success"})
            else:
                return self._error(400, "invalid_request", f"unsupported action {action!r}")
        if any(r["status"] == "error" for r in results):
            return self._json(results, 207)
        return 202, "text/plain", ""


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
