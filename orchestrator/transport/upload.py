"""The upload rule: which files of a directory are shipped to an instance, for every transport.

The SSH transport (a tarball over the connection) and the local transport (a copy into the
sandbox) both ship exactly `upload_files(local_dir)`, so a file that never reaches a cloud never
reaches the sandbox either. The rule, in order:

1. git's view of the directory when it is inside a work tree (tracked + untracked, minus ignored),
   else its `.gitignore` read with fnmatch (last match wins, `!` negates, `dir/`, anchored `/x`);
2. then, whatever .gitignore says, never: secrets (`SECRET_EXCLUDE`), caches and VCS/venv data
   (`ALWAYS_EXCLUDE`), each matched against every path component; gpurun's own outputs at the top
   level (`TOP_LEVEL_EXCLUDE`); anything that is not a regular file or a link to one.
"""

from __future__ import annotations

import fnmatch
import io
import os
import subprocess
import tarfile
from pathlib import Path

# Secrets are refused by name, case-insensitively: a key or an env file has no business on a
# rented machine (docs/DESIGN.md, "Conventions": secrets never reach an upload).
SECRET_EXCLUDE = (
    ".env", ".env.*", "*.pem", "*.key", "*.p12", "*.pfx", "*.ppk",
    "id_rsa*", "id_dsa*", "id_ecdsa*", "id_ed25519*",  # OpenSSH private keys (and their .pub)
    ".ssh", ".aws", ".gnupg", ".netrc", ".git-credentials", ".pypirc",
)
# Caches, VCS data and environments: useless on the instance and often large.
ALWAYS_EXCLUDE = ("__pycache__", "*.pyc", ".git", ".venv", "*.egg-info")
# gpurun's own outputs when the workdir is the launch directory: runs/<run-id>/ and a trainer out/.
TOP_LEVEL_EXCLUDE = ("runs", "out")


class UploadTooLargeError(Exception):
    """The files to upload are over the size limit."""


def excluded(rel: str) -> bool:
    """True when the relative path (a file or a directory, "/"-separated) may never be shipped."""
    parts = [p.lower() for p in rel.split("/") if p not in ("", ".")]
    if parts and parts[0] in TOP_LEVEL_EXCLUDE:
        return True
    return any(fnmatch.fnmatchcase(part, pat) for part in parts for pat in SECRET_EXCLUDE + ALWAYS_EXCLUDE)


def check_destination(local_dir: Path, remote_subdir: str) -> str:
    """The subdirectory of the run root an upload replaces, checked (both transports call this)."""
    sub = remote_subdir.strip("/")
    if not sub or ".." in sub.split("/"):
        raise ValueError(f"remote_subdir must be a relative path inside the run root: {remote_subdir!r}")
    if not Path(local_dir).is_dir():
        raise FileNotFoundError(f"upload: {local_dir} is not a directory")
    return sub


def upload_files(local_dir: Path) -> list[str]:
    """Relative ("/"-separated, sorted) paths of the files to ship from local_dir."""
    local_dir = Path(local_dir)
    files = _git_files(local_dir)
    if files is None:
        files = _walk_files(local_dir, _gitignore_patterns(local_dir))
    return sorted(f for f in files if not excluded(f) and (local_dir / f).is_file())


def check_size(local_dir: Path, files: list[str], limit_bytes: int) -> int:
    """The total size of `files`; UploadTooLargeError naming the biggest ones when over the limit."""
    sizes = {f: (Path(local_dir) / f).stat().st_size for f in files}
    total = sum(sizes.values())
    if total > limit_bytes:
        biggest = sorted(sizes.items(), key=lambda kv: -kv[1])[:5]
        names = ", ".join(f"{f} ({n / 1e6:.1f} MB)" for f, n in biggest)
        raise UploadTooLargeError(
            f"{local_dir} is {total / 1e6:.1f} MB to upload, over the {limit_bytes / 1e6:.0f} MB "
            f"limit; biggest: {names}. Add them to .gitignore or raise the limit")
    return total


def tarball(local_dir: Path, files: list[str]) -> bytes:
    """A gzipped tar of `files` (links stay links), owned by nobody in particular."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for rel in files:
            info = tar.gettarinfo(str(Path(local_dir) / rel), arcname=rel)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if info.isfile():
                with open(Path(local_dir) / rel, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    return buf.getvalue()


def _git_files(local_dir: Path) -> list[str] | None:
    try:
        inside = subprocess.run(["git", "-C", str(local_dir), "rev-parse", "--is-inside-work-tree"],
                                capture_output=True, text=True, timeout=30)
        if inside.returncode != 0 or inside.stdout.strip() != "true":
            return None
        out = subprocess.run(["git", "-C", str(local_dir), "ls-files", "-z", "--cached", "--others",
                              "--exclude-standard", "--", "."], capture_output=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError):
        return None  # no git here: fall back to reading .gitignore ourselves
    return [p for p in out.stdout.decode().split("\0") if p]


def _gitignore_patterns(local_dir: Path) -> list[str]:
    gi = local_dir / ".gitignore"
    if not gi.is_file():
        return []
    lines = (ln.strip() for ln in gi.read_text(errors="replace").splitlines())
    return [ln for ln in lines if ln and not ln.startswith("#")]


def _ignored(rel: str, is_dir: bool, patterns: list[str]) -> bool:
    """A small .gitignore: last match wins, `!` negates, trailing `/` = dirs, `/` inside = anchored."""
    ignored = False
    name = rel.rsplit("/", 1)[-1]
    for pat in patterns:
        neg = pat.startswith("!")
        p = pat[1:] if neg else pat
        if p.endswith("/"):
            if not is_dir:
                continue
            p = p.rstrip("/")
        hit = fnmatch.fnmatch(rel, p.lstrip("/")) if "/" in p else fnmatch.fnmatch(name, p)
        if hit:
            ignored = not neg
    return ignored


def _walk_files(local_dir: Path, patterns: list[str]) -> list[str]:
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(local_dir):
        rel_dir = os.path.relpath(dirpath, local_dir)
        prefix = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
        # Pruned here so an excluded tree (.git, .venv, runs/) is never even walked.
        dirnames[:] = [d for d in dirnames if not _ignored(prefix + d, True, patterns) and not excluded(prefix + d)]
        out += [prefix + f for f in filenames if not _ignored(prefix + f, False, patterns)]
    return out
