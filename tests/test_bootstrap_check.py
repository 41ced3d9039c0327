"""orchestrator.run.bootstrap's python check: torch is imported (seconds of CPU) only where an NVIDIA
driver is there to ask about CUDA; elsewhere its presence and version are read without importing it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.run.bootstrap import _CHECK


def fake_torch(site: Path) -> None:
    """A `torch` whose import says so (an installed dist-info gives its version)."""
    (site / "torch").mkdir(parents=True)
    (site / "torch" / "__init__.py").write_text("raise RuntimeError('torch was imported')\n")
    (site / "torch-9.9.9.dist-info").mkdir()
    (site / "torch-9.9.9.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: torch\nVersion: 9.9.9\n")


def check(site: Path, path: str) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(site), "PATH": path}
    out = subprocess.run([sys.executable, "-c", _CHECK], capture_output=True, text=True, env=env, timeout=60)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(Path("/dev/nvidiactl").exists(), reason="a GPU machine's check imports torch (next test)")
def test_without_an_nvidia_driver_torch_is_found_not_imported(tmp_path: Path) -> None:
    fake_torch(tmp_path / "site")
    info = check(tmp_path / "site", os.environ.get("PATH", ""))
    assert info["torch"] == "9.9.9" and "torch_error" not in info and info["cuda_available"] is False


def test_with_an_nvidia_driver_torch_is_imported_for_its_cuda_facts(tmp_path: Path) -> None:
    fake_torch(tmp_path / "site")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100'\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    info = check(tmp_path / "site", os.pathsep.join([str(bin_dir), os.environ.get("PATH", "")]))
    assert info["torch"] is None and info["torch_error"] == "RuntimeError: torch was imported"


def test_a_python_without_torch_says_none(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import sys\nsys.modules['torch'] = None  # import torch -> ImportError\n")
    info = check(site, os.environ.get("PATH", ""))
    assert info["torch"] is None and info["numpy"]
