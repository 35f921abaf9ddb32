"""`tunery worker`: run queued fine-tuning jobs from the store (as many workers as you like)."""

from __future__ import annotations

import logging
import signal
from pathlib import Path

import typer
from rich.console import Console
from rich.logging import RichHandler

console = Console(stderr=True)


def worker(
    concurrency: int = typer.Option(None, "--concurrency", "-c", min=1,
                                    help="Jobs trained at once (default 1, or TUNERY_WORKER_CONCURRENCY)."),
    procs_per_job: str = typer.Option(None, "--procs-per-job", metavar="N|auto",
                                      help="Processes (torch.distributed ranks) each job trains in: N, or auto "
                                           "(the default, or TUNERY_WORKER_PROCS_PER_JOB): one per visible GPU "
                                           "on CUDA; on CPU one per core (up to 4) for runs estimated at over "
                                           "40 s, else 1."),
    nnodes: int = typer.Option(None, "--nnodes", min=1, help="Machines one job trains on (default 1, or "
                               "TUNERY_WORKER_NNODES); each runs a worker with its own --node-rank."),
    node_rank: int = typer.Option(None, "--node-rank", min=0,
                                  help="This machine's node (default 0, or TUNERY_WORKER_NODE_RANK): 0 "
                                       "claims jobs and holds their lease, 1.. join node 0's runs with their "
                                       "ranks."),
    rdzv_endpoint: str = typer.Option(None, "--rdzv-endpoint", metavar="HOST:PORT",
                                      help="Where node 0 listens for the other nodes (as torchrun's; or "
                                           "TUNERY_WORKER_RDZV_ENDPOINT); the same on every node."),
    home: Path = typer.Option(None, "--home", help="TUNERY_HOME to use (default: the environment's)."),
    until_idle: bool = typer.Option(False, "--until-idle", help="Exit once no job is queued or running."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log every step of the queue."),
) -> None:
    """Claim queued fine-tuning jobs and train them, each in its own child process.

    Several workers (on one machine or many sharing one PostgreSQL database and file store) never run
    the same job twice. Ctrl-C or SIGTERM stops cleanly: running jobs go back to the queue and resume
    from their last checkpoint.

    One job over several machines: start `tunery worker --nnodes N --node-rank K --rdzv-endpoint HOST:PORT`
    on each (HOST: node 0's address). Node 0 claims jobs; the others claim nothing and train their ranks of
    node 0's runs.
    """
    from tunery.settings import Settings
    from tunery.worker.runner import Worker

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False)])
    try:
        settings = Settings.from_env(home=home, worker={
            "concurrency": concurrency, "procs_per_job": procs_per_job, "nnodes": nnodes,
            "node_rank": node_rank, "rdzv_endpoint": rdzv_endpoint})
        config = settings.worker
    except ValueError as exc:
        flags = ("--procs-per-job", "--nnodes", "--node-rank", "--rdzv-endpoint")
        hint = next((f for f in flags if f in str(exc)), None)
        raise typer.BadParameter(str(exc), param_hint=hint) from None
    if config.node_rank > 0:
        if until_idle:
            raise typer.BadParameter("a node rank above 0 waits for node 0's runs until stopped (SIGTERM)",
                                     param_hint="--until-idle")
        _run_node(settings, config)
        return
    w = Worker(settings, config)
    nodes = (f", node 0 of {config.nnodes} (rendezvous {config.rdzv_endpoint})" if config.nnodes > 1 else "")
    console.print(f"[bold]tunery worker[/bold] {w.owner}: concurrency {w.config.concurrency}, "
                  f"procs-per-job {w.config.procs_per_job}{nodes}, lease {w.config.lease_seconds}s, "
                  f"home {settings.home}")
    signal.signal(signal.SIGTERM, lambda *_: w.stop())
    try:
        w.run(until_idle=until_idle)
    except KeyboardInterrupt:
        console.print("stopping: running jobs go back to the queue")
        w.stop()
    console.print("worker stopped")


def _run_node(settings, config) -> None:
    """The worker of node rank 1..nnodes-1: joins node 0's runs (tunery.worker.node)."""
    from tunery.worker.node import NodeWorker

    w = NodeWorker(settings, config)
    console.print(f"[bold]tunery worker[/bold] node {config.node_rank} of {config.nnodes}: joins node 0's "
                  f"runs at {config.rdzv_endpoint}, home {settings.home}")
    signal.signal(signal.SIGTERM, lambda *_: w.stop())
    try:
        w.run()
    except KeyboardInterrupt:
        w.stop()
    console.print("worker stopped")


def register(app: typer.Typer) -> None:
    """Add `worker` to the tunery command."""
    app.command(name="worker", help=help_text(worker))(worker)


def help_text(fn) -> str:
    """The docstring with each paragraph on one line (rich would keep the source's line breaks)."""
    import inspect

    paragraphs = inspect.cleandoc(fn.__doc__ or "").split("\n\n")
    return "\n\n".join(" ".join(p.split()) for p in paragraphs)
