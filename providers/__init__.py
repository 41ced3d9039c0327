"""Provider registry: name -> implementation, imported only when that provider is used."""

from __future__ import annotations

import importlib
import os
from typing import Any

from providers.base import Provider, ProviderError

# name -> "module:Class".
_REGISTRY: dict[str, str] = {
    "local": "providers.local:LocalProvider",
    "runpod": "providers.runpod:RunPodProvider",
    "aws": "providers.aws:AWSProvider",
    "datacrunch": "providers.datacrunch:DataCrunchProvider",
}
# Other names users type for a provider: DataCrunch was renamed Verda.
_ALIASES: dict[str, str] = {"verda": "datacrunch"}


class UnknownProviderError(ProviderError):
    pass


def _load_plugins() -> None:
    """GPURUN_PROVIDERS="name=module:Class,...": providers from outside this package (plugins, tests)."""
    for item in filter(None, (x.strip() for x in os.environ.get("GPURUN_PROVIDERS", "").split(","))):
        name, eq, target = item.partition("=")
        if not eq or ":" not in target:
            raise ProviderError(f"GPURUN_PROVIDERS entry {item!r}: expected name=module:Class")
        _REGISTRY.setdefault(name.strip().lower(), target.strip())


def provider_names(aliases: bool = False) -> list[str]:
    """Every provider once (for sweep, audit); with aliases, every name `--provider` accepts."""
    _load_plugins()
    return sorted({*_REGISTRY, *(_ALIASES if aliases else ())})


def register(name: str, target: str) -> None:
    """Add a provider ("module:Class"); used by tests and plugins."""
    _REGISTRY[name] = target


def provider_class(name: str) -> type[Provider]:
    """The class registered under `name` (or an alias), its module imported now, not before."""
    _load_plugins()
    key = (name or "").strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        raise UnknownProviderError(
            f"unknown provider {name!r}: choose one of {', '.join(provider_names(aliases=True))}"
        )
    module_name, _, class_name = _REGISTRY[key].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ProviderError(
            f"provider {key!r} needs the {exc.name!r} package: pip install 'gpurun[{key}]'"
        ) from exc
    cls = vars(module).get(class_name)
    if not (isinstance(cls, type) and issubclass(cls, Provider)):
        raise ProviderError(f"provider {key!r}: {_REGISTRY[key]} is not a Provider class")
    return cls


def get_provider(name: str, **options: Any) -> Provider:
    return provider_class(name)(**options)
