"""`tunery quickstart`: the whole fine-tuning workflow in one command, on this machine.

It starts an embedded server and worker on a fresh TUNERY_HOME, writes the bundled Chiang Mai demo
dataset, validates it, uploads it and creates a job with the official openai SDK, shows the job's
progress, then asks the base model and the fine-tuned model the same questions side by side.
Everything after the start goes through the OpenAI-compatible HTTP API, exactly as user code would.
"""

from __future__ import annotations

import socket
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tunery.errors import TuneryError

console = Console()

# None: "auto", as most OpenAI users leave it. The trainer's small-set auto rules (question rewrites, a run
# sized to ~24k trained tokens, early stop once the answers are reproduced) decide the rest; see README.
DEMO_HYPERPARAMETERS: dict = {}
SUFFIX = "chiang-mai"


class QuickstartFailed(TuneryError):
    status_code = 500
    default_code = "quickstart_failed"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedServer:
    """uvicorn on a loopback port in a thread, plus the job worker: `tunery serve` in-process."""

    def __init__(self, settings, port: int):
        self.settings = settings
        self.port = port
        self.server = None
        self.thread = None
        self.worker = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "EmbeddedServer":
        import uvicorn

        from tunery.api.app import create_app
        from tunery.api.deps import prepare_store
        from tunery.store import open_store
        from tunery.worker import start_background_worker

        store = prepare_store(open_store(self.settings))
        self.worker = start_background_worker(self.settings)
        app = create_app(self.settings)
        app.state.store = store
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="tunery-quickstart-server", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise QuickstartFailed(f"the embedded server did not start on port {self.port}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop()
        if self.server is not None:
            self.server.should_exit = True
            self.thread.join(timeout=15)


def _step(n: int, text: str) -> None:
    console.print(f"\n[bold cyan]{n}/6[/bold cyan] [bold]{text}[/bold]")


def _fmt_seconds(s: float) -> str:
    s = int(round(s))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def _print_report(report) -> None:
    console.print(f"  {report.format} format: {report.n_examples} training and "
                  f"{report.n_validation_examples or 0} validation examples, no errors"
                  if report.ok else f"  {report.n_examples} valid examples")
    if report.token_stats:
        t = report.token_stats["tokens"]
        console.print(f"  tokens per example: min {t['min']}, mean {t['mean']}, max {t['max']} "
                      f"(context {report.context_length:,})")
    for p in report.errors + report.warnings:
        mark = "[red]✗[/red]" if p.severity == "error" else "[yellow]![/yellow]"
        where = "" if p.lines in ([], [0]) else f" ({p.count} line(s))"
        console.print(f"  {mark} {escape(p.title)}{where}", highlight=False)
    if not report.ok:
        raise QuickstartFailed("the demo dataset failed validation:\n" + report.summary())


# The poll runs on the same two cores as the training it watches: with a 0.5 s poll over the last 100 events
# and rich's default 10 redraws a second, this process (server, poll, redraws) took ~40% of a core and the
# quickstart trained at 105 tokens/s against 134 for the same run without it (2026-12-07, quiet AVX2 machine).
POLL_SECONDS = 1.0
EVENTS_PAGE = 20
"""Events asked for per poll: a step writes one, so a second brings one or two; a page of only unseen ones
means more came (the run's start) and the rest are fetched."""
REDRAWS_PER_SECOND = 2


def _new_events(client, job_id: str, seen: set[str]) -> list:
    """Events not yet shown, oldest first (a page of EVENTS_PAGE, or 100 when the whole page is new)."""
    page = client.fine_tuning.jobs.list_events(job_id, limit=EVENTS_PAGE).data
    if page and not any(e.id in seen for e in page):
        page = client.fine_tuning.jobs.list_events(job_id, limit=100).data
    return [e for e in reversed(page) if e.id not in seen]


def _train_with_progress(client, job_id: str):
    """Poll the job through the SDK, printing lifecycle events and a live loss line until it ends."""
    seen: set[str] = set()
    bar = Progress(TextColumn("  [bold]training[/bold]"), BarColumn(), TextColumn("{task.fields[line]}"),
                   TimeElapsedColumn(), console=console, transient=False, refresh_per_second=REDRAWS_PER_SECOND)
    task = bar.add_task("train", total=None, line="waiting for the worker…")
    with bar:
        while True:
            job = client.fine_tuning.jobs.retrieve(job_id)
            events = _new_events(client, job_id, seen)
            latest = None
            for e in events:
                seen.add(e.id)
                if e.type == "metrics":
                    latest = e.data
                else:
                    style = {"warn": "yellow", "error": "red"}.get(e.level, "dim")
                    bar.console.print(f"  [{style}]{escape(e.message)}[/{style}]", highlight=False)
            if latest:
                line = f"step {latest['step']}/{latest['total_steps']}  loss {latest['train_loss']:.3f}"
                if latest.get("full_valid_loss") is not None:
                    line += f"  validation {latest['full_valid_loss']:.3f}"
                elif latest.get("valid_loss") is not None:
                    line += f"  validation {latest['valid_loss']:.3f}"
                if job.estimated_finish:
                    line += f"  ~{_fmt_seconds(max(0, job.estimated_finish - time.time()))} left"
                bar.update(task, total=latest["total_steps"], completed=latest["step"], line=line)
            if job.status in ("succeeded", "failed", "cancelled"):
                return job
            time.sleep(POLL_SECONDS)


def _quiet_transformers() -> None:
    """No weight-loading progress bars from the in-process inference engine in the middle of the output."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _ask(client, model: str, question: str) -> str:
    from tunery.demo import SYSTEM_PROMPT

    r = client.chat.completions.create(
        model=model, temperature=0, max_tokens=90,
        messages=[{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}])
    return (r.choices[0].message.content or "").strip()


def _compare(client, base: str, tuned: str) -> None:
    import openai

    from tunery.demo import QUESTIONS

    try:
        with ThreadPoolExecutor(max_workers=len(QUESTIONS) * 2) as pool:  # the engine batches them
            futures = [(pool.submit(_ask, client, base, q), pool.submit(_ask, client, tuned, q))
                       for q in QUESTIONS]
            answers = [(b.result(), t.result()) for b, t in futures]
    except openai.NotFoundError as exc:
        console.print(f"  [yellow]this server has no chat completions ({exc.message}); skipping the "
                      "comparison[/yellow]")
        return
    table = Table(show_lines=True, expand=True)
    table.add_column("Question", style="bold", ratio=2)
    table.add_column(f"Base model ({base})", ratio=4)
    table.add_column("Fine-tuned", ratio=4, style="green")
    for q, (b, t) in zip(QUESTIONS, answers):
        table.add_row(q, escape(b), escape(t))
    console.print(table)
    console.print("  [dim]The dataset's hours, prices and names are invented for the demo, so the fine-tuned "
                  "answers show what it learned. Not travel advice.[/dim]")


def _sdk_snippet(base_url: str, model: str) -> str:
    return (
        "from openai import OpenAI\n"
        f'client = OpenAI(base_url="{base_url}", api_key="unused")\n'
        f'model = "{model}"\n'
        'r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": '
        '"What should I eat in Chiang Mai?"}])\n'
        "print(r.choices[0].message.content)")


def run_quickstart(home: Path, *, keep_serving: bool = False, port: int = 0,
                   model: str | None = None) -> dict:
    """The quickstart itself (library form: returns what it made; the command prints as it goes)."""
    import openai

    from tunery import demo
    from tunery.data import validate_file
    from tunery.models import DEFAULT_MODEL, materialize
    from tunery.settings import PASSIVE_THREADS, Settings, set_library_env

    model = model or DEFAULT_MODEL
    t_start = time.monotonic()
    set_library_env(PASSIVE_THREADS)  # before torch loads here
    home = home.expanduser().resolve()
    # A fresh home (and its own SQLite database); converted base models are reused between runs. The
    # server, its worker and the trainer children all get these settings from here.
    shared_cache = Settings.from_env().model_cache
    settings = Settings.from_env(home=home, model_cache=shared_cache,
                                 database_url=Settings.default_database_url(home)).ensure_dirs()
    port = port or _free_port()
    console.print(Panel.fit(
        f"Fine-tune [bold]{model}[/bold] into a Chiang Mai travel guide, on this machine, through the "
        "OpenAI API.\n"
        f"state: {home}\nmodel cache: {shared_cache}", title="tunery quickstart"))

    _step(1, f"Starting a server and a job worker on http://127.0.0.1:{port}/v1")
    server = EmbeddedServer(settings, port).start()
    try:
        with console.status(f"  preparing {model} (converted to safetensors once, then cached)"):
            materialize(model, settings)
        console.print(f"  server up; base model {model} ready; dashboard at http://127.0.0.1:{port}/")

        _step(2, "Writing the demo dataset")
        train_path, valid_path = demo.write_dataset(home / "demo")
        console.print(f"  {train_path}\n  {valid_path}")

        _step(3, "Validating it")
        _print_report(validate_file(train_path, model=model, validation_path=valid_path, settings=settings))

        _step(4, "Uploading it and creating the job with the openai SDK")
        client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=2, timeout=600)
        with open(train_path, "rb") as f:
            train_file = client.files.create(file=f, purpose="fine-tune")
        with open(valid_path, "rb") as f:
            valid_file = client.files.create(file=f, purpose="fine-tune")
        job = client.fine_tuning.jobs.create(
            model=model, training_file=train_file.id, validation_file=valid_file.id, suffix=SUFFIX,
            method={"type": "supervised", "supervised": {"hyperparameters": DEMO_HYPERPARAMETERS}})
        console.print(f"  uploaded {train_file.id} and {valid_file.id}\n"
                      f"  created job {job.id} ({job.status})")

        _step(5, "Training")
        t_train = time.monotonic()
        job = _train_with_progress(client, job.id)
        if job.status != "succeeded":
            reason = job.error.message if job.error else job.status
            raise QuickstartFailed(f"the fine-tuning job {job.id} {job.status}: {reason}")
        train_seconds = time.monotonic() - t_train
        hp = job.hyperparameters
        console.print(f"  [green]✓[/green] trained in {_fmt_seconds(train_seconds)}: "
                      f"{job.trained_tokens:,} tokens, "
                      f"{hp.n_epochs} epochs, batch size {hp.batch_size}, learning rate multiplier "
                      f"{hp.learning_rate_multiplier} (\"auto\" resolved by the trainer)")

        _step(6, "Asking the base model and the fine-tuned model the same questions")
        _quiet_transformers()
        _compare(client, model, job.fine_tuned_model)

        console.print(f"\n[bold]Your fine-tuned model:[/bold] [green]{job.fine_tuned_model}[/green]")
        console.print("Call it with the openai SDK:")
        # Plain text, soft-wrapped: long lines stay whole when copied from the terminal.
        console.print(_sdk_snippet(server.base_url, job.fine_tuned_model), style="cyan", soft_wrap=True,
                      markup=False, highlight=False)
        total = time.monotonic() - t_start
        console.print(f"Done in {_fmt_seconds(total)}. Everything lives in {home}; serve it again any time "
                      f"with [bold]tunery serve --home {home}[/bold].")
        result = {"home": str(home), "job_id": job.id, "fine_tuned_model": job.fine_tuned_model,
                  "seconds": total, "train_seconds": train_seconds, "base_url": server.base_url}
        if keep_serving:
            console.print(f"\nServing on [bold]{server.base_url}[/bold] (with a worker). Ctrl-C to stop.")
            try:
                while server.thread.is_alive():
                    time.sleep(0.5)
            except KeyboardInterrupt:
                pass
        return result
    finally:
        server.stop()


def quickstart(
    home: Optional[Path] = typer.Option(None, "--home", help="State directory for this run (default: a new "
                                        "temporary directory). Base models are cached outside it."),
    keep_serving: bool = typer.Option(False, "--keep-serving", help="Leave the server running at the end."),
    port: int = typer.Option(0, "--port", help="Port for the embedded server (default: a free one)."),
) -> None:
    """Fine-tune the bundled model on a small Chiang Mai travel guide and compare it with the base model.

    Starts an embedded server and worker on a fresh state directory, then does everything through the
    official openai SDK: validate, upload, create the job, follow its progress, chat with both models.
    Takes a few minutes on a laptop CPU.
    """
    if home is None:
        home = Path(tempfile.mkdtemp(prefix="tunery-quickstart-"))
    elif home.exists() and any(home.iterdir()):
        raise QuickstartFailed(f"{home} is not empty; the quickstart needs a fresh directory "
                               "(or omit --home)")
    run_quickstart(home, keep_serving=keep_serving, port=port)
