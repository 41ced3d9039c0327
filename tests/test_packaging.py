"""The built wheel carries what the product needs at run time: budgets.yaml and the provider scripts."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent


def _tracked_tree(dest: Path) -> Path:
    """A copy of the files git tracks (plus new ones not ignored), symlinks kept: a fresh clone."""
    listing = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split()
    for rel in listing:
        src = REPO / rel
        if not src.exists() and not src.is_symlink():
            continue  # deleted in the working tree, not yet committed
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            out.symlink_to(src.readlink())
        else:
            shutil.copy2(src, out)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    if shutil.which("git") is None:
        pytest.skip("git is needed to list the tracked files")
    tree = _tracked_tree(tmp_path_factory.mktemp("src"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(tree)],
        check=True, capture_output=True,
    )
    (built,) = out.glob("gpurun-*.whl")
    return zipfile.ZipFile(built)


def test_wheel_carries_the_one_budgets_yaml(wheel: zipfile.ZipFile) -> None:
    # The package path is a symlink to the root file in a checkout; the wheel must hold its content.
    assert (REPO / "orchestrator" / "money" / "budgets.yaml").is_symlink()
    packaged = wheel.read("orchestrator/money/budgets.yaml")
    assert packaged == (REPO / "budgets.yaml").read_bytes()
    assert "providers" in yaml.safe_load(packaged)


def test_wheel_carries_provider_scripts_and_subpackages(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    scripts = sorted(p.name for p in (REPO / "providers" / "scripts").iterdir() if p.suffix in (".sh", ".py"))
    assert scripts, "providers/scripts holds the self-destruct scripts"
    for name in scripts:
        assert f"providers/scripts/{name}" in names
    for pkg in (p for p in (REPO / "providers").iterdir() if (p / "__init__.py").is_file()):
        assert f"providers/{pkg.name}/__init__.py" in names
    assert "orchestrator/run/watchdog.sh" in names


def test_wheel_carries_the_dashboards_pages_and_every_file_they_load(wheel: zipfile.ZipFile) -> None:
    """`gpurun dashboard` works offline: its templates, script, style and the vendored Chart.js (with its
    licence) are package data, and no page names anything outside the package."""
    names = set(wheel.namelist())
    dashboard = REPO / "orchestrator" / "dashboard"
    shipped = sorted(str(p.relative_to(REPO)) for sub in ("templates", "static") for p in (dashboard / sub).iterdir())
    assert "orchestrator/dashboard/static/chart.umd.min.js" in shipped
    assert "orchestrator/dashboard/static/chart.js.LICENSE.md" in shipped
    for name in shipped:
        assert name in names, name
    for page in (dashboard / "templates").glob("*.html"):
        text = page.read_text()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, page.name
