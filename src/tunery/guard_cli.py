"""`tunery guard set|show|remove|list`: bind a chat model to a topic classifier on a running server."""

from __future__ import annotations

import json
from typing import Optional
from urllib.parse import quote

import typer
from rich.console import Console
from rich.markup import escape

from tunery.errors import TuneryError

app = typer.Typer(help="Guard a chat model with a topic classifier: off-topic questions get a refusal.",
                  no_args_is_help=True)
console = Console()

BaseUrlOpt = typer.Option(None, "--base-url", help="The tunery server (default $TUNERY_BASE_URL or "
                                                   "http://127.0.0.1:8000/v1).")
ApiKeyOpt = typer.Option(None, "--api-key", help="API key (default $TUNERY_API_KEY, then $OPENAI_API_KEY).")


def _call(method: str, path: str, base_url: Optional[str], api_key: Optional[str], body: dict | None = None) -> dict:
    import httpx

    from tunery.settings import get_settings

    client = get_settings().client
    base = (base_url or client.server).rstrip("/")
    key = api_key or client.bearer
    try:
        r = httpx.request(method, base + path, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=60)
    except httpx.HTTPError as exc:
        raise TuneryError(f"cannot reach {base} ({exc}); is `tunery serve` running? (or pass --base-url)") from None
    try:
        data = r.json()
    except ValueError:
        data = {}
    if r.status_code >= 400:
        err = data.get("error") if isinstance(data, dict) else None
        msg = err.get("message") if isinstance(err, dict) else r.text[:300]
        raise TuneryError(f"HTTP {r.status_code}: {msg}")
    return data


def _path(model: str) -> str:
    return "/tunery/guards/" + quote(model, safe=":")


def _show(g: dict) -> None:
    d = g["decisions"]
    console.print(f"[bold]{escape(g['model'])}[/bold] is guarded by [cyan]{escape(g['classifier'])}[/cyan]: "
                  f"P({g['positive_label']!r}) < {g['threshold']} → refusal {g['refusal']!r}", highlight=False)
    console.print(f"  prompt: {escape(repr(g['prompt_template'] + g['separator']))}"
                  + (f"; answers checked too ({escape(repr(g['answer_template']))})" if g["check_answer"] else ""),
                  highlight=False)
    console.print(f"  decisions: {d['checked']} checked, {d['allowed']} allowed, {d['declined']} declined "
                  f"({d['declined_question']} on the question, {d['declined_answer']} on the answer)")


@app.command("set")
def set_cmd(
    model: str = typer.Argument(..., help="The chat model to guard (e.g. ft:…)."),
    classifier: str = typer.Option(..., "--classifier", "-c", help='The discriminator model (" yes"/" no").'),
    threshold: Optional[float] = typer.Option(None, "--threshold", min=0.0, max=1.0,
                                              help="P(yes) below this → refusal (default: the server's, "
                                                   "measured in bench/bench_discriminator.py)."),
    refusal: Optional[str] = typer.Option(None, "--refusal", help="What the bot says to off-topic questions."),
    separator: str = typer.Option("\n\n###\n\n", "--separator", help="Ends every classifier prompt "
                                  "(as in its training data; escapes like \\n are understood)."),
    template: str = typer.Option("{question}", "--template", help="Classifier prompt, with {question}."),
    check_answer: bool = typer.Option(False, "--check-answer", help="Also classify the produced answer."),
    answer_template: Optional[str] = typer.Option(None, "--answer-template",
                                                  help="Classifier prompt for answers, with {answer}."),
    base_url: Optional[str] = BaseUrlOpt, api_key: Optional[str] = ApiKeyOpt,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Bind MODEL to a classifier (replacing any guard it had)."""
    unescape = (lambda s: s.encode("utf-8").decode("unicode_escape")) if "\\" in separator else (lambda s: s)
    body = {"classifier": classifier, "separator": unescape(separator), "prompt_template": template,
            "check_answer": check_answer}
    if threshold is not None:
        body["threshold"] = threshold
    if refusal:
        body["refusal"] = refusal
    if answer_template:
        body["answer_template"] = answer_template
    g = _call("POST", _path(model), base_url, api_key, body)
    typer.echo(json.dumps(g, indent=2)) if as_json else _show(g)


@app.command("show")
def show_cmd(model: str = typer.Argument(...), base_url: Optional[str] = BaseUrlOpt,
             api_key: Optional[str] = ApiKeyOpt, as_json: bool = typer.Option(False, "--json")) -> None:
    """Show MODEL's guard and how many requests it allowed and declined."""
    g = _call("GET", _path(model), base_url, api_key)
    typer.echo(json.dumps(g, indent=2)) if as_json else _show(g)


@app.command("remove")
def remove_cmd(model: str = typer.Argument(...), base_url: Optional[str] = BaseUrlOpt,
               api_key: Optional[str] = ApiKeyOpt) -> None:
    """Remove MODEL's guard (its decisions stay recorded)."""
    _call("DELETE", _path(model), base_url, api_key)
    console.print(f"guard removed from {escape(model)}")


@app.command("list")
def list_cmd(base_url: Optional[str] = BaseUrlOpt, api_key: Optional[str] = ApiKeyOpt) -> None:
    """Every guarded model of your organization."""
    data = _call("GET", "/tunery/guards", base_url, api_key)["data"]
    if not data:
        console.print("no guards set")
    for g in data:
        _show(g)
