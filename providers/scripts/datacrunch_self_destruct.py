"""gpurun's DataCrunch (Verda) self-destruct: delete THIS instance through the public API.

Run ON the instance by the dead-man's switch, with the controller gone, through
datacrunch_self_destruct.sh (which picks this where python3 exists, else its curl loop):

    python3 datacrunch_self_destruct.py BASE_URL INSTANCE_ID CREDENTIALS_FILE LIMIT_S PAUSE_S

DataCrunch has no instance-scoped token, so CREDENTIALS_FILE (0600, written at bootstrap) holds the
OAuth client-credentials request body of an account API client. The secret is read from the file,
never taken from argv; what is printed are status codes and the delete answer, never the token
call's body (it holds tokens). Exits 0 once the API shows the instance deleting, discontinued or
absent; 1 when LIMIT_S passes first. Standard library only: it runs on whatever python3 the image has.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from typing import Any

GONE = ("deleting", "discontinued")
MAX_PAUSE_S = 30.0


def log(*parts: Any) -> None:
    print("gpurun self-destruct:", *parts, flush=True)


def call(base: str, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, str]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = "Bearer " + token
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def gone(code: int, text: str) -> bool:
    return code == 404 or (code == 200 and json.loads(text).get("status") in GONE)


def volume_ids(base: str, iid: str, inst: dict[str, Any], token: str) -> list[str]:
    """Every volume the instance has: its OS volume, its `volume_ids` (Go SDK Instance.VolumeIDs) and any
    volume GET /volumes lists as attached to it. A volume left out of the delete is detached and keeps
    billing (Go SDK InstanceActionRequest: "nil omits the field (API default: OS volume deleted, rest
    detached)"), so the delete names them all, as the controller's terminate does."""
    ids = [inst["os_volume_id"]] if inst.get("os_volume_id") else []
    ids += [v for v in inst.get("volume_ids") or [] if isinstance(v, str)]
    code, text = call(base, "GET", "/volumes", token=token)
    if code == 200:
        ids += [str(v["id"]) for v in json.loads(text) if isinstance(v, dict) and v.get("instance_id") == iid]
    else:
        log("volumes HTTP", code)
    return list(dict.fromkeys(ids))


def attempt(base: str, iid: str, cred: str, settle_s: float) -> bool:
    """One try: token, look, delete (with every volume, permanently), look again. True once gone."""
    with open(cred) as f:
        code, text = call(base, "POST", "/oauth2/token", json.load(f))
    if code != 200:
        log("token HTTP", code)
        return False
    token = json.loads(text)["access_token"]
    code, text = call(base, "GET", "/instances/" + iid, token=token)
    if gone(code, text):
        log("instance gone" if code == 404 else "instance " + json.loads(text)["status"])
        return True
    if code != 200:
        log("instance HTTP", code)  # the instance's money first: delete it even without its volume list
    vols = volume_ids(base, iid, json.loads(text), token) if code == 200 else []
    body: dict[str, Any] = {"id": [iid], "action": "delete"}
    if vols:
        body["volume_ids"] = vols
        body["delete_permanently"] = True  # not the trash, where the volumes keep billing
    code, text = call(base, "PUT", "/instances", body, token)
    log("delete HTTP", code, "volumes", len(vols), " ".join(text.split())[:200])
    if code == 404:
        return True
    if 200 <= code < 300:
        time.sleep(settle_s)  # an accepted delete can still be a 207 that did nothing: look again
        code, text = call(base, "GET", "/instances/" + iid, token=token)
        if gone(code, text):
            log("delete confirmed")
            return True
    return False


def main(argv: list[str]) -> int:
    if len(argv) != 5:
        log("usage: datacrunch_self_destruct.py BASE_URL INSTANCE_ID CREDENTIALS_FILE LIMIT_S PAUSE_S")
        return 2
    base, iid, cred = argv[0], argv[1], argv[2]
    limit, first = float(argv[3]), float(argv[4])
    end = time.time() + limit
    pause = first
    while time.time() < end:
        try:
            if attempt(base, iid, cred, first):
                return 0
        except Exception as exc:  # noqa: BLE001 - keep trying until the time bound, whatever went wrong
            log("error", type(exc).__name__, exc)
        time.sleep(max(0.0, min(pause, end - time.time())))
        pause = min(pause * 2, MAX_PAUSE_S)
    log("gave up after", limit, "s")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
