"""The quality a run reached, measured the standard way, beside what bought it: the card's "FineWeb val
(10.5M tokens)" row.

Read from the trainer's `final_val` record in out/metrics.jsonl (trainer.contract: RECORD_FINAL_VAL,
FINAL_VAL_FIELDS): the step it was taken at, the set, how many tokens the evaluation read and the
loss. The training tokens are that step times the tokens per step of the job's config (the recipe's,
under --set), on the ranks hardware.json reports; the dollars are the card's cost.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from orchestrator.plan.quality import split_label, target_words
from orchestrator.proof.reading import num, read_json, read_jsonl
from trainer import contract, recipes

# `--set` flags (as the launch passes them to the trainer) that change the tokens of a step.
_STEP_KEYS = ("batch_size", "seq_len", "block_size", "grad_accum")


def final_val_section(out: Path, run: Mapping[str, Any]) -> dict[str, Any]:
    """The last final_val record and what bought it ({"status": "missing"} when the trainer wrote none)."""
    rows, _ = read_jsonl(out / contract.METRICS)
    finals = [r for r in rows if contract.is_record(r, contract.RECORD_FINAL_VAL)]
    if not finals:
        return {"status": "missing"}
    step, split, tokens, loss = (finals[-1].get(name) for name in contract.FINAL_VAL_FIELDS)
    hw, _ = read_json(out / contract.HARDWARE)
    world = int(num((hw or {}).get("world_size")) or 1) if isinstance(hw, dict) else 1
    recipe = _recipe(run)
    per_step = _tokens_per_step(run, recipe, world)
    steps = int(num(step) or 0)
    target = recipe.quality if recipe is not None else None
    section: dict[str, Any] = {
        "status": "present",
        "label": split_label(str(split), int(num(tokens) or 0)),
        "split": split,
        "eval_tokens": int(num(tokens) or 0),
        "val_loss": num(loss),
        "step": steps,
        "tokens_per_step": per_step,
        "trained_tokens": steps * per_step if per_step else None,
        "target": None,
    }
    if target is not None and target.split == split:
        section["target"] = {"words": target_words(target), "val_loss": target.val_loss,
                             "reached": num(loss) is not None and float(loss) <= target.val_loss}
    return section


def _recipe(run: Mapping[str, Any]) -> recipes.Recipe | None:
    """The recipe the job ran (the record's job, else --recipe); None for a command or an unknown name."""
    plan = run.get("plan") or {}
    name = (plan.get("job") or {}).get("recipe") or (plan.get("options") or {}).get("recipe")
    return recipes.RECIPES.get(name) if isinstance(name, str) else None


def _tokens_per_step(run: Mapping[str, Any], recipe: recipes.Recipe | None, world: int) -> int | None:
    """Tokens per optimizer step of the job: the recipe's config under the launch's --set flags."""
    if recipe is None:
        return None
    config: dict[str, Any] = dict(recipe.config)
    args = list(((run.get("plan") or {}).get("options") or {}).get("trainer_args") or [])
    for flag, value in zip(args[0::2], args[1::2], strict=False):
        key = str(flag).removeprefix("--").replace("-", "_")
        if key in _STEP_KEYS and num(value) is not None:
            config[key] = int(float(value))
    try:
        return recipes.tokens_per_step(config, max(1, world))
    except (KeyError, TypeError, ValueError):
        return None
