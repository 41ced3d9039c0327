"""budgets.yaml: finding it, parsing it, validating it. No money maths here (see budget.py).

Every error names the file, the line and the key, and says how to fix it. The lookup order is
--budgets FILE > ./budgets.yaml > $GPURUN_HOME/budgets.yaml > the packaged default (the root
budgets.yaml of the repository, shipped inside the wheel as orchestrator/money/budgets.yaml).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from orchestrator.notify import EVENTS, NotifyConfig
from orchestrator.state.ledger import default_home
from providers.base import BillingRule

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


class BudgetError(Exception):
    """A budget problem. str(e) is one line: what is wrong and how to fix it."""


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


class _Doc:
    """A composed YAML document: values plus the line each key sits on (for error messages)."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.name = str(path)
        try:
            self.root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            where = f" line {mark.line + 1}" if mark is not None else ""
            raise BudgetError(
                f"{self.name}{where}: not valid YAML ({exc.problem or exc.context}): fix the syntax"
            ) from None
        except yaml.YAMLError as exc:
            raise BudgetError(f"{self.name}: not valid YAML ({exc}): fix the syntax") from None

    def fail(self, node: yaml.Node | None, key: str, message: str) -> BudgetError:
        where = f" line {node.start_mark.line + 1}" if node is not None else ""
        return BudgetError(f"{self.name}{where}: {key} {message}")

    def mapping(self, node: yaml.Node, key: str, allowed: tuple[str, ...] | None) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        """{name: (key node, value node)}; unknown and duplicate keys are errors."""
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, key or "the file", f"must be a mapping of keys to values, got {_show(node)}")
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for knode, vnode in node.value:
            name = knode.value if isinstance(knode, yaml.ScalarNode) else None
            dotted = f"{key}.{name}" if key else str(name)
            if not isinstance(name, str) or knode.tag != "tag:yaml.org,2002:str":
                raise self.fail(knode, dotted, "is not a valid key: keys are plain names")
            if name in out:
                raise self.fail(knode, dotted, f"appears twice (first on line {out[name][0].start_mark.line + 1}): keep one")
            if allowed is not None and name not in allowed:
                raise self.fail(knode, dotted, f"is not a known key: use one of {', '.join(allowed)}")
            out[name] = (knode, vnode)
        return out

    def scalar(self, node: yaml.Node) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            return _Unreadable(node)
        return yaml.SafeLoader("").construct_object(node, deep=True)

    def number(
        self, node: yaml.Node, key: str, *, positive: bool = False, nullable: bool = False, integer: bool = False
    ) -> float | None:
        value = self.scalar(node)
        if value is None and nullable:
            return None
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if ok and integer and float(value) != int(value):
            ok = False
        if ok and (value <= 0 if positive else value < 0):
            ok = False
        if not ok:
            kind = "a whole number" if integer else "a number"
            bound = "> 0" if positive else ">= 0"
            extra = " (or null for no cap)" if nullable else ""
            raise self.fail(node, key, f"must be {kind} {bound}{extra}, got {_show_value(value, node)}")
        return float(value)

    def string(self, node: yaml.Node, key: str) -> str:
        value = self.scalar(node)
        if not isinstance(value, str) or not value.strip():
            raise self.fail(node, key, f"must be a non-empty text, got {_show_value(value, node)}")
        return value


class _Unreadable:
    def __init__(self, node: yaml.Node) -> None:
        self.node = node


def _show(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return repr(node.value)


def _show_value(value: Any, node: yaml.Node) -> str:
    if isinstance(value, _Unreadable):
        return _show(node)
    if value is None:
        return "nothing (null)"
    return repr(value)


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


def _notify(doc: _Doc, node: yaml.Node) -> NotifyConfig | None:
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


def _billing(doc: _Doc, pair: tuple[yaml.Node, yaml.Node], key: str) -> BillingRule:
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


def load_budgets(path: str | Path | None = None) -> Budgets:
    """Load and validate budgets.yaml (path None: see find_budgets_file)."""
    file = find_budgets_file(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise BudgetError(f"{file}: cannot read it ({exc.strerror}): check the file and its permissions") from None
    doc = _Doc(file, text)
    if doc.root is None:
        raise BudgetError(f"{file}: the file is empty: copy the packaged budgets.yaml ({packaged_budgets_file()}) and edit it")
    top = doc.mapping(doc.root, "", _TOP_KEYS)
    # Type errors first, in file order: a wrong value is reported even when another key is missing.
    for name, (_, vnode) in top.items():
        if name in _NUMBER_KEYS:
            positive, nullable = _NUMBER_KEYS[name]
            doc.number(vnode, name, positive=positive, nullable=nullable)

    def required(name: str, hint: str) -> yaml.Node:
        if name not in top:
            raise BudgetError(f"{file}: {name} is missing: {hint}")
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

    def optional(name: str, default: float, positive: bool = False) -> float:
        if name not in top:
            return default
        value = doc.number(top[name][1], name, positive=positive)
        assert value is not None
        return value

    budgets = Budgets(
        path=file,
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
    if "providers" in top and doc.scalar(top["providers"][1]) is not None:
        for name, (knode, vnode) in doc.mapping(top["providers"][1], "providers", None).items():
            key = f"providers.{name}"
            if not _PROVIDER_NAME_RE.match(name):
                raise doc.fail(knode, key, "is not a provider name: use lower-case letters, digits, - and _")
            if doc.scalar(vnode) is None:  # "aws:" with nothing under it: all defaults
                budgets.providers[name] = ProviderBudget(billing=budgets.default_billing)
                continue
            items = doc.mapping(vnode, key, _PROVIDER_KEYS)
            budgets.providers[name] = ProviderBudget(
                billing=(_billing(doc, items["billing"], f"{key}.billing")
                         if "billing" in items else budgets.default_billing),
                daily_usd=(doc.number(items["daily_usd"][1], f"{key}.daily_usd", nullable=True)
                           if "daily_usd" in items else None),
                monthly_usd=(doc.number(items["monthly_usd"][1], f"{key}.monthly_usd", nullable=True)
                             if "monthly_usd" in items else None),
                reserve_s=(doc.number(items["reserve_s"][1], f"{key}.reserve_s", nullable=True)
                           if "reserve_s" in items else None),
                min_runtime_s=(doc.number(items["min_runtime_s"][1], f"{key}.min_runtime_s", nullable=True)
                               if "min_runtime_s" in items else None),
            )
    return budgets
