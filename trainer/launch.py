"""A minimal single-node DDP launcher: `python -m trainer.launch --nproc-per-node N [trainer args]`.

It does what `torchrun --standalone` does for one node (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR,
MASTER_PORT; one `python -m trainer.train` per rank) but keeps the stop contract: a SIGTERM or
SIGUSR1 sent to the whole process group lets every rank checkpoint and exit 0, and the launcher exits
0 too. torchrun instead exits 1 after a SIGTERM (its agent raises SignalException) and SIGKILLs
workers that take longer than 30 s to stop. If one rank fails, the others are stopped.
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
    ap.add_argument("--nproc-per-node", type=int, default=1)
    ap.add_argument("--module", default="trainer.train", help="module each rank runs")
    args, rest = ap.parse_known_args(argv)
    n = args.nproc_per_node
    if n < 1:
        print("error: --nproc-per-node must be at least 1", file=sys.stderr)
        return 2
    base = dict(os.environ)
    base.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE=str(n),
                LOCAL_WORLD_SIZE=str(n), GROUP_RANK="0", NODE_RANK="0")
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
        env = dict(base, RANK=str(rank), LOCAL_RANK=str(rank))
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
