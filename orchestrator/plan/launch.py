"""Turn `gpurun launch` options into a plan: provider, offer, live price, deadline. No side effects.

Everything that can refuse a launch (unknown provider, missing credentials, unknown GPU, a budget
too small, a cap already spent, a balance too low) refuses here, before anything is created.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from orchestrator import settings
from orchestrator.money.budget import Allowance, allowance_for, check_caps
from orchestrator.money.budgets_file import BudgetError, Budgets, load_budgets
from orchestrator.state.ledger import Ledger
from providers import get_provider, provider_class
from providers.base import ImageFacts, Offer, Provider, ProviderError, TorchOnImage, rank_offers, split_gpus
from trainer import config as trainer_config
from trainer import recipes
from trainer.recipes import Recipe

# Trainer flags the controller passes itself (lifecycle.job_command, bootstrap.trainer_command): a
# `--set` of one would be overridden on the instance or clash with it.
SET_BY_GPURUN = {
    "deadline_epoch": "gpurun sets it from the budget (--max-usd)",
    "out_dir": "gpurun sets it; the outputs come home to runs/<run-id>/out",
    "config": "pass the file with --config FILE (it is uploaded with the trainer)",
    "nproc_per_node": "gpurun runs one rank per GPU: use --gpus",
}


# The recipe a GPU machine runs when the user names none (and brings no config or command of their own).
DEFAULT_GPU_RECIPE = "lab"
# The one without a GPU: the trainer's own defaults, the CPU smoke run.
DEFAULT_CPU_RECIPE = "smoke"
# The config file the job reads on the instance (in code/, its cwd): recipe < --config, then --set flags.
JOB_CONFIG = "gpurun_config.yaml"
# Config keys that bring the user's own data: the recipe's data is then not prepared.
DATA_KEYS = ("data_dir", "text_file")

# Offers a launch keeps in its fallback order (the chosen one included): enough for the other cloud
# type / region and a second GPU, few enough that a plan stays readable.
MAX_CANDIDATES = 6


class LaunchError(ValueError):
    """The launch's own input is wrong (not the provider, not the budget): refused before anything is created."""


@dataclass
class LaunchOptions:
    provider: str = "local"
    max_usd: float | None = None
    gpu: str | None = None  # one GPU, or "A,B": the ones the user accepts, preferred first
    gpus: int = 1
    spot: bool = False
    # With --spot: after the spot offers, the same GPUs on-demand, for a boot or a preemption.
    spot_fallback: bool = False
    config: str | None = None  # trainer YAML config (uploaded with the trainer)
    recipe: str | None = None  # trainer/recipes.py; None: `lab` on a GPU, the CPU smoke run without
    data_from: str | None = None  # a local copy of the recipe's data (its public format), uploaded
    command: list[str] = field(default_factory=list)  # any other command instead of the trainer
    workdir: str | None = None  # uploaded as code/ for a custom command
    trainer_args: list[str] = field(default_factory=list)
    usd_per_hour: float | None = None  # price of the local provider's "instance"
    budgets: str | None = None
    runs_dir: str | None = None
    image: str | None = None
    disk_gb: int | None = None
    sync_interval_s: float | None = None
    # The job has ended and no controller was seen for this long: the instance destroys itself.
    idle_minutes: float = 10.0
    # No new step (the bundled trainer) or no new output (any command) for this long: stalled.
    stall_minutes: float = 10.0
    # What boots that never came up may cost in total, all offers tried together (None:
    # budgets.yaml's boot_share of the cap). It is part of --max-usd, never on top of it.
    max_boot_usd: float | None = None
    # `--resume RUN`: the run this launch continues (its directory, its last checkpoint).
    resume_run: str | None = None
    # `--nodes N`: N instances of the same offer, one torchrun node each (node 0 the rendezvous).
    nodes: int = 1

    def group_usd_per_hour(self, offer: Offer) -> float:
        """What the run's instances bill together per hour: every node is the same offer."""
        return offer.total_usd_per_hour * self.nodes

    def provider_options(self) -> dict[str, Any]:
        """Constructor options for the provider: only those its class declares it takes
        (`Provider.launch_options`); an option it does not take is refused in one line."""
        if self.disk_gb is not None and self.disk_gb < 1:
            raise ProviderError(f"--disk-gb must be at least 1 GB, got {self.disk_gb}")
        given = {"usd_per_hour": self.usd_per_hour, "image": self.image, "disk_gb": self.disk_gb}
        takes = provider_class(self.provider).launch_options
        for name, value in given.items():
            if value is not None and name not in takes:
                flag = "--" + name.replace("_", "-")
                raise ProviderError(f"{flag} does not apply to provider {self.provider!r}"
                                    + (": cloud prices are read live" if name == "usd_per_hour" else ""))
        return {name: value for name, value in given.items() if value is not None}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LaunchPlan:
    options: LaunchOptions
    provider: Provider
    offer: Offer
    budgets: Budgets
    allowance: Allowance
    account: dict[str, Any]
    run_dir_root: Path
    # The offers tried next, in order, when the chosen one has no capacity or never boots.
    fallbacks: list[Offer] = field(default_factory=list)
    # Candidates the plan dropped, with the one-line reason (a quota, an image, the budget).
    skipped: list[tuple[Offer, str]] = field(default_factory=list)
    max_boot_usd: float = 0.0
    # The recipe's training terms on the chosen offer (None: a command, or the user's own --config).
    forecast: Forecast | None = None
    # PyTorch on the image: where it is not carried, bootstrap's install comes out of the budget.
    image: ImageFacts | None = None

    def rows(self) -> list[tuple[str, str]]:
        """What the user confirms: every figure the cap depends on."""
        o, b = self.offer, self.allowance
        price_note = "" if o.price_is_live else f"  [{o.price_source}: not a live price]"
        rows = [
            ("provider", f"{o.provider} ({o.region})" if o.region else o.provider),
            ("instance", f"{o.instance_type}: {o.gpu_count} x {o.gpu}{'  (spot)' if o.spot else ''}"),
            ("price", f"{o.usd_per_hour:.4f} USD/h + storage {o.extra_usd_per_hour:.4f} USD/h "
                      f"= {o.total_usd_per_hour:.4f} USD/h ({o.price_source}){price_note}"),
            ("billing", f"per {b.billing.increment_s} s, minimum {b.billing.minimum_s} s"
                        + (f" ({b.billing.source})" if b.billing.source else "")),
            ("budget", f"{b.max_usd:.4f} USD  ->  {duration(b.max_runtime_s)} of billed time"),
            ("training", f"{duration(b.train_s)}, then the guard stops the job "
                         f"({duration(b.reserve_s)} reserved for the final sync and teardown)"),
            ("job", self._job_label()),
        ]
        if self.image is not None:
            rows.append(("bootstrap", bootstrap_words(self.image, self.options, b, o)))
        if self.forecast is not None:
            rows += self.forecast.rows(self.options, b, o)
        rows.append(("budgets file", str(self.budgets.path)))
        if self.options.resume_run:
            rows.append(("resumes", f"run {self.options.resume_run} from its last checkpoint, in its run directory"))
        if self.options.nodes > 1:
            n = self.options.nodes
            rows.insert(3, ("nodes", f"{n} x {o.instance_type}, created together in one network: {n} x"
                                     f" {o.total_usd_per_hour:.4f} = {self.options.group_usd_per_hour(o):.4f} USD/h"
                                     " (the budget below is at that rate); node 0 hosts the rendezvous, each node"
                                     " has its own dead-man's switch; a node that does not come up fails the run"
                                     " and every node is torn down"))
        if self.fallbacks:
            rows.append(("fallback", "; ".join(f"{i}. {offer_label(f)}" for i, f in enumerate(self.fallbacks, 2))))
        rows.append(("failed boots", f"at most {self.max_boot_usd:.4f} USD in total (--max-boot-usd), "
                                     "inside the budget; each is torn down and verified before the next offer"))
        if o.spot:
            rows.append(("preemption", self._recovery_words()))
        for offer, why in self.skipped:
            rows.append(("skipped", f"{offer_label(offer)}: {why}"))
        if self.account and account_words(self.account):
            rows.append(("account", account_words(self.account)))
        return rows

    def _recovery_words(self) -> str:
        """How a spot run's recovery draws on the cap: what a resume needs, and until when one is possible."""
        b = self.allowance
        need_usd = b.billing.cost(b.min_runtime_s + b.reserve_s, b.usd_per_hour)
        where = "the same offer, then the fallbacks" if self.fallbacks else "the same offer"
        until = b.max_usd - need_usd
        return (f"a reclaimed instance is verified gone and its billed time comes out of this budget; the run"
                f" resumes from its last checkpoint on {where} while what is left buys {duration(b.min_runtime_s)}"
                f" of training + {duration(b.reserve_s)} reserve ({need_usd:.4f} USD at this price): up to"
                f" {max(0.0, until):.4f} USD spent; past that it ends, nothing left billing")

    def _job_label(self) -> str:
        if self.options.command:
            return " ".join(self.options.command)
        label = "GPT-2 trainer (bundled)"
        f = self.forecast
        if f is None:
            return f"{label}, config {self.options.config}" if self.options.config else label
        label += f", recipe {f.recipe.name}: {f.recipe.summary}"
        if f.default and f.recipe.name == DEFAULT_GPU_RECIPE:
            label += " (the default with a GPU: --recipe picks another; an instance without CUDA runs the" \
                     f" CPU {DEFAULT_CPU_RECIPE} run)"
        return label


def account_words(account: dict[str, Any]) -> str:
    """The provider's account facts in words: balance, what already bills, the spend limit."""
    currency = str(account.get("currency") or "usd").upper()
    balance = account.get("balance_usd", account.get("balance"))
    parts = []
    if isinstance(balance, (int, float)):
        parts.append(f"balance {balance:.2f} {'USD' if 'balance_usd' in account else currency}")
    if isinstance(account.get("current_spend_usd_per_hour"), (int, float)):
        parts.append(f"billing now {account['current_spend_usd_per_hour']:.2f} USD/h")
    if isinstance(account.get("spend_limit_usd_per_hour"), (int, float)):
        parts.append(f"spend limit {account['spend_limit_usd_per_hour']:.2f} USD/h")
    return "; ".join(parts)


def offer_where(o: Offer) -> str:
    """Where an offer is: its region / location / zone and cloud type (RunPod's region is its cloud)."""
    parts: list[str] = []
    for x in (o.region, str(o.details.get("zone") or ""), str(o.details.get("cloud_type") or "")):
        if x and x.lower() not in (p.lower() for p in parts):
            parts.append(x)
    return ", ".join(parts)


def offer_label(o: Offer) -> str:
    """One offer in a line: `RTX 4090 x1 (NVIDIA GeForce RTX 4090, community) 0.3400 USD/h`."""
    where = ", ".join(x for x in (o.instance_type, offer_where(o)) if x)
    return f"{o.gpu} x{o.gpu_count} ({where}){' spot' if o.spot else ''} {o.total_usd_per_hour:.4f} USD/h"


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    if h >= 72:  # a forecast that long is a figure of speech: days, not minutes
        return f"{h // 24}d{h % 24:02d}h"
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def runs_root(explicit: str | None = None) -> Path:
    return settings.runs_dir(explicit)


def make_plan(options: LaunchOptions, now: float | None = None) -> LaunchPlan:
    """Everything is checked here; raises BudgetError, ProviderError or LaunchError with one actionable line."""
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
    if options.spot_fallback and not options.spot:
        raise LaunchError("--spot-fallback goes with --spot: it says what to rent when spot is not to be had")
    check_trainer_input(options)
    check_nodes_input(options)
    budgets = load_budgets(options.budgets)
    provider = get_provider(options.provider, **options.provider_options())
    provider.check_nodes(options.nodes)
    provider.check_credentials()
    offers: list[Offer] = []
    for gpu in split_gpus(options.gpu) or [None]:
        offers += provider.offers(gpu=gpu, count=options.gpus, spot=options.spot)
    ranked = rank_offers(offers, options.gpu)[:MAX_CANDIDATES]
    if options.spot and options.spot_fallback:  # then the same GPUs on-demand
        on_demand: list[Offer] = []
        for gpu in split_gpus(options.gpu) or [ranked[0].gpu]:
            on_demand += provider.offers(gpu=gpu, count=options.gpus, spot=False)
        ranked += [o for o in rank_offers(on_demand, options.gpu or ranked[0].gpu) if o not in ranked][:MAX_CANDIDATES]
    accepted: list[tuple[Offer, Allowance]] = []
    skipped: list[tuple[Offer, str]] = []
    first_refusal: Exception | None = None
    for offer in ranked:
        offer.billing = budgets.billing_for(provider.name)
        try:
            allowance = allowance_for(budgets, provider.name, options.max_usd, options.group_usd_per_hour(offer),
                                      now=now or time.time())
            provider.check_launchable(offer)  # quota, image support, credit to deploy
            # The account must be able to pay the cap, and the price must fit an hourly spend limit.
            provider.check_spend(allowance.max_usd, options.group_usd_per_hour(offer))
        except (BudgetError, ProviderError) as exc:
            skipped.append((offer, str(exc)))
            first_refusal = first_refusal or exc
            continue
        accepted.append((offer, allowance))
    if not accepted:
        assert first_refusal is not None
        raise first_refusal  # the chosen offer's own reason: one line saying what to change
    offer, allowance = accepted[0]
    image = provider.image_facts(options.image, offer)
    check_image(options, image)
    # The caps are checked again, atomically with the hold, when the run is created.
    check_caps(budgets, Ledger(), provider.name, allowance.max_usd)
    account = provider.account()
    recipe, default = recipe_for(options, has_gpu(offer))
    forecast = Forecast.of(options, recipe, default, offer) if recipe is not None else None
    return LaunchPlan(options, provider, offer, budgets, allowance, account, runs_root(options.runs_dir),
                      fallbacks=[o for o, _ in accepted[1:]], skipped=skipped,
                      max_boot_usd=boot_budget_usd(options, budgets, allowance.max_usd), forecast=forecast,
                      image=image)


# What a pip install of torch (the CUDA build: about 2.5 GB with its CUDA libraries) takes on a cloud
# instance; an estimate, for the plan only (the stop time bounds the real one).
TORCH_INSTALL_S = 300.0


def check_image(options: LaunchOptions, facts: ImageFacts) -> None:
    """Refuse before anything is created a trainer run on an image without torch where bootstrap
    may not install it (the local provider runs with the controller's own interpreter)."""
    if options.command or facts.torch is TorchOnImage.CARRIED or facts.installs:
        return
    raise ProviderError(f"{facts.image} {facts.torch.value}, and gpurun never installs into an interpreter it did not"
                        " create: install gpurun's train extra into it (pip install 'gpurun[train]'; `make setup`"
                        " does), or run your own command (-- CMD)")


def bootstrap_words(facts: ImageFacts, options: LaunchOptions, allowance: Allowance, offer: Offer) -> str:
    """The plan's bootstrap row: what it installs, and what that costs, before any training."""
    if options.command:
        return f"{facts.image}: a python / CUDA check; nothing is installed for your command"
    if facts.torch is TorchOnImage.CARRIED:
        return f"{facts.image} {facts.torch.value}: a check, nothing to install"
    usd = TORCH_INSTALL_S * allowance.usd_per_hour / 3600
    return (f"{facts.image} {facts.torch.value}: bootstrap pip-installs torch first, ~{duration(TORCH_INSTALL_S)}"
            f" ~ {usd:.4f} USD (estimate) out of the training time; one still installing at the stop time ends"
            " the run (use a PyTorch image, --image, to skip it)")


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
        if not Path(options.data_from).is_dir():
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


# --- the job: recipe, config, data ------------------------------------------------------------------
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


@dataclass
class Forecast:
    """What the money buys in training terms, for the chosen offer (figures from the recipe)."""

    recipe: Recipe
    default: bool  # chosen by gpurun, not named by --recipe
    tokens_per_step: int
    max_iters: int
    gpu_class: str | None
    tokens_per_s: float | None  # all GPUs together; None: no estimate for this GPU
    gpus: int
    prepare_s: float  # the data phase, 0 without one
    data: bool  # a data phase runs

    @classmethod
    def of(cls, options: LaunchOptions, recipe: Recipe, default: bool, offer: Offer) -> Forecast:
        cfg = effective_config(options, recipe)
        nodes = max(1, options.nodes)  # every node the same offer: N times the ranks (linear scaling assumed)
        gpus = max(1, offer.gpu_count) if has_gpu(offer) else 1
        world = (gpus if has_gpu(offer) else max(1, options.gpus)) * nodes
        klass = recipes.gpu_class(offer.gpu) if has_gpu(offer) else "cpu"
        data = data_phase(options, recipe)
        per_node = recipe.throughput(klass, gpus)
        return cls(recipe=recipe, default=default, tokens_per_step=recipes.tokens_per_step(cfg.to_dict(), world),
                   max_iters=cfg.max_iters, gpu_class=klass, tokens_per_s=per_node * nodes if per_node else per_node,
                   gpus=gpus * nodes if has_gpu(offer) else 1,
                   prepare_s=recipe.data.prepare_s(klass) if data else 0.0, data=data)

    @property
    def job_s(self) -> float | None:
        """Training seconds to max_iters at the expected throughput (None: no estimate)."""
        if not self.tokens_per_s:
            return None
        return self.max_iters * self.tokens_per_step / self.tokens_per_s

    def rows(self, options: LaunchOptions, allowance: Allowance, offer: Offer) -> list[tuple[str, str]]:
        r, h = self.recipe, recipes.human
        usd_h = allowance.usd_per_hour  # every node's price (the nodes prepare their data side by side)
        rows: list[tuple[str, str]] = []
        if self.data:
            origin = f"from {options.data_from} (uploaded)" if options.data_from else r.data.describe()
            rows.append(("data", f"{origin}: prepared on the instance first (phase preparing_data), "
                                 f"~{duration(self.prepare_s)} ~ {self.prepare_s * usd_h / 3600:.4f} USD (estimate), "
                                 "inside the training time; reused when the run resumes"))
        elif r.data.prepared_on_instance:
            rows.append(("data", "your data_dir / text_file (the recipe's data is not prepared)"))
        rows.append(("tokens", f"{self.tokens_per_step:,} per step; max_iters {self.max_iters:,} = "
                               f"{h(self.max_iters * self.tokens_per_step)} tokens"))
        left = max(0.0, allowance.train_s - self.prepare_s)
        if self.tokens_per_s is None:
            rows.append(("throughput", f"no estimate for {offer.gpu!r} (recipe {r.name} has figures for "
                                       f"{', '.join(r.tokens_per_s)})"))
            rows.append(("finish", f"the job ends at max_iters or the guard stops it after {duration(left)}"
                                   " of training, whichever comes first"))
            return rows
        per = self.tokens_per_s / (self.gpus if self.gpu_class != "cpu" else 1)
        gpus = f" x {self.gpus} = {h(self.tokens_per_s)} tok/s" if self.gpus > 1 and self.gpu_class != "cpu" else ""
        rows.append(("throughput", f"~{per:,.0f} tok/s per {self.gpu_class}{gpus} (recipe {r.name}'s figure; "
                                   "`gpurun recipes` says where each comes from)"))
        steps_in = left * self.tokens_per_s / self.tokens_per_step
        rows.append(("buys", f"~{min(steps_in, 1e12):,.0f} steps = ~{h(steps_in * self.tokens_per_step)} tokens in "
                             f"{duration(left)} of training (after the data phase; boot and setup come out of "
                             "it too)"))
        job_s = self.job_s or 0.0
        if self.prepare_s >= allowance.train_s:
            rows.append(("finish", f"the data phase alone (~{duration(self.prepare_s)}) uses up the "
                                   f"{duration(allowance.train_s)} of training time: nothing would train; "
                                   "raise --max-usd"))
        elif job_s <= left:
            spend = allowance.attempt_cost_at(self.prepare_s + job_s)
            rows.append(("finish", f"job ends at max_iters after ~{duration(job_s)} of training"
                                   f"{' + the data phase' if self.data else ''}, ~{spend:.4f} USD (then the "
                                   f"rest of the {allowance.max_usd:.2f} USD cap is not spent)"))
        else:
            rows.append(("finish", f"the guard stops it at {duration(allowance.train_s)}, after "
                                   f"~{steps_in:,.0f} of {self.max_iters:,} steps / ~{h(steps_in * self.tokens_per_step)}"
                                   " tokens (the checkpoint it saves is kept)"))
        return rows
