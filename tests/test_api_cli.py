"""`tunery serve` and `tunery keys` as a user runs them (subprocesses, real port)."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass

import httpx
import openai
import pytest

from test_api_support import free_port
from tunery.api.cli import is_loopback

TUNERY = [sys.executable, "-m", "tunery.cli"]


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def run(capsys, monkeypatch):
    """The real `tunery` entry point, in-process (a subprocess per call costs seconds on a busy machine)."""
    from tunery.cli import main

    monkeypatch.setenv("COLUMNS", "200")

    def go(*args, home) -> Result:
        capsys.readouterr()
        try:
            main([*args, "--home", str(home)])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out = capsys.readouterr()
        return Result(code, out.out, out.err)

    return go


@pytest.mark.parametrize("host,loop", [("127.0.0.1", True), ("localhost", True), ("::1", True), ("[::1]", True),
                                       ("127.3.4.5", True), ("0.0.0.0", False), ("::", False),
                                       ("192.168.1.2", False), ("example.com", False)])
def test_is_loopback(host, loop):
    assert is_loopback(host) is loop


def test_serve_refuses_public_host_without_keys(tmp_path, run):
    proc = run("serve", "--host", "0.0.0.0", "--port", str(free_port()), home=tmp_path)
    assert proc.returncode == 1
    assert "refusing to listen on 0.0.0.0" in proc.stderr and "--insecure" in proc.stderr
    assert "Traceback" not in proc.stderr


def wait_healthy(server, port: int, seconds: float) -> str:
    """The base URL of a `tunery serve` subprocess once /health answers (its stderr if it dies first)."""
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + seconds
    while True:
        try:
            if httpx.get(url + "/health").status_code == 200:
                return url
        except httpx.TransportError:
            pass
        assert server.poll() is None and time.time() < deadline, server.stderr.read().decode()[-2000:]
        time.sleep(0.1)


def test_keys_and_serve(tmp_path, run):
    created = run("keys", "create", "--org", "acme", "--name", "ci", home=tmp_path)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("sk-tunery-")
    listed = run("keys", "list", home=tmp_path)
    assert "acme" in listed.stdout and key not in listed.stdout
    port = free_port()
    server = subprocess.Popen([*TUNERY, "serve", "--port", str(port), "--home", str(tmp_path), "--log-level",
                               "warning"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        url = wait_healthy(server, port, 60)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="sk-other", max_retries=0).models.list()
        models = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0).models.list()
        assert "gpt-4o-mini" in {m.id for m in models}
        revoked = run("keys", "revoke", key, home=tmp_path)
        assert revoked.returncode == 0, revoked.stdout + revoked.stderr
        # no keys left: the server serves the personal organization without auth again
        assert openai.OpenAI(base_url=url + "/v1", api_key="anything", max_retries=0).files.list().data == []
    finally:
        server.terminate()
        server.wait(timeout=20)


def test_serve_beyond_loopback_closes_when_the_last_key_is_revoked(tmp_path, run, tiny_model_dir):
    """`tunery serve --host 0.0.0.0` with a key (issue 11): the auth guard is evaluated per request, so
    revoking the last key while it runs refuses everything (401 no_api_keys) until a new key exists; with
    keys, a model directory resolves only under TUNERY_MODEL_DIRS, and the first model load prints no
    library output."""
    import os
    import shutil

    allowed = tmp_path / "models"
    shutil.copytree(tiny_model_dir, allowed / "tiny")
    home = tmp_path / "home"
    key = run("keys", "create", "--org", "acme", home=home).stdout.strip().splitlines()[-1]
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in (
        "HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY", "TRANSFORMERS_NO_ADVISORY_WARNINGS")}
    env["TUNERY_MODEL_DIRS"] = str(allowed)
    server = subprocess.Popen([*TUNERY, "serve", "--host", "0.0.0.0", "--port", str(port), "--home", str(home),
                               "--no-worker", "--log-level", "warning"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        url = wait_healthy(server, port, 90)
        sdk = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=120)
        reply = sdk.chat.completions.create(model=str(allowed / "tiny"), max_tokens=2,
                                            messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].finish_reason in ("length", "stop")
        with pytest.raises(openai.NotFoundError) as e:
            sdk.chat.completions.create(model=str(tiny_model_dir), max_tokens=2,
                                        messages=[{"role": "user", "content": "hi"}])
        assert e.value.body["message"] == (f"The model '{tiny_model_dir}' does not exist or you do not have "
                                           "access to it.")
        revoked = run("keys", "revoke", key, home=home)
        assert revoked.returncode == 0 and "last key" in revoked.stdout, revoked.stdout
        for api_key in (key, "sk-anything"):
            client = openai.OpenAI(base_url=url + "/v1", api_key=api_key, max_retries=0)
            for call in (client.files.list, client.models.list, client.fine_tuning.jobs.list):
                with pytest.raises(openai.AuthenticationError) as e:
                    call()
                assert e.value.body["code"] == "no_api_keys", e.value.body
        assert httpx.get(url + "/v1/models").status_code == 401  # no Authorization header at all
        key2 = run("keys", "create", "--org", "acme", home=home).stdout.strip().splitlines()[-1]
        assert openai.OpenAI(base_url=url + "/v1", api_key=key2, max_retries=0).files.list().data == []
    finally:
        server.terminate()
        out, err = server.communicate(timeout=30)
    text = (out + err).decode()
    for noise in ("Loading weights", "Warning", "Traceback", "it/s]"):
        assert noise not in text, text[-3000:]
