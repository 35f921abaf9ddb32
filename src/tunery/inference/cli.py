"""`tunery chat`: talk to a model in the terminal, tokens streamed as they are generated.

Two ways to reach the model:
  * --base-url URL (or TUNERY_BASE_URL): a running tunery (or any OpenAI-compatible) server, through
    the official openai SDK — the same path as any client program;
  * no URL: the engine runs in this process on $TUNERY_HOME's models (ft:… names are looked up in its
    database), so no server is needed for a quick look at a fine-tune.
Interactive when stdin is a terminal and no --prompt is given; otherwise one-shot (for scripts):
the prompt from --prompt or stdin, the answer on stdout, nothing else.
"""

from __future__ import annotations

import sys
from typing import Iterator

import typer
from rich.console import Console

err = Console(stderr=True)


class _Remote:
    def __init__(self, base_url: str, api_key: str, model: str):
        import openai

        self.client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=2)
        self.model = model

    def stream(self, messages: list[dict], **params) -> Iterator[str]:
        import openai

        try:
            for chunk in self.client.chat.completions.create(model=self.model, messages=messages, stream=True,
                                                             **params):
                if chunk.choices and chunk.choices[0].delta.content:
                    yield chunk.choices[0].delta.content
        except openai.APIStatusError as exc:
            from tunery.errors import TuneryError

            body = exc.body if isinstance(exc.body, dict) else {}
            raise TuneryError(f"{exc.status_code} from the server: {body.get('message') or exc.message}") from exc
        except openai.APIConnectionError as exc:
            from tunery.errors import TuneryError

            raise TuneryError(f"cannot reach {self.client.base_url}: is `tunery serve` running?") from exc

    def close(self) -> None:
        self.client.close()


class _Local:
    def __init__(self, model: str, settings):
        from tunery.inference.engine import Engine

        servable = model
        if model.startswith("ft:"):
            from tunery.store import ensure_org, find_servable_model, open_store

            store = open_store(settings)
            servable = find_servable_model(store, ensure_org(store, settings.default_org), model)
        self.engine = Engine(settings)
        with err.status(f"loading {model}…"):
            self.handle = self.engine.prepare(servable)

    def stream(self, messages: list[dict], **params) -> Iterator[str]:
        from tunery.inference.engine import Delta, Failed, SamplingParams

        ids = self.handle.encode_chat(messages)
        gen = self.engine.submit(self.handle, ids, SamplingParams(**params).validate())
        try:
            for ev in gen:
                if isinstance(ev, Delta) and ev.text:
                    yield ev.text
                elif isinstance(ev, Failed):
                    raise ev.error
        finally:
            gen.cancel()

    def close(self) -> None:
        self.engine.close()


def chat(
    model: str = typer.Option("smollm2-135m-instruct", "--model", "-m",
                              help="Base model, alias (gpt-4o-mini) or fine-tuned ft:… model."),
    system: str | None = typer.Option(None, "--system", "-s", help="System message for the conversation."),
    prompt: str | None = typer.Option(None, "--prompt", "-p",
                                      help="Ask once and exit (stdin is read instead when it is not a terminal)."),
    base_url: str | None = typer.Option(None, "--base-url",
                                        help="Server to talk to (e.g. http://127.0.0.1:8000/v1; default "
                                             "$TUNERY_BASE_URL); without it the model runs in this process."),
    api_key: str | None = typer.Option(None, "--api-key", help="API key for --base-url (default $TUNERY_API_KEY, "
                                                               "then $OPENAI_API_KEY)."),
    temperature: float = typer.Option(0.7, "--temperature", "-t", min=0, max=2, help="0 = greedy, deterministic."),
    max_tokens: int = typer.Option(512, "--max-tokens", min=1, help="Longest answer, in tokens."),
    seed: int | None = typer.Option(None, "--seed", help="Fix sampling for reproducible answers."),
) -> None:
    """Chat with a model in the terminal (tokens stream as generated), or answer one prompt for scripts."""
    from tunery.settings import get_settings

    settings = get_settings()
    base_url = base_url or settings.client.base_url
    backend = _Remote(base_url, api_key or settings.client.bearer, model) if base_url else _Local(model, settings)
    params = {"temperature": temperature, "max_tokens": max_tokens}
    if seed is not None:
        params["seed"] = seed
    history: list[dict] = [{"role": "system", "content": system}] if system else []
    try:
        if prompt is not None or not sys.stdin.isatty():
            text = prompt if prompt is not None else sys.stdin.read()
            if not text.strip():
                raise typer.BadParameter("empty prompt", param_hint="--prompt / stdin")
            for piece in backend.stream(history + [{"role": "user", "content": text}], **params):
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
            return
        _interactive(backend, history, params, model)
    finally:
        backend.close()


def _interactive(backend, history: list[dict], params: dict, model: str) -> None:
    out = Console()
    out.print(f"[bold]tunery chat[/bold] with [cyan]{model}[/cyan] — /reset clears the conversation, "
              "/exit or Ctrl-D leaves.")
    base = list(history)
    while True:
        try:
            line = out.input("[bold green]you>[/bold green] ")
        except (EOFError, KeyboardInterrupt):
            out.print()
            return
        if not line.strip():
            continue
        if line.strip() in ("/exit", "/quit"):
            return
        if line.strip() == "/reset":
            history[:] = list(base)
            out.print("[dim](conversation cleared)[/dim]")
            continue
        history.append({"role": "user", "content": line})
        out.print("[bold cyan]model>[/bold cyan] ", end="")
        answer = []
        try:
            for piece in backend.stream(history, **params):
                answer.append(piece)
                sys.stdout.write(piece)
                sys.stdout.flush()
        except KeyboardInterrupt:
            out.print("[dim] (interrupted)[/dim]")
        sys.stdout.write("\n")
        history.append({"role": "assistant", "content": "".join(answer)})


def register(app: typer.Typer) -> None:
    app.command("chat")(chat)
