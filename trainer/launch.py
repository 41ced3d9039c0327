"""A minimal DDP launcher: `python -m trainer.launch --nproc-per-node N [trainer args]`.

It does what `torchrun --standalone` does for one node (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR,
MASTER_PORT; one `python -m trainer.train` per rank) but keeps the stop contract: a SIGTERM or
SIGUSR1 sent to the whole process group lets every rank checkpoint and exit 0, and the launcher exits
0 too. torchrun instead exits 1 after a SIGTERM (its agent raises SignalException) and SIGKILLs
workers that take longer than 30 s to stop. If one rank fails, the others are stopped.

Several nodes take torchrun's own flags for its static rendezvous, so `torchrun` can replace
`python -m trainer.launch` in the same command line:

    python -m trainer.launch --nnodes 2 --nproc-per-node 8 --node-rank R \
        --rdzv-backend static --rdzv-endpoint NODE0_ADDR:29500 [trainer args]

Global rank = node rank x nproc-per-node + local rank (torch/distributed/run.py: the static backend
is the one where --node-rank is the group rank); rank 0's process, on node 0, hosts the c10d
TCPStore at the endpoint (init_process_group's env:// rendezvous), and the others connect to it.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from types import FrameType

# SIGINT is not forwarded: Ctrl-C already reaches every rank through the terminal, and a rank
# treats a second SIGINT as "interrupt now".
FORWARDED = (signal.SIGTERM, signal.SIGUSR1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m trainer.launch", description=__doc__.splitlines()[0], allow_abbrev=False
    )
    ap.add_argument("--nproc-per-node", "--nproc_per_node", type=int, default=1)
    ap.add_argument("--nnodes", type=int, default=1)
    ap.add_argument("--node-rank", "--node_rank", type=int, default=0)
    ap.add_argument("--rdzv-backend", "--rdzv_backend", default="static", choices=["static"],
                    help="static only: the node rank is the group rank (node 0 holds rank 0's outputs)")
    ap.add_argument("--rdzv-endpoint", "--rdzv_endpoint", default="",
                    help="HOST:PORT of node 0 (several nodes)")
    ap.add_argument("--module", default="trainer.train", help="module each rank runs")
    args, rest = ap.parse_known_args(argv)
    n, nodes, node = args.nproc_per_node, args.nnodes, args.node_rank
    if n < 1 or nodes < 1:
        print("error: --nproc-per-node and --nnodes must be at least 1", file=sys.stderr)
        return 2
    if not 0 <= node < nodes:
        print(f"error: --node-rank {node} must be in 0..{nodes - 1} (--nnodes {nodes})", file=sys.stderr)
        return 2
    if nodes > 1:
        host, _, port = args.rdzv_endpoint.rpartition(":")
        if not host or not port.isdigit():
            print(f"error: --rdzv-endpoint {args.rdzv_endpoint!r}: several nodes need node 0's HOST:PORT",
                  file=sys.stderr)
            return 2
        master_addr, master_port = host.strip("[]"), port
    else:
        master_addr, master_port = "127.0.0.1", str(free_port())
    base = dict(os.environ)
    base.update(MASTER_ADDR=master_addr, MASTER_PORT=master_port, WORLD_SIZE=str(n * nodes),
                LOCAL_WORLD_SIZE=str(n), GROUP_RANK=str(node), NODE_RANK=str(node),
                GROUP_WORLD_SIZE=str(nodes), ROLE_WORLD_SIZE=str(n * nodes))
    if n > 1:
        base.setdefault("OMP_NUM_THREADS", "1")  # as torchrun does: N ranks must not oversubscribe
    procs: list[subprocess.Popen[bytes]] = []

    def forward(signum: int, frame: FrameType | None) -> None:
        # A signal to the process group reaches the ranks directly; one sent only to the launcher
        # is passed on. A rank that sees it twice just keeps stopping.
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    for s in FORWARDED:
        signal.signal(s, forward)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for rank in range(n):
        env = dict(base, RANK=str(node * n + rank), LOCAL_RANK=str(rank), ROLE_RANK=str(node * n + rank))
        procs.append(subprocess.Popen([sys.executable, "-m", args.module, *rest], env=env))

    failed: int | None = None
    while any(p.poll() is None for p in procs):
        codes = [p.returncode for p in procs if p.returncode not in (None, 0)]
        if codes and failed is None:
            failed = codes[0]
            for p in procs:  # a dead rank would leave the others blocked in a collective
                if p.poll() is None:
                    p.terminate()
        time.sleep(0.2)
    codes = [p.returncode for p in procs]
    if failed is None and any(codes):
        failed = next(c for c in codes if c)
    return 0 if failed is None else (failed if failed > 0 else 128 - failed)


if __name__ == "__main__":
    sys.exit(main())
