"""The object-store tier, planned (`--checkpoints-to s3://bucket/prefix`): the bucket is reached,
and a credential scoped to a prefix minted, with this machine's credentials before anything is
rented, and what it will cost is in the plan.

The costs are the bucket's provider's, billed to its account beside the instance's: the uploads
(one PUT per checkpoint and one per bucket manifest), the home fetch after the run (GETs and the
transfer out of the bucket: the newest checkpoint and its weights-only export), and the storage of
the K checkpoints kept, per month while they are kept. Prices: AWS S3 Standard, us-east-1
(https://aws.amazon.com/s3/pricing/): storage 0.023 USD per GB-month, PUT 0.005 USD and GET
0.0004 USD per 1,000 requests, transfer out to the internet 0.09 USD per GB. An S3-compatible
store (R2: no transfer-out fee; B2; MinIO) bills less or nothing: these are an upper bound.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.money.budget import Allowance
from orchestrator.plan.egress import expected_pulls
from orchestrator.plan.options import LaunchError, LaunchOptions
from orchestrator.transport.bucket import (
    MIN_TOKEN_S,
    BucketDest,
    BucketError,
    check_reachable,
    scoped_credentials,
)
from providers.base import Offer
from trainer.recipes import human_bytes

STORAGE_USD_PER_GB_MONTH = 0.023
PUT_USD = 0.005 / 1000
GET_USD = 0.0004 / 1000
TRANSFER_OUT_USD_PER_GB = 0.09
KEEP = 2  # the trainer's keep_checkpoints default: what the bucket holds
EXPORT_SHARE = 1 / 6  # a bf16 weights-only export beside a checkpoint carrying AdamW's fp32 state


@dataclass(frozen=True)
class BucketPlan:
    url: str
    endpoint_url: str | None
    uploads: int  # checkpoints uploaded (the newest at each pass, at most one per checkpoint written)
    checkpoint_bytes: float
    requests_usd: float
    transfer_usd: float  # the home fetch: the newest checkpoint and its export, out of the bucket
    storage_usd_per_month: float

    @property
    def run_usd(self) -> float:
        """What the run itself costs at the bucket (its storage is billed per month on top)."""
        return self.requests_usd + self.transfer_usd

    def words(self) -> str:
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return (f"{self.url}/<run>{where}: ~{self.uploads} upload(s) of ~{human_bytes(self.checkpoint_bytes)} from the"
                f" instance, the newest fetched home after it is gone: ~{self.run_usd:.4f} USD (requests"
                f" {self.requests_usd:.4f} + transfer out {self.transfer_usd:.4f}) + storage"
                f" ~{self.storage_usd_per_month:.4f} USD/month while kept (AWS S3 Standard prices; billed by the"
                " bucket's provider, beside the cap)")


def plan_bucket(options: LaunchOptions, offer: Offer, allowance: Allowance, sync_interval_s: float) -> BucketPlan | None:
    """The bucket's plan (None without --checkpoints-to); LaunchError when it cannot be used."""
    if options.checkpoints_to is None:
        if options.endpoint_url and not (options.data_from or "").startswith("s3://"):
            raise LaunchError("--endpoint-url names a bucket's S3 endpoint: use it with --checkpoints-to s3://..."
                              " or --data-from s3://...")
        return None
    if options.command:
        raise LaunchError("--checkpoints-to uploads the bundled trainer's checkpoints: with `-- COMMAND` drop it")
    try:
        dest = BucketDest.parse(options.checkpoints_to)
        check_reachable(dest, options.endpoint_url)
        # The instance's scoped credential is minted after bootstrap: a store that cannot mint one
        # (no STS there) is found out now, before anything bills, not then.
        scoped_credentials(dest.for_run("plan-check"), options.endpoint_url, MIN_TOKEN_S)
    except BucketError as exc:
        raise LaunchError(str(exc)) from None
    pulls = expected_pulls(options, offer, allowance.train_s, sync_interval_s)
    size = pulls.checkpoint_bytes
    uploads = max(1, pulls.checkpoints)
    fetched = size * (1 + EXPORT_SHARE)
    return BucketPlan(
        url=dest.url, endpoint_url=options.endpoint_url, uploads=uploads, checkpoint_bytes=size,
        requests_usd=(2 * uploads + 1) * PUT_USD + 4 * GET_USD,
        transfer_usd=fetched / 1e9 * TRANSFER_OUT_USD_PER_GB,
        storage_usd_per_month=(KEEP * size + size * EXPORT_SHARE) / 1e9 * STORAGE_USD_PER_GB_MONTH)
