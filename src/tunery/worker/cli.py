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
    home: Path = typer.Option(None, "--home", help="TUNERY_HOME to use (default: the environment's)."),
    until_idle: bool = typer.Option(False, "--until-idle", help="Exit once no job is queued or running."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log every step of the queue."),
) -> None:
    """Claim queued fine-tuning jobs and train them, each in its own child process.

    Several workers (on one machine or many sharing one PostgreSQL database and file store) never run
    the same job twice. Ctrl-C or SIGTERM stops cleanly: running jobs go back to the queue and resume
    from their last checkpoint.
    """
    from dataclasses import replace

    from tunery.settings import Settings
    from tunery.worker.runner import Worker

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False)])
    settings = Settings.from_env(home=home)
    try:
        config = replace(settings.worker, concurrency=concurrency or settings.worker.concurrency,
                         procs_per_job=procs_per_job or settings.worker.procs_per_job)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--procs-per-job") from None
    w = Worker(settings, config)
    console.print(f"[bold]tunery worker[/bold] {w.owner}: concurrency {w.config.concurrency}, "
                  f"procs-per-job {w.config.procs_per_job}, lease {w.config.lease_seconds}s, home {settings.home}")
    signal.signal(signal.SIGTERM, lambda *_: w.stop())
    try:
        w.run(until_idle=until_idle)
    except KeyboardInterrupt:
        console.print("stopping: running jobs go back to the queue")
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
