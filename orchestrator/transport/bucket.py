"""The object-store tier, this side (`--checkpoints-to s3://bucket/prefix`, any S3-compatible
endpoint via `--endpoint-url` or the profile): reach the bucket, mint the instance's short-lived
credentials scoped to the run's prefix, and bring the checkpoints home from the bucket once the
instance is gone (verified by SHA-256, into the same out/checkpoints/ a pull fills).

The instance's side is trainer/bucket_upload.py. The scoped credentials come from STS
GetFederationToken with a session policy that allows only the run's prefix (AWS, MinIO and moto
answer it at the same endpoint); they are registered with orchestrator.redact so that no log,
ledger row or card can carry them, and expire on their own after the run's time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.redact import register_secret
from orchestrator.transport.pull_checkpoints import CKPT, STAGING, verify_checkpoints, wanted_files
from trainer import contract

MIN_TOKEN_S = 900  # STS's shortest federation token
MAX_TOKEN_S = 36 * 3600  # and its longest


class BucketError(Exception):
    """The bucket cannot be used: one line saying why and what to do."""


@dataclass(frozen=True)
class BucketDest:
    bucket: str
    prefix: str  # no leading / trailing slash; "" for the bucket's root

    @classmethod
    def parse(cls, url: str) -> BucketDest:
        if not url.startswith("s3://") or not url[len("s3://"):].split("/", 1)[0]:
            raise BucketError(f"--checkpoints-to {url!r}: expected s3://bucket/prefix")
        bucket, _, prefix = url[len("s3://"):].partition("/")
        return cls(bucket, prefix.strip("/"))

    def for_run(self, run_id: str) -> BucketDest:
        return BucketDest(self.bucket, f"{self.prefix}/{run_id}".strip("/"))

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def key(self, name: str) -> str:
        return f"{self.prefix}/{contract.CHECKPOINTS_DIR}/{name}".lstrip("/")


def client(service: str, endpoint_url: str | None) -> Any:
    import boto3  # the aws extra; the bucket tier needs it here as the AWS provider does

    return boto3.client(service, endpoint_url=endpoint_url)


def check_reachable(dest: BucketDest, endpoint_url: str | None) -> None:
    """BucketError unless this machine's credentials reach the bucket (checked before renting)."""
    try:
        client("s3", endpoint_url).head_bucket(Bucket=dest.bucket)
    except Exception as exc:  # noqa: BLE001 - botocore's errors: one line, whatever the kind
        raise BucketError(f"--checkpoints-to {dest.url}: the bucket is not reachable with this machine's"
                          f" credentials ({type(exc).__name__}: {str(exc)[:200]}): check the name, the"
                          " profile (AWS_PROFILE) and --endpoint-url") from None


def bucket_size(dest: BucketDest, endpoint_url: str | None) -> tuple[int, int]:
    """(objects, bytes) under `dest`'s prefix, listed with this machine's credentials."""
    files = size = 0
    try:
        pages = client("s3", endpoint_url).get_paginator("list_objects_v2").paginate(
            Bucket=dest.bucket, Prefix=f"{dest.prefix}/" if dest.prefix else "")
        for page in pages:
            for obj in page.get("Contents", []):
                files, size = files + 1, size + int(obj["Size"])
    except Exception as exc:  # noqa: BLE001 - one line, whatever botocore raised
        raise BucketError(f"--checkpoints-to {dest.url}: cannot list it with this machine's credentials"
                          f" ({type(exc).__name__}: {str(exc)[:200]})") from None
    return files, size


def prefix_policy(dest: BucketDest, read_only: bool = False) -> str:
    """The session policy: objects under the run's prefix only, and listing only that prefix."""
    actions = ["s3:GetObject"] if read_only else ["s3:PutObject", "s3:GetObject", "s3:DeleteObject"]
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": actions,
         "Resource": [f"arn:aws:s3:::{dest.bucket}/{dest.prefix}/*"]},
        {"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": [f"arn:aws:s3:::{dest.bucket}"],
         "Condition": {"StringLike": {"s3:prefix": [f"{dest.prefix}/*"]}}},
    ]})


def scoped_credentials(dest: BucketDest, endpoint_url: str | None, duration_s: float,
                       read_only: bool = False) -> dict[str, str]:
    """Short-lived credentials for the instance that reach only `dest`'s prefix (BucketError: none)."""
    seconds = int(min(MAX_TOKEN_S, max(MIN_TOKEN_S, duration_s)))
    try:
        got = client("sts", endpoint_url).get_federation_token(Name="gpurun-ckpt", Policy=prefix_policy(dest, read_only),
                                                              DurationSeconds=seconds)["Credentials"]
    except Exception as exc:  # noqa: BLE001 - one line, whatever botocore raised
        raise BucketError(f"--checkpoints-to {dest.url}: could not mint credentials scoped to the prefix"
                          f" (STS GetFederationToken: {type(exc).__name__}: {str(exc)[:200]}); gpurun never"
                          " gives an instance this machine's own keys") from None
    creds = {"AWS_ACCESS_KEY_ID": got["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": got["SecretAccessKey"],
             "AWS_SESSION_TOKEN": got["SessionToken"]}
    for value in creds.values():
        register_secret(value)
    return creds


def newest_in_bucket(dest: BucketDest, endpoint_url: str | None) -> dict[str, Any] | None:
    """The bucket manifest's newest entry under `dest` (None: no manifest there, or not reachable)."""
    try:
        raw = client("s3", endpoint_url).get_object(Bucket=dest.bucket, Key=dest.key(contract.MANIFEST))["Body"].read()
        manifest = json.loads(raw)
        return next(e for e in manifest["checkpoints"] if e["file"] == manifest["latest"])
    except Exception:  # noqa: BLE001 - whatever the reason, there is nothing to resume from there
        return None


def credentials_file(creds: dict[str, str]) -> str:
    """The 0600 file trainer/bucket_upload.py reads on the instance."""
    return "".join(f"{k}={v}\n" for k, v in creds.items())


def fetch_checkpoints(dest: BucketDest, endpoint_url: str | None, run_dir: Path) -> tuple[list[str], list[str]]:
    """The bucket's newest checkpoint and weights-only export into run_dir/out/checkpoints, each
    checked against its SHA-256, the local manifest written (home keeps K): (verified, rejected)."""
    s3 = client("s3", endpoint_url)
    try:
        raw = s3.get_object(Bucket=dest.bucket, Key=dest.key(contract.MANIFEST))["Body"].read()
    except Exception as exc:  # noqa: BLE001 - no manifest: nothing was uploaded
        raise BucketError(f"{dest.url}: no {contract.MANIFEST} in the bucket ({type(exc).__name__})") from None
    ckpt = Path(run_dir) / CKPT
    ckpt.mkdir(parents=True, exist_ok=True)
    (Path(run_dir) / STAGING).mkdir(parents=True, exist_ok=True)
    for name in wanted_files(json.loads(raw)):
        if not (ckpt / name).is_file():
            part = ckpt / f".{name}.part"
            s3.download_file(dest.bucket, dest.key(name), str(part))
            part.replace(ckpt / name)
    return verify_checkpoints(Path(run_dir), raw)
