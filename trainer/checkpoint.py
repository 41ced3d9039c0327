"""Checkpoint files: atomic torch.save, manifest bookkeeping, verified loading, RNG state capture."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer import contract, manifest
from trainer.manifest import CheckpointEntry


class CheckpointError(RuntimeError):
    """No usable checkpoint: corrupted, truncated, or not a trainer checkpoint."""


def checkpoint_name(step: int) -> str:
    return f"ckpt-{step:06d}.pt"


def rng_state() -> dict[str, Any]:
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_name, np_keys.tolist(), int(np_pos), int(np_has_gauss), float(np_gauss)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(ckpt_dir: str | Path, step: int, payload: dict[str, Any], keep: int) -> CheckpointEntry:
    """Write ckpt-<step>.pt atomically, then the manifest, then prune old files."""
    d = Path(ckpt_dir)
    d.mkdir(parents=True, exist_ok=True)
    path = d / checkpoint_name(step)
    manifest.atomic_write(path, lambda f: torch.save(payload, f))
    # Hash what is on disk (not what we meant to write): the manifest vouches for these bytes.
    entry = manifest.new_entry(path, step)
    dropped = manifest.add_checkpoint(d, entry, keep)
    manifest.remove_files(d, dropped)
    return entry


def weights_name(step: int) -> str:
    return f"weights-{step:06d}.pt"


def export_weights(ckpt_dir: str | Path, step: int, model_state: dict[str, Any],
                   model_config: dict[str, Any]) -> CheckpointEntry:
    """weights-<step>.pt: the model alone, floating tensors in bf16 (a sixth of a checkpoint that
    also carries AdamW's two moments in fp32), so a short link still brings home a usable model;
    the manifest lists it under "exports" and the pull fetches it first."""
    d = Path(ckpt_dir)
    path = d / weights_name(step)
    state = {k: (v.detach().to("cpu", torch.bfloat16) if v.is_floating_point() else v.detach().cpu())
             for k, v in model_state.items()}
    payload = {"model": state, "model_config": model_config, "step": step, "dtype": "bfloat16"}
    manifest.atomic_write(path, lambda f: torch.save(payload, f))
    entry = manifest.new_entry(path, step)
    manifest.remove_files(d, manifest.set_export(d, entry))
    return entry


def load_file(path: str | Path, map_location: str | torch.device = "cpu", verified: bool = False) -> dict[str, Any]:
    """Load a checkpoint after checking it against its directory's manifest when it has one.

    `verified` skips the hash when the caller has just checked this file (find_latest does).
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: no such checkpoint")
    try:
        entries = {e.file: e for e in manifest.manifest_entries(p.parent)}
    except manifest.ManifestError as e:
        raise CheckpointError(str(e)) from e
    if p.name in entries and not verified:
        problem = manifest.check_entry(p.parent, entries[p.name])
        if problem:
            raise CheckpointError(f"{p}: {problem}; refusing to load it")
    try:
        data = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # a damaged zip/pickle raises many different types
        raise CheckpointError(f"{p}: unreadable checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(data, dict) or "model" not in data or "model_config" not in data:
        raise CheckpointError(f"{p}: not a trainer checkpoint")
    return data


def resolve(path: str | Path) -> Path:
    """A checkpoint file from a file, a checkpoints/ dir or an out dir (newest valid one)."""
    p = Path(path)
    if p.is_file():
        return p
    d = p / contract.CHECKPOINTS_DIR if (p / contract.CHECKPOINTS_DIR).is_dir() else p
    entry, bad = find_latest(d)
    if entry is None:
        detail = f" (rejected: {', '.join(f'{k}: {v}' for k, v in bad.items())})" if bad else ""
        raise CheckpointError(f"no valid checkpoint in {d}{detail}")
    return d / entry.file


def find_latest(ckpt_dir: str | Path) -> tuple[CheckpointEntry | None, dict[str, str]]:
    if not Path(ckpt_dir).is_dir():
        return None, {}
    try:
        return manifest.latest_valid(ckpt_dir)
    except manifest.ManifestError as e:
        raise CheckpointError(str(e)) from e
