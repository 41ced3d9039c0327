"""budgets.yaml's `pools:`: people who share one budget, each with caps of their own.

    pools:
      course:                      # a pool: who is in it, what it may spend, what each person may
        members: [ana, ben, cleo]
        admin: teacher             # may tear down members' runs, and owner-less orphans
        total_usd: 30              # the pool's own caps (null or left out: none)
        daily_usd: 10
        monthly_usd: null
        per_person:                # every member's caps
          per_run_usd: 1.50        # the largest --max-usd a member may launch with
          daily_usd: 2
          monthly_usd: 5
          total_usd: 5

A person (GPURUN_USER, else the login name) is in at most one pool (the admin counts as a member);
a launch holds against that person's caps, the pool's and the account's (`money.budget.check_caps`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import yaml

from orchestrator.money.yaml_doc import YamlDoc

_POOL_KEYS = ("members", "admin", "total_usd", "daily_usd", "monthly_usd", "per_person")
_PERSON_KEYS = ("per_run_usd", "daily_usd", "monthly_usd", "total_usd")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


@dataclass(frozen=True)
class PersonCaps:
    per_run_usd: float | None = None
    daily_usd: float | None = None
    monthly_usd: float | None = None
    total_usd: float | None = None


@dataclass(frozen=True)
class Pool:
    name: str
    members: tuple[str, ...]
    admin: str | None = None
    total_usd: float | None = None
    daily_usd: float | None = None
    monthly_usd: float | None = None
    per_person: PersonCaps = field(default_factory=PersonCaps)

    def has(self, person: str) -> bool:
        return person in self.members or person == self.admin

    @property
    def people(self) -> tuple[str, ...]:
        """The members, then the admin if they are not one."""
        return self.members + ((self.admin,) if self.admin and self.admin not in self.members else ())


def pool_of(pools: dict[str, Pool], person: str) -> Pool | None:
    """The pool `person` launches in (None: only the account's caps apply)."""
    return next((p for p in pools.values() if p.has(person)), None)


def is_admin(pools: dict[str, Pool], person: str, pool: str | None = None) -> bool:
    """`person` administers `pool` (None: any pool)."""
    return any(p.admin == person for p in pools.values() if pool is None or p.name == pool)


def may_end(pools: dict[str, Pool], me: str, owner: str | None, pool: str | None) -> str | None:
    """None when `me` may tear down a run of `owner` (held against `pool`), else why not, in one line.

    A person ends their own runs; a pool's admin also its members' runs, and runs no one owns (an
    orphan a sweep adopted, a run from before people were recorded). Without pools, an owner-less
    run is anyone's: a ledger of one person keeps working as it did.
    """
    if owner == me:
        return None
    if owner is None:
        if not pools or is_admin(pools, me):
            return None
        admins = sorted({p.admin for p in pools.values() if p.admin})
        return f"it has no owner: only a pool admin ({', '.join(admins) or 'none set'}) may tear it down"
    home = pools.get(pool) if pool else pool_of(pools, owner)
    if home is not None and home.admin == me:
        return None
    admin = f" or pool {home.name}'s admin ({home.admin})" if home is not None and home.admin else ""
    return f"it is {owner}'s run: only {owner}{admin} may tear it down (you are {me}: GPURUN_USER)"


def parse_pools(doc: YamlDoc, node: yaml.Node) -> dict[str, Pool]:
    if doc.scalar(node) is None:
        return {}
    pools: dict[str, Pool] = {}
    seen: dict[str, str] = {}  # person -> the pool they are in
    for name, (knode, vnode) in doc.mapping(node, "pools", None).items():
        key = f"pools.{name}"
        if not _NAME_RE.match(name):
            raise doc.fail(knode, key, "is not a pool name: use letters, digits, ., _, @ and -")
        pool = _pool(doc, key, name, knode, vnode)
        for person in pool.people:
            if person in seen:
                raise doc.fail(knode, key, f"{person} is already in pool {seen[person]}: a person is in one pool")
            seen[person] = name
        pools[name] = pool
    return pools


def _pool(doc: YamlDoc, key: str, name: str, knode: yaml.Node, node: yaml.Node) -> Pool:
    items = doc.mapping(node, key, _POOL_KEYS)
    if "members" not in items:
        raise doc.fail(knode, f"{key}.members", "is missing: list who may launch in the pool, e.g. [ana, ben]")
    members = _names(doc, items["members"][1], f"{key}.members")
    admin = None
    if "admin" in items and doc.scalar(items["admin"][1]) is not None:
        admin = _name(doc, items["admin"][1], f"{key}.admin")

    def usd(mapping: dict[str, tuple[yaml.Node, yaml.Node]], name_: str, where: str) -> float | None:
        return doc.number(mapping[name_][1], f"{where}.{name_}", nullable=True) if name_ in mapping else None

    per_person = PersonCaps()
    if "per_person" in items and doc.scalar(items["per_person"][1]) is not None:
        caps = doc.mapping(items["per_person"][1], f"{key}.per_person", _PERSON_KEYS)
        per_person = PersonCaps(*(usd(caps, n, f"{key}.per_person") for n in _PERSON_KEYS))
    return Pool(name=name, members=members, admin=admin, total_usd=usd(items, "total_usd", key),
                daily_usd=usd(items, "daily_usd", key), monthly_usd=usd(items, "monthly_usd", key),
                per_person=per_person)


def _names(doc: YamlDoc, node: yaml.Node, key: str) -> tuple[str, ...]:
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        raise doc.fail(node, key, "must be a list of people, e.g. [ana, ben]")
    names = tuple(_name(doc, n, key) for n in node.value)
    if len(set(names)) != len(names):
        raise doc.fail(node, key, "names someone twice")
    return names


def _name(doc: YamlDoc, node: yaml.Node, key: str) -> str:
    value = doc.scalar(node)
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise doc.fail(node, key, "must be a person's name (their GPURUN_USER or login name), e.g. ana")
    return value
