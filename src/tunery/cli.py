"""The `tunery` command. Each area keeps its own sub-commands in <area>/cli.py; this file wires them."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from tunery import __version__
from tunery.errors import TuneryError

app = typer.Typer(
    name="tunery",
    help="Fine-tune open language models on your own hardware, through the OpenAI fine-tuning API.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


@app.command()
def version() -> None:
    """Print tunery's version."""
    console.print(f"tunery {__version__}")


def _register() -> None:
    # Sub-command groups, one module per area of the code (docs/architecture.md has the layout).
    from tunery.models.cli import app as models_app

    app.add_typer(models_app, name="models")
    app.add_typer(__import__("tunery.data.cli", fromlist=["app"]).app, name="data")
    __import__("tunery.api.cli", fromlist=["register"]).register(app)  # serve, keys
    __import__("tunery.worker.cli", fromlist=["register"]).register(app)  # worker
    _register_quickstart()
    __import__("tunery.eval.cli", fromlist=["register"]).register(app)  # eval, compare
    __import__("tunery.train.cli", fromlist=["register"]).register(app)  # train, export
    __import__("tunery.inference.cli", fromlist=["register"]).register(app)  # chat
    app.add_typer(__import__("tunery.guard_cli", fromlist=["app"]).app, name="guard")


def _register_quickstart() -> None:
    # The tour drives every layer (data, API, worker, inference), so it is registered from the top, not by
    # worker/cli.py: no module imports back up the layers.
    from tunery.quickstart import quickstart
    from tunery.worker.cli import help_text

    app.command(name="quickstart", help=help_text(quickstart))(quickstart)


_register()


def main(argv: list[str] | None = None) -> None:
    """Entry point: domain errors become one red line and exit code 1, never a traceback."""
    from tunery.quiet import quiet_libraries

    quiet_libraries()
    try:
        app(args=argv, standalone_mode=True)
    except TuneryError as exc:
        err_console.print(f"[red]error:[/red] {exc.message}")
        sys.exit(1)


if __name__ == "__main__":
    main()
