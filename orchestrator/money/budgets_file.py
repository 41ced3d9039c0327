"""budgets.yaml: finding it, parsing it, validating it. No money maths here (see budget.py).

Every error names the file, the line and the key, and says how to fix it. The lookup order is
--budgets FILE > ./budgets.yaml > $GPURUN_HOME/budgets.yaml > the packaged default (the root
budgets.yaml of the repository, shipped inside the wheel as orchestrator/money/budgets.yaml).
The `notify:` section becomes an orchestrator.notify_config.NotifyConfig: settings only, so reading
budgets.yaml never loads the notifier.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from orchestrator import settings
from orchestrator.money.errors import BudgetError
from orchestrator.money.pools import Pool, parse_pools, pool_of
from orchestrator.money.yaml_doc import YamlDoc
from orchestrator.notify_config import EVENTS, NotifyConfig
from orchestrator.state.db import default_home
from providers.base import BillingRule

__all__ = ["BudgetError", "Budgets", "ProviderBudget", "find_budgets_file", "load_budgets", "packaged_budgets_file"]

# Used when a budgets.yaml leaves these keys out (the packaged budgets.yaml spells them all out).
DEFAULT_RESERVE_S = 180.0
DEFAULT_MIN_RUNTIME_S = 300.0
DEFAULT_MAX_RUNTIME_H = 24.0
# The share of --max-usd that boots which never came up may cost, all offers tried together
# (--max-boot-usd when the launch gives none).
DEFAULT_BOOT_SHARE = 0.2
CONSERVATIVE_SOURCE = "conservative default: no published rule found"
CONSERVATIVE_BILLING = BillingRule(increment_s=600, minimum_s=0, source=CONSERVATIVE_SOURCE)

_PROVIDER_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


@dataclass
class ProviderBudget:
    billing: BillingRule
    daily_usd: float | None = None
    monthly_usd: float | None = None
    reserve_s: float | None = None
    min_runtime_s: float | None = None


@dataclass
class Budgets:
    path: Path
    per_run_default_usd: float
    per_run_max_usd: float
    daily_usd: float | None
    monthly_usd: float | None
    reserve_s: float = DEFAULT_RESERVE_S
    min_runtime_s: float = DEFAULT_MIN_RUNTIME_S
    max_runtime_h: float = DEFAULT_MAX_RUNTIME_H  # bounds a run whose price is 0
    boot_share: float = DEFAULT_BOOT_SHARE  # --max-boot-usd default = boot_share x --max-usd
    notify: NotifyConfig | None = None  # where run events go (orchestrator.notify); None: nowhere
    default_billing: BillingRule = CONSERVATIVE_BILLING
    providers: dict[str, ProviderBudget] = field(default_factory=dict)
    pools: dict[str, Pool] = field(default_factory=dict)  # people sharing a budget (money/pools.py)
    ledger: str | None = None  # a shared ledger's postgresql:// URL (GPURUN_LEDGER wins); None: ledger.db

    def pool_of(self, person: str) -> Pool | None:
        """The pool `person` launches in; None: only the account's caps apply to them."""
        return pool_of(self.pools, person)

    def billing_for(self, provider: str) -> BillingRule:
        pb = self.providers.get(provider)
        return pb.billing if pb is not None else self.default_billing

    def reserve_for(self, provider: str) -> float:
        pb = self.providers.get(provider)
        return pb.reserve_s if pb is not None and pb.reserve_s is not None else self.reserve_s

    def min_runtime_for(self, provider: str) -> float:
        pb = self.providers.get(provider)
        return pb.min_runtime_s if pb is not None and pb.min_runtime_s is not None else self.min_runtime_s


# ---- finding and loading budgets.yaml ---------------------------------------------------------


def packaged_budgets_file() -> Path:
    # A real file in a wheel; in a checkout, a symlink to the one budgets.yaml at the repository root.
    return Path(str(resources.files("orchestrator.money").joinpath("budgets.yaml"))).resolve()


def find_budgets_file(explicit: str | Path | None = None, cwd: Path | None = None) -> Path:
    """--budgets FILE > ./budgets.yaml > $GPURUN_HOME/budgets.yaml > the packaged default."""
    if explicit is not None and str(explicit) != "":
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise BudgetError(f"--budgets {explicit}: no such file: fix the path, or drop --budgets to use the default lookup")
        return path
    here = (cwd if cwd is not None else Path.cwd()) / "budgets.yaml"
    if here.is_file():
        return here
    home = default_home() / "budgets.yaml"
    if home.is_file():
        return home
    return packaged_budgets_file()


_TOP_KEYS = (
    "per_run_default_usd",
    "per_run_max_usd",
    "daily_usd",
    "monthly_usd",
    "reserve_s",
    "min_runtime_s",
    "max_runtime_h",
    "boot_share",
    "notify",
    "default_billing",
    "providers",
    "pools",
    "ledger",
)
# key: (must be > 0, may be null)
_NUMBER_KEYS = {
    "per_run_default_usd": (True, False),
    "per_run_max_usd": (True, False),
    "daily_usd": (False, True),
    "monthly_usd": (False, True),
    "reserve_s": (False, False),
    "min_runtime_s": (False, False),
    "max_runtime_h": (True, False),
    "boot_share": (True, False),
}
_PROVIDER_KEYS = ("billing", "daily_usd", "monthly_usd", "reserve_s", "min_runtime_s")
_BILLING_KEYS = ("increment_s", "minimum_s", "source")


_NOTIFY_KEYS = ("webhook", "ntfy", "command", "events", "timeout_s")


def _notify(doc: YamlDoc, node: yaml.Node) -> NotifyConfig | None:
    if doc.scalar(node) is None:
        return None
    items = doc.mapping(node, "notify", _NOTIFY_KEYS)
    values: dict[str, Any] = {}
    for name in ("webhook", "ntfy"):
        if name in items and doc.scalar(items[name][1]) is not None:
            url = doc.scalar(items[name][1])
            # Never echo the value: a webhook URL is its own credential.
            if not isinstance(url, str) or not url.startswith(("https://", "http://")):
                raise doc.fail(items[name][1], f"notify.{name}", "must be an http(s):// URL (the value is not shown: it may be a secret)")
            values[name] = url
    if "command" in items and doc.scalar(items["command"][1]) is not None:
        values["command"] = doc.string(items["command"][1], "notify.command")
    if "events" in items:
        enode = items["events"][1]
        names = [doc.scalar(n) for n in enode.value] if isinstance(enode, yaml.SequenceNode) else None
        if names is None or not names or any(n not in EVENTS for n in names):
            raise doc.fail(enode, "notify.events", f"must be a list of events from: {', '.join(EVENTS)}")
        values["events"] = tuple(names)
    if "timeout_s" in items:
        timeout = doc.number(items["timeout_s"][1], "notify.timeout_s", positive=True)
        assert timeout is not None
        if timeout > 60:
            raise doc.fail(items["timeout_s"][1], "notify.timeout_s", f"({timeout:g}) must be at most 60 s")
        values["timeout_s"] = timeout
    return NotifyConfig(**values)


def _billing(doc: YamlDoc, pair: tuple[yaml.Node, yaml.Node], key: str) -> BillingRule:
    key_node, node = pair
    items = doc.mapping(node, key, _BILLING_KEYS)
    for required in _BILLING_KEYS:
        if required not in items:
            raise doc.fail(key_node, f"{key}.{required}", "is missing: every billing rule needs increment_s, minimum_s and source")
    inc = doc.number(items["increment_s"][1], f"{key}.increment_s", positive=True, integer=True)
    minimum = doc.number(items["minimum_s"][1], f"{key}.minimum_s", integer=True)
    source = doc.string(items["source"][1], f"{key}.source")
    assert inc is not None and minimum is not None
    return BillingRule(increment_s=int(inc), minimum_s=int(minimum), source=source)


def _read(path: str | Path | None) -> YamlDoc:
    file = find_budgets_file(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise BudgetError(f"{file}: cannot read it ({exc.strerror}): check the file and its permissions") from None
    doc = YamlDoc(file, text)
    if doc.root is None:
        raise BudgetError(f"{file}: the file is empty: copy the packaged budgets.yaml ({packaged_budgets_file()}) and edit it")
    return doc


def _caps(doc: YamlDoc, top: dict[str, tuple[yaml.Node, yaml.Node]]) -> tuple[float, float, float | None, float | None]:
    """(per_run_default_usd, per_run_max_usd, daily_usd, monthly_usd): the keys every budgets.yaml sets."""

    def required(name: str, hint: str) -> yaml.Node:
        if name not in top:
            raise BudgetError(f"{doc.path}: {name} is missing: {hint}")
        return top[name][1]

    default_usd = doc.number(required("per_run_default_usd", "set the budget used without --max-usd"),
                             "per_run_default_usd", positive=True)
    max_usd = doc.number(required("per_run_max_usd", "set the largest --max-usd a launch may ask for"),
                         "per_run_max_usd", positive=True)
    daily = doc.number(required("daily_usd", "set a number, or null for no daily cap"), "daily_usd", nullable=True)
    monthly = doc.number(required("monthly_usd", "set a number, or null for no monthly cap"), "monthly_usd", nullable=True)
    assert default_usd is not None and max_usd is not None
    if default_usd > max_usd:
        raise doc.fail(top["per_run_default_usd"][1], "per_run_default_usd",
                       f"({default_usd:g}) is above per_run_max_usd ({max_usd:g}): lower it or raise per_run_max_usd")
    return default_usd, max_usd, daily, monthly


def _provider(doc: YamlDoc, key: str, node: yaml.Node, default_billing: BillingRule) -> ProviderBudget:
    """One entry of providers: (empty: every default)."""
    if doc.scalar(node) is None:  # "aws:" with nothing under it: all defaults
        return ProviderBudget(billing=default_billing)
    items = doc.mapping(node, key, _PROVIDER_KEYS)

    def usd_or_s(name: str) -> float | None:
        return doc.number(items[name][1], f"{key}.{name}", nullable=True) if name in items else None

    return ProviderBudget(
        billing=_billing(doc, items["billing"], f"{key}.billing") if "billing" in items else default_billing,
        daily_usd=usd_or_s("daily_usd"),
        monthly_usd=usd_or_s("monthly_usd"),
        reserve_s=usd_or_s("reserve_s"),
        min_runtime_s=usd_or_s("min_runtime_s"),
    )


def _providers(doc: YamlDoc, node: yaml.Node, default_billing: BillingRule) -> dict[str, ProviderBudget]:
    out: dict[str, ProviderBudget] = {}
    if doc.scalar(node) is None:
        return out
    for name, (knode, vnode) in doc.mapping(node, "providers", None).items():
        key = f"providers.{name}"
        if not _PROVIDER_NAME_RE.match(name):
            raise doc.fail(knode, key, "is not a provider name: use lower-case letters, digits, - and _")
        out[name] = _provider(doc, key, vnode, default_billing)
    return out


def load_budgets(path: str | Path | None = None) -> Budgets:
    """Load and validate budgets.yaml (path None: see find_budgets_file)."""
    doc = _read(path)
    top = doc.mapping(doc.root, "", _TOP_KEYS)
    # Type errors first, in file order: a wrong value is reported even when another key is missing.
    for name, (_, vnode) in top.items():
        if name in _NUMBER_KEYS:
            positive, nullable = _NUMBER_KEYS[name]
            doc.number(vnode, name, positive=positive, nullable=nullable)
    default_usd, max_usd, daily, monthly = _caps(doc, top)

    def optional(name: str, default: float, positive: bool = False) -> float:
        if name not in top:
            return default
        value = doc.number(top[name][1], name, positive=positive)
        assert value is not None
        return value

    budgets = Budgets(
        path=doc.path,
        per_run_default_usd=default_usd,
        per_run_max_usd=max_usd,
        daily_usd=daily,
        monthly_usd=monthly,
        reserve_s=optional("reserve_s", DEFAULT_RESERVE_S),
        min_runtime_s=optional("min_runtime_s", DEFAULT_MIN_RUNTIME_S),
        max_runtime_h=optional("max_runtime_h", DEFAULT_MAX_RUNTIME_H, positive=True),
        boot_share=optional("boot_share", DEFAULT_BOOT_SHARE, positive=True),
        default_billing=(_billing(doc, top["default_billing"], "default_billing")
                         if "default_billing" in top else CONSERVATIVE_BILLING),
    )
    if "notify" in top:
        budgets.notify = _notify(doc, top["notify"][1])
    if budgets.boot_share > 1:
        raise doc.fail(top["boot_share"][1], "boot_share",
                       f"({budgets.boot_share:g}) is a share of --max-usd: use a number in (0, 1], e.g. 0.2")
    if "providers" in top:
        budgets.providers = _providers(doc, top["providers"][1], budgets.default_billing)
    if "pools" in top:
        budgets.pools = parse_pools(doc, top["pools"][1])
    if "ledger" in top and doc.scalar(top["ledger"][1]) is not None:
        budgets.ledger = _ledger(doc, top["ledger"][1])
    return budgets


def _ledger(doc: YamlDoc, node: yaml.Node) -> str:
    """`ledger:` a team's PostgreSQL (the value is never echoed: it may hold a password)."""
    value = doc.scalar(node)
    try:
        url = settings.ledger_url({settings.LEDGER: value}) if isinstance(value, str) else None
    except settings.SettingsError:
        url = None
    if url is None:
        raise doc.fail(node, "ledger", "must be a postgresql://user:password@host:5432/db URL"
                       " (the value is not shown: it may hold a password)")
    return url
