"""loss.png: the training and validation loss against the step (needs matplotlib; skipped without)."""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trainer.manifest import atomic_write_bytes


def plot_loss(curve: Mapping[str, Any], path: Path) -> dict[str, Any]:
    pts = [(s, v) for s, v in curve.get("step") or [] if v is not None]
    val = [(s, v) for s, v in curve.get("val") or [] if v is not None]
    if not pts and not val:
        return {"path": None, "note": "not written (no loss values in metrics.jsonl)"}
    try:
        # The object API with an explicit Agg canvas: no pyplot global state, no display needed.
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return {"path": None, "note": "not written (matplotlib is not installed)"}
    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if pts:
        ax.plot([s for s, _ in pts], [v for _, v in pts], label="train loss", linewidth=1)
    if val:
        ax.plot([s for s, _ in val], [v for _, v in val], "o-", label="val loss", linewidth=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})  # no version stamp: same input, same bytes
    atomic_write_bytes(path, buf.getvalue())
    return {"path": "loss.png", "note": f"{len(pts)} step points, {len(val)} eval points"}


