"""Provider registry: name -> implementation, imported only when that provider is used."""

from __future__ import annotations

import importlib
from typing import Any

from providers.base import Provider, ProviderError

# name -> "module:Class". Aliases point at the same class (DataCrunch was renamed Verda).
_REGISTRY: dict[str, str] = {
    "local": "providers.local:LocalProvider",
    "runpod": "providers.runpod:RunPodProvider",
    "aws": "providers.aws:AWSProvider",
    "datacrunch": "providers.datacrunch:DataCrunchProvider",
    "verda": "providers.datacrunch:DataCrunchProvider",
}


class UnknownProviderError(ProviderError):
    pass


def provider_names() -> list[str]:
    return sorted(_REGISTRY)


def register(name: str, target: str) -> None:
    """Add a provider ("module:Class"); used by tests and plugins."""
    _REGISTRY[name] = target


def get_provider(name: str, **options: Any) -> Provider:
    key = (name or "").strip().lower()
    if key not in _REGISTRY:
        raise UnknownProviderError(
            f"unknown provider {name!r}: choose one of {', '.join(provider_names())}"
        )
    module_name, _, class_name = _REGISTRY[key].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ProviderError(
            f"provider {key!r} needs the {exc.name!r} package: pip install 'gpurun[{key}]'"
        ) from exc
    return getattr(module, class_name)(**options)
