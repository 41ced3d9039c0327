"""RunPod pods' lifecycle: create (idempotent by name), get, terminate, list, stop, money checks.

How a call reaches the API is api.py's job, what can be rented is catalog.py's, and the watchdog's
way out is self_destruct.py's; this class says which calls a lifecycle step makes and reads the
answers into Instances.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from providers.base import (
    NOT_FOUND,
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
)
from providers.runpod.api import (
    ENV_KEY_RE,
    GPU_ID_RE,
    IMAGE_RE,
    MOUNT_PATH_RE,
    NAME_RE,
    CallPolicy,
    RunPodClient,
    check_pod_id,
    check_string,
    is_gone_error,
    to_float,
)
from providers.runpod.billing import billed_cost as billing_history_cost
from providers.runpod.catalog import (
    MIN_VCPU_PER_GPU,
    PROVIDER_NAME,
    check_cloud_type,
    fetch_offers,
    host_minimums,
    storage_usd_per_hour,
)
from providers.runpod.inventory import inventory as account_inventory
from providers.runpod.preemption import preemption_reason
from providers.runpod.self_destruct import api_base_default, pid1_environ_default, self_destruct_shell
from providers.runpod.spot import rent_interruptable
from providers.runpod.ssh_start import check_ssh_setup, docker_args_for

log = logging.getLogger("gpurun.providers.runpod")

NAME_PREFIX = "gpurun-"
# Where the run's SSH public key travels in the pod's env (see `_validated_env`).
SSH_KEY_ENV = ("PUBLIC_KEY", "SSH_PUBLIC_KEY")
DEFAULT_IMAGE = "runpod/pytorch:2.4.0-py3.11-cuda12.4.1-devel-ubuntu22.04"
BILLING_DOCS = "https://docs.runpod.io/accounts-billing/billing"
_API_BASE_RE = re.compile(r"^https?://[A-Za-z0-9.:\[\]_-]+(/[A-Za-z0-9._/-]*)?$")


def run_id_from_name(name: str | None) -> str | None:
    """`gpurun-<run id>` -> run id, or None for a pod gpurun did not name."""
    if not name or not name.startswith(NAME_PREFIX):
        return None
    run_id = name[len(NAME_PREFIX):]
    return run_id if RUN_ID_RE.match(run_id) else None


def endpoint_from_runtime(runtime: dict[str, Any] | None) -> SSHEndpoint | None:
    """The public mapping of container port 22; a private-only one is unreachable from here."""
    for p in (runtime or {}).get("ports") or []:
        if p.get("privatePort") == 22 and p.get("isIpPublic") and p.get("ip") and p.get("publicPort"):
            return SSHEndpoint(host=str(p["ip"]), port=int(p["publicPort"]), user="root")
    return None


def pod_state(pod: dict[str, Any]) -> str:
    desired = str(pod.get("desiredStatus") or "").upper()
    runtime = pod.get("runtime")
    if desired == "TERMINATED":
        return TERMINATED
    if desired == "RUNNING":
        return RUNNING if runtime else PENDING  # runtime is null until the container is up
    if desired in ("EXITED", "PAUSED", "DEAD", "STOPPED"):
        return STOPPING if runtime else STOPPED  # stopped pods still pay for their volume
    return PENDING  # CREATED, RESTARTING, anything new: not gone, so teardown still acts on it


class RunPodProvider(Provider):
    """RunPod pods. Options (all keyword, all optional):

    api_key              instead of RUNPOD_API_KEY / ~/.runpod/config.toml
    config_path          the SDK's credentials file (default ~/.runpod/config.toml)
    profile              section of that file (default "default")
    image                container image (default: a RunPod PyTorch 2.4 / CUDA 12.4 image)
    container_disk_gb    container disk, priced into offers and created (default 40)
    disk_gb              the same, under the name `gpurun launch --disk-gb` passes to every cloud;
                         wins over container_disk_gb when given
    volume_gb            pod volume, priced into offers and created (default 0: nothing survives the pod)
    cloud_type           "ALL" (both), "SECURE" or "COMMUNITY": which clouds offers() lists
    request_timeout_s    bound on one API call (default 30)
    max_attempts         tries per call on 5xx/timeouts (default 5)
    retry_deadline_s     bound on all tries of one call (default 90)
    backoff_initial_s / backoff_max_s   exponential backoff with jitter (default 1 / 15)
    self_destruct_api_base   API base the on-instance watchdog calls (default $RUNPOD_SELF_DESTRUCT_API_BASE,
                         else https://api.runpod.io; tests point it at the fake). Never RUNPOD_API_BASE_URL.
    pid1_environ_path    where the watchdog reads RUNPOD_POD_ID/RUNPOD_API_KEY (default $RUNPOD_PID1_ENVIRON,
                         else /proc/1/environ)
    volume_mount_path    where the pod volume is mounted (default /workspace)
    ssh_setup            "auto" (default: images other than runpod/* get a start command that installs
                         sshd + rsync and the run's key, see ssh_start.py), "image" (trust the image),
                         "install" (always send the start command)
    min_vcpu_per_gpu     host vCPUs asked per GPU (default 4, as SkyPilot asks)
    min_ram_gb_per_gpu   host RAM asked per GPU (default: the GPU's own memory, at least 8 GB)
    """

    name = PROVIDER_NAME

    def __init__(
        self,
        *,
        api_key: str | None = None,
        config_path: str | os.PathLike[str] | None = None,
        profile: str = "default",
        image: str = DEFAULT_IMAGE,
        container_disk_gb: int = 40,
        disk_gb: int | None = None,
        volume_gb: int = 0,
        cloud_type: str = "ALL",
        request_timeout_s: float = 30.0,
        max_attempts: int = 5,
        retry_deadline_s: float = 90.0,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 15.0,
        self_destruct_api_base: str | None = None,
        pid1_environ_path: str | None = None,
        volume_mount_path: str = "/workspace",
        ssh_setup: str = "auto",
        min_vcpu_per_gpu: int = MIN_VCPU_PER_GPU,
        min_ram_gb_per_gpu: int | None = None,
    ) -> None:
        self.image = check_string("image", image, IMAGE_RE)
        disk = int(container_disk_gb if disk_gb is None else disk_gb)
        if disk < 1 or int(volume_gb) < 0:
            raise ProviderError("RunPod container disk (--disk-gb) must be >= 1 GB and volume_gb >= 0")
        self.container_disk_gb = disk
        self.volume_gb = int(volume_gb)
        self.cloud_type = check_cloud_type(cloud_type, "cloud_type")
        base = (self_destruct_api_base or api_base_default()).rstrip("/")
        if not _API_BASE_RE.match(base):
            raise ProviderError(f"RunPod self_destruct_api_base {base!r} is not a plain http(s) URL")
        self.self_destruct_api_base = base
        self.pid1_environ_path = pid1_environ_path or pid1_environ_default()
        self.volume_mount_path = check_string("volume_mount_path", volume_mount_path, MOUNT_PATH_RE)
        self.ssh_setup = check_ssh_setup(ssh_setup)
        if int(min_vcpu_per_gpu) < 1 or (min_ram_gb_per_gpu is not None and int(min_ram_gb_per_gpu) < 1):
            raise ProviderError("RunPod min_vcpu_per_gpu and min_ram_gb_per_gpu must be >= 1")
        self.min_vcpu_per_gpu = int(min_vcpu_per_gpu)
        self.min_ram_gb_per_gpu = None if min_ram_gb_per_gpu is None else int(min_ram_gb_per_gpu)
        policy = CallPolicy(
            request_timeout_s=float(request_timeout_s),
            max_attempts=max(1, int(max_attempts)),
            retry_deadline_s=float(retry_deadline_s),
            backoff_initial_s=float(backoff_initial_s),
            backoff_max_s=float(backoff_max_s),
        )
        self.client = RunPodClient(
            api_key=api_key,
            config_path=Path(config_path) if config_path else Path.home() / ".runpod" / "config.toml",
            profile=profile,
            policy=policy,
        )

    def check_credentials(self) -> None:
        """Local check only (no network): the first API call reports a rejected key."""
        self.client.require_key()

    # ------------------------------------------------------------------ offers

    def storage_usd_per_hour(self, container_disk_gb: int | None = None, volume_gb: int | None = None) -> float:
        disk = self.container_disk_gb if container_disk_gb is None else container_disk_gb
        vol = self.volume_gb if volume_gb is None else volume_gb
        return storage_usd_per_hour(disk, vol)

    def offers(self, gpu: str | None = None, count: int = 1, spot: bool = False) -> list[Offer]:
        return fetch_offers(self.client, gpu=gpu, count=count, spot=spot, cloud_type=self.cloud_type,
                            container_disk_gb=self.container_disk_gb, volume_gb=self.volume_gb,
                            vcpu_per_gpu=self.min_vcpu_per_gpu, ram_gb_per_gpu=self.min_ram_gb_per_gpu)

    # ------------------------------------------------------------------ reading pods

    def _to_instance(self, pod: dict[str, Any] | None, pod_id: str) -> Instance:
        if not pod:
            return Instance(id=pod_id, provider=self.name, state=NOT_FOUND, raw={"pod": None})
        name = pod.get("name") or ""
        state = pod_state(pod)
        machine = pod.get("machine") or {}
        return Instance(
            id=str(pod.get("id") or pod_id),
            provider=self.name,
            state=state,
            run_id=run_id_from_name(name),
            name=name,
            instance_type=str(machine.get("gpuDisplayName") or ""),
            gpu_count=int(pod.get("gpuCount") or 0),
            usd_per_hour=to_float(pod.get("costPerHr")),
            ssh=endpoint_from_runtime(pod.get("runtime")) if state == RUNNING else None,
            raw=pod,
            preempted=preemption_reason(pod),  # an interruptible pod the platform stopped
        )

    def ssh_endpoint(self, instance: Instance) -> SSHEndpoint | None:
        return instance.ssh or endpoint_from_runtime((instance.raw or {}).get("runtime"))

    def get(self, instance_id: str) -> Instance:
        pod_id = check_pod_id(instance_id)
        try:
            pod = self.client.sdk("get pod", lambda rp: rp.get_pod(pod_id))
        except CredentialsError:
            raise
        except ProviderError as exc:
            if is_gone_error(exc):
                return Instance(id=pod_id, provider=self.name, state=NOT_FOUND, raw={"error": str(exc)})
            raise
        return self._to_instance(pod, pod_id)

    def list_owned(self) -> list[Instance]:
        pods = list(self.client.sdk("list pods", lambda rp: rp.get_pods()) or [])
        return [self._to_instance(p, str(p.get("id")))
                for p in pods if str(p.get("name") or "").startswith(NAME_PREFIX)]

    def _find_by_name(self, name: str) -> Instance | None:
        live = [i for i in self.list_owned() if i.name == name and not i.gone]
        if len(live) > 1:
            log.warning("%d RunPod pods are named %s; using %s", len(live), name, live[0].id)
        return live[0] if live else None

    # ------------------------------------------------------------------ create

    def _validated_env(self, spec: InstanceSpec) -> dict[str, str]:
        env: dict[str, str] = {}
        if spec.ssh_public_key:
            # RunPod's images append $PUBLIC_KEY to root's authorized_keys (runpod/containers
            # container-template/start.sh). On an account with SSH keys registered, RunPod fills
            # PUBLIC_KEY with THOSE keys ("Runpod will attempt to automatically inject the public SSH
            # keys added in your account settings"), and the per-pod override is SSH_PUBLIC_KEY
            # ("you can override the default by setting the SSH_PUBLIC_KEY environment variable for
            # that Pod": docs.runpod.io/pods/configuration/use-ssh). So the run's key goes in both:
            # SSH_PUBLIC_KEY wins over the account's keys; PUBLIC_KEY serves where nothing is
            # injected (no keys registered) and REST v2's startSsh, which keeps a PUBLIC_KEY the
            # request sets (api-reference-v2/openapi.json, CreatePodRequest.startSsh).
            for key in SSH_KEY_ENV:
                if key in spec.env:
                    raise ProviderError(f"RunPod env key {key} is set by gpurun to the run's SSH key; "
                                        f"do not pass it")
                env[key] = spec.ssh_public_key.strip()
        env["GPURUN_RUN_ID"] = spec.run_id
        env.update(spec.env)
        for k, v in env.items():
            check_string("env key", str(k), ENV_KEY_RE)
            if k in ("RUNPOD_API_KEY", "RUNPOD_POD_ID"):
                raise ProviderError(f"RunPod env key {k} is set by RunPod itself; do not pass it")
            check_string(f"env value of {k}", str(v))
        return {str(k): str(v) for k, v in env.items()}

    def create(self, spec: InstanceSpec) -> Instance:
        # Validate everything before any call, so a refused spec creates nothing.
        if not RUN_ID_RE.match(spec.run_id or ""):
            raise ProviderError(f"run id {spec.run_id!r} is not valid (expected {RUN_ID_RE.pattern})")
        name = check_string("pod name", spec.name, NAME_RE)
        image = check_string("image", spec.image or self.image, IMAGE_RE)
        offer = spec.offer
        gpu_id = check_string("GPU type id", offer.instance_type, GPU_ID_RE)
        cloud = check_cloud_type(str(offer.details.get("cloud_type") or self.cloud_type))
        count = int(offer.gpu_count or 1)
        # The pod gets the disks its offer was priced with (this provider's disk_gb / volume_gb at
        # plan time), so what is created is what the budget paid for. InstanceSpec.disk_gb /
        # volume_gb are not read: the controller never sets them, and their defaults would undo
        # --disk-gb (a 40 GB default against a 20 GB plan).
        disk = int(offer.details.get("container_disk_gb", self.container_disk_gb))
        volume = int(offer.details.get("volume_gb", self.volume_gb))
        # The host minimums the offer was listed with (catalog.host_minimums), else the same rule.
        vcpu, memory = host_minimums(offer.memory_gb, count, vcpu_per_gpu=self.min_vcpu_per_gpu,
                                     ram_gb_per_gpu=self.min_ram_gb_per_gpu)
        vcpu = int(offer.details.get("min_vcpu_count") or vcpu)
        memory = int(offer.details.get("min_memory_gb") or memory)
        env = self._validated_env(spec)
        docker_args = docker_args_for(image, self.ssh_setup)
        self.client.require_key()

        existing = self._find_by_name(name)
        if existing is not None:
            log.info("RunPod pod %s already exists for run %s; reusing it", existing.id, spec.run_id)
            return existing

        if offer.spot:
            bid = to_float(offer.details.get("bid_per_gpu")) or (offer.usd_per_hour / max(1, count))
            create_call = lambda: rent_interruptable(  # noqa: E731
                self.client, name=name, image=image, gpu_id=gpu_id, cloud=cloud, count=count, disk_gb=disk,
                volume_gb=volume, volume_mount_path=self.volume_mount_path, env=env, bid_per_gpu=bid,
                min_vcpu=vcpu, min_memory_gb=memory, docker_args=docker_args)
        else:
            create_call = lambda: self._create_on_demand(  # noqa: E731
                name, image, gpu_id, cloud, count, disk, volume, env, vcpu, memory, docker_args)

        created_at = time.time()
        try:
            pod = self._create_idempotently(name, create_call)
        except NoCapacityError:
            # Nothing was made (a lost answer would have been found by name first): the controller
            # may try the next offer of the plan.
            raise NoCapacityError(
                f"RunPod has no machine free for {count}x {gpu_id} in {cloud} cloud"
                f"{' (spot)' if offer.spot else ''} with {vcpu} vCPUs / {memory} GB RAM right now: "
                f"try another GPU, cloud type or count (`gpurun offers`)") from None
        try:
            inst: Instance | None = self.get(str(pod["id"]))
        except ProviderError as exc:  # the pod exists: hand its id back rather than lose it
            log.warning("RunPod pod %s created but not readable yet: %s", pod["id"], exc)
            inst = None
        if inst is None or inst.state == NOT_FOUND:
            # Eventual consistency: the create answered but the read lags; report it as pending.
            inst = Instance(id=str(pod.get("id")), provider=self.name, state=PENDING, run_id=spec.run_id,
                            name=name, raw=pod)
        inst.created_at = created_at
        inst.run_id = spec.run_id
        if inst.usd_per_hour is None:
            inst.usd_per_hour = offer.usd_per_hour
        return inst

    def _create_idempotently(self, name: str, create_call: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Create once; after a transient failure (the create may have landed) look the name up first."""
        last: TransientProviderError | None = None
        for attempt in self.client.retrying():
            with attempt:
                if last is not None:
                    found = self._find_by_name(name)
                    if found is not None:
                        return found.raw or {"id": found.id}
                try:
                    return create_call()
                except TransientProviderError as exc:
                    last = exc
                    raise
        raise TransientProviderError("create pod: gave up")  # unreachable: reraise=True

    def _create_on_demand(self, name: str, image: str, gpu_id: str, cloud: str, count: int, disk: int,
                          volume: int, env: dict[str, str], min_vcpu: int, min_memory_gb: int,
                          docker_args: str) -> dict[str, Any]:
        # create_pod first runs gpuTypes(input: {id}) and raises ValueError for an unknown GPU. Its
        # min_vcpu_count / min_memory_in_gb default to 1 / 1 (runpod-python ctl_commands.create_pod):
        # we ask for a host that can feed the GPU. docker_args is "" or ssh_start's base64 command.
        def call(rp: Any) -> dict[str, Any]:
            return rp.create_pod(
                name=name, image_name=image, gpu_type_id=gpu_id, cloud_type=cloud,
                gpu_count=count, volume_in_gb=volume, container_disk_in_gb=disk,
                min_vcpu_count=min_vcpu, min_memory_in_gb=min_memory_gb, docker_args=docker_args,
                ports="22/tcp", env=env, support_public_ip=True, start_ssh=True,
                volume_mount_path=self.volume_mount_path,
            )

        pod = self.client.sdk("create pod", call, timeout_s=self.client.policy.create_timeout_s, retry=False)
        if not pod or not pod.get("id"):
            raise ProviderError("RunPod create answered without a pod id (no capacity?)")
        return pod

    # ------------------------------------------------------------------ ending pods

    def terminate(self, instance_id: str) -> dict[str, Any]:
        pod_id = check_pod_id(instance_id)
        from_ts = time.time()

        def call(rp: Any) -> dict[str, Any]:
            from runpod.api.graphql import run_graphql_query
            from runpod.api.mutations.pods import generate_pod_terminate_mutation

            # terminate_pod() drops the response; the proof wants it, so call the helper directly.
            return run_graphql_query(generate_pod_terminate_mutation(pod_id))

        try:
            response = self.client.sdk("terminate pod", call)
        except CredentialsError:
            raise
        except ProviderError as exc:
            if not is_gone_error(exc):
                raise
            # "pod not found to terminate": already gone, which is what we wanted.
            return {"pod_id": pod_id, "requested_at": from_ts, "answered_at": time.time(),
                    "already_gone": True, "response": {"error": str(exc)}}
        return {"pod_id": pod_id, "requested_at": from_ts, "answered_at": time.time(),
                "already_gone": False, "response": response}

    def stop(self, instance_id: str) -> dict[str, Any]:
        """podStop: the GPU stops billing but the volume keeps billing. gpurun uses terminate."""
        pod_id = check_pod_id(instance_id)
        return self.client.sdk("stop pod", lambda rp: rp.stop_pod(pod_id)) or {}

    def self_destruct_command(self, instance: Instance) -> str:
        """What the watchdog runs at the deadline: the pod terminates itself with its own key."""
        return self_destruct_shell(pod_id=instance.id, pid1_environ_path=self.pid1_environ_path,
                                   api_base=self.self_destruct_api_base)

    # ------------------------------------------------------------------ money

    def account(self) -> dict[str, Any]:
        data = self.client.graphql("read balance",
                                   "query { myself { clientBalance currentSpendPerHr spendLimit } }")
        me = (data.get("data") or {}).get("myself") or {}
        return {
            "balance_usd": to_float(me.get("clientBalance")),
            "current_spend_usd_per_hour": to_float(me.get("currentSpendPerHr")),
            "spend_limit_usd_per_hour": to_float(me.get("spendLimit")),
            "raw": me,
        }

    def billed_cost(self, run_id: str, instance_ids: list[str], start: float, end: float) -> BilledCost:
        """RunPod's own billing history for the run's pods (billing.py)."""
        return billing_history_cost(self.client, instance_ids, start, end)

    def inventory(self) -> list[Billable]:
        """Every pod (running or stopped) and network volume on the account (inventory.py)."""
        return account_inventory(self.client, run_id_from_name)

    def image_facts(self, image: str | None, offer: Offer) -> ImageFacts:
        """RunPod's PyTorch images (runpod/pytorch:*, the default) carry torch; another image may not."""
        name = image or self.image
        torch = TorchOnImage.CARRIED if "pytorch" in name.lower() else TorchOnImage.UNKNOWN
        return ImageFacts(name, torch)

    def check_launchable(self, offer: Offer) -> None:
        """RunPod deploys a pod only with credit for one hour of it: "To deploy a new Pod, your account
        must have at least one hour's worth of credits for your selected configuration"
        (https://docs.runpod.io/accounts-billing/billing; also docs.runpod.io/pods/pricing). So an
        offer whose hour costs more than the balance is refused here, naming both numbers."""
        self._check_hour_of_credit(self.account()["balance_usd"], offer.total_usd_per_hour,
                                   f"{offer.gpu_count}x {offer.gpu} {offer.details.get('cloud_type') or ''}".strip())

    def check_nodes(self, nodes: int) -> None:
        """Multi-node runs are refused on RunPod. Pods created one by one share no network fit for
        DDP: RunPod's multi-node offering is Instant Clusters, made as one unit through REST v2
        `POST /v2/clusters` ("Creates a multi-node cluster",
        https://docs.runpod.io/api-reference-v2/clusters/create-a-cluster), which the `runpod` SDK
        1.12 gpurun drives (GraphQL) does not have. Pod "Global networking" (a private address per
        pod, https://docs.runpod.io/pods/networking) runs at 100 Mbps between pods, a console
        toggle, not an argument of the SDK's create_pod: too slow for gradient exchange."""
        if nodes > 1:
            raise ProviderError(
                f"--nodes {nodes}: RunPod pods share no network for multi-node training (its multi-node "
                "offering, Instant Clusters, is created through the REST v2 /v2/clusters API, which gpurun does "
                "not drive): use --provider aws or datacrunch for --nodes, or drop --nodes"
            )

    @staticmethod
    def _check_hour_of_credit(balance: float | None, usd_per_hour: float, what: str = "this pod") -> None:
        if balance is not None and balance < float(usd_per_hour):
            raise ProviderError(
                f"RunPod balance {balance:.2f} USD is below one hour of {what} ({float(usd_per_hour):.2f} USD/h), "
                f"which RunPod requires to deploy ({BILLING_DOCS}): add funds or pick a cheaper GPU"
            )

    def check_spend(self, max_usd: float, usd_per_hour: float) -> None:
        """Refuse a budget the account cannot pay, a pod the balance cannot deploy (one hour of it),
        and a price over the account's hourly spend limit.

        RunPod refuses to start a pod when the hourly cost of what runs plus the new pod's would
        exceed the spend limit (https://docs.runpod.io/api-reference-v2/account/get-account-limits):
        refusing here says so at plan time, before anything is created.
        """
        acct = self.account()
        balance = acct["balance_usd"]
        if balance is not None and balance < float(max_usd):
            raise ProviderError(
                f"RunPod balance {balance:.2f} USD cannot cover --max-usd {float(max_usd):g}: add funds "
                f"or lower the budget"
            )
        self._check_hour_of_credit(balance, usd_per_hour)
        limit = acct["spend_limit_usd_per_hour"]
        if limit is not None:
            current = acct["current_spend_usd_per_hour"] or 0.0
            if current + float(usd_per_hour) > limit:
                raise ProviderError(
                    f"RunPod spend limit {limit:g} USD/h would be exceeded ({current:g} already running + "
                    f"{float(usd_per_hour):g}): raise the limit in the RunPod console or stop other pods"
                )
