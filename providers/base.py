"""The one small interface every cloud (and the embedded `local` provider) implements.

The controller only ever talks to a `Provider`; each provider module imports its SDK lazily, so
`import providers` stays cheap and a missing SDK only matters when that provider is used.
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

# Instance states, normalised across clouds. Only `terminated` and `not_found` stop the money.
PENDING = "pending"
RUNNING = "running"
STOPPING = "stopping"
STOPPED = "stopped"
TERMINATED = "terminated"
NOT_FOUND = "not_found"
STATES = (PENDING, RUNNING, STOPPING, STOPPED, TERMINATED, NOT_FOUND)
GONE_STATES = (TERMINATED, NOT_FOUND)

# Every resource gpurun creates carries this marker plus the run id (name or tag).
OWNER_TAG = "gpurun"
RUN_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{2,40}$")
# A resource name gpurun gave: gpurun-<run id>, with -n<rank> for node 1.. of a multi-node run.
_OWNED_NAME_RE = re.compile(r"^gpurun-([a-z0-9][a-z0-9-]{2,40}?)(?:-n([1-9][0-9]*))?$")


def owned_name(name: str) -> tuple[str, int] | None:
    """(run id, node rank) of a name gpurun gave (InstanceSpec.name), None for any other name."""
    m = _OWNED_NAME_RE.match(name or "")
    return (m.group(1), int(m.group(2) or 0)) if m else None


class ProviderError(Exception):
    """A provider refused or failed. The message is one line a user can act on."""


class CredentialsError(ProviderError):
    """Credentials are missing or rejected; raised before anything is created."""


class TransientProviderError(ProviderError):
    """A 5xx, a timeout or a throttle: worth retrying with backoff."""


class NoCapacityError(ProviderError):
    """This offer cannot be had now (out of stock, no capacity in the zone): another offer may.

    Raised by `create` when the provider refuses for capacity; nothing of the refused attempt may be
    left billing (a create that made an instance and then failed must tear it down or return it).
    The controller then tries the next offer of the plan (offer fallback)."""


@dataclass(frozen=True)
class BillingRule:
    """How a provider rounds a runtime into billed seconds."""

    increment_s: int = 1
    minimum_s: int = 0
    source: str = ""

    def billed_seconds(self, elapsed_s: float) -> int:
        elapsed = max(0.0, float(elapsed_s))
        billed = max(elapsed, float(self.minimum_s))
        inc = max(1, int(self.increment_s))
        return int(math.ceil(billed / inc) * inc)

    def cost(self, elapsed_s: float, usd_per_hour: float) -> float:
        return self.billed_seconds(elapsed_s) * usd_per_hour / 3600.0


@dataclass
class Offer:
    """One thing that can be rented, with its live (or flagged static) price."""

    provider: str
    gpu: str  # human GPU name, e.g. "RTX 4090", "A10G"; "cpu" for the local provider
    gpu_count: int
    instance_type: str  # provider's id for it: gpu_type_id, EC2 instance type, DataCrunch type
    usd_per_hour: float  # compute price for the whole instance
    extra_usd_per_hour: float = 0.0  # storage and other per-hour charges
    price_source: str = "live"  # "live", or "static table (YYYY-MM-DD)" when the API could not be read
    billing: BillingRule = field(default_factory=BillingRule)
    spot: bool = False
    region: str = ""
    available: bool = True
    memory_gb: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    # Data transfer out of the provider (what gpurun pulls home), USD per GB, and where that figure
    # comes from ("free: <source>" where the provider does not bill egress).
    egress_usd_per_gb: float = 0.0
    egress_source: str = ""

    @property
    def total_usd_per_hour(self) -> float:
        return self.usd_per_hour + self.extra_usd_per_hour

    @property
    def price_is_live(self) -> bool:
        return self.price_source == "live"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SSHEndpoint:
    """How to reach a cloud instance: over SSH."""

    host: str
    port: int
    user: str


@dataclass(frozen=True)
class LocalSandbox:
    """How to reach the embedded `local` provider's "instance": a directory on this machine.

    `python` is the interpreter its jobs run with: the controller's own, never one found on PATH
    (that would be the user's system python, which gpurun must not install into)."""

    path: str
    python: str | None = None


class TorchOnImage(Enum):
    """What the plan can say about PyTorch on the image an instance boots."""

    CARRIED = "carries PyTorch"
    ABSENT = "has no PyTorch"
    UNKNOWN = "is not known to carry PyTorch"


@dataclass(frozen=True)
class ImageFacts:
    """PyTorch on the image, for the plan: where it is absent or unknown, bootstrap may spend minutes
    of the budget on a pip install before any training (`installs`: whether bootstrap may)."""

    image: str  # as the plan shows it
    torch: TorchOnImage
    installs: bool = True
    detail: str = ""  # e.g. "torch 2.13.0 in /path/python"


#: What `Provider.access` returns; the controller opens the transport that matches its type.
Access = SSHEndpoint | LocalSandbox


@dataclass
class InstanceSpec:
    """What `create` is asked for. `run_id` makes create idempotent."""

    run_id: str
    offer: Offer
    ssh_public_key: str = ""  # OpenSSH one-line public key for the run
    image: str | None = None  # provider default (a PyTorch image / DLAMI) when None
    disk_gb: int | None = None  # None: the size the provider was configured with (and priced)
    volume_gb: int = 0
    env: dict[str, str] = field(default_factory=dict)
    owner: str = ""
    # 1 for a run's first offer, n for its n-th (offer fallback): an idempotency token made from
    # the run id must differ between attempts, or the cloud answers with the first one's instance.
    attempt: int = 1
    # Multi-node runs (`--nodes N`): this instance's node rank and the group's size. Node 0 hosts
    # the rendezvous; every node of a group is the same offer, created together, in one network.
    node_rank: int = 0
    nodes: int = 1

    @property
    def name(self) -> str:
        """gpurun-<run id>, and -n<rank> for the other nodes of a multi-node run."""
        return f"{OWNER_TAG}-{self.run_id}" + (f"-n{self.node_rank}" if self.node_rank else "")


@dataclass
class Instance:
    id: str
    provider: str
    state: str
    run_id: str | None = None
    name: str = ""
    instance_type: str = ""
    gpu_count: int = 0
    created_at: float | None = None  # epoch seconds when the provider says it was created
    usd_per_hour: float | None = None
    ssh: SSHEndpoint | None = None
    raw: dict[str, Any] = field(default_factory=dict)
    #: The address the other nodes of a multi-node run reach this one at (the cloud's private
    #: address where it has one; "" while unknown). Node 0's is the rendezvous endpoint.
    private_ip: str = ""
    #: Set by `get` when the provider says this instance will never boot (DataCrunch's terminal
    #: `no_capacity`, an EC2 state reason of insufficient capacity): one line saying so. The state
    #: stays what the provider reports (not gone until verified); the controller tears it down and
    #: tries the next offer instead of waiting out the boot window.
    boot_failure: str = ""
    #: Set by `get` when the provider took a running instance back (a spot / interruptible instance
    #: reclaimed): one line saying so. The controller then resumes the run on the next offer from
    #: its last checkpoint, inside the same cap, instead of ending it as lost.
    preempted: str = ""

    @property
    def gone(self) -> bool:
        return self.state in GONE_STATES

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BilledCost:
    """What the provider itself says a run's instances cost (reconciliation against our estimate)."""

    usd: float | None  # None: the provider has no figure (yet, or at all: see `source`)
    source: str  # where the figure comes from, e.g. "RunPod billing history (GraphQL ...)"
    complete: bool = True  # False while the provider's data may still change (AWS Cost Explorer lags hours)
    details: dict[str, Any] = field(default_factory=dict)  # the raw rows the figure was summed from


@dataclass
class Billable:
    """Something on the account that bills now, gpurun's or not (`gpurun audit`)."""

    kind: str  # "instance" | "pod" | "volume" | "disk"
    id: str
    provider: str
    name: str = ""
    state: str = ""  # the provider's own word (a stopped pod still pays for its volume)
    usd_per_hour: float | None = None  # what it bills now, per hour, where known
    created_at: float | None = None  # epoch seconds
    run_id: str | None = None  # the gpurun run it carries (tag/name); None: not gpurun's
    note: str = ""  # why it bills in its state, e.g. "stopped pod: its volume still bills"
    raw: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Provider(ABC):
    """A cloud behind the interface of docs/DESIGN.md ("Providers"). Methods raise ProviderError subclasses.

    The abstract methods are what every cloud must do. The others are optional capabilities with a
    harmless default, declared here so the controller calls them on any provider and never asks
    which provider it has (no getattr, no branches on provider names).
    """

    name: str = ""
    #: The run's SSH public key is put on the instance at create (clouds); the local provider has none.
    needs_ssh_key: bool = True
    #: Seconds between the guard's periodic pulls when the user sets none.
    default_sync_interval_s: float = 30.0
    #: The `gpurun launch` options the constructor takes (usd_per_hour, image, disk_gb); the plan
    #: refuses any other one given for this provider.
    launch_options: frozenset[str] = frozenset({"image", "disk_gb"})
    #: How late the provider's own billing figures come (`billed_cost`): 0 = ask right after teardown.
    billing_lag_s: float = 0.0

    def check_credentials(self) -> None:  # noqa: B027 - optional hook, default: nothing to check
        """Raise CredentialsError with a one-line fix if the provider cannot be used."""

    @abstractmethod
    def offers(self, gpu: str | None = None, count: int = 1, spot: bool = False) -> list[Offer]: ...

    @abstractmethod
    def create(self, spec: InstanceSpec) -> Instance: ...

    @abstractmethod
    def get(self, instance_id: str) -> Instance: ...

    @abstractmethod
    def terminate(self, instance_id: str) -> dict[str, Any]:
        """Ask for termination; return the raw response for the proof. "Already gone" is not an error."""

    @abstractmethod
    def list_owned(self) -> list[Instance]:
        """Every live-or-recent instance carrying the gpurun marker (for sweep and proofs)."""

    def ssh_endpoint(self, instance: Instance) -> SSHEndpoint | None:
        return instance.ssh

    def access(self, instance: Instance) -> Access | None:
        """How the controller reaches the instance (the transport factory picks by its type);
        None while it is not reachable yet. Clouds answer with their SSH endpoint."""
        return self.ssh_endpoint(instance)

    @abstractmethod
    def self_destruct_command(self, instance: Instance) -> str:
        """Shell command the on-instance watchdog runs at the deadline to stop the billing itself."""

    def spot_notice_command(self, instance: Instance, root: str) -> str | None:
        """On a spot instance: a command run detached on it that, when the provider warns of a
        reclaim, writes ROOT/spot.notice and has the job checkpoint and stop (the controller then
        pulls that checkpoint and resumes elsewhere). None: the provider gives no such warning."""
        return None

    def self_destruct_files(self, instance: Instance) -> list[tuple[str, str, int]]:
        """(path, content, mode) the self-destruct command needs on the instance, e.g. a credential."""
        return []

    def cleanup(self, run_id: str) -> list[str]:
        """Delete what was made for the run besides the instance (keys, scripts, groups). Returns what went."""
        return []

    def account(self) -> dict[str, Any]:
        """Balance / spend limit where the provider exposes one (shown at plan time)."""
        return {}

    def check_spend(self, max_usd: float, usd_per_hour: float) -> None:  # noqa: B027 - optional capability
        """Refuse, with one line, a launch the account cannot pay: a balance below the cap, a price
        over an hourly spend limit. Called at plan time, before anything is created."""

    def check_nodes(self, nodes: int) -> None:
        """Refuse, with one line, a multi-node run (`--nodes N`, N > 1) this provider cannot network:
        the nodes must reach each other (node 0 hosts the rendezvous). Called at plan time, before
        anything is created. Default: refused; a provider that creates a group in one network says so."""
        if nodes > 1:
            raise ProviderError(f"--nodes {nodes}: gpurun does not run multi-node jobs on {self.name or 'this provider'}"
                                " (its instances share no network gpurun can set up): drop --nodes")

    def image_facts(self, image: str | None, offer: Offer) -> ImageFacts:
        """Whether the image a launch boots on `offer` (`image`: --image, None: the provider's default
        or what `check_launchable` picked) carries PyTorch. Default: not known, so the plan counts a
        torch install in the bootstrap."""
        return ImageFacts(image or f"{self.name}'s default image", TorchOnImage.UNKNOWN)

    def check_launchable(self, offer: Offer) -> None:  # noqa: B027 - optional capability
        """Refuse, with one line, an offer this account cannot launch as configured: a vCPU quota
        too small for the type, an OS image the type does not support, a credit below what the
        provider demands to deploy. Called at plan time for each candidate offer, before anything is
        created; a refused candidate is skipped (the plan says why) and the launch is refused only
        when no candidate is left."""

    def billed_cost(self, run_id: str, instance_ids: list[str], start: float, end: float) -> BilledCost:
        """The provider's own figure for what the run's instances cost between `start` and `end`
        (epoch seconds), where its API says so; ask again later while `complete` is False."""
        return BilledCost(None, f"{self.name or 'this provider'}: no billing figure in its API")

    def inventory(self) -> list[Billable]:
        """Everything on the account that bills now, tagged gpurun or not: instances, pods,
        volumes, disks. Read-only."""
        return []

    def recall_created(self, instance_id: str, created_epoch: float) -> None:  # noqa: B027 - optional
        """Learn when an instance of a run was created (from the ledger), for a provider object that
        did not create it: a `gpurun teardown` or a guard in another process. AWS reads a NotFound
        soon after a create as "not known yet" (providers/aws/consistency.py); others need nothing."""

    def list_run(self, run_id: str) -> list[Instance]:
        """The run's live instances (the zero-match check of a proof)."""
        return [i for i in self.list_owned() if i.run_id == run_id and not i.gone]


def split_gpus(gpu: str | None) -> list[str]:
    """`--gpu "H100,A100 80GB"` -> ["H100", "A100 80GB"]: the user's GPUs in the order preferred."""
    return [g.strip() for g in (gpu or "").split(",") if g.strip()]


def _matches(offer: Offer, gpu: str) -> bool:
    want = gpu.lower().replace(" ", "")
    return want in offer.gpu.lower().replace(" ", "") or want == offer.instance_type.lower()


def rank_offers(offers: list[Offer], gpu: str | None) -> list[Offer]:
    """The offers a launch may try, in order (offer fallback), or a clear error when there is none.

    For each GPU of `--gpu A,B` in the user's order: its available offers (cloud types, regions,
    locations), cheapest first. Without --gpu: the cheapest available offer, then the same GPU in
    its other variants; another GPU is never chosen for the user."""
    available: list[Offer] = []
    for o in offers:  # one query per GPU asked: an offer matching two of them comes twice
        if o.available and o not in available:
            available.append(o)
    wanted = split_gpus(gpu)
    ranked: list[Offer] = []
    if wanted:
        for g in wanted:
            ranked += sorted((o for o in available if _matches(o, g) and o not in ranked),
                             key=lambda o: o.total_usd_per_hour)
    elif available:
        best = min(available, key=lambda o: o.total_usd_per_hour)
        ranked = sorted((o for o in available if o.gpu == best.gpu and o.gpu_count == best.gpu_count),
                        key=lambda o: o.total_usd_per_hour)
    if not ranked:
        known = sorted({o.gpu for o in offers})
        hint = f"; available: {', '.join(known)}" if known else ""
        raise ProviderError(f"no offer for GPU {gpu!r}{hint} (see `gpurun offers`)")
    return ranked

