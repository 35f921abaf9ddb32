"""`tunery serve` and `tunery keys create|list|revoke`."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from tunery.errors import InvalidRequest

console = Console()
keys_app = typer.Typer(help="API keys: once any key exists, every request needs one and sees only its "
                            "organization's files, jobs and models.", no_args_is_help=True)

HomeOpt = typer.Option(None, "--home", help="State directory (default $TUNERY_HOME or ~/.tunery).")


def _settings(home: Optional[Path]):
    """The environment's settings (--home moves the state); passed to everything started from here."""
    from tunery.settings import Settings

    return Settings.from_env(home=home).ensure_dirs()


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(store, host: str, insecure: bool) -> None:
    """Refuse to serve a non-loopback address without keys (anyone could use it) unless --insecure."""
    from tunery.store import auth_required

    if not is_loopback(host) and not insecure and not auth_required(store):
        raise InvalidRequest(
            f"refusing to listen on {host} without API keys: anyone who can reach it could use it. Create a key "
            "with `tunery keys create --org NAME`, listen on 127.0.0.1, or pass --insecure.", param="host")


def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8000, "--port", help="Port to listen on."),
    home: Optional[Path] = HomeOpt,
    insecure: bool = typer.Option(False, "--insecure", help="Allow a non-loopback host with no API keys."),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level."),
    no_worker: bool = typer.Option(False, "--no-worker", help="API only: run no embedded job worker "
                                   "(start `tunery worker` processes instead)."),
) -> None:
    """Run the OpenAI-compatible API server (point the openai SDK's base_url at http://HOST:PORT/v1)."""
    import uvicorn

    from tunery.api.app import create_app
    from tunery.api.deps import prepare_store
    from tunery.store import open_store

    settings = _settings(home)
    store = prepare_store(open_store(settings))  # migrations and crash recovery before accepting requests
    check_exposure(store, host, insecure)
    loopback = is_loopback(host)
    app = create_app(settings, exposed=not loopback and not insecure, public=not loopback)
    app.state.store = store
    console.print(f"tunery API on http://{host}:{port}/v1 (docs at /docs), state in {settings.home}")
    console.print(f"Dashboard: http://{host}:{port}/")
    from tunery.worker import start_background_worker  # the embedded worker (one job at a time by default)

    worker = None if no_worker else start_background_worker(settings)
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level)
    finally:
        if worker is not None:
            worker.stop()  # a running job goes back to the queue and resumes from its last checkpoint


@keys_app.command("create")
def keys_create(org: str = typer.Option(..., "--org", help="Organization name (created if new)."),
                name: Optional[str] = typer.Option(None, "--name", help="A label for the key."),
                home: Optional[Path] = HomeOpt) -> None:
    """Issue an API key for an organization. The key is shown once."""
    from tunery.store import create_api_key, open_store

    row, key = create_api_key(open_store(_settings(home)), org, name)
    console.print(f"Created key [bold]{row.id}[/bold] for organization [bold]{org}[/bold]. "
                  "Store it now; it is not shown again:")
    typer.echo(key)


@keys_app.command("list")
def keys_list(home: Optional[Path] = HomeOpt,
              all_: bool = typer.Option(False, "--all", help="Include revoked keys."),
              as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List API keys (ids and prefixes, never the keys)."""
    import datetime as dt
    import json

    from tunery.clitable import print_table
    from tunery.store import list_api_keys, open_store

    rows = list_api_keys(open_store(_settings(home)), include_revoked=all_)
    if as_json:
        typer.echo(json.dumps([{"id": k.id, "organization": o.name, "prefix": k.prefix, "name": k.name,
                                "created_at": k.created_at, "revoked_at": k.revoked_at} for k, o in rows], indent=2))
        return
    if not rows:
        console.print("No API keys: the server serves the 'personal' organization without auth (on loopback).")
        return

    def when(t):
        return dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M") if t else ""

    print_table(console, ("id", "organization", "prefix", "name", "created", "revoked"),
                [(k.id, o.name, k.prefix + "…", k.name or "", when(k.created_at), when(k.revoked_at))
                 for k, o in rows])


@keys_app.command("revoke")
def keys_revoke(key_id: str = typer.Argument(..., help="Key id (key-…) from `tunery keys list`, or the key."),
                home: Optional[Path] = HomeOpt) -> None:
    """Revoke an API key at once."""
    from tunery.store import open_store, revoke_api_key

    from tunery.store import auth_required

    store = open_store(_settings(home))
    row = revoke_api_key(store, key_id)
    console.print(f"Revoked {row.id}.")
    if not auth_required(store):
        console.print("[yellow]That was the last key.[/yellow] A server listening beyond loopback now refuses "
                      "every request until you create a key (`tunery keys create --org NAME`); a loopback server "
                      "serves the 'personal' organization without auth.")


def register(app: typer.Typer) -> None:
    """Add `serve` and `keys` to the main `tunery` command."""
    app.command("serve")(serve)
    app.add_typer(keys_app, name="keys")
