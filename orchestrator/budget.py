"""budgets.yaml and the money maths: what `--max-usd N` buys, the deadline, and the account caps.

- `load_budgets` finds and validates budgets.yaml; every error names the file, the line and the key.
- `plan_run` turns a budget and a live price into a deadline under the provider's billing rule:
  the instance is verified gone by `deadline_epoch`; the guard starts stopping the job at
  `stop_at_epoch` = deadline - reserve; a budget that leaves less than the minimum useful training
  time is refused with what it buys and what would be needed.
- `reserve` holds the run's whole budget against the daily/monthly (and per-provider) caps, in one
  ledger transaction, like a card hold; `settle` replaces the hold by the actual cost.

See docs/BUDGET.md for the user-facing semantics.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from orchestrator.ledger import Ledger, LedgerError, default_home
from providers.base import BillingRule

# Used when a budgets.yaml leaves these keys out (the packaged budgets.yaml spells them all out).
DEFAULT_RESERVE_S = 180.0
DEFAULT_MIN_RUNTIME_S = 300.0
DEFAULT_MAX_RUNTIME_H = 24.0
CONSERVATIVE_SOURCE = "conservative default: no published rule found"
CONSERVATIVE_BILLING = BillingRule(increment_s=600, minimum_s=0, source=CONSERVATIVE_SOURCE)

_EPS_USD = 1e-9  # float slack when comparing money (0.1 + 0.2 style noise), far below a cent
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
    import orchestrator

    return Path(orchestrator.__file__).resolve().parent / "budgets.yaml"


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
}
_PROVIDER_KEYS = ("billing", "daily_usd", "monthly_usd", "reserve_s", "min_runtime_s")
_BILLING_KEYS = ("increment_s", "minimum_s", "source")


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
        default_billing=(_billing(doc, top["default_billing"], "default_billing")
                         if "default_billing" in top else CONSERVATIVE_BILLING),
    )
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


# ---- deadline maths ---------------------------------------------------------------------------


def _check_price(usd_per_hour: float) -> float:
    if isinstance(usd_per_hour, bool) or not isinstance(usd_per_hour, (int, float)) \
            or not math.isfinite(usd_per_hour) or usd_per_hour < 0:
        raise BudgetError(f"price {usd_per_hour!r} USD/h is not a finite number >= 0: check the offer or --usd-per-hour")
    return float(usd_per_hour)


def max_runtime_s(max_usd: float, usd_per_hour: float, rule: BillingRule) -> float:
    """The longest runtime whose billed cost under `rule` stays <= max_usd (inf when the price is 0).

    Exact under the increment and the minimum: billing rounds a runtime up to a whole number of
    increments (and at least the minimum), so the answer is the largest multiple of the increment
    that is affordable, or 0 when even the minimum charge is not.
    """
    price = _check_price(usd_per_hour)
    if isinstance(max_usd, bool) or not isinstance(max_usd, (int, float)) or math.isnan(max_usd) or max_usd < 0:
        raise BudgetError(f"budget {max_usd!r} USD is not a number >= 0: pass a positive --max-usd")
    if price == 0:
        return math.inf
    inc = max(1, int(rule.increment_s))
    affordable = max_usd * 3600.0 / price
    # Round the seconds a hair before flooring: 0.02 USD at 1.2 USD/h is 60 s, not 59.999... s.
    steps = math.floor(round(affordable / inc, 9))
    runtime = steps * inc
    while runtime > 0 and rule.cost(runtime, price) > max_usd + _EPS_USD:
        runtime -= inc  # guard against rounding making a step one too many
    if runtime <= 0 or rule.billed_seconds(runtime) > runtime:
        return 0.0  # the minimum charge alone is more than the budget
    return float(runtime)


def _fmt_s(seconds: float) -> str:
    if math.isinf(seconds):
        return "unlimited time"
    s = int(round(seconds))
    if s < 120:
        return f"{s} s"
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    if not h:
        return f"{m} min {sec} s" if sec else f"{m} min"
    return f"{h} h {m} min" if m else f"{h} h"


def _fmt_price(usd_per_hour: float) -> str:
    return f"{usd_per_hour:.2f}" if usd_per_hour >= 0.1 else f"{usd_per_hour:.4g}"


def _ceil_cents(usd: float) -> float:
    return math.ceil(round(usd * 100, 6)) / 100


@dataclass
class Plan:
    provider: str
    max_usd: float
    usd_per_hour: float
    billing: BillingRule
    reserve_s: float
    min_runtime_s: float
    max_runtime_s: float  # longest runtime whose billed cost <= max_usd, bounded by max_runtime_h
    clock_start_epoch: float  # the create call: billing starts here, not at SSH
    deadline_epoch: float  # clock_start + max_runtime_s: the instance is verified gone by then
    stop_at_epoch: float  # deadline - reserve_s: the guard starts stopping the job
    train_s: float  # stop_at - clock_start (boot time included: the clock runs during boot)

    def cost_at(self, elapsed_s: float) -> float:
        """Billed cost after `elapsed_s` seconds since the clock started."""
        return self.billing.cost(elapsed_s, self.usd_per_hour)

    @property
    def max_cost_usd(self) -> float:
        """What the run costs if it is gone exactly at the deadline (always <= max_usd)."""
        return self.cost_at(self.max_runtime_s)

    def with_clock_start(self, epoch: float) -> Plan:
        """The same plan with the clock started at `epoch` (call it at the create call)."""
        return Plan(
            provider=self.provider,
            max_usd=self.max_usd,
            usd_per_hour=self.usd_per_hour,
            billing=self.billing,
            reserve_s=self.reserve_s,
            min_runtime_s=self.min_runtime_s,
            max_runtime_s=self.max_runtime_s,
            clock_start_epoch=epoch,
            deadline_epoch=epoch + self.max_runtime_s,
            stop_at_epoch=epoch + self.max_runtime_s - self.reserve_s,
            train_s=self.train_s,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "max_usd": self.max_usd,
            "usd_per_hour": self.usd_per_hour,
            "billing": {
                "increment_s": self.billing.increment_s,
                "minimum_s": self.billing.minimum_s,
                "source": self.billing.source,
            },
            "reserve_s": self.reserve_s,
            "min_runtime_s": self.min_runtime_s,
            "max_runtime_s": self.max_runtime_s,
            "clock_start_epoch": self.clock_start_epoch,
            "deadline_epoch": self.deadline_epoch,
            "stop_at_epoch": self.stop_at_epoch,
            "train_s": self.train_s,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        b = data["billing"]
        billing = b if isinstance(b, BillingRule) else BillingRule(
            increment_s=int(b["increment_s"]), minimum_s=int(b["minimum_s"]), source=str(b.get("source", ""))
        )
        return cls(
            provider=str(data["provider"]),
            max_usd=float(data["max_usd"]),
            usd_per_hour=float(data["usd_per_hour"]),
            billing=billing,
            reserve_s=float(data["reserve_s"]),
            min_runtime_s=float(data["min_runtime_s"]),
            max_runtime_s=float(data["max_runtime_s"]),
            clock_start_epoch=float(data["clock_start_epoch"]),
            deadline_epoch=float(data["deadline_epoch"]),
            stop_at_epoch=float(data["stop_at_epoch"]),
            train_s=float(data["train_s"]),
        )


def _check_max_usd(budgets: Budgets, max_usd: Any) -> float:
    if isinstance(max_usd, bool) or not isinstance(max_usd, (int, float)):
        raise BudgetError(f"--max-usd {max_usd!r} is not a number: pass a dollar amount such as --max-usd 3")
    value = float(max_usd)
    if math.isnan(value) or math.isinf(value):
        raise BudgetError(f"--max-usd {max_usd} is not a finite number: pass a dollar amount such as --max-usd 3")
    if value <= 0:
        raise BudgetError(f"--max-usd {max_usd:g} must be more than 0: pass a positive dollar amount")
    if value > budgets.per_run_max_usd + _EPS_USD:
        raise BudgetError(
            f"--max-usd {value:.2f} is above per_run_max_usd {budgets.per_run_max_usd:.2f} in {budgets.path}:"
            " lower --max-usd or raise per_run_max_usd there"
        )
    return value


def plan_run(
    budgets: Budgets, provider: str, max_usd: float | None, usd_per_hour: float, now: float | None = None
) -> Plan:
    """The deadline plan for a launch, or BudgetError saying what the budget buys and what is needed."""
    budget = _check_max_usd(budgets, budgets.per_run_default_usd if max_usd is None else max_usd)
    price = _check_price(usd_per_hour)
    rule = budgets.billing_for(provider)
    reserve_s = budgets.reserve_for(provider)
    min_runtime_s = budgets.min_runtime_for(provider)
    cap_s = budgets.max_runtime_h * 3600.0
    bought = max_runtime_s(budget, price, rule)
    runtime = min(bought, cap_s)
    train_s = runtime - reserve_s
    if train_s < min_runtime_s:
        need_s = min_runtime_s + reserve_s
        if bought > cap_s:  # money is not the limit: max_runtime_h is
            raise BudgetError(
                f"max_runtime_h {budgets.max_runtime_h:g} in {budgets.path} allows {_fmt_s(cap_s)}; a run needs"
                f" {_fmt_s(min_runtime_s)} of training + {_fmt_s(reserve_s)} reserve: raise max_runtime_h"
            )
        need_usd = rule.cost(need_s, price)
        raise_to = _ceil_cents(need_usd)
        above = (f" (above per_run_max_usd {budgets.per_run_max_usd:.2f}: raise it in {budgets.path} too)"
                 if raise_to > budgets.per_run_max_usd + _EPS_USD else "")
        why = ""
        if bought == 0 and price > 0:
            first = rule.billed_seconds(1)  # the smallest possible charge: minimum or one increment
            what = "the minimum charge" if rule.minimum_s >= rule.increment_s else "one billing increment"
            why = f" (less than {what} of {_fmt_s(first)})"
        billed = rule.billed_seconds(need_s)
        billed_note = f" (billed as {_fmt_s(billed)})" if billed > need_s else ""
        raise BudgetError(
            f"--max-usd {budget:g} at {_fmt_price(price)} USD/h buys {_fmt_s(bought)}{why}; a run needs"
            f" {_fmt_s(min_runtime_s)} of training + {_fmt_s(reserve_s)} reserve{billed_note} = {need_usd:.4f} USD:"
            f" raise --max-usd to at least {raise_to:.2f}{above}"
        )
    start = time.time() if now is None else float(now)
    return Plan(
        provider=provider,
        max_usd=budget,
        usd_per_hour=price,
        billing=rule,
        reserve_s=reserve_s,
        min_runtime_s=min_runtime_s,
        max_runtime_s=runtime,
        clock_start_epoch=start,
        deadline_epoch=start + runtime,
        stop_at_epoch=start + runtime - reserve_s,
        train_s=train_s,
    )


# ---- account caps: holds and settlement -------------------------------------------------------


def day_start(now: float) -> float:
    """Local midnight at or before `now` (the daily cap's window)."""
    d = datetime.fromtimestamp(now)
    return d.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()


def month_start(now: float) -> float:
    """Local midnight of the first of the month (the monthly cap's window)."""
    d = datetime.fromtimestamp(now)
    return d.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp()


def check_caps(
    budgets: Budgets, ledger: Ledger, provider: str, max_usd: float, now: float | None = None,
    exclude_run: str | None = None,
) -> None:
    """Refuse (BudgetError) if holding `max_usd` would break a daily/monthly cap; read-only."""
    if isinstance(max_usd, bool) or not isinstance(max_usd, (int, float)) or not math.isfinite(max_usd) or max_usd < 0:
        raise BudgetError(f"cannot hold {max_usd!r} USD: the hold must be a finite number >= 0")
    when = time.time() if now is None else float(now)
    pb = budgets.providers.get(provider)
    caps: list[tuple[str, str, float | None, float, str | None]] = [
        ("daily cap", "daily_usd", budgets.daily_usd, day_start(when), None),
        ("monthly cap", "monthly_usd", budgets.monthly_usd, month_start(when), None),
    ]
    if pb is not None:
        caps += [
            (f"{provider} daily cap", f"providers.{provider}.daily_usd", pb.daily_usd, day_start(when), provider),
            (f"{provider} monthly cap", f"providers.{provider}.monthly_usd", pb.monthly_usd, month_start(when), provider),
        ]
    for label, key, cap, since, prov in caps:
        if cap is None:
            continue
        used = ledger.committed_usd(since, prov, exclude_run=exclude_run)
        if used + max_usd > cap + _EPS_USD:
            left = max(0.0, cap - used)
            fix = (f"lower --max-usd to {math.floor(left * 100 + 1e-6) / 100:.2f} or less"
                   if left >= 0.01 else "wait for the window to roll over")
            raise BudgetError(
                f"{label} {cap:.2f} USD: {used:.2f} already spent or held, this launch holds {max_usd:.2f}:"
                f" {fix}, or raise {key} in {budgets.path}"
            )


def reserve(
    budgets: Budgets, ledger: Ledger, run_id: str, provider: str, max_usd: float, now: float | None = None
) -> None:
    """Hold `max_usd` for the run against every cap, or refuse; check and hold are one transaction."""
    when = time.time() if now is None else float(now)
    try:
        with ledger.transaction():
            check_caps(budgets, ledger, provider, max_usd, when, exclude_run=run_id)
            ledger.add_hold(run_id, provider, max_usd, at=when)
    except LedgerError as exc:
        raise BudgetError(str(exc)) from None


def settle(ledger: Ledger, run_id: str, actual_usd: float) -> None:
    """Replace the run's hold by its actual cost (call when the instance is verified gone)."""
    if isinstance(actual_usd, bool) or not isinstance(actual_usd, (int, float)) \
            or not math.isfinite(actual_usd) or actual_usd < 0:
        raise BudgetError(f"cannot settle run {run_id} at {actual_usd!r} USD: the cost must be a finite number >= 0")
    try:
        ledger.settle(run_id, float(actual_usd))
    except LedgerError as exc:
        raise BudgetError(str(exc)) from None
