"""AWSProvider: the lifecycle calls (offers, create, get, terminate, list, cleanup) on EC2.

The SDK wrapping is api.py's, prices and instance types catalog.py's, the AMI image.py's, and the
VPC / security group / key pair network.py's; this class says which calls a lifecycle step makes
and reads EC2's answers into Instances.
"""

from __future__ import annotations

import getpass
import logging
import re
import shlex
import time
from datetime import datetime, timezone
from functools import cache
from importlib import resources
from typing import Any

from providers.aws.api import (
    CAPACITY_CODES,
    LIVE_STATES,
    PRICE_CODES,
    AWSApi,
    Tolerated,
    as_utc,
    chunks,
    jsonable,
)
from providers.aws.billing import billed_cost as ce_billed_cost
from providers.aws.catalog import (
    DLAMI_SOURCE,
    STATIC_OTHER_REGION_FACTOR,
    STATIC_SAME_PRICE_REGIONS,
    Catalog,
    PriceLookup,
    dlami_supports,
    ebs_usd_per_hour,
    gpu_matches,
    static_gpu_count,
)
from providers.aws.consistency import NOT_FOUND_CODE, Sightings
from providers.aws.consistency import WINDOW_S as CONSISTENCY_WINDOW_S
from providers.aws.image import DEFAULT_AMI_SSM_PARAMETER, ami_from_ssm, describe_image
from providers.aws.inventory import inventory as region_inventory
from providers.aws.network import (
    allow_group_traffic,
    delete_key_pair,
    delete_security_groups,
    ensure_key_pair,
    ensure_security_group,
    find_network,
    resolve_ssh_cidr,
    undo_launch_setup,
)
from providers.aws.placement import delete_placement_group, ensure_placement_group, refused_zone, zone_subnets
from providers.aws.preemption import preempted, spot_request_status
from providers.aws.quota import check_vcpu_quota
from providers.aws.rates import (
    PUBLIC_IPV4_SOURCE,
    PUBLIC_IPV4_USD_PER_HOUR,
    RATES_DATE,
    egress_usd_per_gb,
    gp3_usd_per_gb_month,
    instance_extras,
)
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
)
from providers.common import one_line

log = logging.getLogger("gpurun.providers.aws")

TAG_RUN_ID = "gpurun:run-id"
TAG_OWNER = "gpurun:owner"
TAG_PRICE = "gpurun:usd-per-hour"  # the planned total (compute + gp3 + public IPv4), for sweep to price it later
TAG_GPUS = "gpurun:gpu-count"
# Multi-node runs only: the node's rank (its Name tag is gpurun-<run id>-n<rank> too) and the size.
TAG_NODE_RANK = "gpurun:node-rank"
TAG_NODES = "gpurun:nodes"

DEFAULT_DISK_GB = 100  # the DLAMI's root snapshot is ~75-100 GB; smaller requests are raised to it
DEFAULT_SSH_USER = "ubuntu"
SELF_DESTRUCT_SCRIPT = "aws_self_destruct.sh"  # in providers/scripts/

_STATES = {
    "pending": PENDING,
    "running": RUNNING,
    "stopping": STOPPING,
    "stopped": STOPPED,
    # shutting-down is on its way to terminated, but a proof must wait for `terminated` itself.
    "shutting-down": STOPPING,
    "terminated": TERMINATED,
}

# EC2 StateReason codes of an instance that went from pending to shutting-down/terminated without
# ever booting (the StateReason shape's documentation in botocore's ec2 service model): the launch
# will not come up, so the controller need not wait out the boot window.
NEVER_BOOTS = {
    "Server.InsufficientInstanceCapacity": "EC2 had no capacity for it after all",
    "Server.InternalError": "an EC2 internal error ended it during launch",
    "Client.InternalError": "a client error (e.g. an EBS/KMS problem) ended it during launch",
    "Client.VolumeLimitExceeded": "the account's EBS volume or storage limit was exceeded",
    "Client.InvalidSnapshot.NotFound": "the AMI's root snapshot was not found",
}

_REASON_TIME_RE = re.compile(r"\((\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}) (?:UTC|GMT)\)")


def termination_time(desc: dict[str, Any]) -> datetime | None:
    """When a terminated (or stopped) instance went down, from its StateTransitionReason.

    Real EC2 writes "User initiated (2026-11-21 20:36:39 GMT)", moto "... UTC)"; both have whole
    seconds. None when the instance is still up or the reason carries no time (e.g. a shutdown
    initiated on the instance: "Client.InstanceInitiatedShutdown"); callers then use their own
    recorded time, or now.
    """
    if (desc.get("State") or {}).get("Name") not in ("terminated", "shutting-down", "stopped", "stopping"):
        return None
    match = _REASON_TIME_RE.search(desc.get("StateTransitionReason") or "")
    if not match:
        return None
    return datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)


def elapsed_seconds(desc: dict[str, Any], *, ended_at: datetime | float | None = None,
                    now: float | None = None) -> float | None:
    """Seconds an instance ran, from LaunchTime to its end (given, parsed from the
    StateTransitionReason, or now while it runs); None without a LaunchTime.

    What that costs is the billing rule's business (budgets.yaml, applied by the controller).
    """
    launched = as_utc(desc.get("LaunchTime"))
    if launched is None:
        return None
    if isinstance(ended_at, (int, float)):
        end = float(ended_at)
    else:
        end_dt = as_utc(ended_at) or termination_time(desc)
        end = end_dt.timestamp() if end_dt else (time.time() if now is None else now)
    return max(0.0, end - launched.timestamp())


@cache
def self_destruct_script() -> str:
    return resources.files("providers").joinpath("scripts").joinpath(SELF_DESTRUCT_SCRIPT).read_text(encoding="utf-8")


def _tags(desc: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in desc.get("Tags") or []}


def _node_rank(desc: dict[str, Any]) -> int:
    """A gpurun instance's node rank (its tag; 0 for a single-node run's, which has none)."""
    try:
        return int(_tags(desc).get(TAG_NODE_RANK) or 0)
    except ValueError:
        return 0


def _subnet_of(desc: dict[str, Any]) -> str | None:
    return desc.get("SubnetId") or next(
        (nic.get("SubnetId") for nic in desc.get("NetworkInterfaces") or [] if nic.get("SubnetId")), None)


def _group_ids(desc: dict[str, Any]) -> list[str]:
    # moto leaves the top-level list empty when launched with NetworkInterfaces; the NICs have them.
    groups = list(desc.get("SecurityGroups") or [])
    groups += [g for nic in desc.get("NetworkInterfaces") or [] for g in nic.get("Groups") or []]
    return sorted({str(g["GroupId"]) for g in groups if g.get("GroupId")})


def _aws_message(refusal: Tolerated | None) -> str:
    # botocore's text is "An error occurred (Code) when calling the X operation: <AWS's message>".
    text = refusal.message if refusal else ""
    return one_line(text.split(" operation: ", 1)[-1], 160)


def boot_failure(desc: dict[str, Any]) -> str:
    """One line when EC2 ended the instance during launch (NEVER_BOOTS), else ""."""
    state = (desc.get("State") or {}).get("Name")
    reason = desc.get("StateReason") or {}
    code = str(reason.get("Code") or "")
    if state not in ("shutting-down", "terminated") or code not in NEVER_BOOTS:
        return ""
    return f"EC2 ended {desc.get('InstanceId')} during launch ({code}): {NEVER_BOOTS[code]}"


def _local_user() -> str:
    try:
        return getpass.getuser() or "unknown"
    except (KeyError, OSError):  # no login name in some containers
        return "unknown"


class AWSProvider(Provider):
    """EC2 on-demand or spot GPU instances from the Deep Learning AMI.

    What `create` makes for a run, all named `gpurun-<run id>` and tagged `gpurun:run-id`: an
    imported key pair, a security group opening TCP 22 only, and one instance launched with
    InstanceInitiatedShutdownBehavior=terminate (so a shutdown on the box ends the billing) and a
    gp3 root volume that is deleted with it. `cleanup` removes the key pair, the group and any
    volume of the run left unattached.

    Options (all keyword): region (else boto3's AWS_DEFAULT_REGION / profile), image (an AMI id,
    overrides the SSM lookup), ami_ssm_parameter (SSM name that holds the AMI id), disk_gb (floor
    of the gp3 root volume), ssh_cidr (who may reach port 22: a CIDR or address, "auto" for this
    machine's public address, default 0.0.0.0/0), price_lookup (callable(type, region) -> USD/hour
    or None; default: GPURUN_AWS_PRICES if set, else the AWS Pricing API), ssh_user, subnet_id (else
    the default VPC), profile (a named AWS profile), sg_delete_timeout_s (how long cleanup waits for
    the group), consistency_window_s (how long after a create or terminate EC2's NotFound is taken as
    "not known yet": providers/aws/consistency.py).
    """

    # Cost Explorer data arrives hours late (and each request costs 0.01 USD): reconcile later.
    billing_lag_s = 24 * 3600.0
    name = "aws"

    def __init__(
        self,
        *,
        region: str | None = None,
        image: str | None = None,
        ami_ssm_parameter: str | None = None,
        disk_gb: int | None = None,
        ssh_cidr: str | None = None,
        price_lookup: PriceLookup | None = None,
        ssh_user: str = DEFAULT_SSH_USER,
        subnet_id: str | None = None,
        profile: str | None = None,
        sg_delete_timeout_s: float = 300.0,
        consistency_window_s: float = CONSISTENCY_WINDOW_S,
        **_ignored: Any,
    ) -> None:
        self.api = AWSApi(region=region, profile=profile)
        self.catalog = Catalog(self.api, price_lookup)
        self.image = image
        self.ami_ssm_parameter = ami_ssm_parameter or DEFAULT_AMI_SSM_PARAMETER
        self.disk_gb = int(disk_gb) if disk_gb else DEFAULT_DISK_GB
        self.ssh_cidr = ssh_cidr
        self.ssh_user = ssh_user
        self.subnet_id = subnet_id
        self.profile = profile
        self.sg_delete_timeout_s = float(sg_delete_timeout_s)
        self._plan_nodes = 1  # set by check_nodes at plan time
        # When this object created / asked to terminate each instance: EC2's NotFound within a window
        # of either is "not known yet" (providers/aws/consistency.py).
        self.sightings = Sightings(window_s=float(consistency_window_s))
        self._node0_subnets: dict[str, str] = {}  # run id -> the subnet node 0 was launched into
        if _ignored:
            log.warning("aws: ignoring unknown options %s", sorted(_ignored))

    def recall_created(self, instance_id: str, created_epoch: float) -> None:
        """A teardown or guard in another process: a NotFound within the window after that create is
        still "not known yet" (providers/aws/consistency.py), not "gone"."""
        self.sightings.note_created_ago(instance_id, time.time() - created_epoch)

    @property
    def region(self) -> str:
        return self.api.region

    @property
    def ec2(self) -> Any:
        return self.api.ec2

    # ---- credentials and account

    def check_credentials(self) -> None:
        if self.api.session().get_credentials() is None:
            raise CredentialsError(
                "AWS credentials not found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE "
                "(`aws configure`)"
            )
        _ = self.region
        self.api.call("the credentials check (sts get-caller-identity)", self.api.client("sts").get_caller_identity)

    def account(self) -> dict[str, Any]:
        ident = self.api.call("sts get-caller-identity", self.api.client("sts").get_caller_identity)
        return {"account": ident.get("Account"), "arn": ident.get("Arn"), "region": self.region}

    # ---- offers

    def offers(self, gpu: str | None = None, count: int = 1, spot: bool = False) -> list[Offer]:
        region = self.region
        if self.image:  # an explicit AMI (--image) is checked when planning: a typo must create nothing
            describe_image(self.api, self.image)
        types = self.catalog.gpu_types()
        if not self._custom_image():
            # Never offer what the default image cannot boot (DLAMI_SOURCE lists the families).
            types = {t: s for t, s in types.items() if dlami_supports(t)}
        wanted = [s for s in types.values() if gpu is None or gpu_matches(gpu, s)]
        if gpu and not wanted:
            known = ", ".join(sorted({s.gpu for s in types.values()})) or "none"
            raise ProviderError(f"AWS has no instance type with GPU {gpu!r} in {region} (GPUs there: {known})")
        matching = [s for s in wanted if s.gpu_count == count]
        if gpu and not matching:
            counts = ", ".join(str(c) for c in sorted({s.gpu_count for s in wanted}))
            raise ProviderError(f"AWS has no {count}x {gpu!r} instance in {region}: it comes with {counts} GPUs")
        # Besides compute, every instance bills its gp3 root volume and its public IPv4 address, each
        # at the region's own rate (providers/aws/rates.py: dated, sourced tables).
        extras = instance_extras(self.disk_gb, region)
        gp3_rate, gp3_source = gp3_usd_per_gb_month(region)
        egress, egress_source = egress_usd_per_gb(region)
        spot_prices = self.catalog.spot_prices([s.instance_type for s in matching]) if spot and matching else {}
        result: list[Offer] = []
        for s in sorted(matching, key=lambda x: x.instance_type):
            on_demand = self.catalog.on_demand_price(s.instance_type)
            details: dict[str, Any] = {
                "vcpus": s.vcpus, "memory_gb": s.memory_gb, "gpu_memory_gb": s.gpu_memory_gb,
                "root_volume_gb": self.disk_gb, "ebs": f"gp3 at {gp3_rate} USD/GB-month ({gp3_source})",
                "public_ipv4": f"{PUBLIC_IPV4_USD_PER_HOUR} USD/h ({PUBLIC_IPV4_SOURCE}, {RATES_DATE})",
            }
            if on_demand is not None:
                details["on_demand_usd_per_hour"] = on_demand[0]
                if on_demand[1] != "live" and region not in STATIC_SAME_PRICE_REGIONS:
                    details["static_note"] = f"us-east-1 price x{STATIC_OTHER_REGION_FACTOR} (upper bound)"
            if spot:
                zones = spot_prices.get(s.instance_type)
                if not zones:
                    continue  # no spot market for it here
                # The zone is AWS's choice at launch: plan with the dearest one.
                price, source = max(zones.values()), "live"
                details["spot_usd_per_hour_by_zone"] = zones
            elif on_demand is None:
                log.info("aws: %s has no known price; not offered", s.instance_type)
                continue
            else:
                price, source = on_demand
            # What the plan shows line by line: compute, then what extra_usd_per_hour sums.
            details["price_lines"] = [("compute", price), *extras]
            # billing: the default rule until the plan sets the provider's from budgets.yaml.
            result.append(Offer(
                provider=self.name, gpu=s.gpu, gpu_count=s.gpu_count, instance_type=s.instance_type,
                usd_per_hour=price, extra_usd_per_hour=round(sum(usd for _, usd in extras), 6),
                price_source=source, spot=spot, region=region, available=True, memory_gb=s.gpu_memory_gb,
                details=details, egress_usd_per_gb=egress, egress_source=egress_source,
            ))
        return result

    # ---- plan-time checks

    def _custom_image(self, spec: InstanceSpec | None = None) -> bool:
        """Whether the user chose the AMI (image=, --image, ami_ssm_parameter=): then the type
        support is theirs to know; gpurun only vouches for the default DLAMI's list."""
        return bool((spec and spec.image) or self.image or self.ami_ssm_parameter != DEFAULT_AMI_SSM_PARAMETER)

    def image_facts(self, image: str | None, offer: Offer) -> ImageFacts:
        """The default Deep Learning AMI (PyTorch) keeps torch in /opt/pytorch; an AMI of the user's may not."""
        if image or self._custom_image():
            return ImageFacts(image or self.image or f"the AMI of {self.ami_ssm_parameter}", TorchOnImage.UNKNOWN)
        return ImageFacts("the Deep Learning AMI (PyTorch)", TorchOnImage.CARRIED)

    def _check_image_supports(self, instance_type: str, spec: InstanceSpec | None = None) -> None:
        if self._custom_image(spec) or dlami_supports(instance_type):
            return
        raise ProviderError(
            f"{instance_type}: the default Deep Learning AMI (PyTorch, Ubuntu 24.04) does not support the "
            f"{instance_type.split('.')[0]} family ({DLAMI_SOURCE}): pick another type, or pass image=ami-... "
            "of an AMI that boots it"
        )

    def check_launchable(self, offer: Offer) -> None:
        """The default image must support the type, and the account's G/P vCPU quota (Service
        Quotas, read where the credentials may) must leave room for it; each refusal one line."""
        self._check_image_supports(offer.instance_type)
        vcpus = offer.details.get("vcpus")
        if not vcpus:
            spec = self.catalog.gpu_types().get(offer.instance_type)
            vcpus = spec.vcpus if spec else None
        # The plan asks check_nodes(N) first: N instances of the type must fit in the quota.
        check_vcpu_quota(self.api, offer.instance_type, int(vcpus or 0), offer.spot, count=self._plan_nodes)

    def check_nodes(self, nodes: int) -> None:
        """Multi-node runs are supported: `create` puts every node of a run in one subnet, in a
        cluster placement group of the run, behind a security group that lets its nodes reach one
        another (see `create`). EFA (Elastic Fabric Adapter) is not set up: NCCL talks TCP sockets.
        The node count is kept for check_launchable's vCPU quota check (N instances of the type)."""
        self._plan_nodes = max(1, int(nodes))

    # ---- create

    def _find_live(self, run_id: str, *, shutting_down: bool = False) -> list[dict[str, Any]]:
        states = [*LIVE_STATES, "shutting-down"] if shutting_down else LIVE_STATES
        found: list[dict[str, Any]] = []
        for res in self.api.paginate(
            "describe-instances", "describe_instances", "Reservations",
            Filters=[{"Name": f"tag:{TAG_RUN_ID}", "Values": [run_id]},
                     {"Name": "instance-state-name", "Values": states}],
        ):
            found.extend(res.get("Instances") or [])
        return found

    def _resolve_image(self, spec: InstanceSpec) -> dict[str, Any]:
        ami = spec.image or self.image or ami_from_ssm(self.api, self.ami_ssm_parameter)
        return describe_image(self.api, ami)

    def create(self, spec: InstanceSpec) -> Instance:
        run_id = spec.run_id
        if not RUN_ID_RE.match(run_id or ""):
            raise ProviderError(f"run id {run_id!r} is not valid (lowercase letters, digits and '-', 3-41 chars)")
        # Idempotent by run id and node rank: a live instance tagged with them is the answer.
        # (ClientToken below covers the describe lag of real EC2; moto ignores ClientToken, this
        # lookup does not.)
        live = self._find_live(run_id)
        existing = [d for d in live if _node_rank(d) == spec.node_rank]
        if existing:
            log.info("aws: run %s already has instance %s (%s)", run_id, existing[0]["InstanceId"], spec.name)
            return self._to_instance(existing[0])
        multi = spec.nodes > 1 or spec.node_rank > 0
        # Node 1.. of a multi-node run go where node 0 went: its subnet (so its zone and VPC).
        node0_subnet = self._node0_subnet(run_id, live) if spec.node_rank > 0 else None

        # Everything that can be refused is checked before anything is made.
        if not spec.ssh_public_key.strip():
            raise ProviderError("AWS needs the run's SSH public key (spec.ssh_public_key is empty)")
        offer = spec.offer
        image = self._resolve_image(spec)
        type_spec = self.catalog.check_instance_type(offer.instance_type, image)
        self._check_image_supports(offer.instance_type, spec)
        cidr = resolve_ssh_cidr(self.ssh_cidr)
        vpc_id, subnet_id = find_network(self.api, node0_subnet or self.subnet_id)
        root_device = image.get("RootDeviceName") or "/dev/sda1"
        snapshot_gb = max(
            [int((m.get("Ebs") or {}).get("VolumeSize") or 0)
             for m in image.get("BlockDeviceMappings") or [] if m.get("DeviceName") == root_device] or [0]
        )
        # One volume, deleted with the instance: nothing is left billing after termination.
        disk_gb = max(int(spec.disk_gb or 0), self.disk_gb, snapshot_gb) + max(0, int(spec.volume_gb or 0))
        compute = float(offer.usd_per_hour)
        # The tagged (planned) total: compute + the region's gp3 for the volume made + public IPv4.
        usd_per_hour = round(compute + sum(usd for _, usd in instance_extras(disk_gb, self.region)), 6)
        if disk_gb != self.disk_gb:
            log.info("aws: root volume %d GB (offer priced %d GB)", disk_gb, self.disk_gb)
        gpu_count = offer.gpu_count or (type_spec.gpu_count if type_spec else 0)

        # The key pair, security group and placement group are the run's (gpurun-<run id>), shared by
        # its nodes; the instance and its volume are the node's (gpurun-<run id>-n<rank> for 1..).
        run_name = f"{OWNER_TAG}-{run_id}"
        name = spec.name
        owner = (spec.owner or _local_user())[:256]
        tags = [{"Key": TAG_RUN_ID, "Value": run_id}, {"Key": TAG_OWNER, "Value": owner},
                {"Key": "Name", "Value": run_name}]
        node_tags = [*tags[:2], {"Key": "Name", "Value": name}]
        if multi:
            node_tags += [{"Key": TAG_NODE_RANK, "Value": str(spec.node_rank)},
                          {"Key": TAG_NODES, "Value": str(spec.nodes)}]
        instance_tags = node_tags + [{"Key": TAG_PRICE, "Value": f"{usd_per_hour:.6f}"},
                                     {"Key": TAG_GPUS, "Value": str(gpu_count)}]

        ensure_key_pair(self.api, run_name, spec.ssh_public_key, tags)
        group_id, made_group = ensure_security_group(self.api, run_name, vpc_id, cidr, tags)
        if multi:
            # The nodes reach one another on every port (rendezvous 29500, NCCL / gloo's own ports),
            # nobody else does; and they sit in one cluster placement group ("low network latency,
            # high network throughput" in one zone). EFA is optional and not set up: NCCL uses TCP.
            allow_group_traffic(self.api, group_id)
            ensure_placement_group(self.api, run_name, tags)
        kwargs: dict[str, Any] = {
            "ImageId": image["ImageId"], "InstanceType": offer.instance_type, "MinCount": 1, "MaxCount": 1,
            # Stable across retries of this create (a lost answer never makes a second instance),
            # new for each offer the run tries: EC2 answers a reused token with its first instance.
            "KeyName": run_name, "ClientToken": name if spec.attempt <= 1 else f"{name}-a{spec.attempt}",
            "InstanceInitiatedShutdownBehavior": "terminate",  # a shutdown on the box = terminated
            "BlockDeviceMappings": [{
                "DeviceName": root_device,
                "Ebs": {"VolumeSize": disk_gb, "VolumeType": "gp3", "DeleteOnTermination": True},
            }],
            "TagSpecifications": [
                {"ResourceType": "instance", "Tags": instance_tags},
                {"ResourceType": "volume", "Tags": node_tags},
            ],
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
        }
        if multi:  # RunInstances Placement.GroupName (botocore's ec2 service model, Placement)
            kwargs["Placement"] = {"GroupName": run_name}
        if subnet_id:
            kwargs["NetworkInterfaces"] = [{
                "DeviceIndex": 0, "SubnetId": subnet_id, "Groups": [group_id], "AssociatePublicIpAddress": True,
            }]
        else:
            kwargs["SecurityGroupIds"] = [group_id]
        if offer.spot:
            # No MaxPrice: botocore's ec2 model (SpotMarketOptions.MaxPrice) says "We do not recommend
            # using this parameter because it can lead to increased interruptions. If you do not
            # specify this parameter, you will pay the current Spot price", and AWS then caps it at
            # the on-demand price. The dollar cap is gpurun's to keep (the guard's stop time), not
            # EC2's: a MaxPrice at today's spot price only had the instance reclaimed at the first rise.
            kwargs["InstanceMarketOptions"] = {
                "MarketType": "spot",
                "SpotOptions": {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"},
            }
        try:
            resp = self._run_in_some_zone(kwargs, offer, vpc_id, pinned=bool(subnet_id),
                                          node0_subnet=node0_subnet)
        except ProviderError:
            if spec.node_rank == 0:  # node 1..: the run's key pair and group serve node 0 too
                undo_launch_setup(self.api, run_name, group_id if made_group else None)
            raise
        desc = resp["Instances"][0]
        if desc.get("State", {}).get("Name") in ("shutting-down", "terminated"):
            # Real EC2 answers a reused ClientToken with the old instance, even a terminated one.
            raise ProviderError(f"run {run_id} already had instance {desc['InstanceId']}, now terminated: start a new run")
        self.sightings.note_created(desc["InstanceId"])
        if spec.node_rank == 0 and multi:  # the other nodes go here, even before a listing shows node 0
            self._node0_subnets[run_id] = _subnet_of(desc) or ""
        log.info("aws: created %s (%s) for run %s", desc["InstanceId"], offer.instance_type, run_id)
        instance = self._to_instance(desc, usd_per_hour=usd_per_hour)
        instance.raw.update({"ssh_cidr": cidr, "root_volume_gb": disk_gb, "image_name": image.get("Name")})
        return instance

    def _node0_subnet(self, run_id: str, live: list[dict[str, Any]]) -> str:
        """The subnet of the run's node 0 (found by the run's tag), where its other nodes go."""
        node0 = [d for d in live if _node_rank(d) == 0]
        # A node 0 this object just made may not be in the tag listing yet (EC2's eventual
        # consistency, providers/aws/consistency.py): its RunInstances answer said where it went.
        subnet = (_subnet_of(node0[0]) if node0 else None) or self._node0_subnets.get(run_id)
        if not subnet:
            raise ProviderError(f"run {run_id}: node 0 has no live instance with a subnet in {self.region}: "
                                "create node 0 first (the other nodes go into its subnet)")
        return subnet

    def _run_in_some_zone(self, kwargs: dict[str, Any], offer: Offer, vpc_id: str, *, pinned: bool,
                          node0_subnet: str | None = None) -> Any:
        """RunInstances where AWS picks the zone, then, while zones refuse for capacity
        (CAPACITY_CODES), in the default subnet of each other zone that offers the type.

        A refused RunInstances makes nothing, so nothing of a refused attempt bills. A pinned
        subnet (the subnet_id option, or node 0's for the other nodes of a multi-node run) is one
        zone: no other is tried. All refused: NoCapacityError.
        """
        what = f"run-instances ({offer.instance_type})"
        attempt, zone = kwargs, "the zone AWS chose"
        tried: list[str] = []
        last: Tolerated | None = None
        candidates: list[tuple[str, str]] | None = None
        while True:
            got = self.api.call(what, self.ec2.run_instances, tolerate=(*CAPACITY_CODES, *PRICE_CODES), **attempt)
            if not isinstance(got, Tolerated):
                return got
            if got.code in PRICE_CODES:
                # A spot request refused for its price makes nothing: another offer may be had.
                raise NoCapacityError(
                    f"AWS refused spot {offer.instance_type} in {self.region} for its price ({got.code}: "
                    f"{_aws_message(got)}): another offer (type, region, or on-demand) may be had")
            last = got
            tried.append(refused_zone(got.message) or zone)
            log.info("aws: %s refused in %s (%s)", offer.instance_type, tried[-1], got.code)
            if pinned:
                break
            if candidates is None:
                candidates = zone_subnets(self.api, vpc_id, offer.instance_type)
            left = [(i, z, sid) for i, (z, sid) in enumerate(candidates) if z not in tried]
            if not left:
                break
            i, zone, subnet = left[0]
            # One token per zone: EC2 answers a reused ClientToken with other parameters with
            # IdempotentParameterMismatch.
            attempt = {**kwargs, "SubnetId": subnet, "ClientToken": f"{kwargs['ClientToken']}-z{i}"}
        market = "spot" if offer.spot else "on-demand"
        if node0_subnet:
            raise NoCapacityError(
                f"AWS has no {market} capacity for another {offer.instance_type} beside node 0 "
                f"(subnet {node0_subnet}, {', '.join(tried)}; {last.code if last else '?'}: {_aws_message(last)}): "
                "every node of a run must share its zone and placement group; another offer may have room"
            )
        hint = "the subnet_id option pins one zone: unset it to try the others" if pinned else (
            "another offer (type or region) may have it")
        raise NoCapacityError(
            f"AWS has no {market} capacity for {offer.instance_type} in {self.region}: "
            f"{', '.join(tried)} refused ({last.code if last else '?'}: {_aws_message(last)}); "
            f"{hint}"
        )

    # ---- read / terminate / list

    def _to_instance(self, desc: dict[str, Any], *, usd_per_hour: float | None = None,
                     volume_gb: dict[str, int] | None = None,
                     spot_request: dict[str, Any] | None = None) -> Instance:
        tags = _tags(desc)
        itype = desc.get("InstanceType", "")
        state_name = (desc.get("State") or {}).get("Name", "")
        if usd_per_hour is None:
            usd_per_hour = self._hourly_for(desc, tags, volume_gb)
        host = desc.get("PublicDnsName") or desc.get("PublicIpAddress")
        launched = as_utc(desc.get("LaunchTime"))
        ended = termination_time(desc)
        gpu_count = int(tags.get(TAG_GPUS) or static_gpu_count(itype))
        raw = {
            "instance_id": desc.get("InstanceId"),
            "state_name": state_name,
            "state_transition_reason": desc.get("StateTransitionReason") or "",
            "state_reason": jsonable(desc.get("StateReason") or {}),
            "launch_time": launched.isoformat() if launched else None,
            "terminated_at": ended.isoformat() if ended and state_name in ("terminated", "shutting-down") else None,
            # Launch to termination (or to now); the controller bills it under budgets.yaml's rule.
            "elapsed_s": elapsed_seconds(desc),
            "public_dns": desc.get("PublicDnsName") or "",
            "public_ip": desc.get("PublicIpAddress") or "",
            "private_ip": desc.get("PrivateIpAddress") or "",
            "availability_zone": (desc.get("Placement") or {}).get("AvailabilityZone", ""),
            "placement_group": (desc.get("Placement") or {}).get("GroupName") or "",
            "subnet_id": _subnet_of(desc) or "",
            "lifecycle": desc.get("InstanceLifecycle") or "on-demand",
            "image_id": desc.get("ImageId"),
            "key_name": desc.get("KeyName"),
            "security_groups": _group_ids(desc),
            "volumes": [(m.get("Ebs") or {}).get("VolumeId") for m in desc.get("BlockDeviceMappings") or []],
            "tags": tags,
            "region": self.region,
        }
        if spot_request is not None:
            raw["spot_request_status"] = jsonable(spot_request)
        boot = boot_failure(desc)
        return Instance(
            id=desc["InstanceId"], provider=self.name, state=_STATES.get(state_name, PENDING),
            run_id=tags.get(TAG_RUN_ID), name=tags.get("Name", ""), instance_type=itype, gpu_count=gpu_count,
            created_at=launched.timestamp() if launched else None, usd_per_hour=usd_per_hour,
            ssh=SSHEndpoint(host, 22, self.ssh_user) if host and state_name in ("pending", "running") else None,
            # The VPC address (DescribeInstances PrivateIpAddress): what the other nodes of a
            # multi-node run reach this one at, inside the run's security group.
            private_ip=desc.get("PrivateIpAddress") or "",
            raw=raw, boot_failure=boot,
            # A launch EC2 ended before it booted is a boot failure, not a preemption.
            preempted="" if boot else preempted(desc, spot_request),
        )

    def _hourly_for(self, desc: dict[str, Any], tags: dict[str, str],
                    volume_gb: dict[str, int] | None) -> float | None:
        """What an instance costs per hour: the price tagged at create, else list price + its EBS
        + its public IPv4 address."""
        try:
            if tags.get(TAG_PRICE):
                return float(tags[TAG_PRICE])
        except ValueError:
            pass
        priced = self.catalog.on_demand_price(desc.get("InstanceType", ""))
        if priced is None:
            return None
        sizes = volume_gb or {}
        ebs_gb = sum(sizes.get((m.get("Ebs") or {}).get("VolumeId", ""), 0) for m in desc.get("BlockDeviceMappings") or [])
        ipv4 = PUBLIC_IPV4_USD_PER_HOUR if desc.get("PublicIpAddress") else 0.0
        return round(priced[0] + ebs_usd_per_hour(ebs_gb, self.region) + ipv4, 6)

    def _describe(self, instance_id: str) -> dict[str, Any] | None:
        """DescribeInstances of one id; None on InvalidInstanceID.NotFound (or an empty answer)."""
        got = self.api.call(
            "describe-instances", self.ec2.describe_instances, InstanceIds=[instance_id],
            tolerate=(NOT_FOUND_CODE,),
        )
        descs = [] if isinstance(got, Tolerated) else [
            i for r in got.get("Reservations") or [] for i in r.get("Instances") or []
        ]
        return descs[0] if descs else None

    def get(self, instance_id: str) -> Instance:
        desc = self._describe(instance_id)
        # NotFound right after our create or terminate: EC2 may not know yet (consistency.py). Ask
        # again with backoff; if it still says NotFound, the instance is not known yet, not gone.
        waits = iter(self.sightings.backoff_s if self.sightings.unsettled(instance_id) else ())
        while desc is None and (wait := next(waits, None)) is not None:
            self.sightings.sleep(wait)
            desc = self._describe(instance_id)
        if desc is None:
            return self._not_found(instance_id)
        # An ended spot instance whose StateReason is not conclusive: its spot request's status says.
        return self._to_instance(desc, spot_request=spot_request_status(self.api, desc))

    def _not_found(self, instance_id: str) -> Instance:
        """What a NotFound means: `not_found`, except within the window after this object created
        the instance (pending) or asked for its termination (stopping): not known yet, not gone."""
        which = self.sightings.unsettled(instance_id)
        if not which:
            return Instance(id=instance_id, provider=self.name, state=NOT_FOUND,
                            raw={"describe": NOT_FOUND_CODE, "region": self.region})
        return Instance(
            id=instance_id, provider=self.name, state=PENDING if which == "create" else STOPPING,
            raw={"describe": NOT_FOUND_CODE, "not_known_yet": f"{NOT_FOUND_CODE} {self.sightings.age_s(instance_id)} s "
                 f"after the {which} (EC2 eventual consistency): not known yet, not taken as gone", "region": self.region},
        )

    def terminate(self, instance_id: str) -> dict[str, Any]:
        requested_at = datetime.now(timezone.utc).isoformat()
        resp = self._terminate_call(instance_id)
        # Right after our create, EC2 may answer NotFound for an instance that runs (consistency.py):
        # ask again with backoff; if it still does, nothing was terminated and nothing is "gone".
        waits = iter(self.sightings.backoff_s if self.sightings.created_recently(instance_id) else ())
        while isinstance(resp, Tolerated) and (wait := next(waits, None)) is not None:
            self.sightings.sleep(wait)
            resp = self._terminate_call(instance_id)
        if isinstance(resp, Tolerated):
            not_yet = self.sightings.created_recently(instance_id)
            return {
                "instance_id": instance_id, "requested_at": requested_at, "already_gone": not not_yet,
                "not_known_yet": not_yet, "error": {"code": resp.code, "message": resp.message},
            }
        self.sightings.note_terminate(instance_id)
        out = jsonable({k: v for k, v in resp.items() if k != "ResponseMetadata"})
        out.update({
            "instance_id": instance_id, "requested_at": requested_at,
            "request_id": resp.get("ResponseMetadata", {}).get("RequestId"),
            "already_gone": any(
                (i.get("PreviousState") or {}).get("Name") == "terminated"
                for i in resp.get("TerminatingInstances") or []
            ),
        })
        return out

    def _terminate_call(self, instance_id: str) -> Any:
        return self.api.call(
            "terminate-instances", self.ec2.terminate_instances, InstanceIds=[instance_id],
            tolerate=(NOT_FOUND_CODE,),
        )

    def list_owned(self) -> list[Instance]:
        descs = [
            i
            for res in self.api.paginate(
                "describe-instances", "describe_instances", "Reservations",
                Filters=[{"Name": "tag-key", "Values": [TAG_RUN_ID]}],
            )
            for i in res.get("Instances") or []
        ]
        # Volume sizes for the ones that were not priced at create (made outside gpurun).
        volume_ids = [
            (m.get("Ebs") or {}).get("VolumeId")
            for d in descs if not _tags(d).get(TAG_PRICE)
            for m in d.get("BlockDeviceMappings") or [] if (m.get("Ebs") or {}).get("VolumeId")
        ]
        sizes: dict[str, int] = {}
        for chunk in chunks(volume_ids, 200):
            for vol in self.api.paginate("describe-volumes", "describe_volumes", "Volumes", VolumeIds=chunk):
                sizes[vol["VolumeId"]] = int(vol.get("Size") or 0)
        return [self._to_instance(d, volume_gb=sizes) for d in descs]

    def list_run(self, run_id: str) -> list[Instance]:
        # Server-side filter; shutting-down still counts: only `terminated` is gone.
        return [self._to_instance(d) for d in self._find_live(run_id, shutting_down=True)]

    # ---- reconciliation and audit (billing.py, inventory.py)

    def billed_cost(self, run_id: str, instance_ids: list[str], start: float, end: float) -> BilledCost:
        return ce_billed_cost(self.api, run_id, instance_ids, start, end)

    def inventory(self) -> list[Billable]:
        return region_inventory(self.api, self.catalog)

    def spot_notice_command(self, instance: Instance, root: str) -> str | None:
        """providers/scripts/aws_spot_notice.sh: EC2's two-minute interruption notice (instance
        metadata) makes the job checkpoint and stop, and leaves ROOT/spot.notice for the controller."""
        script = resources.files("providers").joinpath("scripts").joinpath("aws_spot_notice.sh").read_text(
            encoding="utf-8")
        return f"sh -c {shlex.quote(script)} gpurun-spot-notice {shlex.quote(root)} job USR1"

    def self_destruct_command(self, instance: Instance) -> str:
        # providers/scripts/aws_self_destruct.sh, passed whole to `sh -c`: no file of its own to go
        # missing on the instance, and nothing in it depends on the run.
        return f"sh -c {shlex.quote(self_destruct_script())} gpurun-self-destruct"

    # ---- cleanup

    def cleanup(self, run_id: str) -> list[str]:
        """Delete the run's key pair, left-over volumes, security group (only once no instance uses
        it: it waits, bounded by sg_delete_timeout_s, for termination to finish) and, for a
        multi-node run, its placement group (once its instances are gone: the same bound)."""
        name = f"{OWNER_TAG}-{run_id}"
        gone = delete_key_pair(self.api, name)
        # A data volume that outlived its instance still bills.
        for vol in self.api.paginate(
            "describe-volumes", "describe_volumes", "Volumes",
            Filters=[{"Name": f"tag:{TAG_RUN_ID}", "Values": [run_id]}, {"Name": "status", "Values": ["available"]}],
        ):
            self.api.call("delete-volume", self.ec2.delete_volume, VolumeId=vol["VolumeId"])
            gone.append(f"volume {vol['VolumeId']}")
        gone += delete_security_groups(self.api, name, self.sg_delete_timeout_s)
        # After the group: by then every instance that used it has terminated (the group's wait).
        return gone + delete_placement_group(self.api, name, self.sg_delete_timeout_s)
