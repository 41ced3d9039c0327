"""Turn `gpurun launch` options into a plan: provider, offer, live price, deadline. No side effects.

Everything that can refuse a launch (unknown provider, missing credentials, unknown GPU, a budget
too small, a cap already spent, a balance too low) refuses here, before anything is created.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from orchestrator import settings
from orchestrator.budget import Allowance, allowance_for, check_caps
from orchestrator.budgets_file import BudgetError, Budgets, load_budgets
from orchestrator.ledger import Ledger
from providers import get_provider, provider_class
from providers.base import Offer, Provider, ProviderError, rank_offers, split_gpus
from trainer import config as trainer_config

# Trainer flags the controller passes itself (lifecycle.job_command, bootstrap.trainer_command): a
# `--set` of one would be overridden on the instance or clash with it.
SET_BY_GPURUN = {
    "deadline_epoch": "gpurun sets it from the budget (--max-usd)",
    "out_dir": "gpurun sets it; the outputs come home to runs/<run-id>/out",
    "config": "pass the file with --config FILE (it is uploaded with the trainer)",
    "nproc_per_node": "gpurun runs one rank per GPU: use --gpus",
}


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
    config: str | None = None  # trainer YAML config (uploaded with the trainer)
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
            ("budget", f"{b.max_usd:.4f} USD  ->  {_duration(b.max_runtime_s)} of billed time"),
            ("training", f"{_duration(b.train_s)}, then the guard stops the job "
                         f"({_duration(b.reserve_s)} reserved for the final sync and teardown)"),
            ("job", " ".join(self.options.command) if self.options.command else "GPT-2 trainer (bundled)"),
            ("budgets file", str(self.budgets.path)),
        ]
        if self.fallbacks:
            rows.append(("fallback", "; ".join(f"{i}. {offer_label(f)}" for i, f in enumerate(self.fallbacks, 2))))
        rows.append(("failed boots", f"at most {self.max_boot_usd:.4f} USD in total (--max-boot-usd), "
                                     "inside the budget; each is torn down and verified before the next offer"))
        for offer, why in self.skipped:
            rows.append(("skipped", f"{offer_label(offer)}: {why}"))
        if self.account:
            rows.append(("account", ", ".join(f"{k}={v}" for k, v in self.account.items())))
        return rows


def offer_label(o: Offer) -> str:
    """One offer in a line: `RTX 4090 x1 (NVIDIA GeForce RTX 4090, COMMUNITY) 0.3400 USD/h`."""
    parts: list[str] = []
    for x in (o.instance_type, o.region, str(o.details.get("cloud_type") or "")):
        if x and x.lower() not in (p.lower() for p in parts):  # RunPod's region is its cloud type
            parts.append(x)
    where = ", ".join(parts)
    return f"{o.gpu} x{o.gpu_count} ({where}){' spot' if o.spot else ''} {o.total_usd_per_hour:.4f} USD/h"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
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
    check_trainer_input(options)
    budgets = load_budgets(options.budgets)
    provider = get_provider(options.provider, **options.provider_options())
    provider.check_credentials()
    offers: list[Offer] = []
    for gpu in split_gpus(options.gpu) or [None]:
        offers += provider.offers(gpu=gpu, count=options.gpus, spot=options.spot)
    ranked = rank_offers(offers, options.gpu)[:MAX_CANDIDATES]
    accepted: list[tuple[Offer, Allowance]] = []
    skipped: list[tuple[Offer, str]] = []
    first_refusal: Exception | None = None
    for offer in ranked:
        offer.billing = budgets.billing_for(provider.name)
        try:
            allowance = allowance_for(budgets, provider.name, options.max_usd, offer.total_usd_per_hour,
                                      now=now or time.time())
            provider.check_launchable(offer)  # quota, image support, credit to deploy
            # The account must be able to pay the cap, and the price must fit an hourly spend limit.
            provider.check_spend(allowance.max_usd, offer.total_usd_per_hour)
        except (BudgetError, ProviderError) as exc:
            skipped.append((offer, str(exc)))
            first_refusal = first_refusal or exc
            continue
        accepted.append((offer, allowance))
    if not accepted:
        assert first_refusal is not None
        raise first_refusal  # the chosen offer's own reason: one line saying what to change
    offer, allowance = accepted[0]
    # The caps are checked again, atomically with the hold, when the run is created.
    check_caps(budgets, Ledger(), provider.name, allowance.max_usd)
    account = provider.account()
    return LaunchPlan(options, provider, offer, budgets, allowance, account, runs_root(options.runs_dir),
                      fallbacks=[o for o, _ in accepted[1:]], skipped=skipped,
                      max_boot_usd=boot_budget_usd(options, budgets, allowance.max_usd))


def boot_budget_usd(options: LaunchOptions, budgets: Budgets, max_usd: float) -> float:
    """--max-boot-usd, checked; default budgets.yaml's boot_share of the cap."""
    if options.max_boot_usd is None:
        return budgets.boot_share * max_usd
    value = options.max_boot_usd
    if not (isinstance(value, (int, float)) and math.isfinite(value) and 0 < value <= max_usd + 1e-9):
        raise LaunchError(f"--max-boot-usd {value}: must be more than 0 and at most --max-usd ({max_usd:g}):"
                          " it is the part of the budget that failed boots may use")
    return float(value)


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
    except trainer_config.ConfigError as e:
        raise LaunchError(f"trainer config refused, nothing was rented: {e}") from None
