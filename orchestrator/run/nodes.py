"""A run's node group: nodes 0..N-1 of one offer (`gpurun launch --nodes N --gpus G`), one torchrun node each.

A single-node run is a group of one. Node 0 is the rendezvous host: the guard probes its job, the
periodic and final pulls come from it (rank 0 writes the logs and the checkpoints, and with
torchrun's static rendezvous the node rank IS the group rank, so rank 0 is on node 0). Every node
goes through the same steps (orchestrator/run/boot.py, setup.py, job.py); nodes 1..N-1, the workers, are:

- created right after node 0, of the same offer, each an instance row of the run (so teardown
  terminates and verifies every one, and the proof lists every one);
- booted and reached by the same boot window; one that does not come up fails the attempt, and every
  node of it is torn down (SkyPilot #508/#509 leaked worker nodes);
- bootstrapped like node 0 under their own root (`<remote root>/<run id>-n<rank>`: on the tests' one
  loopback machine the nodes must not share a directory), each with its OWN dead-man's switch at the
  run's deadline and its own self-destruct (the stall rule stays on node 0, where the steps are
  logged; a worker whose peers are gone sees its job fail, then idles out);
- started after node 0 (which hosts the rendezvous at its private address), stopped with it, beaten
  with the same heartbeat.

The environment each node's job sees follows SkyPilot's and dstack's convention (node rank, node
count, master address, all addresses): GPURUN_NODE_RANK, GPURUN_NUM_NODES, GPURUN_NODE_IPS
(space-separated, node 0 first), GPURUN_MASTER_ADDR, GPURUN_MASTER_PORT, GPURUN_GPUS_PER_NODE, plus
MASTER_ADDR / MASTER_PORT for a command that calls torchrun itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from orchestrator.transport.factory import remote_root
from orchestrator.transport.protocol import Transport
from providers.base import Instance


@dataclass
class Node:
    """One node of the group: its instance and, once it answers, its transport."""

    rank: int
    instance: Instance
    transport: Transport | None = None
    python: str = "python3"  # the node's python that has torch (bootstrap)
    job: dict[str, Any] = field(default_factory=dict)  # its data_dir / prepare command (setup.set_up_job)

    @property
    def label(self) -> str:
        """How a message names it: "instance i-1" on a single-node run's node 0, "node 1 (instance i-2)"."""
        return f"instance {self.instance.id}" if self.rank == 0 else f"node {self.rank} (instance {self.instance.id})"

    def to_dict(self) -> dict[str, Any]:
        """Its entry in the run record's `nodes` (node 0's python and job are the record's own)."""
        node = {"rank": self.rank, "instance_id": self.instance.id, "private_ip": self.instance.private_ip}
        return node if self.rank == 0 else {**node, "python": self.python, "job": self.job}

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None


@dataclass
class NodeGroup:
    """Nodes 0..N-1 (empty until node 0 is created, or reconnected from the ledger)."""

    nodes: list[Node] = field(default_factory=list)
    gpu_count: int = 0  # GPUs per node (bootstrap found them on node 0; the nodes are one offer)
    failed_exit: int | None = None  # a worker's job that failed first: the run's job exit status

    @property
    def head(self) -> Node:
        return self.nodes[0]

    @property
    def workers(self) -> list[Node]:
        return self.nodes[1:]

    def transports(self) -> list[Transport]:
        return [n.transport for n in self.nodes if n.transport is not None]

    def instance_ids(self) -> list[str]:
        return [n.instance.id for n in self.nodes]

    def close(self) -> None:
        for node in self.nodes:
            node.close()

    def records(self) -> list[dict[str, Any]]:
        return [n.to_dict() for n in self.nodes]


def worker_root(run_id: str, rank: int) -> str:
    """A worker's run directory on its instance (node 0 keeps the single-node `<root>/<run id>`)."""
    return f"{remote_root(run_id)}-n{rank}"


def rendezvous_address(node0: Instance) -> str:
    """Where the other nodes reach node 0: its private address (the provider's word for it)."""
    if not node0.private_ip:
        raise RuntimeError(f"instance {node0.id} (node 0) has no address the other nodes can reach"
                           " (the provider reported no private IP)")
    return node0.private_ip


def group_env(addresses: list[str], rank: int, gpus_per_node: int, port: int) -> dict[str, str]:
    """The environment node `rank`'s job runs with (see the module docstring)."""
    return {
        "GPURUN_NODE_RANK": str(rank),
        "GPURUN_NUM_NODES": str(len(addresses)),
        "GPURUN_NODE_IPS": " ".join(addresses),
        "GPURUN_MASTER_ADDR": addresses[0],
        "GPURUN_MASTER_PORT": str(port),
        "GPURUN_GPUS_PER_NODE": str(gpus_per_node),
        "MASTER_ADDR": addresses[0],
        "MASTER_PORT": str(port),
    }
