"""A pull's file-by-file pass, where rsync is not used: over SFTP, or a plain copy from a local directory.

The SFTP pass opens no connection of its own: it asks the caller (transport/ssh.py's
`SSHTransport.open_sftp`) for a session on the transport's live connection. It pulls what the
rsync pass (transport/pull_rsync.py) does: the manifest, out/ with exactly the listed checkpoints,
and the root's *.log; transport/pull_checkpoints.py verifies them.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import paramiko

from orchestrator.transport.pull_checkpoints import CKPT, STAGING, Moved, parse_manifest, wanted_files

#: Opens an SFTP session on the transport's connection (SSHTransport.open_sftp); the caller closes it.
SftpOpener = Callable[[], paramiko.SFTPClient]


class Tree(Protocol):
    def read(self, rel: str) -> bytes | None: ...

    def list(self, rel: str) -> list[tuple[str, bool, int, float]]: ...  # name, is_dir, size, mtime

    def get(self, rel: str, dest: Path) -> None: ...


class LocalTree:
    def __init__(self, root: str) -> None:
        self.root = Path(root)

    def read(self, rel: str) -> bytes | None:
        try:
            return (self.root / rel).read_bytes()
        except FileNotFoundError:
            return None

    def list(self, rel: str) -> list[tuple[str, bool, int, float]]:
        try:
            entries = list(os.scandir(self.root / rel))
        except (FileNotFoundError, NotADirectoryError):
            return []
        out = []
        for e in entries:
            st = e.stat()
            out.append((e.name, e.is_dir(), st.st_size, st.st_mtime))
        return out

    def get(self, rel: str, dest: Path) -> None:
        shutil.copyfile(self.root / rel, dest)


class SftpTree:
    def __init__(self, sftp: paramiko.SFTPClient, root: str) -> None:
        self.sftp, self.root = sftp, root

    def read(self, rel: str) -> bytes | None:
        try:
            with self.sftp.open(f"{self.root}/{rel}", "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def list(self, rel: str) -> list[tuple[str, bool, int, float]]:
        try:
            attrs = self.sftp.listdir_attr(f"{self.root}/{rel}")
        except FileNotFoundError:
            return []
        return [(a.filename, stat.S_ISDIR(a.st_mode or 0), a.st_size or 0, float(a.st_mtime or 0)) for a in attrs]

    def get(self, rel: str, dest: Path) -> None:
        self.sftp.get(f"{self.root}/{rel}", str(dest))


def tree_pass(tree: Tree, local_dir: Path, checkpoints: bool = True) -> tuple[Moved, bytes | None]:
    manifest_bytes = tree.read(f"{CKPT}/MANIFEST.json") if checkpoints else None
    staged = local_dir / STAGING / "remote" / CKPT / "MANIFEST.json"
    if manifest_bytes is not None:
        staged.parent.mkdir(parents=True, exist_ok=True)
        staged.write_bytes(manifest_bytes)
    listed = set(wanted_files(parse_manifest(manifest_bytes)))
    res = Moved()

    def want(rel: str, is_dir: bool) -> bool:
        if rel.startswith(CKPT + "/"):
            return not is_dir and rel.rsplit("/", 1)[1] in listed
        return True

    stack = ["out"]
    while stack:
        d = stack.pop()
        for name, is_dir, size, mtime in tree.list(d):
            rel = f"{d}/{name}"
            if not want(rel, is_dir) or name.startswith(".rsync-partial"):
                continue
            if is_dir:
                stack.append(rel)
            else:
                _fetch(tree, local_dir, rel, size, mtime, res)
    for name, is_dir, size, mtime in tree.list("."):
        if not is_dir and name.endswith(".log"):
            _fetch(tree, local_dir, name, size, mtime, res)
    return res, manifest_bytes


def _fetch(tree: Tree, local_dir: Path, rel: str, size: int, mtime: float, res: Moved) -> None:
    """One file home under a temporary name, then renamed; counted in `res`."""
    dest = local_dir / rel
    if dest.exists() and dest.stat().st_size == size and int(dest.stat().st_mtime) == int(mtime):
        return  # rsync's quick check: same size and mtime = unchanged
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.gpurun-part")
    tree.get(rel, tmp)
    os.utime(tmp, (mtime, mtime))
    os.replace(tmp, dest)
    res.files += 1
    res.bytes += size


def sftp_pass(src: str, local_dir: Path, open_sftp: SftpOpener, checkpoints: bool = True) -> tuple[Moved, bytes | None]:
    sftp = open_sftp()
    try:
        return tree_pass(SftpTree(sftp, src), local_dir, checkpoints)
    finally:
        sftp.close()  # the session only: the connection is the transport's
