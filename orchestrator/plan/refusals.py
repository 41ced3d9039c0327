"""Every refusal of a launch's own input, before anything is created: flags, recipe, trainer config, nodes, image.

The provider's and the budget's refusals (credentials, quota, a cap, a balance) come from providers/
and orchestrator/money/ while plan/launch.py builds the plan; each is one actionable line.
"""

from __future__ import annotations

import math
from pathlib import Path

from orchestrator.money.budgets_file import Budgets
from orchestrator.plan.job import data_phase, effective_config, recipe_for
from orchestrator.plan.options import LaunchError, LaunchOptions
from providers.base import ImageFacts, ProviderError, TorchOnImage
from trainer import config as trainer_config
from trainer import recipes

# Trainer flags the controller passes itself (Controller.job_command, bootstrap.trainer_command): a
# `--set` of one would be overridden on the instance or clash with it.
SET_BY_GPURUN = {
    "deadline_epoch": "gpurun sets it from the budget (--max-usd)",
    "out_dir": "gpurun sets it; the outputs come home to runs/<run-id>/out",
    "config": "pass the file with --config FILE (it is uploaded with the trainer)",
    "nproc_per_node": "gpurun runs one rank per GPU: use --gpus",
}


def check_options(options: LaunchOptions) -> None:
    """The launch's own input, checked in one line each before any provider is asked anything."""
    if options.gpus < 1:
        raise ProviderError(f"--gpus must be at least 1, got {options.gpus}")
    for flag, minutes in (("--idle-minutes", options.idle_minutes), ("--stall-minutes", options.stall_minutes)):
        if not (isinstance(minutes, (int, float)) and math.isfinite(minutes) and minutes > 0):
            raise ProviderError(f"{flag} must be a number of minutes > 0 (fractions allowed), got {minutes}")
    if options.config and not Path(options.config).is_file():
        raise ProviderError(f"--config {options.config}: no such file")
    if options.workdir and not Path(options.workdir).is_dir():
        raise ProviderError(f"--workdir {options.workdir}: no such directory")
    check_recipe_input(options)
    check_any_input(options)
    if options.spot_fallback and not options.spot:
        raise LaunchError("--spot-fallback goes with --spot: it says what to rent when spot is not to be had")
    check_trainer_input(options)
    check_nodes_input(options)


def check_any_input(options: LaunchOptions) -> None:
    """--provider any: the options that name one provider's things are refused (each provider boots
    its own default image; the local provider's prices are not a cloud's)."""
    if not options.any_provider:
        return
    for flag, value, what in (("--image", options.image, "one provider's image"),
                              ("--usd-per-hour", options.usd_per_hour, "the local provider's price"),
                              ("--egress-usd-per-gb", options.egress_usd_per_gb, "the local provider's price")):
        if value is not None:
            raise LaunchError(f"{flag} sets {what}: --provider any uses each provider's own; name the provider"
                              " (--provider NAME) to set it")


def check_image(options: LaunchOptions, facts: ImageFacts) -> None:
    """Refuse before anything is created a trainer run on an image without torch where bootstrap
    may not install it (the local provider runs with the controller's own interpreter)."""
    if options.command or facts.torch is TorchOnImage.CARRIED or facts.installs:
        return
    raise ProviderError(f"{facts.image} {facts.torch.value}, and gpurun never installs into an interpreter it did not"
                        " create: install gpurun's train extra into it (pip install 'gpurun[train]'; `make setup`"
                        " does), or run your own command (-- CMD)")


MAX_NODES = 64  # a sanity bound on --nodes: more is a typo, or a cluster scheduler's job


def check_nodes_input(options: LaunchOptions) -> None:
    """--nodes, refused in one line where gpurun cannot carry a group (the provider's own check,
    `Provider.check_nodes`, follows once the provider is known)."""
    n = options.nodes
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_NODES:
        raise LaunchError(f"--nodes {n}: must be a whole number from 1 to {MAX_NODES}")
    if n == 1:
        return
    if options.spot:
        raise LaunchError(f"--nodes {n} with --spot: a reclaimed node stops the whole group, and gpurun resumes"
                          " single-instance runs only: drop --spot, or use --nodes 1")
    if options.resume_run:
        raise LaunchError(f"--nodes {n} with --resume: a run resumes on one instance only: drop --nodes")


def boot_budget_usd(options: LaunchOptions, budgets: Budgets, max_usd: float) -> float:
    """--max-boot-usd, checked; default budgets.yaml's boot_share of the cap."""
    if options.max_boot_usd is None:
        return budgets.boot_share * max_usd
    value = options.max_boot_usd
    if not (isinstance(value, (int, float)) and math.isfinite(value) and 0 < value <= max_usd + 1e-9):
        raise LaunchError(f"--max-boot-usd {value}: must be more than 0 and at most --max-usd ({max_usd:g}):"
                          " it is the part of the budget that failed boots may use")
    return float(value)


def check_recipe_input(options: LaunchOptions) -> None:
    """--recipe and --data-from, refused in one line before anything is asked of a provider."""
    if options.recipe is not None:
        if options.command:
            raise LaunchError("--recipe configures the bundled trainer; with `-- COMMAND` drop --recipe")
        try:
            recipes.get(options.recipe)
        except recipes.UnknownRecipe as e:
            raise LaunchError(f"{e} (`gpurun recipes` lists them)") from None
    if options.data_from is not None:
        if not options.data_from.startswith("s3://") and not Path(options.data_from).is_dir():
            raise LaunchError(f"--data-from {options.data_from}: no such directory")
        if options.recipe is None or not data_phase(options, recipes.get(options.recipe)):
            raise LaunchError("--data-from is a local copy of a recipe's data: use it with --recipe NAME, one "
                              "whose data is prepared on the instance (`gpurun recipes`), and no data_dir of yours")


def check_trainer_input(options: LaunchOptions) -> None:
    """Bad `--set`/`--config` input for the bundled trainer is refused here, on the controller, by the
    trainer's own parser and checks (torch-free): on the instance it would fail only after renting."""
    if options.command:
        if options.trainer_args:
            raise LaunchError("--set configures the bundled trainer; with `-- COMMAND` pass its flags in COMMAND")
        return
    args = options.trainer_args
    for flag, value in zip(args[0::2], args[1::2], strict=False):  # cli.launch: `--set k=v` -> `--k v`
        key = flag.removeprefix("--").replace("-", "_")
        if key in SET_BY_GPURUN:
            raise LaunchError(f"--set {key}={value}: {SET_BY_GPURUN[key]}")
        if (why := trainer_config.unknown_key(key)) is not None:
            raise LaunchError(f"--set {key}={value}: {why} (trainer/README.md lists the keys)")
    try:
        trainer_config.validate(options.config, args, world_size=max(1, options.gpus),
                                flag_label=lambda key: f"--set {key}")
        # The recipe it may run under (both defaults while the instance's GPU is not known yet).
        for name in {r.name for gpu in (True, False) if (r := recipe_for(options, gpu)[0]) is not None}:
            effective_config(options, recipes.get(name))
    except trainer_config.ConfigError as e:
        raise LaunchError(f"trainer config refused, nothing was rented: {e}") from None
