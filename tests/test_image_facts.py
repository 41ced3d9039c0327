"""The plan says, before anything is rented, whether the image carries PyTorch, and what bootstrap's
install of it would cost where it does not (issue: a slow bootstrap is billed time)."""

from __future__ import annotations

import pytest

from orchestrator.money.budget import Allowance
from orchestrator.plan.forecast import TORCH_INSTALL_S, bootstrap_words
from orchestrator.plan.options import LaunchOptions
from orchestrator.plan.refusals import check_image
from providers.aws.instance import AWSProvider
from providers.base import BillingRule, ImageFacts, Offer, ProviderError, TorchOnImage
from providers.datacrunch.instance import DEFAULT_IMAGE as DC_DEFAULT_IMAGE
from providers.datacrunch.instance import DataCrunchProvider
from providers.runpod.instance import DEFAULT_IMAGE as RUNPOD_DEFAULT_IMAGE
from providers.runpod.instance import RunPodProvider


def offer(**details: str) -> Offer:
    return Offer(provider="x", gpu="V100", gpu_count=1, instance_type="1V100.6V", usd_per_hour=0.36,
                 details=dict(details))


def test_each_clouds_default_image_and_a_users_own() -> None:
    runpod = RunPodProvider(api_key="rpa_X")
    assert runpod.image_facts(None, offer()) == ImageFacts(RUNPOD_DEFAULT_IMAGE, TorchOnImage.CARRIED)
    assert runpod.image_facts("ubuntu:22.04", offer()).torch is TorchOnImage.UNKNOWN
    assert AWSProvider().image_facts(None, offer()).torch is TorchOnImage.CARRIED  # the PyTorch Deep Learning AMI
    assert AWSProvider().image_facts("ami-0123456789abcdef0", offer()).torch is TorchOnImage.UNKNOWN
    dc = DataCrunchProvider(client_id="id", client_secret="secret")
    assert dc.image_facts(None, offer()) == ImageFacts(DC_DEFAULT_IMAGE, TorchOnImage.ABSENT)  # CUDA, no PyTorch
    # What check_launchable picked for the type: a PyTorch image where the type lists one.
    picked = offer(image="ubuntu-22.04-cuda-12.4-pytorch-2.5", image_choice="picked: PyTorch + CUDA 12.4")
    assert dc.image_facts(None, picked).torch is TorchOnImage.CARRIED
    assert dc.image_facts(None, offer(image="ubuntu-24.04-cuda-12.8-open-docker")).torch is TorchOnImage.ABSENT


def allowance(usd_per_hour: float) -> Allowance:
    rule = BillingRule(1, 0, "test")
    return Allowance(provider="datacrunch", max_usd=3.0, usd_per_hour=usd_per_hour, billing=rule, reserve_s=60,
                     min_runtime_s=60, max_runtime_s=3600, clock_start_epoch=0.0, deadline_epoch=3600.0,
                     stop_at_epoch=3540.0, train_s=3540)


def test_the_bootstrap_row_prices_a_torch_install_where_the_image_lacks_it() -> None:
    words = bootstrap_words(ImageFacts(DC_DEFAULT_IMAGE, TorchOnImage.ABSENT), LaunchOptions(), allowance(0.36),
                            offer())
    usd = TORCH_INSTALL_S * 0.36 / 3600
    assert words.startswith(f"{DC_DEFAULT_IMAGE} has no PyTorch: bootstrap pip-installs torch first")
    assert f"{usd:.4f} USD (estimate)" in words and "use a PyTorch image" in words
    carried = bootstrap_words(ImageFacts("img", TorchOnImage.CARRIED), LaunchOptions(), allowance(1), offer())
    assert carried == "img carries PyTorch: a check, nothing to install"
    command = bootstrap_words(ImageFacts("img", TorchOnImage.ABSENT), LaunchOptions(command=["make"]), allowance(1),
                              offer())
    assert "nothing is installed for your command" in command


def test_an_image_without_torch_that_may_not_be_installed_into_is_refused_for_the_trainer() -> None:
    never = ImageFacts("this Python (/usr/bin/python3)", TorchOnImage.ABSENT, installs=False)
    with pytest.raises(ProviderError, match="never installs into an interpreter it did not create"):
        check_image(LaunchOptions(), never)
    check_image(LaunchOptions(command=["sh", "-c", "true"]), never)  # a command needs no torch
    check_image(LaunchOptions(), ImageFacts("img", TorchOnImage.ABSENT))  # a cloud image: bootstrap installs
