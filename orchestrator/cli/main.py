"""`gpurun`: the command line. Thin: parse, call plan/lifecycle/ledger, print with rich."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from orchestrator.cli.live import LiveView
from orchestrator.cli.money import audit_cmd, cost
from orchestrator.cli.signals import Received, Terminated, attached
from orchestrator.cli.watch import burn_down
from orchestrator.money.budget import max_runtime_s
from orchestrator.money.budgets_file import BudgetError, load_budgets
from orchestrator.plan.launch import (
    DEFAULT_CPU_RECIPE,
    DEFAULT_GPU_RECIPE,
    LaunchError,
    LaunchOptions,
    check_nodes_input,
    duration,
    has_gpu,
    make_plan,
    offer_label,
    offer_where,
    runs_root,
)
from orchestrator.plan.record import RunRecord, is_orphan
from orchestrator.proof.shutdown import verify_proof_chain
from orchestrator.redact import register_secrets_from_env
from orchestrator.run import teardown as teardown_mod
from orchestrator.run.controller import (
    DATA_FAILED,
    Controller,
    RunFailed,
    controller_alive,
    spawn_guard,
    take_over,
    write_run_evidence,
)
from orchestrator.run.recovery import resume_options
from orchestrator.run.teardown import VerifyFailed
from orchestrator.settings import SettingsError
from orchestrator.state import phases
from orchestrator.state.endings import Ending, Exit, by_signal, for_run
from orchestrator.state.ledger import Ledger, LedgerError, Run
from providers import get_provider, provider_names
from providers.base import BillingRule, Instance, Offer, Provider, ProviderError
from providers.common import one_line
from trainer import recipes

console = Console()
err_console = Console(stderr=True)

# Phases in which the job may still be running on the instance.
JOB_PHASES = phases.JOB_PHASES


class GpurunGroup(click.Group):
    """Turns expected failures into one clear line and a non-zero exit, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (BudgetError, ProviderError, LaunchError, LedgerError, SettingsError) as exc:
            err_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
            sys.exit(Exit.REFUSED)
        except RunFailed as exc:
            err_console.print(f"[red]run failed:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
            sys.exit(Exit.RUN_FAILED)
        except VerifyFailed as exc:
            err_console.print(f"[red]NOT VERIFIED:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
            sys.exit(Exit.NOT_VERIFIED)


@click.group(cls=GpurunGroup)
@click.version_option(package_name="gpurun")
def main() -> None:
    """Rent a GPU, train on it under a hard dollar cap, bring the results home, prove it is gone."""
    register_secrets_from_env()  # so a key never reaches a log, the ledger or a card, even in free text


# --- launch --------------------------------------------------------------------------------------
@main.command(context_settings={"ignore_unknown_options": False})
@click.option("--provider", default="local", show_default=True, help=f"one of: {', '.join(provider_names(aliases=True))}")
@click.option("--max-usd", type=float, help="hard cap for this run (default: budgets.yaml per_run_default_usd)")
@click.option("--gpu", help='GPU type, e.g. "RTX 4090", A10G, H100; "H100,A100" accepts either, first preferred')
@click.option("--gpus", type=int, default=1, show_default=True, help="GPUs on the instance (DDP ranks)")
@click.option("--nodes", type=int, default=1, show_default=True,
              help="instances of the same offer, one torchrun node each (--gpus ranks per node), one cap for all")
@click.option("--spot", is_flag=True, help="spot / interruptible capacity where the provider has it")
@click.option("--spot-fallback", is_flag=True,
              help="with --spot: when no spot offer boots, or one is preempted, go on on-demand (same cap)")
@click.option("--max-boot-usd", type=float,
              help="what boots that never come up may cost in total, inside --max-usd (default: budgets.yaml"
                   " boot_share of it); an offer with no capacity or that does not boot is torn down and the"
                   " next one tried")
@click.option("--recipe", help="a packaged job (`gpurun recipes`); default: lab with a GPU, the CPU smoke run"
                               " without; --config and --set override its keys")
@click.option("--data-from", type=click.Path(file_okay=False),
              help="a local copy of the recipe's data in its public format: uploaded and prepared from, no download")
@click.option("--config", type=click.Path(dir_okay=False), help="trainer YAML config")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="trainer flag, e.g. --set max_iters=200")
@click.option("--workdir", type=click.Path(file_okay=False), help="directory uploaded for a custom command")
@click.option("--usd-per-hour", type=float, help="price of the local provider's instance (default 0)")
@click.option("--budgets", type=click.Path(dir_okay=False), help="budgets.yaml to use")
@click.option("--runs-dir", type=click.Path(file_okay=False), help="where runs/<run-id>/ go (default ./runs)")
@click.option("--image", help="override the provider's default image / AMI")
@click.option("--disk-gb", type=int, help="instance disk size")
@click.option("--sync-interval", type=float, help="seconds between periodic syncs")
@click.option("--idle-minutes", type=float, default=10.0, show_default=True,
              help="with the controller gone and the job ended, the instance destroys itself after this")
@click.option("--stall-minutes", type=float, default=10.0, show_default=True,
              help="no new training step (or, for a command, no new output) this long: stop as stalled")
@click.option("--detach", is_flag=True, help="return after the job starts; a background guard keeps watch")
@click.option("--dry-run", is_flag=True, help="print the plan and exit")
@click.option("--yes", "-y", is_flag=True, help="skip the confirmation")
@click.option("--resume", "resume_run", metavar="RUN",
              help="continue a finished or stopped run from its last checkpoint on a new instance, with a new"
                   " budget (--max-usd): its options are the run's own, its files go to the same run directory")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def launch(command: tuple[str, ...], sets: tuple[str, ...], **kw: Any) -> None:
    """Plan, confirm, provision, train, sync, tear down. `-- CMD ...` runs any command instead."""
    if kw["resume_run"]:
        check_nodes_input(LaunchOptions(nodes=kw["nodes"], resume_run=kw["resume_run"]))  # before the ledger
        options = resume_options(Ledger(), kw["resume_run"], kw["max_usd"], kw["max_boot_usd"])
        _launch_with(options, kw)
        return
    trainer_args: list[str] = []
    for item in sets:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise click.BadParameter(f"{item!r}: expected KEY=VALUE", param_hint="--set")
        trainer_args += [f"--{key.replace('_', '-')}", value]
    options = LaunchOptions(
        provider=kw["provider"], max_usd=kw["max_usd"], gpu=kw["gpu"], gpus=kw["gpus"], spot=kw["spot"],
        config=kw["config"], recipe=kw["recipe"], data_from=kw["data_from"], command=list(command), workdir=kw["workdir"], trainer_args=trainer_args,
        usd_per_hour=kw["usd_per_hour"], budgets=kw["budgets"], runs_dir=kw["runs_dir"], image=kw["image"],
        disk_gb=kw["disk_gb"], sync_interval_s=kw["sync_interval"],
        idle_minutes=kw["idle_minutes"], stall_minutes=kw["stall_minutes"], max_boot_usd=kw["max_boot_usd"],
        spot_fallback=kw["spot_fallback"], nodes=kw["nodes"],
    )
    _launch_with(options, kw)


def _launch_with(options: LaunchOptions, kw: dict[str, Any]) -> None:
    plan = make_plan(options)
    table = Table(title="gpurun plan", show_header=False)
    for key, value in plan.rows():
        table.add_row(key, value)
    console.print(table)
    if kw["dry_run"]:
        return
    if not kw["yes"]:
        _confirm("Launch and spend up to this cap?")
    ledger = Ledger()
    with LiveView(console) as view:
        controller = Controller.create(ledger, plan, reporter=view)
        console.print(f"run [bold]{controller.run.run_id}[/bold]  ({controller.run_dir})")
        # SIGTERM tears the run down, SIGHUP hands it to a guard: only while this process holds it.
        with attached(controller) as got:
            try:
                guard_pid = controller.launch(attach=not kw["detach"])
            except KeyboardInterrupt:
                sys.exit(_interrupted(controller, view))
            except Terminated:
                view.__exit__()
                console.print("SIGTERM: tearing down ...")
                controller.finish(f"{Ending.REQUESTED} (SIGTERM)")
                got.term = signal.SIGTERM
                guard_pid = None
            except (RunFailed, VerifyFailed):
                raise
            except Exception as exc:  # the run is torn down and verified gone (else VerifyFailed)
                raise RunFailed(f"run {controller.run.run_id}: {one_line(f'{type(exc).__name__}: {exc}')}; "
                                f"torn down, verified gone") from exc
    sys.exit(_launch_exit(ledger.resolve_run(controller.run.run_id), guard_pid, got))


def _launch_exit(run: Run, guard_pid: int | None, got: Received) -> int:
    """Report how the launch ended; its exit status (orchestrator.state.endings)."""
    if guard_pid is not None:  # --detach, or a SIGHUP: the run goes on under a detached guard
        console.print(f"detached: guard pid {guard_pid}; `gpurun status {run.run_id}`, `gpurun teardown {run.run_id}`")
        return by_signal(signal.SIGHUP) if got.hup else Exit.OK
    _summary(run)
    if got.term is not None:
        return by_signal(got.term)
    code = for_run(run.end_reason, run.job_exit_code)
    log = Path(run.run_dir) / ("data.log" if DATA_FAILED in (run.end_reason or "") else "job.log")
    if code is Exit.JOB_FAILED:
        status = "killed, no exit status" if run.job_exit_code is None else f"exit {run.job_exit_code}"
        _say(f"job failed ({status}); its log: {log}")
    elif code is Exit.STALLED:
        _say(f"{run.end_reason}; stopped, synced, verified gone; its log: {log}")
    elif code is Exit.RUN_FAILED:
        _say(f"{one_line(run.end_reason)}; its log: {log}")
    return code


def _say(line: str) -> None:
    err_console.print(line, markup=False, highlight=False, soft_wrap=True)


def _confirm(question: str) -> None:
    if not sys.stdin.isatty():
        raise ProviderError("confirmation needed and no terminal to ask on: pass --yes")
    click.confirm(question, abort=True)


def _interrupted(controller: Controller, view: LiveView) -> int:
    """Ctrl-C while attached: detach (the run goes on under its guard; exit 0) or tear down now
    (exit 130, as for any run ended by a signal)."""
    view.__exit__()
    run = controller.refresh()
    choice = "t"
    if run.phase in ("running", "preparing_data") and sys.stdin.isatty():
        choice = click.prompt(
            "\n[d]etach (the run keeps going under its guard) or [t]ear down now?",
            type=click.Choice(["d", "t"]), default="d",
        )
    if choice == "d":
        pid = spawn_guard(run)
        console.print(f"detached: guard pid {pid}; `gpurun status {run.run_id}`, `gpurun teardown {run.run_id}`")
        return Exit.OK
    console.print("tearing down ...")
    controller.finish(f"{Ending.REQUESTED} (Ctrl-C)")
    _summary(controller.refresh())
    return by_signal(signal.SIGINT)


def _summary(run: Run) -> None:
    cost = run.cost_usd if run.cost_usd is not None else 0.0
    console.print(
        f"run {run.run_id}: {run.phase}; cost {cost:.4f} USD of {run.max_usd:.4f}; outputs in {run.run_dir}"
    )
    evidence = Path(run.run_dir) / "EVIDENCE.md"
    if evidence.exists():
        console.print(f"evidence card: {evidence}")


@main.command(hidden=True)
@click.argument("run_ref")
def guard(run_ref: str) -> None:
    """The detached guard: follow a run to its end and tear it down (started by --detach)."""
    ledger = Ledger()
    run = ledger.resolve_run(run_ref)
    controller = Controller.load(ledger, run, reporter=LiveView(Console(file=sys.stdout)))
    if not run.open:
        return
    # SIGTERM (a shutdown, `kill`) ends the run as `gpurun teardown` would; it has no terminal to lose.
    with attached(controller, handoff_on_hup=False) as got:
        ledger.update_run(run.run_id, controller_pid=os.getpid())  # signals are handled from here on
        try:
            if run.phase in ("running", "preparing_data"):  # the data phase goes on, then training
                controller.guard()
            else:
                controller.finish(f"{Ending.RESUMED} an interrupted run")
        except Terminated:
            controller.finish(f"{Ending.REQUESTED} (SIGTERM)")
            got.term = signal.SIGTERM
    if got.term is not None:
        sys.exit(by_signal(got.term))


# --- status / logs ------------------------------------------------------------------------------
@main.command()
@click.argument("run_ref", required=False)
@click.option("--timings", is_flag=True, help="time spent in each phase")
@click.option("--all", "show_all", is_flag=True, help="include finished runs")
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
    runs = [ledger.resolve_run(run_ref)] if run_ref else ledger.list_runs(open_only=not show_all)
    if not runs:
        console.print("no open runs (gpurun status --all lists finished ones)")
        return
    table = Table(title="gpurun runs")
    # Why a run ended matters once one has: the column shows only then (`status` of open runs stays narrow).
    ended = any(r.end_reason or not r.open for r in runs)
    for col in ("run", "provider", "phase", "spent / cap USD", "guard stops in", "instances", "controller",
                *(("ended",) if ended else ())):
        table.add_column(col)
    now = time.time()
    for run in runs:
        if run.cost_usd is not None:
            spent = run.cost_usd
        elif run.clock_start_epoch and not is_orphan(run):
            spent = RunRecord.of_run(run).allowance.cost_at(now - run.clock_start_epoch)
        else:
            spent = 0.0
        left = f"{run.stop_at_epoch - now:.0f} s" if run.open and run.stop_at_epoch else "-"
        insts = ", ".join(f"{r.instance_id} ({r.state})" for r in ledger.instances(run.run_id)) or "-"
        ctl = "alive" if run.open and controller_alive(run) else "-"
        table.add_row(run.run_id, run.provider, run.phase, f"{spent:.4f} / {run.max_usd:.4f}", left, insts, ctl,
                      *((_ended(run),) if ended else ()))
    console.print(table)


def _ended(run: Run) -> str:
    """Why the run ended, short: "stalled: no new step for 10 min", "job ended (exit 3)"."""
    reason = run.end_reason or (f"failed: {run.error}" if run.error else "")
    return one_line(reason, 48) or "-"


@main.command()
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
@main.command()
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


@main.command()
@click.argument("run_ref", required=False)
@click.option("--all", "all_runs", is_flag=True, help="every open run")
@click.option("--verify/--no-verify", default=True, help="always on: termination is confirmed with the provider")
def teardown(run_ref: str | None, all_runs: bool, verify: bool) -> None:
    """Stop the job (checkpoint), final sync, terminate, confirm with the provider, write the proof."""
    if not verify:
        raise ProviderError("teardown always verifies with the provider; drop --no-verify")
    ledger = Ledger()
    runs = ledger.list_runs(open_only=True) if all_runs else [ledger.resolve_run(run_ref)]
    if not runs:
        console.print("no open runs")
        return
    failures = 0
    for run in runs:
        if not run.open:
            console.print(f"run {run.run_id} is already verified gone (proof in {run.run_dir})")
            continue
        try:
            _end_run(ledger, run)
        except VerifyFailed as exc:
            err_console.print(f"[red]NOT VERIFIED:[/red] {exc}", highlight=False)
            failures += 1
            continue
        _summary(ledger.resolve_run(run.run_id))
    if failures:
        sys.exit(Exit.NOT_VERIFIED)


def _end_run(ledger: Ledger, run: Run) -> None:
    """One open run through orchestrator.run.teardown: by its controller, or as the orphan a sweep adopted."""
    if is_orphan(run):  # no controller and no job: only instances to end
        teardown_mod.end(teardown_mod.adopted_target(ledger, run, get_provider(run.provider)))
        return
    take_over(ledger, run)
    controller = Controller.load(ledger, ledger.resolve_run(run.run_id), reporter=LiveView(console))
    if run.phase in JOB_PHASES:
        controller.finish("teardown requested")
    else:
        controller.teardown()


# --- offers / cost / sweep / evidence ------------------------------------------------------------
@main.command()
@click.option("--provider", default="local", show_default=True)
@click.option("--gpu", help="filter by GPU name")
@click.option("--gpus", type=int, default=1, show_default=True)
@click.option("--spot", is_flag=True)
@click.option("--usd-per-hour", type=float, help="local provider price")
@click.option("--budgets", type=click.Path(dir_okay=False))
def offers(provider: str, gpu: str | None, gpus: int, spot: bool, usd_per_hour: float | None,
           budgets: str | None) -> None:
    """Live prices, and what the default budget buys of each."""
    options = LaunchOptions(provider=provider, usd_per_hour=usd_per_hour)
    conf = load_budgets(budgets)
    prov = get_provider(provider, **options.provider_options())
    prov.check_credentials()
    found = prov.offers(gpu=gpu, count=gpus, spot=spot)
    rule = conf.billing_for(prov.name)
    table = Table(title=f"{prov.name} offers (default budget {conf.per_run_default_usd:.2f} USD)")
    for col in ("gpu", "count", "instance type", "where", "stock", "USD/h", "storage USD/h", "price source",
                f"{conf.per_run_default_usd:.2f} USD buys"):
        table.add_column(col)
    for o in sorted(found, key=lambda o: o.total_usd_per_hour):
        buys = max_runtime_s(conf.per_run_default_usd, o.total_usd_per_hour, rule)
        # The provider's own stock word where it has one (RunPod: High/Medium/Low), else yes/none.
        stock = str(o.details.get("stock_status") or ("yes" if o.available else "none"))
        table.add_row(o.gpu, str(o.gpu_count), o.instance_type, offer_where(o) or "-", stock,
                      f"{o.usd_per_hour:.4f}", f"{o.extra_usd_per_hour:.4f}", o.price_source,
                      "unbounded" if buys == float("inf") else f"{buys / 3600:.2f} h")
    console.print(table)


@main.command("recipes")
@click.option("--provider", default="local", show_default=True, help="price each recipe on this provider's offers")
@click.option("--gpu", help="only offers of this GPU")
@click.option("--gpus", type=int, default=1, show_default=True)
@click.option("--spot", is_flag=True)
@click.option("--usd-per-hour", type=float, help="local provider price")
@click.option("--budgets", type=click.Path(dir_okay=False))
def recipes_(provider: str, gpu: str | None, gpus: int, spot: bool, usd_per_hour: float | None,
             budgets: str | None) -> None:
    """The packaged jobs, and what each takes and costs to max_iters on each offer."""
    options = LaunchOptions(provider=provider, usd_per_hour=usd_per_hour)
    conf = load_budgets(budgets)
    prov = get_provider(provider, **options.provider_options())  # a bad provider is refused before any output
    prov.check_credentials()
    found = sorted(prov.offers(gpu=gpu, count=gpus, spot=spot), key=lambda o: o.total_usd_per_hour)
    table = Table(title=f"recipes (gpurun launch --recipe NAME; default {DEFAULT_GPU_RECIPE} with a GPU, "
                        f"{DEFAULT_CPU_RECIPE} without)")
    for col in ("recipe", "summary", "data", "tokens/step", "max_iters", "tokens"):
        table.add_column(col)
    for r in recipes.RECIPES.values():
        table.add_row(r.name, r.summary, r.data.describe(), f"{r.tokens_per_step:,}", f"{r.max_iters:,}",
                      recipes.human(r.max_iters * r.tokens_per_step))
    console.print(table)
    rule = conf.billing_for(prov.name)
    costs = Table(title=f"{prov.name}: time to max_iters (data phase included, boot not) and its billed cost")
    for col in ("offer", "USD/h", *recipes.RECIPES):
        costs.add_column(col)
    for o in found:
        cells = [recipe_cost(r, o, rule) for r in recipes.RECIPES.values()]
        costs.add_row(offer_label(o), f"{o.total_usd_per_hour:.4f}", *cells)
    console.print(costs if found else f"{prov.name}: no offers" + (f" of {gpu}" if gpu else ""))
    console.print("tokens/s per GPU class, from trainer/recipes.py (no estimate: a GPU outside "
                  f"{', '.join(recipes.GPU_CLASSES)}):", highlight=False)
    for r in recipes.RECIPES.values():
        rates = ", ".join(f"{k} {v:,.0f}" for k, v in r.tokens_per_s.items())
        console.print(f"  {r.name}: {rates}. Source: {r.sources}", highlight=False, markup=False)


def recipe_cost(recipe: recipes.Recipe, offer: Offer, rule: BillingRule) -> str:
    """"~46m, 42.10 USD" on this offer, from the recipe's tokens/s for the offer's GPU class."""
    gpu = has_gpu(offer)
    klass = recipes.gpu_class(offer.gpu) if gpu else "cpu"
    rate = recipe.throughput(klass, max(1, offer.gpu_count))
    if rate is None:
        return "no estimate"
    world = max(1, offer.gpu_count) if gpu else 1
    seconds = recipe.max_iters * recipes.tokens_per_step(recipe.config, world) / rate
    seconds += recipe.data.prepare_s(klass)
    return f"~{duration(seconds)}, {rule.cost(seconds, offer.total_usd_per_hour):.2f} USD"


@main.command()
@click.option("--provider", "providers_", multiple=True, help="provider(s) to sweep (default: all with credentials)")
@click.option("--runs-dir", type=click.Path(file_okay=False),
              help="where proofs of orphans this ledger does not know go (default ./runs)")
@click.option("--yes", "-y", is_flag=True, help="terminate without asking")
def sweep(providers_: tuple[str, ...], runs_dir: str | None, yes: bool) -> None:
    """Find instances tagged gpurun that no open run owns; on confirmation end each through the same
    teardown as a run (terminate, verify, shutdown proof chained in the ledger)."""
    ledger = Ledger()
    names = list(providers_) or provider_names()
    found: list[tuple[Provider, list[Instance]]] = []
    for name in names:
        try:
            prov = get_provider(name)
            prov.check_credentials()
            orphans = teardown_mod.find_orphans(ledger, prov)
        except ProviderError as exc:
            if providers_:
                raise
            console.print(f"[dim]{name}: skipped ({exc})[/dim]")
            continue
        if orphans:
            found.append((prov, orphans))
    if not found:
        console.print("nothing to sweep: every live gpurun instance belongs to an open run")
        return
    table = Table(title="orphaned gpurun instances")
    for col in ("provider", "instance", "name", "state", "running for", "USD/h", "cost so far"):
        table.add_column(col)
    now = time.time()
    conf = load_budgets()
    for prov, orphans in found:
        rule = conf.billing_for(prov.name)  # the same billing rule a run's own cost uses
        for inst in orphans:
            age = now - inst.created_at if inst.created_at else None
            rate = inst.usd_per_hour
            so_far = f"{rule.cost(age, rate):.4f}" if age is not None and rate is not None else "?"
            table.add_row(prov.name, inst.id, inst.name, inst.state, f"{age / 60:.1f} min" if age else "?",
                          "?" if rate is None else f"{rate:.4f}", so_far)
    console.print(table)
    if not yes:
        _confirm(f"Terminate these {sum(len(o) for _, o in found)} instance(s)?")
    root = runs_root(runs_dir)
    failures = 0
    for prov, orphans in found:
        for group in teardown_mod.group_orphans(ledger, orphans):
            try:
                ended = teardown_mod.end_orphans(ledger, prov, group, root)
            except VerifyFailed as exc:
                err_console.print(f"[red]NOT VERIFIED:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
                failures += 1
                continue
            for inst in group:
                console.print(f"{prov.name} {inst.id}: terminated (verified)")
            console.print(f"shutdown proof: {ended.proof_path} (ledger run {ended.run_id})", highlight=False)
    if failures:
        sys.exit(Exit.NOT_VERIFIED)


@main.command()
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


main.add_command(cost)
main.add_command(audit_cmd)

if __name__ == "__main__":
    main()
