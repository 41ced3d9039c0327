"""Get an instance ready to train, over any Transport: python, torch, CUDA, the trainer's deps, hardware.

Non-interactive SSH sessions do not see a container's ENV (RunPod, some Docker images), so python is
looked for on PATH and in the usual image locations, and the path found is used for the job too.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol

from orchestrator.run.stop_time import Work
from orchestrator.transport.protocol import Transport
from trainer import contract

# The AWS Deep Learning AMI keeps PyTorch in /opt/pytorch; conda images in /opt/conda.
PYTHON_CANDIDATES = ("python3", "python", "/opt/pytorch/bin/python", "/opt/conda/bin/python",
                     "/usr/local/bin/python3", "/usr/bin/python3")

# Prints one JSON line; must run on any python3 with or without torch/numpy. torch is imported (about
# 2 s of CPU) only where an NVIDIA driver is there to ask about CUDA; elsewhere CUDA cannot be
# available, its presence and version are read without importing it, and the trainer's own import
# is the proof that it loads.
_CHECK = r"""
import importlib.metadata, importlib.util, json, os, shutil, sys
info = {"python": sys.executable, "python_version": sys.version.split()[0], "torch": None,
        "cuda_available": False, "cuda_version": None, "device_name": None, "gpu_count": 0, "numpy": None}
def present(name):
    try:
        if importlib.util.find_spec(name) is None:
            return None
    except (ImportError, ValueError):
        return None
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return __import__(name).__version__
try:
    info["numpy"] = present("numpy")
except Exception:
    pass
try:
    if os.path.exists("/dev/nvidiactl") or shutil.which("nvidia-smi"):
        import torch
        info["torch"] = torch.__version__
        info["cuda_available"] = bool(torch.cuda.is_available())
        info["cuda_version"] = torch.version.cuda
        if info["cuda_available"]:
            info["gpu_count"] = torch.cuda.device_count()
            info["device_name"] = torch.cuda.get_device_name(0)
    else:
        info["torch"] = present("torch")
except Exception as e:
    info["torch_error"] = f"{type(e).__name__}: {e}"
print(json.dumps(info))
"""


class BootstrapError(Exception):
    """The instance cannot run the trainer; the message says what is missing and what to do."""


class Step(Protocol):
    """Told what bootstrap does now ("installing torch") and what kind of work it is."""

    def __call__(self, step: str, work: Work = Work.OTHER) -> None: ...


def _no_step(step: str, work: Work = Work.OTHER) -> None:
    pass


def _not_ours(python: str, missing: Sequence[str]) -> BootstrapError:
    return BootstrapError(f"{python} lacks {', '.join(missing)}, and gpurun never installs into an interpreter"
                          " it did not create: install gpurun's train extra into it (pip install 'gpurun[train]')")


@dataclass
class BootstrapInfo:
    python: str
    python_version: str
    torch_version: str | None
    cuda_available: bool
    cuda_version: str | None
    device_name: str | None
    gpu_count: int
    numpy_version: str | None
    nvidia_smi: str | None  # `nvidia-smi -L` output, None when absent
    installed: list[str] = field(default_factory=list)

    @property
    def check_line(self) -> str:
        """The runbook's check: torch version, CUDA available, device name."""
        return f"torch {self.torch_version} | cuda available: {self.cuda_available} | device: {self.device_name or 'cpu'}"

    def report(self) -> str:
        lines = [self.check_line, f"python {self.python_version} ({self.python})",
                 f"numpy {self.numpy_version}", f"cuda {self.cuda_version}", f"gpu_count {self.gpu_count}",
                 "nvidia-smi -L:", self.nvidia_smi.strip() if self.nvidia_smi else "(nvidia-smi not found)"]
        if self.installed:
            lines.append("installed: " + ", ".join(self.installed))
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _str(v: object) -> str | None:
    return None if v is None else str(v)


def find_python(transport: Transport) -> str:
    """The first candidate python >= 3.9 that already has torch, else the first python >= 3.9."""
    tests = " ".join(shlex.quote(p) for p in PYTHON_CANDIDATES)
    probe = "import sys; sys.exit(sys.version_info < (3, 9))"
    has_torch = "; import importlib.util as u; sys.exit(u.find_spec('torch') is None)"  # found, not imported
    res = transport.run(
        f"for p in {tests}; do command -v \"$p\" >/dev/null 2>&1 && \"$p\" -c {shlex.quote(probe + has_torch)} "
        f"2>/dev/null && {{ command -v \"$p\"; exit 0; }}; done; "
        f"for p in {tests}; do command -v \"$p\" >/dev/null 2>&1 && \"$p\" -c {shlex.quote(probe)} "
        f"2>/dev/null && {{ command -v \"$p\"; exit 0; }}; done; exit 1",
        timeout_s=120)
    if not res.ok or not res.stdout.strip():
        raise BootstrapError("no python >= 3.9 on the instance (tried "
                             f"{', '.join(PYTHON_CANDIDATES)}); use a PyTorch image")
    return res.stdout.strip().splitlines()[0]


def _check(transport: Transport, python: str) -> dict[str, object]:
    res = transport.run(f"{shlex.quote(python)} -c {shlex.quote(_CHECK)}", timeout_s=300)
    try:
        return json.loads(res.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError) as e:
        raise BootstrapError(f"python check failed on the instance ({res.exit_code}): {res.stderr.strip()[-400:]}") from e


def _pip_install(transport: Transport, python: str, packages: Sequence[str], timeout_s: float) -> None:
    pkgs = " ".join(shlex.quote(p) for p in packages)
    res = transport.run(f"{shlex.quote(python)} -m pip install -q --disable-pip-version-check {pkgs}",
                        timeout_s=timeout_s)
    if not res.ok:
        raise BootstrapError(
            f"`pip install {' '.join(packages)}` failed on the instance (exit {res.exit_code}): "
            f"{(res.stderr or res.stdout).strip()[-400:]} -- use an image that has PyTorch, or check its network")


def bootstrap(transport: Transport, install: bool = True, need_torch: bool = True,
              pip_timeout_s: float = 1800, step: Step = _no_step) -> BootstrapInfo:
    """Check (and if allowed complete) the instance; write <root>/out/bootstrap.txt and bootstrap.json.

    need_torch=False (a user command instead of the trainer): report what is there, install nothing.
    The interpreter the transport names (the local sandbox's: the controller's own) is used as it
    is and never installed into; otherwise python is looked for on the instance.
    """
    step("looking for python")
    python = transport.python or find_python(transport)
    step("checking python, torch and CUDA")
    info = _check(transport, python)
    installed: list[str] = []
    missing = [pkg for pkg in ("numpy", "torch") if need_torch and not info.get(pkg)]
    if missing:
        if transport.python:
            raise _not_ours(python, missing)
        if not install:
            raise BootstrapError(f"the instance lacks {', '.join(missing)} (bootstrap with install=True, "
                                 "or use a PyTorch image)")
        step(f"installing {' and '.join(missing)}", Work.INSTALLING)
        _pip_install(transport, python, missing, pip_timeout_s)
        installed = missing
        step("checking the installed torch")
        info = _check(transport, python)
        if not info.get("torch"):
            raise BootstrapError(f"torch still not importable after installing it: {info.get('torch_error')}")
    step("listing the GPUs")
    smi = transport.run("nvidia-smi -L 2>/dev/null", timeout_s=60)
    nvidia = smi.stdout if smi.ok and smi.stdout.strip() else None
    result = BootstrapInfo(
        python=python, python_version=_str(info.get("python_version")) or "?", torch_version=_str(info.get("torch")),
        cuda_available=bool(info.get("cuda_available")), cuda_version=_str(info.get("cuda_version")),
        device_name=_str(info.get("device_name")), gpu_count=int(str(info.get("gpu_count") or 0)),
        numpy_version=_str(info.get("numpy")), nvidia_smi=nvidia, installed=installed)
    root = transport.root
    transport.write_file(f"{root}/{contract.OUT_DIR}/bootstrap.txt", result.report())
    transport.write_file(f"{root}/{contract.OUT_DIR}/bootstrap.json", json.dumps(result.to_dict(), indent=1) + "\n")
    return result


def ensure_packages(transport: Transport, python: str, packages: Sequence[str], install: bool = True,
                    pip_timeout_s: float = 900, step: Step = _no_step) -> list[str]:
    """Install the optional packages a recipe needs (tiktoken for GPT-2 BPE) where the instance
    lacks them; returns those installed. Import name = pip name for every package recipes name."""
    if not packages:
        return []
    step(f"checking for {', '.join(packages)}")
    probe = ("import importlib.util, sys; "
             "print(' '.join(p for p in sys.argv[1:] if importlib.util.find_spec(p) is None))")
    res = transport.run(f"{shlex.quote(python)} -c {shlex.quote(probe)} {' '.join(map(shlex.quote, packages))}",
                        timeout_s=120)
    missing = res.stdout.split() if res.ok else list(packages)
    if missing and transport.python:
        raise _not_ours(python, missing)
    if missing and not install:
        raise BootstrapError(f"the instance lacks {', '.join(missing)} (the recipe's data needs it): use an image"
                             " that has it")
    if missing:
        step(f"installing {' and '.join(missing)}", Work.INSTALLING)
        _pip_install(transport, python, missing, pip_timeout_s)
    return missing


def trainer_command(gpu_count: int, args: Sequence[str] | str = (), root: str | None = None,
                    python: str = "python3", out_dir: str | None = None, nodes: int = 1, node_rank: int = 0,
                    rdzv_endpoint: str = "") -> str:
    """The job's command line (run with cwd=<root>/code): one DDP rank per GPU, at least one.

    `trainer.launch` is the single-node part of torchrun (same env contract) that keeps the stop
    contract: torchrun answers a SIGTERM to the group with exit 1 and a SignalException traceback,
    and SIGKILLs ranks still writing their checkpoint after 30 s. Pass python=BootstrapInfo.python:
    on some images python is not on a non-login PATH.
    """
    out_dir = out_dir or (f"{root.rstrip('/')}/{contract.OUT_DIR}" if root else f"../{contract.OUT_DIR}")
    extra = args if isinstance(args, str) else " ".join(shlex.quote(a) for a in args)
    cmd = f"{shlex.quote(python)} -m trainer.launch --nproc-per-node={max(1, int(gpu_count))} "
    if nodes > 1:  # torchrun's static-rendezvous flags: node R is group rank R, node 0 hosts the store
        cmd += (f"--nnodes={int(nodes)} --node-rank={int(node_rank)} --rdzv-backend=static "
                f"--rdzv-endpoint={shlex.quote(rdzv_endpoint)} ")
    cmd += f"--out-dir {shlex.quote(out_dir)}"
    return f"{cmd} {extra}".rstrip()
