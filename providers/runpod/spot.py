"""Spot (interruptible) pods: the one function that rents them, so the move off GraphQL is one edit.

Spot on RunPod has exactly one way in today, `podRentInterruptable`, and it is on its way out:
- the SDK has no function for it (runpod-python 1.12 ctl_commands.py has only create_pod ->
  podFindAndDeployOnDemand); SkyPilot writes the mutation itself (sky/provision/runpod/api/pods.py,
  "refer to https://graphql-spec.runpod.io/#definition-PodRentInterruptableInput");
- RunPod removed every spot/interruptible page from its docs on 2026-05-06 (runpod/docs commit
  8e5aebdb), and announced on 2026-08-18 that the GraphQL API retires in early 2027
  (runpod/docs release-notes.mdx);
- REST v1 (`interruptible: true` on POST https://rest.runpod.io/v1/pods) retires 2026-11-15, and
  REST v2 (POST https://api.runpod.io/v2/pods, CreatePodRequest) has no interruptible field at all.
The plan for the move is in the RunPod notes (/work/notes/docs_runpod.md, "Moving to REST").
"""

from __future__ import annotations

from typing import Any

from providers.base import ProviderError
from providers.runpod.api import RunPodClient, gql_str

#: How `offers()` labels a spot offer (details["api"]) and the plan can show it.
SPOT_API = "podRentInterruptable (GraphQL, undocumented since 2026-05-06; GraphQL retires early 2027)"


def rent_interruptable(client: RunPodClient, *, name: str, image: str, gpu_id: str, cloud: str, count: int,
                       disk_gb: int, volume_gb: int, volume_mount_path: str, env: dict[str, str],
                       bid_per_gpu: float, min_vcpu: int, min_memory_gb: int,
                       docker_args: str) -> dict[str, Any]:
    """Rent a spot pod bidding `bid_per_gpu`; returns the mutation's pod (id, ...).

    The input is podFindAndDeployOnDemand's plus bidPerGpu (PodRentInterruptableInput, as SkyPilot's
    generate_spot_pod_deployment_mutation builds it). Every value is validated by the caller and
    JSON-escaped here as well. Not retried: a lost answer is looked up by name by the caller.
    """
    env_items = ", ".join(f"{{ key: {gql_str(k)}, value: {gql_str(v)} }}" for k, v in env.items())
    fields = [
        f"bidPerGpu: {float(bid_per_gpu):.4f}",
        f"cloudType: {cloud}",
        f"gpuCount: {int(count)}",
        f"volumeInGb: {int(volume_gb)}",
        f"containerDiskInGb: {int(disk_gb)}",
        f"minVcpuCount: {int(min_vcpu)}",
        f"minMemoryInGb: {int(min_memory_gb)}",
        f"gpuTypeId: {gql_str(gpu_id)}",
        f"name: {gql_str(name)}",
        f"imageName: {gql_str(image)}",
        f"dockerArgs: {gql_str(docker_args)}",
        'ports: "22/tcp"',
        f"volumeMountPath: {gql_str(volume_mount_path)}",
        "startSsh: true",
        "supportPublicIp: true",
        f"env: [{env_items}]",
    ]
    query = (
        "mutation { podRentInterruptable(input: { " + ", ".join(fields) + " }) "
        "{ id imageName env machineId machine { podHostId } } }"
    )
    data = client.graphql("create spot pod", query, timeout_s=client.policy.create_timeout_s, retry=False)
    pod = (data.get("data") or {}).get("podRentInterruptable")
    if not pod or not pod.get("id"):
        raise ProviderError("RunPod spot create answered without a pod id (bid too low? no capacity?)")
    return pod
