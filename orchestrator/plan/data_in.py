"""Data in, planned: `--data-from DIR` is sized and timed before anything is rented.

The instance bills while the data goes up, before a step is trained, so the time it takes at the
upload rate is part of the budget: the send (planned SAFETY times slower than the rate) plus the
minimum training must fit before the guard's stop time, or the launch is refused with the numbers
(size, rate and where it came from, time, what the budget leaves) and what to do. The rate is the
user's (`--upload-mbps`), else what this machine's earlier sends measured (their `data_sent`
events), else an assumed home upload.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from orchestrator.money.budget import Allowance
from orchestrator.plan.options import LaunchError, LaunchOptions
from orchestrator.state.events import EventKind
from orchestrator.state.ledger import Ledger
from orchestrator.transport.bucket import BucketDest, BucketError, bucket_size
from orchestrator.transport.upload import upload_files

ASSUMED_UPLOAD_BPS = 2.5e6  # 20 Mbit/s: a common home upload when nothing better is known
SAFETY = 1.25  # the send is planned this much slower than the rate
MEASURED_RUNS = 20  # the newest runs whose sends say what this machine's link carries
MIN_MEASURED_BYTES = 1 << 20  # a send smaller than this says little about the rate
BUCKET = "the instance fetches it"  # rate_source of `--data-from s3://...`


@dataclass(frozen=True)
class DataIn:
    path: str
    files: int
    bytes: int
    rate_bps: float
    rate_source: str  # "--upload-mbps", "measured by N earlier sends", "assumed"

    @property
    def seconds(self) -> float:
        """The planned time of the send (SAFETY included; a bucket's fetch is the instance's)."""
        return 0.0 if self.rate_source == BUCKET else SAFETY * self.bytes / self.rate_bps

    def words(self) -> str:
        if self.rate_source == BUCKET:
            return (f"{self.bytes / 1e6:.1f} MB in {self.files} objects at {self.path}: fetched by the instance over"
                    " its own link with read-only credentials scoped to that prefix, each object checked")
        return (f"{self.bytes / 1e6:.1f} MB in {self.files} files from {self.path}: ~{self.seconds:.0f} s at"
                f" {self.rate_bps * 8 / 1e6:.1f} Mbit/s ({self.rate_source}), rsync'ed and verified by SHA-256")


def measured_rate(ledger: Ledger) -> tuple[float, int] | None:
    """This machine's upload rate (bytes/s) from earlier runs' data sends, and how many said so."""
    sends = [e.payload for run in ledger.list_runs()[-MEASURED_RUNS:] for e in ledger.events(run.run_id)
             if e.phase == EventKind.DATA_SENT.value and int(e.payload.get("bytes") or 0) >= MIN_MEASURED_BYTES
             and float(e.payload.get("seconds") or 0) > 0]
    if not sends:
        return None
    return sum(int(p["bytes"]) for p in sends) / sum(float(p["seconds"]) for p in sends), len(sends)


def bucket_data(options: LaunchOptions) -> DataIn:
    """`--data-from s3://bucket/prefix`: what is there (this machine's credentials), fetched by the
    instance over the datacenter's link: not the home link's to carry, so no upload time."""
    assert options.data_from is not None
    try:
        dest = BucketDest.parse(options.data_from)
        files, size = bucket_size(dest, options.endpoint_url)
    except BucketError as exc:
        raise LaunchError(str(exc).replace("--checkpoints-to", "--data-from")) from None
    if not files:
        raise LaunchError(f"--data-from {options.data_from}: no objects under that prefix")
    return DataIn(options.data_from, files, size, 0.0, BUCKET)


def plan_data_in(options: LaunchOptions, allowance: Allowance, ledger: Ledger | None = None) -> DataIn | None:
    """The planned send of --data-from (None without one); LaunchError when the budget cannot carry it."""
    if options.data_from is None:
        return None
    if options.data_from.startswith("s3://"):
        return bucket_data(options)
    root = Path(options.data_from)
    files = upload_files(root)
    size = sum((root / f).stat().st_size for f in files)
    if options.upload_mbps is not None:
        if not options.upload_mbps > 0:
            raise LaunchError(f"--upload-mbps {options.upload_mbps:g}: must be more than 0 (your link's upload rate)")
        rate, source = options.upload_mbps * 1e6 / 8, "--upload-mbps"
    elif (measured := measured_rate(ledger or Ledger())) is not None:
        rate, source = measured[0], f"measured by {measured[1]} earlier send(s)"
    else:
        rate, source = ASSUMED_UPLOAD_BPS, "assumed: state yours with --upload-mbps"
    data = DataIn(str(root), len(files), size, rate, source)
    left = allowance.train_s - allowance.min_runtime_s
    if data.seconds > left:
        need_s = data.seconds + allowance.min_runtime_s + allowance.reserve_s
        raise LaunchError(
            f"--data-from {root}: {size / 1e6:.1f} MB at {rate * 8 / 1e6:.1f} Mbit/s ({source}) takes ~{data.seconds:.0f} s"
            f" to send, but the budget leaves {max(0.0, left):.0f} s before the stop time once"
            f" {allowance.min_runtime_s:.0f} s of training is kept: raise --max-usd to about"
            f" {need_s * allowance.usd_per_hour / 3600:.2f} USD, send less, or fetch the data on the instance;"
            " nothing was rented")
    return data
