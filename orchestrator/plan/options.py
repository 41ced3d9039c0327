"""What `gpurun launch` was asked: `LaunchOptions` (every flag), and `LaunchError` for input that is wrong.

The checks that refuse a launch are plan/refusals.py; plan/launch.py turns the options into a plan.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from providers import provider_class
from providers.base import Offer, ProviderError

# `--provider any`: every provider with credentials is asked, and the offers ranked by the recipe's
# tokens per dollar (plan/market.py); fallback walks that list across providers.
ANY_PROVIDER = "any"


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
    upload_mbps: float | None = None  # the home link's upload rate, for planning --data-from's send
    # `--checkpoints-to s3://bucket/prefix`: the instance uploads each checkpoint there; home
    # fetches them after the run (`--endpoint-url`: any S3-compatible store).
    checkpoints_to: str | None = None
    endpoint_url: str | None = None
    command: list[str] = field(default_factory=list)  # any other command instead of the trainer
    workdir: str | None = None  # uploaded as code/ for a custom command
    trainer_args: list[str] = field(default_factory=list)
    usd_per_hour: float | None = None  # price of the local provider's "instance"
    egress_usd_per_gb: float | None = None  # the local provider's data-transfer-out price (a pretend cloud's)
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

    @property
    def any_provider(self) -> bool:
        return self.provider == ANY_PROVIDER

    def provider_options(self, name: str | None = None) -> dict[str, Any]:
        """Constructor options for the provider (`name`, default --provider): only those its class
        declares it takes (`Provider.launch_options`); an option it does not take is refused in one
        line. With --provider any each provider takes what applies to it (plan/refusals.py refuses
        the options that name one provider's things)."""
        name = name or self.provider
        if self.disk_gb is not None and self.disk_gb < 1:
            raise ProviderError(f"--disk-gb must be at least 1 GB, got {self.disk_gb}")
        given = {"usd_per_hour": self.usd_per_hour, "image": self.image, "disk_gb": self.disk_gb,
                 "egress_usd_per_gb": self.egress_usd_per_gb}
        takes = provider_class(name).launch_options
        for key, value in given.items():
            if value is not None and key not in takes and not self.any_provider:
                flag = "--" + key.replace("_", "-")
                raise ProviderError(f"{flag} does not apply to provider {self.provider!r}"
                                    + (": cloud prices are read live" if key in ("usd_per_hour", "egress_usd_per_gb")
                                       else ""))
        return {key: value for key, value in given.items() if value is not None and key in takes}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
