"""`gpurun launch` (plan, confirm, provision, train, sync, tear down) and the hidden `gpurun guard` it detaches to."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from orchestrator.cli.console import confirm, console, say, summary
from orchestrator.cli.live import LiveView
from orchestrator.cli.signals import Received, Terminated, attached
from orchestrator.errors import RunFailed, VerifyFailed
from orchestrator.plan.launch import make_plan
from orchestrator.plan.options import ANY_PROVIDER, LaunchOptions
from orchestrator.plan.refusals import check_nodes_input
from orchestrator.run.controller import Controller
from orchestrator.run.handoff import spawn_guard
from orchestrator.run.recovery import resume_options
from orchestrator.run.stop import End
from orchestrator.state.endings import Ending, Exit, by_signal, for_run
from orchestrator.state.ledger import Ledger
from orchestrator.state.phases import Phase
from orchestrator.state.rows import Run
from providers import provider_names
from providers.common import one_line


@click.command(context_settings={"ignore_unknown_options": False})
@click.option("--provider", default="local", show_default=True,
              help=f"one of: {', '.join(provider_names(aliases=True))}; or {ANY_PROVIDER}: every provider with"
                   " credentials, the offers ranked by the recipe's training tokens per USD, fallback across them")
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
              help="a local copy of the recipe's data in its public format, any size: sent with resumable rsync,"
                   " verified by SHA-256 on the instance, prepared from (no download); its send time is planned."
                   " Or s3://bucket/prefix: fetched by the instance itself")
@click.option("--checkpoints-to", metavar="s3://BUCKET/PREFIX",
              help="the instance uploads each checkpoint to this bucket (scoped, short-lived credentials);"
                   " home fetches them after the instance is gone")
@click.option("--endpoint-url", help="an S3-compatible endpoint for --checkpoints-to / --data-from s3:// (R2, B2, MinIO)")
@click.option("--upload-mbps", type=float,
              help="your link's upload rate in Mbit/s, to plan --data-from's send (default: what earlier sends"
                   " measured, else 20)")
@click.option("--config", type=click.Path(dir_okay=False), help="trainer YAML config")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="trainer flag, e.g. --set max_iters=200")
@click.option("--workdir", type=click.Path(file_okay=False), help="directory uploaded for a custom command")
@click.option("--usd-per-hour", type=float, help="price of the local provider's instance (default 0)")
@click.option("--egress-usd-per-gb", type=float,
              help="the local provider's price of data pulled home, USD/GB (default 0: free), like a cloud's egress")
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
        config=kw["config"], recipe=kw["recipe"], data_from=kw["data_from"], upload_mbps=kw["upload_mbps"],
        checkpoints_to=kw["checkpoints_to"], endpoint_url=kw["endpoint_url"], command=list(command), workdir=kw["workdir"], trainer_args=trainer_args,
        usd_per_hour=kw["usd_per_hour"], egress_usd_per_gb=kw["egress_usd_per_gb"], budgets=kw["budgets"], runs_dir=kw["runs_dir"], image=kw["image"],
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
        confirm("Launch and spend up to this cap?")
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
                controller.finish(End.noted(Ending.REQUESTED, "SIGTERM"))
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
    summary(run)
    if got.term is not None:
        return by_signal(got.term)
    code = for_run(run.ending, run.job_exit_code)
    log = Path(run.run_dir) / ("data.log" if run.ending is Ending.DATA_FAILED else "job.log")
    if code is Exit.JOB_FAILED:
        status = "killed, no exit status" if run.job_exit_code is None else f"exit {run.job_exit_code}"
        say(f"job failed ({status}); its log: {log}")
    elif code is Exit.STALLED:
        say(f"{run.end_reason}; stopped, synced, verified gone; its log: {log}")
    elif code is Exit.RUN_FAILED:
        say(f"{one_line(run.end_reason)}; its log: {log}")
    return code


def _interrupted(controller: Controller, view: LiveView) -> int:
    """Ctrl-C while attached: detach (the run goes on under its guard; exit 0) or tear down now
    (exit 130, as for any run ended by a signal)."""
    view.__exit__()
    run = controller.refresh()
    choice = "t"
    if run.phase in (Phase.RUNNING, Phase.PREPARING_DATA) and sys.stdin.isatty():
        choice = click.prompt(
            "\n[d]etach (the run keeps going under its guard) or [t]ear down now?",
            type=click.Choice(["d", "t"]), default="d",
        )
    if choice == "d":
        pid = spawn_guard(run)
        console.print(f"detached: guard pid {pid}; `gpurun status {run.run_id}`, `gpurun teardown {run.run_id}`")
        return Exit.OK
    console.print("tearing down ...")
    controller.finish(End.noted(Ending.REQUESTED, "Ctrl-C"))
    summary(controller.refresh())
    return by_signal(signal.SIGINT)


@click.command(hidden=True)
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
            if run.phase in (Phase.RUNNING, Phase.PREPARING_DATA):  # the data phase goes on, then training
                controller.guard()
            else:
                controller.finish(End(Ending.RESUMED, f"{Ending.RESUMED} an interrupted run"))
        except Terminated:
            controller.finish(End.noted(Ending.REQUESTED, "SIGTERM"))
            got.term = signal.SIGTERM
    if got.term is not None:
        sys.exit(by_signal(got.term))
