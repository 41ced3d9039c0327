"""The job a launch runs: its recipe, the config file it reads on the instance, and whether data is prepared first.

Pure set-up from `LaunchOptions` (plan/options.py): the plan (plan/launch.py) forecasts with it and
the controller writes `JOB_CONFIG` from `job_config` / `config_text`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import yaml

from orchestrator.plan.options import LaunchOptions
from providers.base import Offer
from trainer import config as trainer_config
from trainer import recipes
from trainer.recipes import Recipe

# The recipe a GPU machine runs when the user names none (and brings no config or command of their own).
DEFAULT_GPU_RECIPE = "lab"
# The one without a GPU: the trainer's own defaults, the CPU smoke run.
DEFAULT_CPU_RECIPE = "smoke"
# The config file the job reads on the instance (in code/, its cwd): recipe < --config, then --set flags.
JOB_CONFIG = "gpurun_config.yaml"
# Config keys that bring the user's own data: the recipe's data is then not prepared.
DATA_KEYS = ("data_dir", "text_file")


def has_gpu(offer: Offer) -> bool:
    return offer.gpu_count > 0 and offer.gpu.lower() != "cpu"


def recipe_for(options: LaunchOptions, gpu: bool) -> tuple[Recipe | None, bool]:
    """(the recipe the job runs, whether it is the default). --recipe wins; without it a machine with
    a GPU runs `lab` and one without the CPU smoke run, unless the user brings a --config or a
    command of their own (None: that alone is the job)."""
    if options.command:
        return None, False
    if options.recipe:
        return recipes.get(options.recipe), False
    if options.config:
        return None, False
    return recipes.get(DEFAULT_GPU_RECIPE if gpu else DEFAULT_CPU_RECIPE), True


def user_config(options: LaunchOptions) -> dict[str, Any]:
    """The --config file's keys (already validated by check_trainer_input)."""
    return trainer_config.load_file(options.config) if options.config else {}


def user_brings_data(options: LaunchOptions) -> bool:
    """--config or --set names a data_dir / text_file: the recipe's data is not prepared."""
    keys = set(user_config(options)) | {flag.removeprefix("--").replace("-", "_")
                                        for flag in options.trainer_args[0::2]}
    return bool(keys & set(DATA_KEYS))


def data_phase(options: LaunchOptions, recipe: Recipe | None) -> bool:
    """Whether the run prepares the recipe's data on the instance before training (preparing_data)."""
    return recipe is not None and recipe.data.prepared_on_instance and not user_brings_data(options)


def job_config(options: LaunchOptions, recipe: Recipe | None, data_dir: str | None) -> dict[str, Any]:
    """What the uploaded config file holds: the recipe's config, under --config's keys, plus data_dir
    (the prepared data on the instance). --set stays flags on the command line, above both."""
    merged: dict[str, Any] = dict(recipe.config) if recipe else {}
    merged.update(user_config(options))
    if data_dir:
        merged["data_dir"] = data_dir
    return merged


def config_text(config: dict[str, Any]) -> str:
    """Flat YAML the trainer reads with or without PyYAML (trainer.config.parse_flat_yaml)."""
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=False, width=10**9)


def effective_config(options: LaunchOptions, recipe: Recipe | None) -> trainer_config.TrainConfig:
    """The config the trainer would run with (recipe < --config < --set), checked by the trainer's
    own parser; ConfigError names the recipe when its keys and the user's do not go together."""
    data_dir = "data/prepared" if data_phase(options, recipe) else None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / JOB_CONFIG
        path.write_text(config_text(job_config(options, recipe, data_dir)))
        try:
            return trainer_config.validate(str(path), options.trainer_args, world_size=max(1, options.gpus),
                                           flag_label=lambda key: f"--set {key}")
        except trainer_config.ConfigError as e:
            what = f"recipe {recipe.name}" if recipe else "--config"
            raise trainer_config.ConfigError(str(e).replace(str(path), what)) from None
