"""`--provider any`'s ranking (orchestrator/plan/market.py), piece by piece; end to end against the
cloud fakes: tests/test_e2e_any.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from orchestrator.plan.egress import expected_pulls
from orchestrator.plan.market import Market, rank_entry
from orchestrator.plan.options import ANY_PROVIDER, LaunchOptions
from providers.base import Offer
from providers.local import LocalProvider
from tests.e2e_helpers import REPO, assert_one_line_error
from trainer import recipes

LAB = recipes.RECIPES["lab"]  # A100 300k tok/s, H100 450k, RTX 4090 250k, no figure for a V100
OPTIONS = LaunchOptions(provider=ANY_PROVIDER, recipe="lab")


def offer(provider: str, gpu: str, usd_per_hour: float, **kw: object) -> Offer:
    return Offer(provider=provider, gpu=gpu, gpu_count=1, instance_type=f"{gpu}-box", usd_per_hour=usd_per_hour,
                 **kw)  # type: ignore[arg-type]


def test_tokens_per_dollar_counts_storage_and_an_hours_egress() -> None:
    plain = offer("b", "A100", 1.0, extra_usd_per_hour=0.2)
    billed = offer("a", "A100", 1.0, extra_usd_per_hour=0.2, egress_usd_per_gb=0.09)
    free, paid = rank_entry(OPTIONS, LAB, plain, 30.0), rank_entry(OPTIONS, LAB, billed, 30.0)
    assert free is not None and paid is not None
    assert free.tokens_per_usd == 300_000 * 3600 / 1.2  # the price with storage
    egress = expected_pulls(OPTIONS, billed, 3600.0, 30.0).bytes / 1e9 * 0.09  # an hour's pulls at its rate
    assert egress > 0 and paid.egress_usd_per_hour == egress
    assert paid.tokens_per_usd == 300_000 * 3600 / (1.2 + egress)


def test_ranked_by_tokens_per_dollar_not_price_and_unknown_gpus_noted() -> None:
    market = Market(providers={"a": LocalProvider(), "b": LocalProvider()})
    offers = [offer("a", "RTX 4090", 1.0), offer("b", "A100", 1.1), offer("a", "Tesla V100", 0.3),
              offer("b", "H100", 1.70), offer("b", "A100", 1.2, available=False)]
    ranked = market.ranked(OPTIONS, offers)
    # A100 at 1.10: 982M tokens/USD; H100 at 1.70: 953M; the RTX 4090 at 1.00 is the cheapest ranked
    # offer per hour but buys 900M.
    assert [(r.offer.provider, r.offer.gpu) for r in ranked] == [("b", "A100"), ("b", "H100"), ("a", "RTX 4090")]
    assert any("Tesla V100" in note for note in market.notes)  # the cheapest of all: no tokens/s figure
    only = market.ranked(LaunchOptions(provider=ANY_PROVIDER, recipe="lab", gpu="H100,RTX 4090"), offers)
    assert [r.offer.gpu for r in only] == ["H100", "RTX 4090"]  # --gpu keeps the user's GPUs only


def test_a_command_is_ranked_by_price() -> None:
    market = Market(providers={"a": LocalProvider(), "b": LocalProvider()})
    command = LaunchOptions(provider=ANY_PROVIDER, command=["python", "train.py"])
    ranked = market.ranked(command, [offer("a", "H100", 2.0), offer("b", "Tesla V100", 0.4)])
    assert [r.offer.gpu for r in ranked] == ["Tesla V100", "H100"] and ranked[0].tokens_per_usd is None


def test_any_without_a_provider_with_credentials_is_refused_in_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "RUNPOD_", "DATACRUNCH_", "VERDA_")) and k != "GPURUN_PROVIDERS"}
    env.update(HOME=str(tmp_path), AWS_EC2_METADATA_DISABLED="true", PYTHONPATH=str(REPO),
               GPURUN_HOME=str(tmp_path / "home"))
    res = subprocess.run([sys.executable, "-m", "orchestrator.cli.main", "launch", "--provider", "any", "--dry-run"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    line = assert_one_line_error(res, "--provider any: no provider can be used", "runpod: skipped",
                                 "datacrunch: skipped")
    assert "local" not in line.split("used:")[1].split(";")[0]  # the local provider is never asked
    res = subprocess.run([sys.executable, "-m", "orchestrator.cli.main", "launch", "--provider", "any", "--image",
                          "ami-1", "--dry-run"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
                         stdin=subprocess.DEVNULL)
    assert_one_line_error(res, "--image sets one provider's image", "--provider NAME")
