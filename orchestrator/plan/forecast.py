"""What a launch's money buys, for the plan to show: the recipe's training terms on the chosen offer, and bootstrap's cost.

Figures come from the recipe (trainer/recipes.py) and the allowance (orchestrator/money/budget.py);
plan/launch.py adds these rows to the plan.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.money.budget import Allowance
from orchestrator.plan.job import data_phase, effective_config, has_gpu
from orchestrator.plan.options import LaunchOptions
from orchestrator.plan.quality import QualityBuy, no_estimate_words
from orchestrator.plan.words import duration
from providers.base import ImageFacts, Offer, TorchOnImage
from trainer import recipes
from trainer.recipes import Recipe

# What a pip install of torch (the CUDA build: about 2.5 GB with its CUDA libraries) takes on a cloud
# instance; an estimate, for the plan only (the stop time bounds the real one).
TORCH_INSTALL_S = 300.0


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
            if r.quality is not None:
                rows.append(("quality", no_estimate_words(r.quality, offer.gpu)))
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
        buy = self.quality(allowance)
        if buy is not None:
            rows.append(("quality", buy.words()))
        return rows

    def quality(self, allowance: Allowance) -> QualityBuy | None:
        """Whether the tokens this allowance trains reach the recipe's quality target (None: the recipe
        names none, or there is no throughput figure for this GPU)."""
        target = self.recipe.quality
        if target is None or not self.tokens_per_s:
            return None
        left = max(0.0, allowance.train_s - self.prepare_s)
        job_tokens = float(self.max_iters * self.tokens_per_step)
        bought = min(left * self.tokens_per_s, job_tokens)
        needed = allowance.attempt_cost_at(self.prepare_s + target.tokens / self.tokens_per_s)
        return QualityBuy(target, self.tokens_per_s, bought, needed, job_tokens,
                          device="CPU" if self.gpu_class == "cpu" else "GPU")
