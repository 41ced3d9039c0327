"""Where the benchmarks find their offline data: tinyshakespeare and the GPT-2 BPE files.

GPURUN_SHAKESPEARE (an input.txt) and GPURUN_GPT2_BPE_DIR (encoder.json + vocab.bpe) name one file
set each; GPURUN_DATA_DIR names a folder holding `tinyshakespeare/input.txt` and `gpt2/`. Without
them, `data/` inside the checkout (what travels to a lent GPU machine, docs/PERFORMANCE.md). The
test suite sets GPURUN_DATA_DIR to its fixtures (tests/conftest.py).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    return Path(os.environ.get("GPURUN_DATA_DIR") or REPO / "data")


def shakespeare() -> Path | None:
    """tinyshakespeare's input.txt, or None when there is none."""
    env = os.environ.get("GPURUN_SHAKESPEARE")
    candidates = ([Path(env)] if env else []) + [data_dir() / "tinyshakespeare" / "input.txt"]
    return next((p for p in candidates if p.is_file()), None)


def gpt2_bpe() -> Path | None:
    """The folder with GPT-2's encoder.json and vocab.bpe, or None."""
    env = os.environ.get("GPURUN_GPT2_BPE_DIR")
    candidates = ([Path(env)] if env else []) + [data_dir() / "gpt2"]
    return next((p for p in candidates if (p / "encoder.json").is_file() and (p / "vocab.bpe").is_file()), None)
