"""Bootstrap a run's node group: on every node the code, python/torch/CUDA, the recipe's packages,
its data command and the trainer's config; each node's work ends by the guard's stop time.

Node 0 decides the recipe by its hardware (the nodes are one offer); the others run the same. The
decisions are kept in the run record (`bootstrap`, `job`, each worker's `nodes` entry), so that a
controller loaded from the ledger (a detached guard) runs the same python with the same job.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import trainer
from orchestrator.plan.job import JOB_CONFIG, config_text, data_phase, job_config, recipe_for
from orchestrator.run import bucket
from orchestrator.run.bootstrap import BootstrapInfo, bootstrap, ensure_packages
from orchestrator.run.context import RunContext
from orchestrator.run.nodes import Node, NodeGroup
from orchestrator.run.progress import PROGRESS_FILE
from orchestrator.run.stop_time import Steps, cut_at
from orchestrator.run.watchdog import set_pre_job
from orchestrator.state.events import EventKind
from orchestrator.state.phases import Phase
from orchestrator.transport.protocol import Transport
from trainer.recipes import Recipe

TRAINER_DIR = Path(trainer.__file__).resolve().parent
DATA_JOB = "data"  # the data phase's detached job (data.pid, data.exit, data.log at the node's root)
DATA_SOURCE_DIR = "data-src"  # where --data-from's directory is uploaded (under the run root)
SPOT_NOTICE_JOB = "spotnotice"  # writes ROOT/spot.notice when the provider warns of a reclaim


def bootstrap_group(ctx: RunContext, group: NodeGroup) -> None:
    """Every node bootstrapped, node 0 first; then the phase `bootstrapped`."""
    recipe: Recipe | None = None
    info: BootstrapInfo | None = None
    for node in group.nodes:
        node_info, recipe = _bootstrap_node(ctx, node, recipe)
        if node.rank == 0:
            info = node_info
            group.gpu_count = node_info.gpu_count
            ctx.record.bootstrap, ctx.record.job = node_info.to_dict(), node.job
            ctx.save_record("bootstrap", "job")
            if ctx.offer.spot and (notice := ctx.provider.spot_notice_command(node.instance, node.transport.root)):
                node.transport.start_detached(SPOT_NOTICE_JOB, notice)  # the provider's reclaim warning
        else:
            ctx.event(EventKind.NODE_BOOTSTRAPPED, rank=node.rank, instance_id=node.instance.id, python=node_info.python,
                      torch=node_info.torch_version, gpu_count=node_info.gpu_count)
    if group.workers:
        ctx.record.nodes = group.records()  # with each worker's data command, for a guard that takes over
        ctx.save_record("nodes")
    assert info is not None
    ctx.phase(Phase.BOOTSTRAPPED, watchdog_deadline=ctx.watchdog_deadline(), **info.to_dict())


def _bootstrap_node(ctx: RunContext, node: Node, recipe: Recipe | None) -> tuple[BootstrapInfo, Recipe | None]:
    """One node: upload, bootstrap, the job set up (node 0 picks the recipe; the others take it)."""
    transport = node.transport
    assert transport is not None and ctx.run.stop_at_epoch is not None
    steps = Steps("uploading the code")
    default = bool((ctx.record.job or {}).get("default"))

    def prepare() -> tuple[BootstrapInfo, Recipe | None, dict[str, Any], list[str]]:
        info = _upload_and_bootstrap(ctx, transport, steps)
        picked, is_default = (recipe_for(ctx.options, info.cuda_available) if node.rank == 0 else (recipe, default))
        job, installed = set_up_job(ctx, transport, info.python, picked, is_default, steps)
        return info, picked, job, installed

    what = "bootstrap" if node.rank == 0 else f"node {node.rank}'s bootstrap"
    info, picked, node.job, installed = cut_at(node, what, steps, prepare, ctx.run.stop_at_epoch)
    node.python = info.python
    if installed:
        ctx.event(EventKind.INSTALLED, packages=installed, rank=node.rank)
    if sent := node.job.get("data_sent"):
        ctx.event(EventKind.DATA_SENT, rank=node.rank, **sent)
    if watch := data_watch(node):  # the switch watches the data phase too, until training starts
        set_pre_job(transport, **watch)
    return info, picked


def _upload_and_bootstrap(ctx: RunContext, transport: Transport, steps: Steps) -> BootstrapInfo:
    """The job's code on the node (the command's --workdir, else the trainer), then the python /
    torch / CUDA check and what is missing installed."""
    opts = ctx.options
    steps("uploading the code")
    if opts.command and opts.workdir:
        transport.upload(Path(opts.workdir), "code")
    else:
        transport.upload(TRAINER_DIR, "code/trainer")
    return bootstrap(transport, need_torch=not opts.command, step=steps)


def data_watch(node: Node) -> dict[str, str]:
    """The watchdog's pre-job: the data phase and its progress.json, relative to the node's root."""
    assert node.transport is not None
    root = node.transport.root.rstrip("/") + "/"
    if not node.job.get("prepare") or not str(node.job.get("data_dir") or "").startswith(root):
        return {}
    return {"pre_job": DATA_JOB, "pre_progress_file": f"{node.job['data_dir'][len(root):]}/{PROGRESS_FILE}"}


def set_up_job(ctx: RunContext, transport: Transport, python: str, recipe: Recipe | None, default: bool,
               steps: Steps) -> tuple[dict[str, Any], list[str]]:
    """On one node: the recipe's data command and data_dir under its root (its --data-from copy
    uploaded), the packages the data needs, the config file the trainer reads (recipe < --config;
    --set stays flags) with data_dir at the data the recipe prepares. What was decided (`job`, kept
    in the run's record) and the packages installed. Transport only: it runs in bootstrap's
    worker thread."""
    opts, root = ctx.options, transport.root
    job: dict[str, Any] = {"recipe": recipe.name if recipe else None, "default": default,
                           "config_file": False, "data_dir": None, "prepare": None}
    if recipe is not None and data_phase(opts, recipe):
        job["data_dir"] = f"{root}/data/{recipe.data.dir_name}"
        from_dir = None
        if opts.data_from and opts.data_from.startswith("s3://"):
            steps(f"fetching {opts.data_from}")
            job["data_sent"] = bucket.fetch_data_on_instance(ctx, transport, python, opts.data_from, DATA_SOURCE_DIR)
            from_dir = f"{root}/{DATA_SOURCE_DIR}"
        elif opts.data_from:
            steps(f"sending {opts.data_from}")
            sent = transport.send_data(Path(opts.data_from), DATA_SOURCE_DIR, ctx.run_dir, ctx.run.stop_at_epoch)
            job["data_sent"] = {"path": opts.data_from, "files": sent.files, "bytes": sent.bytes,  # recorded by the caller
                                "total_bytes": sent.total_bytes, "seconds": round(sent.seconds, 3), "verified": "sha256"}
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
