"""The commands on runs already launched: `status`, `logs`, `sync`, `teardown`, `evidence`."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click
from rich.live import Live
from rich.table import Table

from orchestrator import settings
from orchestrator.cli.console import console, err_console, summary
from orchestrator.cli.live import LiveView
from orchestrator.cli.watch import burn_down
from orchestrator.errors import VerifyFailed
from orchestrator.money.budgets_file import load_budgets
from orchestrator.money.errors import BudgetError
from orchestrator.money.pools import Pool, may_end
from orchestrator.plan.record import is_orphan
from orchestrator.proof.run_card import write_run_evidence
from orchestrator.proof.shutdown import verify_proof_chain
from orchestrator.run import teardown as teardown_mod
from orchestrator.run.controller import Controller
from orchestrator.run.handoff import controller_alive, take_over
from orchestrator.run.status import spent_usd
from orchestrator.run.stop import End
from orchestrator.run.syncing import link_status
from orchestrator.state import phases
from orchestrator.state.endings import Ending, Exit
from orchestrator.state.ledger import Ledger
from orchestrator.state.rows import Run
from orchestrator.state.values import LedgerError
from providers import get_provider
from providers.base import ProviderError
from providers.common import one_line

# Phases in which the job may still be running on the instance.
JOB_PHASES = phases.JOB_PHASES


# --- status / logs ------------------------------------------------------------------------------
@click.command()
@click.argument("run_ref", required=False)
@click.option("--timings", is_flag=True, help="time spent in each phase")
@click.option("--all", "show_all", is_flag=True, help="everyone's runs, finished ones too (default: your open runs)")
@click.option("--watch", "-w", is_flag=True, help="a live table of every open run until Ctrl-C")
@click.option("--interval", type=float, default=2.0, show_default=True, help="seconds between refreshes (-w)")
def status(run_ref: str | None, timings: bool, show_all: bool, watch: bool, interval: float) -> None:
    """Where runs stand: phase, money spent against the cap, time left."""
    ledger = Ledger()
    if watch:
        with Live(burn_down(ledger), console=console, refresh_per_second=1, transient=False) as live:
            try:
                while True:
                    time.sleep(max(0.2, interval))
                    live.update(burn_down(ledger))
            except KeyboardInterrupt:
                pass
        return
    if timings:
        run = ledger.resolve_run(run_ref)
        table = Table(title=f"{run.run_id} phase timings")
        for col in ("phase", "started", "seconds"):
            table.add_column(col)
        for phase, start, seconds in ledger.timings(run.run_id):
            table.add_row(phase, time.strftime("%H:%M:%S", time.localtime(start)), f"{seconds:.1f}")
        console.print(table)
        return
    me = settings.person()
    runs = [ledger.resolve_run(run_ref)] if run_ref else ledger.list_runs(open_only=not show_all)
    if not run_ref and not show_all:  # yours, and runs no one owns (an adopted orphan, an older ledger's)
        runs = [r for r in runs if r.person in (me, None)]
    if not runs:
        console.print("no open runs of yours (gpurun status --all lists everyone's, finished ones too)")
        return
    table = Table(title="gpurun runs")
    # Why a run ended matters once one has: the column shows only then (`status` of open runs stays narrow).
    ended = any(r.end_reason or not r.open for r in runs)
    people = show_all or any(r.person not in (me, None) for r in runs)
    links = {r.run_id: link_status(ledger.events(r.run_id), r.stop_at_epoch) for r in runs}
    synced = any(line for _, line in links.values())  # the link column shows once a pull measured one
    for col in ("run", *(("person",) if people else ()), "provider", "phase", "spent / cap USD", "guard stops in",
                *(("link home",) if synced else ()),
                "instances", "controller", *(("ended",) if ended else ())):
        table.add_column(col)
    now = time.time()
    for run in runs:
        stop_at, line = links[run.run_id]
        spent = spent_usd(run, now)
        left = f"{stop_at - now:.0f} s" if run.open and stop_at else "-"
        insts = ", ".join(f"{r.instance_id} ({r.state})" for r in ledger.instances(run.run_id)) or "-"
        ctl = "alive" if run.open and controller_alive(run) else "-"
        table.add_row(run.run_id, *((run.person or "-",) if people else ()), run.provider, run.phase,
                      f"{spent:.4f} / {run.max_usd:.4f}", left, *((line.removeprefix("sync ") or "-",) if synced else ()),
                      insts, ctl, *((_ended(run),) if ended else ()))
    console.print(table)


def _ended(run: Run) -> str:
    """Why the run ended, short: "stalled: no new step for 10 min", "job ended (exit 3)"."""
    reason = run.end_reason or (f"failed: {run.error}" if run.error else "")
    return one_line(reason, 48) or "-"


@click.command()
@click.argument("run_ref", required=False)
@click.option("-f", "--follow", is_flag=True, help="keep printing as the job writes")
def logs(run_ref: str | None, follow: bool) -> None:
    """The job's output (from the instance while the run is open, else from the synced copy)."""
    ledger = Ledger()
    run = ledger.resolve_run(run_ref)
    local = Path(run.run_dir) / "job.log"
    if not run.open or run.phase not in JOB_PHASES:
        click.echo(local.read_text() if local.exists() else f"(no synced job.log in {run.run_dir})", nl=False)
        return
    transport = Controller.load(ledger, run).ensure_transport()
    offset = 0
    while True:
        res = transport.run(f"tail -c +{offset + 1} job.log 2>/dev/null", timeout_s=30)
        click.echo(res.stdout, nl=False)
        offset += len(res.stdout.encode())
        if not follow:
            return
        run = ledger.resolve_run(run.run_id)
        if run.phase not in JOB_PHASES:
            return
        time.sleep(2)


# --- sync / teardown ----------------------------------------------------------------------------
@click.command()
@click.argument("run_ref", required=False)
def sync(run_ref: str | None) -> None:
    """Pull the run's logs and complete checkpoints now."""
    ledger = Ledger()
    run = ledger.resolve_run(run_ref)
    if run.phase not in JOB_PHASES:
        raise LedgerError(f"run {run.run_id} is {run.phase}: its instance is gone; outputs are in {run.run_dir}")
    result = Controller.load(ledger, run).sync_now()
    console.print(
        f"synced {result.files} files, {result.bytes} bytes ({result.method}); "
        f"checkpoints verified: {', '.join(result.checkpoints_verified) or 'none'}"
        + (f"; REJECTED: {', '.join(result.checkpoints_rejected)}" if result.checkpoints_rejected else "")
    )


@click.command()
@click.argument("run_ref", required=False)
@click.option("--all", "all_runs", is_flag=True, help="every open run you may end (yours; a pool admin: the pool's)")
@click.option("--verify/--no-verify", default=True, help="always on: termination is confirmed with the provider")
@click.option("--budgets", type=click.Path(dir_okay=False), help="the budgets.yaml whose pools say who may end what")
def teardown(run_ref: str | None, all_runs: bool, verify: bool, budgets: str | None) -> None:
    """Stop the job (checkpoint), final sync, terminate, confirm with the provider, write the proof.
    A person tears down their own runs; a pool's admin also the pool's and owner-less ones."""
    if not verify:
        raise ProviderError("teardown always verifies with the provider; drop --no-verify")
    ledger = Ledger()
    pools, me = _pools(budgets), settings.person()
    runs = ledger.list_runs(open_only=True) if all_runs else [ledger.resolve_run(run_ref)]
    if all_runs:  # --all: what is yours to end; others' runs are left alone, not refused
        runs = [r for r in runs if may_end(pools, me, r.person, r.pool) is None]
    if not runs:
        console.print("no open runs")
        return
    failures = 0
    for run in runs:
        if not run.open:
            console.print(f"run {run.run_id} is already verified gone (proof in {run.run_dir})")
            continue
        refused = may_end(pools, me, run.person, run.pool)
        if refused is not None:
            raise LedgerError(f"cannot tear down run {run.run_id}: {refused}")
        try:
            _end_run(ledger, run)
        except VerifyFailed as exc:
            err_console.print(f"[red]NOT VERIFIED:[/red] {exc}", highlight=False)
            failures += 1
            continue
        summary(ledger.resolve_run(run.run_id))
    if failures:
        sys.exit(Exit.NOT_VERIFIED)


def _pools(budgets: str | None) -> dict[str, Pool]:
    """budgets.yaml's pools; a broken budgets file must not stop a teardown: then there are none
    (a person still ends their own runs, and runs no one owns)."""
    try:
        return load_budgets(budgets).pools
    except BudgetError as exc:
        err_console.print(f"[dim]pools not read ({exc}): you may end your own runs[/dim]", highlight=False)
        return {}


def _end_run(ledger: Ledger, run: Run) -> None:
    """One open run through orchestrator.run.teardown: by its controller, or as the orphan a sweep adopted."""
    if is_orphan(run):  # no controller and no job: only instances to end
        teardown_mod.end(teardown_mod.adopted_target(ledger, run, get_provider(run.provider)))
        return
    take_over(ledger, run)
    controller = Controller.load(ledger, ledger.resolve_run(run.run_id), reporter=LiveView(console))
    if run.phase in JOB_PHASES:
        controller.finish(End.noted(Ending.REQUESTED))
    else:
        controller.teardown()


@click.command()
@click.argument("run_ref", required=False)
@click.option("--check-chain", is_flag=True, help="verify the hash chain of every shutdown proof")
def evidence(run_ref: str | None, check_chain: bool) -> None:
    """Print a run's evidence card (re-written from its synced files)."""
    ledger = Ledger()
    if check_chain:
        problems = verify_proof_chain(ledger.proofs())
        if problems:
            for p in problems:
                err_console.print(f"[red]chain broken:[/red] {p}")
            sys.exit(Exit.NOT_VERIFIED)
        console.print(f"proof chain intact: {len(ledger.proofs())} proofs")
        return
    run = ledger.resolve_run(run_ref)
    proof = Path(run.run_dir) / "shutdown_proof.json"
    runtime = None
    if run.clock_start_epoch:
        end = run.updated_at if not run.open else time.time()
        runtime = end - run.clock_start_epoch
    path = write_run_evidence(run, proof if proof.exists() else None, run.cost_usd, runtime)
    console.print(path.read_text(), markup=False, highlight=False)
