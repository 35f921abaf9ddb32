"""`tunery chat`: one-shot (prompt flag and stdin), through a server with --base-url, and interactive in a pty."""

from __future__ import annotations

import os
import pty
import select
import sys
import time

from typer.testing import CliRunner

import pytest

from test_inference_api import model, srv  # noqa: F401  (module fixtures: a server on the tiny model)
from tunery.cli import app
from tunery.errors import TuneryError

runner = CliRunner()


@pytest.fixture(scope="module")
def backend() -> str:
    """The CLI is tested on the default backend; test_inference_api covers every backend."""
    return "torch"


def _greedy(client, model_name: str, content: str, n: int) -> str:
    return client.chat.completions.create(model=model_name, messages=[{"role": "user", "content": content}],
                                          temperature=0, max_tokens=n).choices[0].message.content


def test_one_shot_in_process_matches_the_server(srv, model):  # noqa: F811
    expected = _greedy(srv.client(), model, "Say something about cats.", 6)
    r = runner.invoke(app, ["chat", "-m", model, "-t", "0", "--max-tokens", "6", "--prompt", "Say something about cats."])
    assert r.exit_code == 0, r.output
    assert r.stdout == expected + "\n"


def test_stdin_through_base_url(srv, model):  # noqa: F811
    expected = _greedy(srv.client(), model, "Hello from stdin", 5)
    r = runner.invoke(app, ["chat", "-m", model, "-t", "0", "--max-tokens", "5", "--base-url", srv.base_url],
                      input="Hello from stdin")
    assert r.exit_code == 0, r.output
    assert r.stdout == expected + "\n"


def test_unknown_model_is_one_line_error(srv):  # noqa: F811
    r = runner.invoke(app, ["chat", "-m", "no-such-model", "--prompt", "hi", "--base-url", srv.base_url])
    assert r.exit_code != 0
    # tunery.cli.main prints a TuneryError as one red line; the runner hands us the error itself.
    assert isinstance(r.exception, TuneryError)
    assert r.exception.message.startswith("404 from the server: The model 'no-such-model' does not exist")


def test_interactive_session_in_a_terminal(model):  # noqa: F811
    pid, fd = pty.fork()
    if pid == 0:
        os.execvpe(sys.executable, [sys.executable, "-m", "tunery.cli", "chat", "-m", model, "-t", "0",
                                    "--max-tokens", "4", "--system", "Be brief."], os.environ)
    out = b""

    def read_until(count: int, marker: bytes = b"you>", timeout: float = 120) -> None:
        nonlocal out
        end = time.time() + timeout
        while out.count(marker) < count and time.time() < end:
            r, _, _ = select.select([fd], [], [], 0.5)
            if r:
                try:
                    out += os.read(fd, 4096)
                except OSError:
                    break

    try:
        read_until(1)
        os.write(fd, b"hello\n")
        read_until(2)
        os.write(fd, b"/exit\n")
        _, status = os.waitpid(pid, 0)
    finally:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    text = out.decode(errors="replace")
    assert "tunery chat" in text and "model>" in text
    assert text.count("you>") >= 2  # answered, then asked for the next turn
    assert os.WEXITSTATUS(status) == 0
