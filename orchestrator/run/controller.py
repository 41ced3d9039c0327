"""The run state machine of docs/DESIGN.md ("The lifecycle"), driving a Provider and a Transport.

The phases and the transitions between them are `orchestrator.state.phases` (the ledger refuses any
other); docs/ARCHITECTURE.md shows the diagram generated from them. Each phase is written to the ledger BEFORE its action is taken, so a controller killed at any
point leaves enough behind for `gpurun teardown` (or a detached guard) to finish the run.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import trainer
from orchestrator import settings
from orchestrator.errors import BootFailed, RunFailed
from orchestrator.money import budget as budget_mod
from orchestrator.money.budgets_file import BudgetError, Budgets, load_budgets
from orchestrator.money.reconcile import Reconciliation, reconcile_after_run
from orchestrator.notify import Notifier
from orchestrator.plan.launch import (
    JOB_CONFIG,
    LaunchOptions,
    LaunchPlan,
    config_text,
    data_phase,
    job_config,
    recipe_for,
)
from orchestrator.plan.record import RunRecord, is_orphan
from orchestrator.proof.evidence import write_evidence
from orchestrator.run import provisioning, recovery, stop_time
from orchestrator.run import teardown as teardown_mod
from orchestrator.run.bootstrap import BootstrapInfo, bootstrap, ensure_packages, trainer_command
from orchestrator.run.nodes import Node, group_env, rendezvous_address, worker_root
from orchestrator.run.outcome import nothing_trained, produced
from orchestrator.run.progress import (
    PROGRESS_FILE,
    DataProbe,
    Probe,
    StallWatch,
    data_probe_command,
    parse_data_probe,
    parse_probe,
    probe_command,
)
from orchestrator.run.stop_time import Steps
from orchestrator.run.watchdog import (
    heartbeat,
    heartbeat_interval_s,
    install_watchdog,
    read_reason,
    set_pre_job,
)
from orchestrator.state.endings import Ending, ending_of
from orchestrator.state.ledger import Ledger, Run
from orchestrator.state.phases import Phase
from orchestrator.transport.factory import open_transport
from orchestrator.transport.keys import run_key
from orchestrator.transport.protocol import SyncResult, Transport
from orchestrator.transport.pull import Syncer
from providers import get_provider
from providers.base import Access, Instance, InstanceSpec, Offer, Provider
from trainer.recipes import Recipe

T = TypeVar("T")
TRAINER_DIR = Path(trainer.__file__).resolve().parent
POLL_S = 1.0
SPOT_NOTICE_JOB = "spotnotice"  # writes ROOT/spot.notice when the provider warns of a reclaim
SPOT_NOTICE_FILE = "spot.notice"
PREEMPT_CHECK_S = 30.0  # how often the guard asks the provider whether it took a spot instance back
NODES_CHECK_S = 10.0  # how often the guard looks at a multi-node run's other nodes' jobs
# The data phase's detached job (transport convention: data.pid, data.exit, data.log at the root).
DATA_JOB = "data"
# The leading words of a failed data phase's reason (after Ending.RUN_FAILED).
DATA_FAILED = "data preparation failed"
DATA_SOURCE_DIR = "data-src"  # where --data-from's directory is uploaded (under the run root)
_HANDOFF = "handoff"  # what the data watch returns when a SIGHUP asked for a detached guard


class DataFailed(RunFailed):
    """`python -m trainer.data prepare` exited non-zero on the instance; the message is its line."""


@dataclass
class LiveStatus:
    phase: str
    step: int | None = None
    loss: float | None = None
    tokens_per_s: float | None = None
    spent_usd: float = 0.0
    max_usd: float = 0.0
    seconds_to_stop: float | None = None
    message: str = ""
    data: str = ""  # the data phase's progress, "tokenize 42% 12.3M tokens"


Reporter = Callable[[LiveStatus], None]


def _quiet(_: LiveStatus) -> None:
    pass


def new_run_id(now: float | None = None) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now or time.time()))
    return f"{stamp}-{secrets.token_hex(2)}"


class Controller:
    """Drives one run. Constructed fresh for a launch, or from the ledger to resume/tear down."""

    def __init__(self, ledger: Ledger, run: Run, provider: Provider, reporter: Reporter = _quiet) -> None:
        self.ledger = ledger
        self.run = run
        self.provider = provider
        self.report = reporter
        self.run_dir = Path(run.run_dir)
        self.record = RunRecord.of_run(run)
        self.allowance = self.record.allowance
        self.offer = self.record.offer
        self.transport: Transport | None = None
        self.stop_requested = False  # the guard ends the run at its next poll (SIGTERM)
        self.stop_cause = ""  # what asked for the stop, for the reason: "SIGTERM"
        self.handoff_requested = False  # the guard leaves the run to a detached guard (SIGHUP)
        # Set once the guard or a teardown runs: a signal then only sets a flag (orchestrator.cli.signals).
        self.deferring_signals = False
        # What bootstrap found on the instance: kept in the record, so that a controller loaded from the
        # ledger (a detached guard starting the job after the data phase) runs the same python.
        found = self.record.bootstrap or {}
        self.gpu_count = int(found.get("gpu_count") or 0)
        self.python = str(found.get("python") or "python3")
        self.syncer: Syncer | None = None  # periodic pulls while the guard runs
        self.instance: Instance | None = None  # the current attempt's (orchestrator.run.provisioning)
        self.workers: list[Node] = []  # nodes 1.. of a multi-node run (orchestrator.run.nodes); node 0 is above
        self._recipe: Recipe | None = None  # what node 0's bootstrap decided; the workers run the same
        self._node_exit: int | None = None  # a worker's job that failed first: the run's job exit status
        self._budgets: Budgets | None = None  # the launch's budgets.yaml (offer fallback re-reads it)
        self._notifier: Notifier | None = None  # budgets.yaml notify: (orchestrator.notify)

    # --- construction ---------------------------------------------------------------------------
    @classmethod
    def create(cls, ledger: Ledger, launch: LaunchPlan, reporter: Reporter = _quiet) -> Controller:
        run_id = new_run_id()
        run_dir = launch.run_dir_root / run_id
        record = RunRecord.of_launch(launch).to_dict()
        if launch.options.resume_run:  # `--resume RUN`: the same directory, its files appended to
            earlier = ledger.resolve_run(launch.options.resume_run)
            run_dir = Path(earlier.run_dir)
            record["resumed_from"] = earlier.run_id
        max_usd = launch.allowance.max_usd
        # The hold and the run row land together or not at all: a refusal leaves nothing behind.
        with ledger.transaction():
            budget_mod.reserve(launch.budgets, ledger, run_id, launch.provider.name, max_usd)
            run = ledger.create_run(run_id, launch.provider.name, max_usd, record, str(run_dir))
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "plan.json").write_text(json.dumps({**record, "max_usd": max_usd}, indent=2, default=str))
        ctl = cls(ledger, run, launch.provider, reporter)
        ctl._budgets = launch.budgets
        return ctl

    @classmethod
    def load(cls, ledger: Ledger, run: Run, reporter: Reporter = _quiet) -> Controller:
        provider = get_provider(run.provider, **RunRecord.of_run(run).provider_options)
        return cls(ledger, run, provider, reporter)

    @property
    def options(self) -> LaunchOptions:
        return self.record.options

    def refresh(self) -> Run:
        run = self.ledger.get_run(self.run.run_id)
        assert run is not None
        self.run = run
        return run

    def phase(self, name: str | Phase, **payload: Any) -> None:
        """Record the phase (the ledger refuses a transition the lifecycle does not allow)."""
        self.ledger.set_phase(self.run.run_id, name, **payload)
        self.run.phase = Phase(name).value
        self.report(self.status(message=payload.get("message") or payload.get("reason", "")))

    def spent_usd(self, at: float | None = None) -> float:
        start = self.run.clock_start_epoch
        if start is None:
            return 0.0
        return self.allowance.cost_at((at or time.time()) - start)

    def status(self, **extra: Any) -> LiveStatus:
        stop_at = self.run.stop_at_epoch
        return LiveStatus(
            phase=self.run.phase,
            spent_usd=self.spent_usd(),
            max_usd=self.allowance.max_usd,
            seconds_to_stop=(stop_at - time.time()) if stop_at else None,
            **extra,
        )

    # --- the launch, phase by phase -------------------------------------------------------------
    def launch(self, attach: bool = True) -> int | None:
        """Create, boot, bootstrap, start the job; then guard it (attached) or hand it to a guard.

        Returns the pid of the detached guard the run was handed to (--detach, or a handoff asked
        while attached), else None: the run is verified gone."""
        try:
            instance = provisioning.provision(self)  # the plan's offers in order until one comes up
            self._bootstrap(instance)
            if self.options.resume_run:
                recovery.resume_earlier_run(self)
            if not self._start_data():  # the data phase runs under the guard (it may take an hour)
                self._start_job()
        except Exception as exc:
            self.deferring_signals = True
            # A phase cut at the stop time says so in its own words; anything else names its error.
            detail = str(exc) if isinstance(exc, stop_time.CutOff) else f"{type(exc).__name__}: {exc}"
            self._record_end(f"{Ending.RUN_FAILED}: {detail}")
            self._fail(exc)
            raise
        if attach and self.guard():
            return None
        return spawn_guard(self.refresh())

    def request_stop(self, cause: str) -> None:
        self.stop_requested, self.stop_cause = True, cause

    def request_handoff(self) -> None:
        self.handoff_requested = True

    @property
    def budgets(self) -> Budgets:
        if self._budgets is None:
            self._budgets = load_budgets(self.options.budgets)
        return self._budgets

    @property
    def notifier(self) -> Notifier:
        """Run events to budgets.yaml's `notify:` targets; a budgets file that no longer loads only
        turns them off (a teardown must never fail for a notification)."""
        if self._notifier is None:
            try:
                config = self.budgets.notify
            except BudgetError as exc:
                self.ledger.record_event(self.run.run_id, "notify_off", error=str(exc))
                config = None
            self._notifier = Notifier(config, on_failure=lambda event, target, error: self.ledger.record_event(
                self.run.run_id, "notify_failed", event=event, target=target, error=error))
        return self._notifier

    def notice(self, event: str, message: str, **facts: Any) -> None:
        self.notifier.send(event, self.run.run_id, message, provider=self.provider.name, phase=self.run.phase,
                           spent_usd=round(self.spent_usd(), 6), max_usd=self.allowance.max_usd, **facts)

    def switch_offer(self, offer: Offer, remaining: list[Offer], spent_usd: float,
                     spent_on: str = "failed boots") -> None:
        """Make `offer` the run's current one (offer fallback): its allowance is what is left of the
        cap after the earlier attempts (BudgetError when that buys too little at its price)."""
        allowance = budget_mod.allowance_for(self.budgets, self.provider.name, self.run.max_usd,
                                             self.options.group_usd_per_hour(offer), spent_before_usd=spent_usd,
                                             spent_on=spent_on)
        offer.billing = allowance.billing
        self.offer, self.allowance = offer, allowance
        self.record.offer, self.record.allowance, self.record.fallbacks = offer, allowance, list(remaining)
        self.ledger.update_run(self.run.run_id, plan=self.record.to_dict())

    def record_failed_attempt(self, attempt: dict[str, Any]) -> None:
        self.record.attempts.append(attempt)
        self.ledger.update_run(self.run.run_id, plan={"attempts": self.record.attempts})
        self.ledger.record_event(self.run.run_id, "attempt_failed", **attempt)
        self.report(self.status(message=f"attempt {attempt['attempt']} failed: {attempt['reason']}"))

    def create_instance(self) -> Instance:
        """Start the money clock and create the current offer's instance (NoCapacityError: none)."""
        # The clock starts at the create call: deadlines are fixed before it is made.
        clock = self.allowance.with_clock_start(time.time())
        deadline = clock.deadline_epoch
        self.ledger.update_run(
            self.run.run_id,
            clock_start_epoch=clock.clock_start_epoch,
            deadline_epoch=deadline,
            stop_at_epoch=clock.stop_at_epoch,
            usd_per_hour=self.options.group_usd_per_hour(self.offer),
            controller_pid=os.getpid(),
        )
        self.refresh()
        self.phase("creating", instance_type=self.offer.instance_type, deadline_epoch=deadline,
                   **({"nodes": self.options.nodes} if self.options.nodes > 1 else {}))
        self.workers = []
        instance = self.provider.create(self._spec(node_rank=0))
        self.ledger.add_instance(self.run.run_id, self.provider.name, instance.id, instance.state, instance.raw)
        self.instance = instance
        return instance

    def _spec(self, node_rank: int) -> InstanceSpec:
        return InstanceSpec(
            run_id=self.run.run_id,
            offer=self.offer,
            ssh_public_key=self._public_key() if self.provider.needs_ssh_key else "",
            image=self.options.image,
            attempt=len(self.record.attempts) + 1,
            node_rank=node_rank,
            nodes=self.options.nodes,
        )

    def create_workers(self) -> None:
        """Nodes 1..N-1 of a multi-node run, right after node 0 (BootFailed when one is refused: the
        attempt then tears down every node it made)."""
        for rank in range(1, self.options.nodes):
            try:
                inst = self.provider.create(self._spec(node_rank=rank))
            except Exception as exc:  # noqa: BLE001 - capacity, quota, an API error: the group cannot form
                raise BootFailed(f"node {rank} of {self.options.nodes} could not be created:"
                                 f" {type(exc).__name__}: {exc}") from exc
            self.ledger.add_instance(self.run.run_id, self.provider.name, inst.id, inst.state, inst.raw)
            self.workers.append(Node(rank, inst))

    def attempt_instance_ids(self) -> list[str]:
        """The current attempt's instances: node 0, then the workers made so far."""
        assert self.instance is not None
        return [self.instance.id, *(w.instance.id for w in self.workers)]

    def boot_and_connect(self, instance: Instance, until: float) -> None:
        """Wait for the instance (every node of a multi-node run) to run and answer (SSH) by `until`;
        BootFailed if one will not."""
        access = self._boot(instance, until)
        self._connect(instance, access, until)
        if not self.workers:
            return
        for node in self.workers:
            node.instance, access = self._boot_worker(node, until)
            transport = open_transport(access, run_id=self.run.run_id, instance_id=node.instance.id,
                                       ledger=self.ledger, root=worker_root(self.run.run_id, node.rank))
            try:
                transport.wait_ready(timeout_s=max(5.0, until - time.time()))
            except Exception as exc:  # noqa: BLE001 - whatever the transport raises, the group failed
                transport.close()
                raise BootFailed(f"node {node.rank} (instance {node.instance.id}) runs but never answered:"
                                 f" {type(exc).__name__}: {exc}") from exc
            node.transport = transport
            self._arm_switch(node.instance, transport, stall=False)
            self.ledger.record_event(self.run.run_id, "node_ready", rank=node.rank, instance_id=node.instance.id,
                                     root=transport.root, watchdog_deadline=self.watchdog_deadline())
        self.instance = self.provider.get(instance.id)  # node 0 as it runs now: its private address
        self._record_nodes()

    def _boot_worker(self, node: Node, until: float) -> tuple[Instance, Access]:
        while True:
            inst = self.provider.get(node.instance.id)
            self.ledger.update_instance(inst.id, state=inst.state)
            if inst.boot_failure or inst.gone:
                raise BootFailed(f"node {node.rank} (instance {inst.id}) will not boot:"
                                 f" {inst.boot_failure or inst.state}")
            access = self.provider.access(inst)
            if inst.state == "running" and access is not None:
                return inst, access
            if time.time() > until:
                raise BootFailed(f"node {node.rank} (instance {inst.id}) still {inst.state} at the end of its"
                                 f" boot window")
            time.sleep(POLL_S)

    def _record_nodes(self) -> None:
        assert self.instance is not None
        nodes = [{"rank": 0, "instance_id": self.instance.id, "private_ip": self.instance.private_ip},
                 *(w.to_dict() for w in self.workers)]
        self.ledger.update_run(self.run.run_id, plan={"nodes": nodes})
        self.refresh()

    def _boot(self, instance: Instance, until: float) -> Access:
        self.phase("booting", instance_id=instance.id)
        while True:
            inst = self.provider.get(instance.id)
            self.ledger.update_instance(instance.id, state=inst.state)
            if inst.boot_failure:
                raise BootFailed(f"instance {instance.id} will not boot: {inst.boot_failure}")
            if inst.gone:
                raise BootFailed(f"instance {instance.id} went away while booting ({inst.state})")
            access = self.provider.access(inst)
            if inst.state == "running" and access is not None:
                return access
            if time.time() > until:
                raise BootFailed(f"instance {instance.id} still {inst.state} at the end of its boot window"
                                 f" ({until - (self.run.clock_start_epoch or until):.0f} s)")
            time.sleep(POLL_S)

    def _connect(self, instance: Instance, access: Access, until: float) -> None:
        transport = self._make_transport(instance, access)
        try:
            transport.wait_ready(timeout_s=max(5.0, until - time.time()))
        except Exception as exc:  # noqa: BLE001 - whatever the transport raises, this attempt failed
            transport.close()
            raise BootFailed(f"instance {instance.id} runs but never answered: {type(exc).__name__}: {exc}") from exc
        self.transport = transport  # only a reachable instance has outputs worth a final sync
        # The switch goes on in this first session, before the upload and bootstrap (which can be slow):
        # from here the instance ends itself at the deadline with this controller gone.
        self._arm_switch(instance, transport, stall=True)
        self.phase("ssh_ready", root=transport.root, watchdog_deadline=self.watchdog_deadline())

    def _arm_switch(self, instance: Instance, transport: Transport, stall: bool) -> None:
        """The dead-man's switch on one node: works with this controller gone. It fires between the
        guard's stop time and the money deadline, leaving half the reserve for the self-destruct to
        land. Its idle and stall rules start once the job starts (a worker has no stall rule: the
        steps are logged on node 0); a recipe's data phase is named to it after bootstrap."""
        opts = self.options

        def arm() -> None:
            for path, content, mode in self.provider.self_destruct_files(instance):
                transport.write_file(path, content, mode)
            install_watchdog(
                transport,
                deadline_epoch=self.watchdog_deadline(),
                grace_s=self.grace_s(),
                self_destruct_cmd=self.self_destruct_command(instance),
                # With this controller gone, an ended job's instance must not idle, nor a stalled job run on.
                idle_s=opts.idle_minutes * 60,
                stall_s=opts.stall_minutes * 60 if stall else None,
                progress_file="out/metrics.jsonl" if stall and not opts.command else "job.log",
            )

        self._by_stop_time("arming the switch", Steps("arming the dead-man's switch"), arm, transport)

    def _by_stop_time(self, phase: str, steps: Steps, work: Callable[[], T], transport: Transport,
                      until: float | None = None) -> T:
        """`work` (transport only: no ledger) cut off at the guard's stop time, or `until`
        (stop_time.CutOff); a cut abandons the transport, which the teardown then no longer uses."""
        assert self.run.stop_at_epoch is not None
        try:
            return stop_time.within(until or self.run.stop_at_epoch, phase, steps, work)
        except stop_time.CutOff:
            transport.close()
            if transport is self.transport:
                self.transport = None
            raise

    def _bootstrap(self, instance: Instance) -> None:
        assert self.transport is not None
        transport = self.transport
        steps = Steps("uploading the code")

        def prepare() -> tuple[BootstrapInfo, Recipe | None, bool, dict[str, Any], list[str]]:
            info = self._upload_and_bootstrap(transport, steps)
            # The recipe: a default one by whether the instance has CUDA.
            recipe, default = recipe_for(self.options, info.cuda_available)
            job, installed = self._set_up_job(transport, info.python, recipe, default, steps)
            return info, recipe, default, job, installed

        info, self._recipe, _, job, installed = self._by_stop_time("bootstrap", steps, prepare, transport)
        self.gpu_count = info.gpu_count
        self.python = info.python
        self.record.bootstrap = info.to_dict()
        self.ledger.update_run(self.run.run_id, plan={"bootstrap": self.record.bootstrap, "job": job})
        self.refresh()
        if installed:
            self.ledger.record_event(self.run.run_id, "installed", packages=installed, rank=0)
        if watch := self._data_watch():  # the switch watches the data phase too, until training starts
            set_pre_job(transport, **watch)
        if self.offer.spot and (notice := self.provider.spot_notice_command(instance, transport.root)):
            transport.start_detached(SPOT_NOTICE_JOB, notice)  # the provider's reclaim warning
        for node in self.workers:
            self._bootstrap_worker(node)
        if self.workers:
            self._record_nodes()  # with each worker's data command, for a guard that takes over
        self.phase("bootstrapped", watchdog_deadline=self.watchdog_deadline(), **info.to_dict())

    def _upload_and_bootstrap(self, transport: Transport, steps: Steps) -> BootstrapInfo:
        """The job's code on the node (the command's --workdir, else the trainer), then the python /
        torch / CUDA check and what is missing installed."""
        opts = self.options
        steps("uploading the code")
        if opts.command and opts.workdir:
            transport.upload(Path(opts.workdir), "code")
        else:
            transport.upload(TRAINER_DIR, "code/trainer")
        return bootstrap(transport, need_torch=not opts.command, step=steps)

    def _bootstrap_worker(self, node: Node) -> None:
        """A worker node: the same code and config as node 0 (its switch is armed since it answered)."""
        assert node.transport is not None
        transport = node.transport
        steps = Steps("uploading the code")

        def prepare() -> tuple[BootstrapInfo, dict[str, Any], list[str]]:
            info = self._upload_and_bootstrap(transport, steps)
            # Node 0's recipe (decided by its hardware: the nodes are one offer), under this node's root.
            job, installed = self._set_up_job(transport, info.python, self._recipe,
                                              bool(self.job_info().get("default")), steps)
            return info, job, installed

        info, node.job, installed = self._by_stop_time(f"node {node.rank}'s bootstrap", steps, prepare, transport)
        node.python = info.python
        if installed:
            self.ledger.record_event(self.run.run_id, "installed", packages=installed, rank=node.rank)
        if watch := self._data_watch(node.job, transport):
            set_pre_job(transport, **watch)
        self.ledger.record_event(self.run.run_id, "node_bootstrapped", rank=node.rank, instance_id=node.instance.id,
                                 python=info.python, torch=info.torch_version, gpu_count=info.gpu_count)

    def _data_watch(self, job: dict[str, Any] | None = None, transport: Transport | None = None) -> dict[str, str]:
        """The watchdog's pre-job: the data phase and its progress.json, relative to the run root."""
        job = self.job_info() if job is None else job
        transport = transport or self.transport
        assert transport is not None
        root = transport.root.rstrip("/") + "/"
        if not job.get("prepare") or not str(job.get("data_dir") or "").startswith(root):
            return {}
        return {"pre_job": DATA_JOB, "pre_progress_file": f"{job['data_dir'][len(root):]}/{PROGRESS_FILE}"}

    def _set_up_job(self, transport: Transport, python: str, recipe: Recipe | None, default: bool,
                    steps: Steps) -> tuple[dict[str, Any], list[str]]:
        """On one node: the recipe's data command and data_dir under its root (its --data-from copy
        uploaded), the packages the data needs, the config file the trainer reads (recipe < --config;
        --set stays flags) with data_dir at the data the recipe prepares. What was decided (`job`, kept
        in the run's record) and the packages installed. Transport only: it runs in bootstrap's
        worker thread."""
        opts, root = self.options, transport.root
        job: dict[str, Any] = {"recipe": recipe.name if recipe else None, "default": default,
                               "config_file": False, "data_dir": None, "prepare": None}
        if recipe is not None and data_phase(opts, recipe):
            job["data_dir"] = f"{root}/data/{recipe.data.dir_name}"
            from_dir = None
            if opts.data_from:
                steps(f"uploading {opts.data_from}")
                transport.upload(Path(opts.data_from), DATA_SOURCE_DIR)
                from_dir = f"{root}/{DATA_SOURCE_DIR}"
            args = recipe.data.prepare_args(job["data_dir"], from_dir=from_dir)
            job["prepare"] = f"{shlex.quote(python)} -m trainer.data {shlex.join(args)}"
        installed: list[str] = []
        if recipe is not None and not opts.command:
            installed = ensure_packages(transport, python, recipe.data.packages(), step=steps)
        config = job_config(opts, recipe, job["data_dir"]) if not opts.command else {}
        if config:
            steps("writing the job's config")
            transport.write_file(f"code/{JOB_CONFIG}", config_text(config))
            job["config_file"] = True
        return job, installed

    def job_info(self) -> dict[str, Any]:
        """What _configure_job decided: recipe, config_file, data_dir, prepare (the data command)."""
        job = self.run.plan.get("job")
        return dict(job) if isinstance(job, dict) else {}

    def _start_data(self) -> bool:
        """Start the data phase when the recipe has one; False when there is none, or its data is
        already READY (prepared by an earlier attempt on this instance): training starts at once."""
        assert self.transport is not None
        job = self.job_info()
        if not job.get("prepare"):
            return False
        ready = self.transport.run(f"test -f {shlex.quote(job['data_dir'] + '/READY')}", timeout_s=30)
        if ready.ok:
            self.ledger.record_event(self.run.run_id, "data_reused", data_dir=job["data_dir"])
            return False
        self.phase("preparing_data", command=job["prepare"], data_dir=job["data_dir"], recipe=job["recipe"])
        pid = self.transport.start_detached(DATA_JOB, job["prepare"], env={"PYTHONUNBUFFERED": "1"})
        self.ledger.record_event(self.run.run_id, "data_started", pid=pid)
        for node in self.workers:  # every node prepares its own copy: the nodes share no disk
            if node.transport is not None and node.job.get("prepare"):
                node_pid = node.transport.start_detached(DATA_JOB, node.job["prepare"], env={"PYTHONUNBUFFERED": "1"})
                self.ledger.record_event(self.run.run_id, "node_data_started", rank=node.rank, pid=node_pid)
        return True

    def _workers_data(self) -> list[int]:
        """The worker nodes still preparing their data (DataFailed for one whose preparer failed)."""
        waiting = []
        for node in self.ensure_workers():
            if node.transport is None or not node.job.get("prepare"):
                continue
            state = node.transport.job_state(DATA_JOB)
            if state.running:
                waiting.append(node.rank)
            elif state.exit_code != 0:
                raise DataFailed(f"node {node.rank}: " + self._data_failure(state.exit_code, node.transport))
        return waiting

    def self_destruct_command(self, instance: Instance) -> str:
        # GPURUN_SELF_DESTRUCT_CMD replaces the provider's command where the "instance" is a machine
        # that must survive (the tests' loopback sshd); docs/ARCHITECTURE.md lists it as a test hook.
        return settings.self_destruct_cmd() or self.provider.self_destruct_command(instance)

    def watchdog_deadline(self) -> float:
        assert self.run.stop_at_epoch is not None
        return self.run.stop_at_epoch + self.allowance.reserve_s / 2

    def grace_s(self) -> float:
        return max(3.0, min(30.0, self.allowance.reserve_s / 4))

    _heartbeat_at = float("-inf")  # time.monotonic() of this controller's last heartbeat

    def _heartbeat(self, force: bool = False) -> None:
        """Touch the instance's heartbeat so its switch leaves idle and stalled runs to this controller.
        Rate-limited (several per window) unless forced; a failure is only a missed beat."""
        opts = self.options
        every = heartbeat_interval_s(opts.idle_minutes * 60, opts.stall_minutes * 60)
        now = time.monotonic()
        if self.transport is None or (not force and now - self._heartbeat_at < every):
            return
        self._heartbeat_at = now
        for t in (self.transport, *(n.transport for n in self.workers)):
            if t is not None:
                _quietly(lambda t=t: heartbeat(t))  # a miss is a missed beat: the guard's poll reports a lost node

    def job_command(self, node: Node | None = None) -> str:
        """The job's command line on node 0 (or on `node`, a worker of a multi-node run)."""
        opts = self.options
        if opts.command:
            return shlex.join(opts.command)
        args = list(opts.trainer_args)
        if self.job_info().get("config_file"):
            args = ["--config", JOB_CONFIG, *args]
        # The trainer's own deadline is the guard's stop time: it plans its learning-rate decay, the
        # final checkpoint and the final eval to end just before it (lr_schedule auto), so what comes
        # home is a finished model; the guard's SIGTERM at stop_at and the watchdog's are backstops.
        assert self.run.stop_at_epoch is not None
        args += ["--deadline-epoch", f"{math.floor(self.run.stop_at_epoch)}"]
        transport = self.transport if node is None else node.transport
        assert transport is not None
        # One rank per GPU; an instance without GPUs runs --gpus CPU ranks (gloo), e.g. to test DDP.
        gpus = self.gpu_count or max(1, opts.gpus)
        group: dict[str, Any] = {}
        if opts.nodes > 1:
            group = dict(nodes=opts.nodes, node_rank=0 if node is None else node.rank,
                         rdzv_endpoint=f"{self._rendezvous()}:{settings.rdzv_port()}")
        return trainer_command(gpus, args, python=self.python if node is None else node.python,
                               out_dir=f"{transport.root}/out", **group)

    def _rendezvous(self) -> str:
        assert self.instance is not None
        return rendezvous_address(self.instance)

    def _job_env(self, rank: int) -> dict[str, str]:
        env = {"PYTHONUNBUFFERED": "1"}
        if self.options.nodes > 1:
            nodes = self.run.plan.get("nodes") or []
            addresses = [str(n.get("private_ip") or "") for n in sorted(nodes, key=lambda n: n["rank"])]
            env.update(group_env(addresses, rank, self.gpu_count or max(1, self.options.gpus), settings.rdzv_port()))
        return env

    def _start_job(self) -> None:
        assert self.transport is not None
        command = self.job_command()
        self.phase("running", command=command)
        pid = self.transport.start_detached("job", command, env=self._job_env(0))
        # Node 0 first: its rank 0 hosts the rendezvous the others connect to.
        for node in self.ensure_workers():
            if node.transport is None:
                raise RunFailed(f"node {node.rank} (instance {node.instance.id}) does not answer: the job cannot"
                                " start on every node")
            node_pid = node.transport.start_detached("job", self.job_command(node), env=self._job_env(node.rank))
            self.ledger.record_event(self.run.run_id, "node_job_started", rank=node.rank, pid=node_pid)
        self.ledger.record_event(self.run.run_id, "job_started", pid=pid)
        self.notice("started", f"run {self.run.run_id} started on {self.offer.instance_type}; the guard stops it"
                    f" at {time.strftime('%H:%M:%S', time.localtime(self.run.stop_at_epoch or 0))}",
                    instance_type=self.offer.instance_type, usd_per_hour=self.offer.total_usd_per_hour,
                    stop_at_epoch=self.run.stop_at_epoch, deadline_epoch=self.run.deadline_epoch)

    # --- the guard ------------------------------------------------------------------------------
    def guard(self) -> bool:
        """Follow the job until it ends, stalls or the stop time comes; then stop, sync, tear down,
        verify: True. A handoff request returns False at the next poll, the run still going."""
        self.deferring_signals = True
        transport = self.ensure_transport()
        self.ensure_workers()  # a guard that took the run over reaches the other nodes too
        self.ledger.update_run(self.run.run_id, controller_pid=os.getpid())
        # Periodic pulls run in the background: a slow pull of a big checkpoint must never make the
        # guard late for the stop time.
        self.syncer = Syncer(lambda: self._sync(final=False), self.sync_interval()).start()
        if Phase(self.run.phase) is Phase.PREPARING_DATA:
            try:
                reason = self._guard_data(transport)
                if reason is None:
                    self._start_job()
            except Exception as exc:  # a failed prepare (DataFailed), or a job that would not start
                self.syncer.stop()
                self._record_end(f"{Ending.RUN_FAILED}: " + (str(exc) if isinstance(exc, DataFailed)
                                                             else f"{type(exc).__name__}: {exc}"))
                self._fail(exc)
                return True
            if reason == _HANDOFF:
                self.syncer.stop()
                self.ledger.record_event(self.run.run_id, "handoff", pid=os.getpid())
                return False
            if reason is not None and ending_of(reason) is Ending.PREEMPTED and self._resume(reason):
                # Reclaimed while preparing its data: the next instance prepared it and started the job.
                transport = self.ensure_transport()
            elif reason is not None:
                self.finish(reason)
                return True
        while True:
            reason = self._watch_job(transport)
            if reason is None:
                return False  # handed off
            if ending_of(reason) is Ending.PREEMPTED and self._resume(reason):
                transport = self.ensure_transport()  # the next offer's instance, the job resumed on it
                continue
            break
        self.finish(reason)
        return True

    def _resume(self, reason: str) -> bool:
        """orchestrator.run.recovery; whatever breaks on the way ends the run with that reason."""
        try:
            return recovery.resume_after_preemption(self, reason)
        except Exception as exc:  # noqa: BLE001 - the run ends, torn down and verified, with the reason
            self.record_end(f"{reason}; not resumed: {type(exc).__name__}: {exc}")
            return False

    def bootstrap_instance(self, instance: Instance) -> None:
        self._bootstrap(instance)

    def start_after_bootstrap(self) -> None:
        """A resumed run: its data phase (waited for here), then the job, then the periodic pulls."""
        if self._start_data():
            stopped = self._guard_data(self.ensure_transport())
            if stopped is not None:
                raise RunFailed(f"the resumed run's data phase did not finish: {stopped}")
        self._start_job()
        self.syncer = Syncer(lambda: self._sync(final=False), self.sync_interval()).start()

    def record_end(self, reason: str) -> None:
        self._record_end(reason)

    def _spot_notice(self, transport: Transport) -> str:
        """The provider's reclaim warning, seen on the instance (the job checkpointed and stopped on it)."""
        res = transport.run(f"cat {shlex.quote(transport.root + '/' + SPOT_NOTICE_FILE)} 2>/dev/null", timeout_s=30)
        return f"the provider's spot interruption notice: {res.stdout.strip()[:200]}" if res.stdout.strip() else ""

    def _preempted(self) -> str:
        """The provider's word that it took the instance back ("" when it did not, or cannot say)."""
        try:
            return self.provider.get(self.instance_ids()[-1]).preempted
        except Exception:  # noqa: BLE001 - asking is best effort: the guard's own checks go on
            return ""

    def _watch_job(self, transport: Transport) -> str | None:
        """Follow the job until it ends, stalls, is preempted or the stop time comes: why (None: a
        handoff was asked)."""
        stall = StallWatch(self.options.stall_minutes * 60, by_step=not self.options.command, now=time.time())
        reason = "job finished"
        errors = 0
        asked_at = nodes_at = time.time()
        while True:
            if self.run.stop_at_epoch is not None and time.time() >= self.run.stop_at_epoch:
                reason = f"{Ending.DEADLINE}: budget guard"
                break
            if self.stop_requested:
                reason = f"{Ending.REQUESTED}" + (f" ({self.stop_cause})" if self.stop_cause else "")
                break
            if self.handoff_requested:
                assert self.syncer is not None
                self.syncer.stop()
                self.ledger.record_event(self.run.run_id, "handoff", pid=os.getpid())
                return None
            try:
                if self.offer.spot and time.time() - asked_at >= PREEMPT_CHECK_S:
                    asked_at = time.time()
                    if preempted := self._preempted():
                        reason = f"{Ending.PREEMPTED}: {preempted}"
                        break
                self._heartbeat()
                if self.workers and time.time() - nodes_at >= NODES_CHECK_S:
                    nodes_at = time.time()
                    if failed := self._failed_node():
                        reason = failed
                        break
                state = transport.job_state("job")
                if not state.running:
                    if self.offer.spot and (preempted := self._preempted() or self._spot_notice(transport)):
                        reason = f"{Ending.PREEMPTED}: {preempted}"  # the machine goes, not the job
                        break
                    reason = f"{Ending.JOB_ENDED} (exit {state.exit_code})"
                    if state.exit_code == 0 and not self.options.command and self._probe().end_reason == "deadline":
                        reason = f"{Ending.DEADLINE}: the trainer stopped itself at the guard's stop time"
                    if read_reason(transport) == "stalled":  # the switch stopped it while we were away
                        reason = f"{Ending.STALLED}: stopped by the on-instance switch (no progress, no controller)"
                    break
                probe = self._probe()
                self.report(self.status(**probe.metrics))
                self.notifier.cap_crossed(self.run.run_id, self.spent_usd(), self.allowance.max_usd)
                errors = 0
                if stall.look(probe, time.time()):
                    reason = f"{Ending.STALLED}: no new {stall.what} for {self.options.stall_minutes:g} min"
                    break
            except Exception as exc:  # an instance we cannot watch is torn down, not left billing
                errors += 1
                self.ledger.record_event(self.run.run_id, "error", message=f"{type(exc).__name__}: {exc}")
                if preempted := self._preempted():  # unreachable because the provider took it back
                    reason = f"{Ending.PREEMPTED}: {preempted}"
                    break
                if errors >= 5:
                    reason = f"{Ending.LOST}: {type(exc).__name__}: {exc}"
                    break
            time.sleep(POLL_S)
        return reason

    def _failed_node(self) -> str:
        """Why a worker node can no longer carry its part ("" while all can): its job ended with an
        error, or its instance is gone. Node 0's ranks would otherwise wait in a collective until
        the stall window; the run ends now, and the worker's exit status is the job's."""
        for node in self.workers:
            try:
                state = node.transport.job_state("job") if node.transport is not None else None
            except Exception:  # noqa: BLE001 - unreachable now: the provider says whether it is still there
                state = None
            if state is not None:
                if not state.running and state.exit_code != 0:
                    self._node_exit = state.exit_code if state.exit_code is not None else -9
                    status = "killed, no exit status" if state.exit_code is None else f"exit {state.exit_code}"
                    return f"{Ending.JOB_ENDED} ({status} on node {node.rank}, instance {node.instance.id})"
                continue
            try:
                inst = self.provider.get(node.instance.id)
            except Exception:  # noqa: BLE001 - the next check asks again
                continue
            if inst.gone:
                return f"{Ending.LOST}: node {node.rank} (instance {inst.id}) is {inst.state}"
        return ""

    def _guard_data(self, transport: Transport) -> str | None:
        """Follow the data phase: None once the data is ready, else why the run stops (the stop time,
        a stop asked, no progress for the stall window, a lost instance) or _HANDOFF. DataFailed
        when the preparer exits non-zero, with its one line."""
        job = self.job_info()
        stall = StallWatch(self.options.stall_minutes * 60, by_step=False, now=time.time())
        errors = 0
        asked_at = time.time()
        while True:
            if self.run.stop_at_epoch is not None and time.time() >= self.run.stop_at_epoch:
                return f"{Ending.DEADLINE}: budget guard (while preparing the data)"
            if self.stop_requested:
                return f"{Ending.REQUESTED}" + (f" ({self.stop_cause})" if self.stop_cause else "")
            if self.handoff_requested:
                return _HANDOFF
            try:
                if self.offer.spot and time.time() - asked_at >= PREEMPT_CHECK_S:
                    asked_at = time.time()
                    if preempted := self._preempted():
                        return f"{Ending.PREEMPTED}: {preempted} (while preparing the data)"
                self._heartbeat()
                state = transport.job_state(DATA_JOB)
                if state.pid is None and not state.running:  # a controller died before starting it
                    transport.start_detached(DATA_JOB, job["prepare"], env={"PYTHONUNBUFFERED": "1"})
                    continue
                probe = self._data_probe(job["data_dir"])
                if not state.running:
                    if state.exit_code != 0 and self.offer.spot and (preempted := self._preempted()):
                        return f"{Ending.PREEMPTED}: {preempted} (while preparing the data)"  # the machine went
                    if state.exit_code == 0 and (waiting := self._workers_data()):
                        self.report(self.status(data=f"node 0 ready; node(s) {', '.join(map(str, waiting))} preparing"))
                        time.sleep(POLL_S)
                        continue
                    if state.exit_code == 0:
                        self.ledger.record_event(self.run.run_id, "data_ready", data_dir=job["data_dir"],
                                                 **{k: probe.progress.get(k) for k in ("tokens", "message")})
                        return None
                    raise DataFailed(self._data_failure(state.exit_code))
                self.report(self.status(data=probe.line))
                errors = 0
                if stall.look_mark(probe.mark, time.time()):
                    return f"{Ending.STALLED}: no data preparation progress for {self.options.stall_minutes:g} min"
            except DataFailed:
                raise
            except Exception as exc:  # an instance we cannot watch is torn down, not left billing
                errors += 1
                self.ledger.record_event(self.run.run_id, "error", message=f"{type(exc).__name__}: {exc}")
                if preempted := self._preempted():  # unreachable because the provider took it back
                    return f"{Ending.PREEMPTED}: {preempted} (while preparing the data)"
                if errors >= 5:
                    return f"{Ending.LOST}: {type(exc).__name__}: {exc}"
            time.sleep(POLL_S)

    def _data_probe(self, data_dir: str) -> DataProbe:
        assert self.transport is not None
        command = data_probe_command(self.transport.root, data_dir, f"{DATA_JOB}.log")
        return parse_data_probe(self.transport.run(command, timeout_s=10).stdout)

    def _data_failure(self, exit_code: int | None, transport: Transport | None = None) -> str:
        """The reason of a failed prepare: its exit status and its last line (contract: ONE stderr
        line saying what failed and how to fix it; the log has stdout and stderr together)."""
        transport = transport or self.transport
        assert transport is not None
        tail = transport.run(f"tail -n 20 {shlex.quote(transport.root + '/' + DATA_JOB + '.log')}",
                             timeout_s=30).stdout
        lines = [ln.strip() for ln in tail.splitlines() if ln.strip()]
        line = lines[-1] if lines else "no output"
        if self.options.data_from:  # name the user's directory, not the copy uploaded from it
            line = line.replace(f"{transport.root}/{DATA_SOURCE_DIR}", self.options.data_from)
        status = "killed, no exit status" if exit_code is None else f"exit {exit_code}"
        return f"{DATA_FAILED} ({status}): {line}"

    def finish(self, reason: str) -> None:
        """Stop the job if it still runs, pull the final outputs, terminate, verify, prove.

        A run that never reached its instance (Ctrl-C or a guard taking over while it booted) has
        no job to stop and nothing to pull: it goes straight to teardown."""
        self.deferring_signals = True
        self._record_end(reason)
        if not Phase(self.run.phase).is_job():
            self.ledger.record_event(self.run.run_id, "finish", reason=reason, job=False)
            self.teardown()
            return
        try:
            self._stop_job(reason)  # first: the job checkpoints while a periodic pull may finish
            if self.syncer is not None:
                self.syncer.stop()
            self.phase("syncing_final")
            self._final_sync()
        except Exception as exc:  # a failed stop or sync must never keep the instance alive
            self.ledger.record_event(self.run.run_id, "error", message=f"{type(exc).__name__}: {exc}")
        if not self.options.command:
            self._judge_outputs()
        self.teardown()

    def _final_sync(self) -> None:
        """The last pull, ended by the time the switch acts (half the reserve past the stop time), so
        that the teardown keeps the other half whatever the link does."""
        transport = self.ensure_transport()
        result = self._by_stop_time("the final sync", Steps("pulling the outputs"),
                                    lambda: transport.pull(self.run_dir), transport, until=self.watchdog_deadline())
        self._record_sync(result, final=True)

    def _judge_outputs(self) -> None:
        """A bundled-trainer run that stopped "cleanly" with no step logged and no checkpoint saved
        failed: its end reason says so, and why (orchestrator.run.outcome)."""
        run = self.refresh()
        started = [e.time for e in self.ledger.events(run.run_id) if e.phase == Phase.RUNNING.value]
        after = started[-1] - run.clock_start_epoch if started and run.clock_start_epoch else None
        reason = nothing_trained(run.end_reason, run.job_exit_code, produced(self.run_dir), after,
                                 self.allowance.max_runtime_s)
        if reason is not None:
            self.ledger.update_run(run.run_id, end_reason=reason)
            self.ledger.record_event(run.run_id, "nothing_trained", reason=reason)
            self.refresh()

    def _stop_job(self, reason: str) -> None:
        transport = self.ensure_transport()
        self.phase("stopping", reason=reason)
        nodes = self.ensure_workers()
        for node in nodes:  # a stop during the data phase: every node's preparer
            if node.transport is not None and node.job.get("prepare"):
                _quietly(lambda t=node.transport: t.job_state(DATA_JOB).running and t.signal(DATA_JOB, signal.SIGTERM))
        if self.job_info().get("prepare") and transport.job_state(DATA_JOB).running:
            transport.signal(DATA_JOB, signal.SIGTERM)  # a stop during the data phase: no checkpoint to wait for
            limit = time.time() + self.grace_s()
            while transport.job_state(DATA_JOB).running and time.time() < limit:
                time.sleep(0.5)
            if transport.job_state(DATA_JOB).running:
                transport.signal(DATA_JOB, signal.SIGKILL)
        workers = [n.transport for n in nodes if n.transport is not None]
        if transport.job_state("job").running:
            # Every node hears it (the ranks agree on the step to stop at); node 0's rank 0 checkpoints.
            for t in (transport, *workers):
                _quietly(lambda t=t: t.signal("job", signal.SIGTERM))  # the trainer checkpoints and exits 0
            limit = time.time() + self.grace_s()
            while transport.job_state("job").running and time.time() < limit:
                time.sleep(0.5)
            if transport.job_state("job").running:
                self.ledger.record_event(self.run.run_id, "job_killed", after_s=self.grace_s())
                transport.signal("job", signal.SIGKILL)
        for t in workers:  # a worker still running once node 0 is done has nothing left to give
            _quietly(lambda t=t: t.job_state("job").running and t.signal("job", signal.SIGKILL))
        state = transport.job_state("job")
        if not state.running:  # its own status: the launch's exit code, `status` and the card show it
            # A worker that failed first decides (node 0's ranks only stopped because of it).
            code = self._node_exit if self._node_exit is not None else state.exit_code
            self.ledger.update_run(self.run.run_id, job_exit_code=code)

    def _record_end(self, reason: str) -> None:
        """Keep why the run ended; the first reason stays (a later teardown only finishes the job)."""
        if self.refresh().end_reason is None:
            self.ledger.update_run(self.run.run_id, end_reason=reason)
            ending = ending_of(reason)
            event = {Ending.STALLED: "stalled", Ending.DEADLINE: "deadline"}.get(ending) if ending else None
            if ending is Ending.JOB_ENDED and "(exit 0)" not in reason:
                event = "job_failed"
            if event:
                self.notice(event, f"run {self.run.run_id}: {reason}", reason=reason)

    def sync_now(self) -> SyncResult:
        return self._sync(final=False)

    def _sync(self, final: bool) -> SyncResult:
        result = self.ensure_transport().pull(self.run_dir)
        self._record_sync(result, final)
        return result

    def _record_sync(self, result: SyncResult, final: bool) -> None:
        self._heartbeat(force=True)
        self.ledger.record_event(
            self.run.run_id,
            "sync",
            final=final,
            files=result.files,
            bytes=result.bytes,
            method=result.method,
            verified=result.checkpoints_verified,
            rejected=result.checkpoints_rejected,
        )

    def _probe(self) -> Probe:
        """The job's log size and last step line, read on the instance (cheap: one command)."""
        assert self.transport is not None
        return parse_probe(self.transport.run(probe_command(self.transport.root), timeout_s=10).stdout)

    def sync_interval(self) -> float:
        opts = self.options
        if opts.sync_interval_s:
            return float(opts.sync_interval_s)
        return self.provider.default_sync_interval_s

    # --- transport ------------------------------------------------------------------------------
    def _public_key(self) -> str:
        return run_key().public_line

    def _make_transport(self, instance: Instance, access: Access | None) -> Transport:
        if access is None:
            raise RunFailed(f"instance {instance.id} is not reachable (the provider gives no access to it yet)")
        return open_transport(access, run_id=self.run.run_id, instance_id=instance.id, ledger=self.ledger)

    def ensure_transport(self) -> Transport:
        if self.transport is None:
            rows = self.ledger.instances(self.run.run_id)
            if not rows:
                raise RunFailed("the run has no instance")
            # Node 0 of a multi-node run (its workers are rows after it), else the newest attempt's.
            node0 = [n["instance_id"] for n in self.run.plan.get("nodes") or [] if n.get("rank") == 0]
            inst = self.provider.get(node0[0] if node0 else rows[-1].instance_id)
            if inst.gone:
                raise RunFailed(f"instance {inst.id} is already {inst.state}")
            self.transport = self._make_transport(inst, self.provider.access(inst))
            self.transport.wait_ready(timeout_s=30)
        return self.transport

    def ensure_workers(self) -> list[Node]:
        """The workers of a multi-node run, reconnected from the ledger by a controller that did not
        create them (a detached guard, `gpurun teardown`); a worker that no longer answers is left to
        the teardown, which terminates and verifies every instance of the run."""
        if self.workers or self.options.nodes <= 1:
            return self.workers
        for entry in sorted(self.run.plan.get("nodes") or [], key=lambda n: n["rank"]):
            if entry["rank"] == 0:
                continue
            inst = self.provider.get(entry["instance_id"])
            node = Node(entry["rank"], inst, python=str(entry.get("python") or "python3"),
                        job=dict(entry.get("job") or {}))
            if not inst.gone and (access := self.provider.access(inst)) is not None:
                transport = open_transport(access, run_id=self.run.run_id, instance_id=inst.id, ledger=self.ledger,
                                           root=worker_root(self.run.run_id, node.rank))
                try:
                    transport.wait_ready(timeout_s=30)
                    node.transport = transport
                except Exception as exc:  # noqa: BLE001 - reported; teardown still ends it
                    transport.close()
                    self.ledger.record_event(self.run.run_id, "error", message=f"node {node.rank}: {exc}")
            self.workers.append(node)
        return self.workers

    # --- teardown: request -> verify -> record --------------------------------------------------
    def _fail(self, exc: BaseException) -> None:
        error = f"{type(exc).__name__}: {exc}"
        current = Phase(self.run.phase)
        if current.is_failed():  # already recorded as failed: keep that phase, add the error
            self.ledger.record_event(self.run.run_id, "error", message=error)
        else:
            self.phase(current.failure, error=error)
        self.ledger.update_run(self.run.run_id, error=error)
        if self.transport is not None:
            try:
                self._sync(final=True)
            except Exception:  # noqa: BLE001 - best effort; teardown matters more
                pass
        self.teardown()

    def instance_ids(self) -> list[str]:
        """The run's instances, including one whose create was in flight when a controller died."""
        return teardown_mod.run_instance_ids(self.ledger, self.provider, self.run.run_id, self.run.run_id)

    def teardown(self, verify_timeout_s: float | None = None) -> Path:
        """Terminate every instance of the run, verify with the provider, record the proof, settle,
        write the evidence card: `orchestrator.run.teardown.end`. VerifyFailed if not verified gone."""
        if self.transport is not None:
            self.transport.close()
        for node in self.workers:
            if node.transport is not None:
                node.transport.close()
        target = teardown_mod.Target(
            ledger=self.ledger,
            provider=self.provider,
            run_id=self.run.run_id,
            tag=self.run.run_id,
            proof_dir=self.run_dir,
            record_phase=self.phase,
            max_usd=self.allowance.max_usd,
            started_at=self.run.clock_start_epoch,
            cost_at=self.allowance.cost_at,
            billing={**self.allowance.billing.__dict__, "usd_per_hour": self.allowance.usd_per_hour},
            evidence=self.write_evidence,
            attempts=self.record.attempts,
        )
        try:
            ended = teardown_mod.end(target, verify_timeout_s)
        except teardown_mod.VerifyFailed as exc:
            self.notice("not_verified", f"run {self.run.run_id}: NOT VERIFIED gone: {exc}", error=str(exc))
            self.notifier.close()
            raise
        self.notice("verified", f"run {self.run.run_id}: verified gone; cost {ended.cost_usd or 0:.4f} USD of"
                    f" {self.allowance.max_usd:.4f}", cost_usd=ended.cost_usd, proof_sha256=ended.proof_sha256)
        self.notifier.close()
        return ended.proof_path

    def write_evidence(self, proof_path: Path | None, cost: float | None, runtime_s: float | None) -> Path:
        # The provider's own figure first (where it has one now), so that the card shows both.
        reconcile_after_run(self.ledger, self.refresh(), self.provider)
        return write_run_evidence(self.refresh(), proof_path, cost, runtime_s)


def _quietly(action: Callable[[], object]) -> None:
    """Best effort on a worker node: a node that does not answer is the teardown's to end."""
    try:
        action()
    except Exception:  # noqa: BLE001
        pass


def write_run_evidence(run: Run, proof_path: Path | None, cost: float | None, runtime_s: float | None) -> Path:
    """The run's evidence card from its synced files; a run adopted by sweep has no offer to show."""
    offer = None if is_orphan(run) else RunRecord.of_run(run).offer.to_dict()
    return write_evidence(
        Path(run.run_dir),
        run={"run_id": run.run_id, "provider": run.provider, "phase": run.phase, "plan": run.plan,
             "end_reason": run.end_reason, "job_exit_code": run.job_exit_code, "billed": billed_of(run)},
        offer=offer,
        proof_path=proof_path,
        runtime_s=runtime_s,
        cost_usd=cost,
        max_usd=run.max_usd,
    )


def billed_of(run: Run) -> dict[str, Any]:
    """What the card shows of the provider's own figure: the figure, its source, final or not, the flag."""
    rec = Reconciliation.of_run(run)
    return {"usd": rec.billed_usd, "source": rec.source, "complete": rec.complete, "flag": rec.flag}


def spawn_guard(run: Run) -> int:
    """Hand the run to a detached guard process (`gpurun guard RUN`) that outlives this terminal."""
    log = Path(run.run_dir) / "controller.log"
    with open(log, "ab") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli.main", "guard", run.run_id],
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return proc.pid


def controller_alive(run: Run) -> bool:
    pid = run.controller_pid
    if not pid or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    cmdline = Path(f"/proc/{pid}/cmdline")
    return not cmdline.exists() or b"gpurun" in cmdline.read_bytes() or b"orchestrator" in cmdline.read_bytes()


def take_over(ledger: Ledger, run: Run) -> None:
    """Stop another controller still guarding the run, so that only one tears it down."""
    if controller_alive(run):
        assert run.controller_pid is not None
        os.kill(run.controller_pid, signal.SIGKILL)
        ledger.record_event(run.run_id, "controller_replaced", pid=run.controller_pid)
