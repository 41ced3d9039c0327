"""The instance's side of the object-store tier (`gpurun launch --checkpoints-to s3://bucket/prefix`):
every checkpoint the trainer completes goes to the bucket over the datacenter's link.

    python -m trainer.bucket_upload --root RUN_ROOT --dest s3://bucket/prefix/RUN_ID \
        --credentials RUN_ROOT/bucket.env [--endpoint-url URL] [--keep K]

Every couple of seconds it reads checkpoints/MANIFEST.json and uploads what is new there, the
weights-only export first, then the newest checkpoint (never an older one: a newer one supersedes
it), each with its SHA-256 as object metadata (`x-amz-meta-sha256`); then the bucket's own
MANIFEST.json (what the bucket holds, same shape) and the removal of checkpoints beyond the newest
K. Its progress goes to out/bucket.json (what is uploaded, bytes and seconds each: the controller
sizes its reserve from them). When the job has ended (RUN_ROOT/job.exit) it makes one last pass
and exits 0. The credentials (scoped to the prefix, short-lived) are read from a 0600 file the
controller wrote, never from the command line or the environment of the job; nothing here prints
them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from trainer import contract
from trainer.manifest import atomic_write_json

POLL_S = 2.0
STATE = "bucket.json"  # under out/: pulled home with the logs


def read_credentials(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN)."""
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs}


def split_dest(dest: str) -> tuple[str, str]:
    if not dest.startswith("s3://"):
        raise SystemExit(f"--dest {dest!r}: expected s3://bucket/prefix")
    bucket, _, prefix = dest[len("s3://"):].partition("/")
    return bucket, prefix.strip("/")


class Uploader:
    def __init__(self, root: Path, dest: str, creds: dict[str, str], endpoint_url: str | None, keep: int) -> None:
        import boto3  # on the instance: bootstrap installs it where the image lacks it

        self.root, self.keep = root, keep
        self.bucket, self.prefix = split_dest(dest)
        self.s3 = boto3.client(
            "s3", endpoint_url=endpoint_url, region_name=creds.get("AWS_REGION") or "us-east-1",
            aws_access_key_id=creds["AWS_ACCESS_KEY_ID"], aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"],
            aws_session_token=creds.get("AWS_SESSION_TOKEN") or None)
        self.ckpt = root / contract.CHECKPOINTS_PATH
        self.state: dict[str, Any] = {"dest": dest, "uploaded": [], "latest": None, "exports": [], "done": False}

    def key(self, name: str) -> str:
        return f"{self.prefix}/{contract.CHECKPOINTS_DIR}/{name}" if self.prefix else f"{contract.CHECKPOINTS_DIR}/{name}"

    def _put(self, entry: dict[str, Any]) -> None:
        began = time.monotonic()
        with open(self.ckpt / entry["file"], "rb") as body:
            self.s3.put_object(Bucket=self.bucket, Key=self.key(entry["file"]), Body=body,
                               Metadata={"sha256": entry["sha256"], "step": str(entry["step"])})
        self.state["uploaded"].append({"file": entry["file"], "bytes": int(entry["bytes"]),
                                       "seconds": round(time.monotonic() - began, 3), "time": time.time()})

    def one_pass(self) -> None:
        try:
            manifest = json.loads((self.ckpt / contract.MANIFEST).read_text())
        except (OSError, ValueError):
            return  # none yet, or being replaced: the next pass reads it
        done = {u["file"] for u in self.state["uploaded"]}
        entries = manifest.get(contract.MANIFEST_ENTRIES) or []
        exports = manifest.get(contract.MANIFEST_EXPORTS) or []
        newest = entries[-1:] if entries else []
        for entry in [*exports, *newest]:
            if entry["file"] not in done and (self.ckpt / entry["file"]).is_file():
                self._put(entry)
        self._write_bucket_manifest(entries, exports)

    def _write_bucket_manifest(self, entries: list[dict[str, Any]], exports: list[dict[str, Any]]) -> None:
        """The bucket's MANIFEST.json: the newest K uploaded checkpoints; older ones are removed."""
        done = {u["file"] for u in self.state["uploaded"]}
        held = [e for e in self.state.get("held", []) if e["file"] not in {x["file"] for x in entries}]
        held = sorted(held + [e for e in entries if e["file"] in done], key=lambda e: e["step"])
        for gone in held[:-self.keep]:
            self.s3.delete_object(Bucket=self.bucket, Key=self.key(gone["file"]))
        held = held[-self.keep:]
        in_bucket = [e for e in exports if e["file"] in done]
        if held == self.state.get("held") and in_bucket == self.state["exports"]:
            return
        self.state.update(held=held, exports=in_bucket, latest=held[-1]["file"] if held else None)
        body = json.dumps({contract.MANIFEST_LATEST: self.state["latest"], contract.MANIFEST_ENTRIES: held,
                           contract.MANIFEST_KEEP: self.keep, contract.MANIFEST_EXPORTS: in_bucket}).encode()
        self.s3.put_object(Bucket=self.bucket, Key=self.key(contract.MANIFEST), Body=body)
        self.save()

    def save(self) -> None:
        atomic_write_json(self.root / contract.OUT_DIR / STATE, self.state)


def fetch_newest(root: Path, src: str, creds: dict[str, str], endpoint_url: str | None) -> dict[str, Any]:
    """`--fetch` (a resumed run starting from a bucket's checkpoint): the bucket's newest checkpoint
    into out/checkpoints over the datacenter's link, checked against its SHA-256, and a manifest
    naming only it (written last: the file is whole). Its entry."""
    import boto3

    from trainer.manifest import atomic_write, sha256_file

    bucket, prefix = split_dest(src)
    s3 = boto3.client("s3", endpoint_url=endpoint_url, region_name=creds.get("AWS_REGION") or "us-east-1",
                      aws_access_key_id=creds["AWS_ACCESS_KEY_ID"], aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"],
                      aws_session_token=creds.get("AWS_SESSION_TOKEN") or None)
    key = f"{prefix}/{contract.CHECKPOINTS_DIR}/" if prefix else f"{contract.CHECKPOINTS_DIR}/"
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=key + contract.MANIFEST)["Body"].read())
    entry = next(e for e in manifest[contract.MANIFEST_ENTRIES] if e["file"] == manifest[contract.MANIFEST_LATEST])
    ckpt = root / contract.CHECKPOINTS_PATH
    ckpt.mkdir(parents=True, exist_ok=True)
    atomic_write(ckpt / entry["file"], lambda f: s3.download_fileobj(bucket, key + entry["file"], f))
    if sha256_file(ckpt / entry["file"]) != entry["sha256"]:
        (ckpt / entry["file"]).unlink()
        raise SystemExit(f"{src}: {entry['file']} does not match its SHA-256 in the bucket's manifest")
    atomic_write_json(ckpt / contract.MANIFEST, {contract.MANIFEST_LATEST: entry["file"],
                                                 contract.MANIFEST_ENTRIES: [entry]})
    return entry


def fetch_tree(src: str, to: Path, creds: dict[str, str], endpoint_url: str | None) -> dict[str, Any]:
    """`--fetch-tree` (`--data-from s3://...`): every object under the prefix into `to`, over the
    datacenter's link, each checked: against its `sha256` metadata where it has one, else its
    single-part ETag (the object's MD5), else its size. What was fetched."""
    import hashlib

    import boto3

    bucket, prefix = split_dest(src)
    s3 = boto3.client("s3", endpoint_url=endpoint_url, region_name=creds.get("AWS_REGION") or "us-east-1",
                      aws_access_key_id=creds["AWS_ACCESS_KEY_ID"], aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"],
                      aws_session_token=creds.get("AWS_SESSION_TOKEN") or None)
    base = f"{prefix}/" if prefix else ""
    files, total = 0, 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=base):
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(base):]
            if not rel or rel.endswith("/") or ".." in rel.split("/"):
                continue
            path = to / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            part = path.with_name(path.name + ".part")
            s3.download_file(bucket, obj["Key"], str(part))
            meta = s3.head_object(Bucket=bucket, Key=obj["Key"])
            etag = str(meta.get("ETag", "")).strip('"')
            data_hash = None
            if meta.get("Metadata", {}).get("sha256"):
                data_hash = ("sha256", meta["Metadata"]["sha256"], hashlib.sha256)
            elif etag and "-" not in etag:
                data_hash = ("md5", etag, hashlib.md5)
            if part.stat().st_size != obj["Size"] or (data_hash and _digest(part, data_hash[2]) != data_hash[1]):
                part.unlink()
                raise SystemExit(f"{src}/{rel}: does not match the bucket's {data_hash[0] if data_hash else 'size'}")
            part.replace(path)
            files, total = files + 1, total + obj["Size"]
    return {"files": files, "bytes": total}


def _digest(path: Path, algo: Any) -> str:
    h = algo()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return str(h.hexdigest())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trainer.bucket_upload")
    ap.add_argument("--fetch", action="store_true", help="download the newest checkpoint from --dest instead")
    ap.add_argument("--fetch-tree", metavar="DIR", help="download every object under --dest into DIR instead")
    ap.add_argument("--root", required=True)
    ap.add_argument("--dest", required=True)
    ap.add_argument("--credentials", required=True)
    ap.add_argument("--endpoint-url")
    ap.add_argument("--keep", type=int, default=2)
    ap.add_argument("--job", default="job", help="the job whose <name>.exit ends the uploads")
    args = ap.parse_args(argv)
    root = Path(args.root)
    if args.fetch_tree:
        got = fetch_tree(args.dest, Path(args.fetch_tree), read_credentials(Path(args.credentials)), args.endpoint_url)
        print(json.dumps(got), flush=True)
        return 0
    if args.fetch:
        entry = fetch_newest(root, args.dest, read_credentials(Path(args.credentials)), args.endpoint_url)
        print(json.dumps({"file": entry["file"], "step": entry["step"]}), flush=True)
        return 0
    up = Uploader(root, args.dest, read_credentials(Path(args.credentials)), args.endpoint_url, max(1, args.keep))
    up.save()
    while True:
        ended = (root / f"{args.job}.exit").exists()
        try:
            up.one_pass()
        except Exception as exc:  # noqa: BLE001 - whatever boto3 raises
            # Tried again at the next pass, after the job too: the controller bounds the wait.
            print(f"bucket upload: {type(exc).__name__}: {str(exc)[:300]}", file=sys.stderr, flush=True)
            time.sleep(POLL_S)
            continue
        if ended:  # the job's last checkpoint was in the manifest when it exited: this pass took it
            up.state["done"] = True
            up.save()
            return 0
        time.sleep(POLL_S)


if __name__ == "__main__":
    os.umask(0o077)
    raise SystemExit(main())
