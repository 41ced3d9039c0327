"""Ending instances: request -> verify -> record. The one path for launch, `gpurun teardown`, `gpurun sweep`.

- request: terminate every instance of the run (a ProviderError is recorded, not fatal: "already gone"
  and DataCrunch's "Can't discontinue a provisioning instance" are normal);
- verify: poll with tenacity until every instance is terminated or not found AND the provider lists
  zero live instances tagged with the run; each check that still finds one asks again (a 200 from a
  terminate call proves nothing). Never verified on a timeout: VerifyFailed, phase failed_terminating;
- record: shutdown_proof.json chained to the ledger's last proof (its own contradictions check
  wins over what we saw), the ledger's proofs row, the budget hold settled at the billed cost (compute
  to the accepted terminate call + the egress of every byte pulled home), phase verified, the card.
  A provider cleanup (keys, groups, volumes) that raises after the verification is recorded in the
  proof (`cleanup_failures`) and as an event `gpurun audit` lists: never lost.

`gpurun sweep` ends orphans (live instances tagged gpurun that no open run owns) through the same
`end()`, one proof per orphaned run (all its orphaned instances together, so the zero-match listing
is the run's). The orphan's run is the ledger's owner of the instance, else the run id in its tag/name:
- a run this ledger knows (it is closed: open runs own their instances and are not orphans): its
  phase stays verified; the steps are recorded as its events `sweep_terminating`, `sweep_verified`
  (or `sweep_failed_terminating`), and the proof goes to `<run dir>/sweep-<instance>/`, beside the
  run's own proof, which it never replaces;
- anything else: the sweep adopts it as a ledger run `sweep-<instance>` (provider, max_usd 0, plan
  {"orphan": ...}, its instance rows), which walks planned -> terminating -> verified like any run;
  the proof goes to `<runs dir>/sweep-<instance>/shutdown_proof.json` (`--runs-dir`, else
  GPURUN_RUNS_DIR, else ./runs), the row's run_dir. No hold is made and none is settled: the
  card-hold and cap maths see nothing of it; one not verified stays open (failed_terminating) and
  `gpurun teardown sweep-<instance>` retries it through `end()`.
<instance> is the first instance id of the group, with anything but [A-Za-z0-9._-] replaced by _.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from tenacity import RetryError, Retrying, retry_if_result, stop_after_delay, wait_exponential

from orchestrator import settings
from orchestrator.errors import VerifyFailed
from orchestrator.money import budget as budget_mod
from orchestrator.plan.record import ORPHAN_KEY
from orchestrator.proof import shutdown
from orchestrator.proof.shutdown import TerminateRequest, build_proof, cleanup_failure, write_proof
from orchestrator.state.events import EventKind
from orchestrator.state.ledger import Ledger
from orchestrator.state.phases import Phase
from orchestrator.state.rows import Run
from providers.base import BillingRule, Instance, Provider, ProviderError

SWEEP_PREFIX = "sweep-"

#: Records one lifecycle step: (phase, **payload). A Controller passes its `phase`, which also
#: reports to the live view; the sweep passes the ledger's set_phase or an event writer.
PhaseRecorder = Callable[..., None]
#: Writes the evidence card: (proof path, cost USD, runtime s).
EvidenceWriter = Callable[[Path, float | None, float | None], object]


@dataclass
class Target:
    """What one teardown ends, and where its record goes."""

    ledger: Ledger
    provider: Provider
    run_id: str  # the ledger run that the events and the proof are recorded on
    tag: str | None  # the run id the instances carry (tag/name): the zero-match listing and cleanup
    proof_dir: Path
    record_phase: PhaseRecorder
    max_usd: float | None = None
    started_at: float | None = None  # when billing started (the create call)
    cost_at: Callable[[float], float] | None = None  # billed USD after so many seconds from started_at
    billing: dict[str, Any] = field(default_factory=dict)
    settle: bool = True  # replace the run's budget hold by the cost
    evidence: EvidenceWriter | None = None
    retry_hint: str = ""  # what the user runs when termination cannot be verified (default: gpurun teardown)
    notes: list[str] = field(default_factory=list)
    attempts: list[dict[str, Any]] = field(default_factory=list)  # failed boots before the last offer
    # Egress: the offer's USD per GB pulled home (its source), and the bytes the run pulled (the sync
    # events); the cost is compute + these bytes at that price.
    egress_usd_per_gb: float = 0.0
    egress_source: str = ""
    egress_reserve_usd: float = 0.0
    pulled_bytes: Callable[[], int] | None = None


@dataclass
class Ended:
    """A verified teardown."""

    run_id: str
    instance_ids: list[str]
    proof_path: Path
    proof_sha256: str
    cost_usd: float | None
    verified_at: float
    runtime_s: float | None
    cleanup_failures: list[dict[str, Any]] = field(default_factory=list)  # what the provider's cleanup left


def verify_timeout_s(explicit: float | None = None) -> float:
    return settings.verify_timeout_s(explicit)


def run_instance_ids(ledger: Ledger, provider: Provider, run_id: str, tag: str | None) -> list[str]:
    """The run's instances on `provider` in the ledger (a --provider any attempt elsewhere was verified gone by
    its own), plus any it lists under the tag: a create in flight when a controller died left only the tag."""
    rows = [row for row in ledger.instances(run_id) if row.provider == provider.name]
    for row in rows:  # a provider object this process did not create them with learns when they were made
        provider.recall_created(row.instance_id, row.created_at)
    ids = [row.instance_id for row in rows]
    if tag:
        for inst in provider.list_run(tag):
            if inst.id not in ids:
                ledger.add_instance(run_id, provider.name, inst.id, inst.state, inst.raw)
                ids.append(inst.id)
    return ids


def _live_listing(target: Target, ids: list[str]) -> list[Instance]:
    if target.tag:
        return target.provider.list_run(target.tag)
    # No run tag to list by (an untagged orphan): the zero-match check is on the instances themselves.
    return [i for i in target.provider.list_owned() if i.id in ids and not i.gone]


def _terminate_until_gone(ledger: Ledger, provider: Provider, run_id: str, ids: list[str],
                          live: Callable[[], list[Instance]], timeout: float) -> list[TerminateRequest]:
    """Request termination of `ids`, then poll until each is gone and `live()` lists none, asking
    again at each check that still finds one. RetryError when the timeout passes first."""
    requests: list[TerminateRequest] = []

    def request_all() -> None:
        for iid in ids:
            sent = time.time()
            try:
                req = TerminateRequest(iid, sent, provider.terminate(iid), responded_at=time.time())
            except ProviderError as exc:
                req = TerminateRequest(iid, sent, None, error=str(exc), responded_at=time.time())
            requests.append(req)
            ledger.record_event(run_id, EventKind.TERMINATE_REQUEST, instance_id=iid,
                                response=req.response, error=req.error)

    def all_gone() -> bool:
        states = {iid: provider.get(iid) for iid in ids}
        for iid, inst in states.items():
            ledger.update_instance(iid, state=inst.state)
        if all(i.gone for i in states.values()) and not live():
            return True
        request_all()  # a terminate that "succeeded" but left it running: ask again
        return False

    request_all()
    Retrying(
        retry=retry_if_result(lambda gone: not gone),
        wait=wait_exponential(multiplier=0.5, max=10),
        stop=stop_after_delay(timeout),
    )(all_gone)
    return requests


@dataclass
class Retired:
    """One failed attempt's instance, verified gone (offer fallback): what goes into the run's record."""

    instance_id: str
    requests: list[TerminateRequest]
    final_describe: dict[str, Any]
    verified_at: float


def retire(ledger: Ledger, provider: Provider, run_id: str, instance_id: str,
           timeout_s: float | None = None) -> Retired:
    """End one instance of a run that goes on (a boot that failed, before the next offer is tried):
    request -> verify, with the run's tag listing zero live instances (no other attempt is alive
    yet). The run's phase does not change; VerifyFailed if it is not verified gone."""
    return retire_all(ledger, provider, run_id, [instance_id], timeout_s)[0]


def retire_all(ledger: Ledger, provider: Provider, run_id: str, instance_ids: list[str],
               timeout_s: float | None = None) -> list[Retired]:
    """`retire` for every node of a failed attempt at once (a multi-node run): each is asked to go,
    and the run's tag must list none of them live; one Retired per instance, in order."""
    timeout = verify_timeout_s(timeout_s)
    try:
        requests = _terminate_until_gone(ledger, provider, run_id, list(instance_ids),
                                         lambda: provider.list_run(run_id), timeout)
    except RetryError as exc:
        raise VerifyFailed(
            f"run {run_id}: the failed attempt's instance(s) {', '.join(instance_ids)} still not terminated after"
            f" {timeout:.0f} s; it may still be billing: run `gpurun teardown {run_id}`"
        ) from exc
    now = time.time()
    return [Retired(iid, [r for r in requests if r.instance_id == iid], provider.get(iid).to_dict(), now)
            for iid in instance_ids]


def _verify_gone(target: Target, ids: list[str], timeout_s: float | None) -> list[TerminateRequest]:
    """Request and verify (teardown's first two steps); VerifyFailed, phase failed_terminating, if not gone."""
    timeout = verify_timeout_s(timeout_s)
    try:
        return _terminate_until_gone(target.ledger, target.provider, target.run_id, ids,
                                     lambda: _live_listing(target, ids), timeout)
    except RetryError as exc:
        target.record_phase(Phase.FAILED_TERMINATING, error="termination not verified")
        raise VerifyFailed(
            f"run {target.run_id}: {', '.join(ids) or 'its instances'} still not terminated after {timeout:.0f} s;"
            f" it may still be billing: check the provider console and run"
            f" {target.retry_hint or f'`gpurun teardown {target.run_id}`'}"
        ) from exc


def _cleanup(target: Target) -> tuple[list[str], list[dict[str, Any]]]:
    """The provider's cleanup of what the run made besides its instances: (what went, what failed).
    A cleanup that raises never costs the verified termination its proof: it is recorded instead."""
    if not target.tag:
        return [], []
    try:
        return list(target.provider.cleanup(target.tag)), []
    except Exception as exc:  # noqa: BLE001 - whatever the SDK raises, the proof of termination comes first
        failure = cleanup_failure(target.provider.name, target.tag, exc, time.time())
        target.ledger.record_event(target.run_id, EventKind.CLEANUP_FAILED, **failure)
        return [], [failure]


def _cost(target: Target, runtime: float | None) -> tuple[float | None, dict[str, Any]]:
    """The run's cost (compute under the billing rule + the egress of the bytes pulled), and the
    egress figure for the proof's billing."""
    pulled = int(target.pulled_bytes()) if target.pulled_bytes is not None else 0
    figure = budget_mod.egress_figure(pulled, target.egress_usd_per_gb, target.egress_source, target.egress_reserve_usd)
    if target.cost_at is None:
        return None, figure
    compute = target.cost_at(runtime) if runtime is not None else 0.0
    figure["compute_usd"] = round(compute, 9)
    return compute + budget_mod.egress_usd(pulled, target.egress_usd_per_gb), figure


def end(target: Target, timeout_s: float | None = None) -> Ended:
    """Terminate, verify with the provider, write and chain the proof, settle; VerifyFailed if not gone."""
    ledger, provider = target.ledger, target.provider
    target.record_phase(Phase.TERMINATING)
    ids = run_instance_ids(ledger, provider, target.run_id, target.tag)
    requests = _verify_gone(target, ids, timeout_s)
    verified_at = time.time()
    deleted, cleanup_failures = _cleanup(target)
    final = [provider.get(i).to_dict() for i in ids]
    listing = [i.to_dict() for i in _live_listing(target, ids)]
    start = target.started_at
    # Counted to the end of billing (the accepted terminate calls), not to the verification.
    runtime = (shutdown.billing_ended_at(requests, ids, verified_at) - start) if start else None
    cost, egress = _cost(target, runtime)
    # Read the chain head, write the file and append the row under one write lock: a concurrent
    # teardown cannot chain to the same head.
    with ledger.transaction():
        proof = build_proof(
            run_id=target.run_id, provider=provider.name, instance_ids=ids, terminate_requests=requests,
            final_describe=final, zero_match_listing=listing, deleted_resources=deleted,
            estimated_cost_usd=cost, max_usd=target.max_usd, billing={**target.billing, "egress": egress},
            verified=True, prev_sha256=ledger.last_proof_sha256(), started_at=start, verified_at=verified_at,
            notes=target.notes, attempts=target.attempts, cleanup_failures=cleanup_failures,
        )
        if proof["verified"]:  # the proof's own reading of what the provider reported wins
            path, sha = write_proof(target.proof_dir, proof)
            ledger.add_proof(target.run_id, sha, str(path), proof.get("prev_sha256"))
    if not proof["verified"]:
        contradictions = proof.get("contradictions", [])
        target.record_phase(Phase.FAILED_TERMINATING, error="; ".join(contradictions))
        raise VerifyFailed(f"run {target.run_id}: termination not verified: {contradictions}")
    if target.settle:
        budget_mod.settle(ledger, target.run_id, cost or 0.0)
    target.record_phase(Phase.VERIFIED, cost_usd=cost, proof_sha256=sha, egress_usd=egress["usd"],
                        cleanup_failed=len(cleanup_failures))
    if target.evidence is not None:
        target.evidence(path, cost, runtime)
    return Ended(target.run_id, ids, path, sha, cost, verified_at, runtime, cleanup_failures)


# --- orphans (gpurun sweep) ------------------------------------------------------------------------


def find_orphans(ledger: Ledger, provider: Provider) -> list[Instance]:
    """Live instances tagged gpurun that no open run of this ledger owns (by instance row or tag)."""
    orphans = []
    for inst in provider.list_owned():
        if inst.gone:
            continue
        owner = _owner(ledger, inst)
        run = ledger.get_run(owner) if owner else None
        if run is None or not run.open:
            orphans.append(inst)
    return orphans


def _owner(ledger: Ledger, inst: Instance) -> str | None:
    # The ledger's instance row first; else the tag: a run whose create was in flight when its
    # controller died has no row yet, and its own teardown will find the instance by that tag.
    return ledger.instance_owner(inst.id) or inst.run_id


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)


def _rate_cost(usd_per_hour: float | None) -> Callable[[float], float] | None:
    # What the sweep's table shows as "cost so far": the listed price, per second (no plan exists).
    if usd_per_hour is None:
        return None
    return partial(BillingRule().cost, usd_per_hour=float(usd_per_hour))


def adopted_target(ledger: Ledger, run: Run, provider: Provider) -> Target:
    """The Target for a run the sweep adopted: from `sweep`, and from `gpurun teardown` after a failure."""
    info = run.plan[ORPHAN_KEY]
    rate = info.get("usd_per_hour")
    return Target(
        ledger=ledger,
        provider=provider,
        run_id=run.run_id,
        tag=info.get("tag"),
        proof_dir=Path(run.run_dir),
        record_phase=partial(ledger.set_phase, run.run_id),
        started_at=info.get("created_at"),
        cost_at=_rate_cost(rate),
        billing={"usd_per_hour": rate, "source": "the instance's listed price"},
        settle=False,
        retry_hint=f"`gpurun teardown {run.run_id}`",
        notes=[f"orphan ended by gpurun sweep; tagged run {info.get('tag') or '(none)'} is not in this ledger"],
    )


def _orphan_info(insts: list[Instance], tag: str | None) -> dict[str, Any]:
    first = insts[0]
    created = [i.created_at for i in insts if i.created_at is not None]
    return {
        "tag": tag,
        "instance_ids": [i.id for i in insts],
        "names": [i.name for i in insts],
        "states": [i.state for i in insts],
        "usd_per_hour": first.usd_per_hour,
        "created_at": min(created) if created else None,
        "found_at": time.time(),
    }


def _target_for(ledger: Ledger, provider: Provider, insts: list[Instance], runs_dir: Path) -> Target:
    owner = _owner(ledger, insts[0])
    known = ledger.get_run(owner) if owner else None
    info = _orphan_info(insts, owner)
    folder = SWEEP_PREFIX + _safe(insts[0].id)
    if known is not None:  # a closed run of this ledger: its phases are final, record events on it
        for inst in insts:
            if ledger.instance_owner(inst.id) is None:
                ledger.add_instance(known.run_id, provider.name, inst.id, inst.state, inst.raw)
        ledger.record_event(known.run_id, ORPHAN_KEY, **info)

        def record(phase: Phase, **payload: Any) -> None:
            ledger.record_event(known.run_id, f"sweep_{phase.value}", **payload)

        return Target(
            ledger=ledger,
            provider=provider,
            run_id=known.run_id,
            tag=known.run_id,
            proof_dir=Path(known.run_dir) / folder,
            record_phase=record,
            started_at=info["created_at"],
            cost_at=_rate_cost(info["usd_per_hour"]),
            billing={"usd_per_hour": info["usd_per_hour"], "source": "the instance's listed price"},
            settle=False,  # the run was settled when it was verified; the caps maths stays as it was
            retry_hint="`gpurun sweep` again",
            notes=[f"orphan of run {known.run_id} (already {known.phase}) ended by gpurun sweep"],
        )
    run_id = folder
    with ledger.transaction():
        run = ledger.create_run(run_id, provider.name, 0.0, {ORPHAN_KEY: info}, str(runs_dir / folder), person=None)
        for inst in insts:
            ledger.add_instance(run_id, provider.name, inst.id, inst.state, inst.raw)
        ledger.record_event(run_id, ORPHAN_KEY, **info)
    return adopted_target(ledger, run, provider)


def group_orphans(ledger: Ledger, orphans: list[Instance]) -> list[list[Instance]]:
    """One group per orphaned run (its owner or tag), an untagged instance alone; first-seen order."""
    groups: dict[str, list[Instance]] = {}
    for inst in orphans:
        groups.setdefault(_owner(ledger, inst) or f"instance:{inst.id}", []).append(inst)
    return list(groups.values())


def end_orphans(
    ledger: Ledger, provider: Provider, insts: list[Instance], runs_dir: Path, timeout_s: float | None = None
) -> Ended:
    """End one group of orphaned instances of one run through `end()`: proof, ledger row, chain."""
    return end(_target_for(ledger, provider, insts, Path(runs_dir)), timeout_s)
