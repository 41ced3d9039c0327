"""How long `gpurun dashboard` takes from its start to its first HTTP answer, beside `gpurun --help`.

    python bench/dashboard_start.py [--starts 7]

docs/DASHBOARD.md's target: it starts in under a second and loads no torch. Each start is the real
CLI in a fresh GPURUN_HOME (`gpurun dashboard --port 0`): the URL it prints is read, then a GET is
sent until one answers (a 401 without the token is an answer). `gpurun --help` is the CLI's own
start, which every command pays. Prints min and median seconds of each; the torch check reads the
server's /proc/PID/maps.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def cli(args: list[str], home: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "GPURUN_HOME": home}
    return subprocess.Popen([sys.executable, "-m", "orchestrator.cli.main", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)


def answered(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=5)
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False
    return True


def dashboard_start(home: str) -> tuple[float, bool]:
    """(seconds to the first answer, whether torch was loaded)."""
    started = time.monotonic()
    proc = cli(["dashboard", "--port", "0"], home)
    assert proc.stdout is not None
    found = re.search(r"http://\S+", proc.stdout.readline())
    assert found, "gpurun dashboard printed no URL"
    base = found.group(0).split("?", 1)[0]
    while not answered(base):
        time.sleep(0.005)
    seconds = time.monotonic() - started
    torch = "torch" in Path(f"/proc/{proc.pid}/maps").read_text() if Path(f"/proc/{proc.pid}/maps").exists() else False
    proc.terminate()
    proc.wait(timeout=30)
    return seconds, torch


def help_start(home: str) -> float:
    started = time.monotonic()
    cli(["--help"], home).wait(timeout=60)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        helps = [help_start(home) for _ in range(args.starts)]
        runs = [dashboard_start(home) for _ in range(args.starts)]
    for name, xs in (("gpurun --help", helps), ("gpurun dashboard, to its first answer", [s for s, _ in runs])):
        print(f"{name}: min {min(xs):.2f} s, median {statistics.median(xs):.2f} s ({len(xs)} starts)")
    print(f"torch loaded by the dashboard: {any(t for _, t in runs)}")


if __name__ == "__main__":
    main()
