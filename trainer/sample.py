"""Generate text from a checkpoint: `python -m trainer.sample --ckpt out/ [--prompt TEXT] [...]`.

--ckpt takes a checkpoint file, a checkpoints/ directory or an out dir (its newest valid checkpoint).
The file is checked against MANIFEST.json first; a corrupted one is refused, never loaded.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from trainer import checkpoint, cpu_speed
from trainer.checkpoint import CheckpointError
from trainer.data import read_meta
from trainer.model import GPT
from trainer.presets import GPTConfig
from trainer.tokenizer import from_meta


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trainer.sample", description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", required=True, help="checkpoint file, checkpoints/ dir or out dir")
    ap.add_argument("--prompt", default="", help="start text (default: newline / <|endoftext|>)")
    ap.add_argument("--max-new-tokens", type=int, default=300)
    ap.add_argument("--num-samples", type=int, default=1)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--top-k", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--meta", default=None, help="meta.json to decode with (default: the checkpoint's)")
    ap.add_argument("--bpe-dir", default=None, help="local GPT-2 encoder.json + vocab.bpe")
    args = ap.parse_args(argv)
    try:
        path = checkpoint.resolve(args.ckpt)
        ckpt = checkpoint.load_file(path, map_location=args.device)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    meta = read_meta(Path(args.meta).parent) if args.meta else ckpt.get("meta") or read_meta(path.parent)
    tok = from_meta(meta, args.bpe_dir)
    model = GPT(GPTConfig.from_dict(ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    if torch.device(args.device).type == "cpu":
        cpu_speed.use_cpu_speed_paths(model)
    model.to(args.device).eval()
    if args.prompt:
        prompt = tok.encode(args.prompt)
    elif meta.get("tokenizer") == "char":
        prompt = tok.encode("\n") if "\n" in meta.get("stoi", {}) else [0]
    else:
        prompt = [int(meta.get("eot", 50256))]
    gen = torch.Generator(device=args.device).manual_seed(args.seed)
    vocab = int(meta["vocab_size"])
    for i in range(args.num_samples):
        idx = torch.tensor([prompt], dtype=torch.long, device=args.device)
        out = model.generate(idx, args.max_new_tokens, args.temperature, args.top_k or None, generator=gen)
        if i:
            print("---------------")
        print(tok.decode([t for t in out[0].tolist() if t < vocab]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
