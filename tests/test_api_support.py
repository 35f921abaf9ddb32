"""Shared fixtures for the store/API tests: a real uvicorn server on a free port, the official openai
SDK pointed at it, data files, and a PostgreSQL database (TUNERY_TEST_POSTGRES_URL, or a throwaway
cluster started here when the PostgreSQL binaries exist)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from tunery.settings import Settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chat_jsonl(n: int = 12, tag: str = "x") -> bytes:
    return "".join(json.dumps({"messages": [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": f"question {tag} {i}"},
        {"role": "assistant", "content": f"answer {tag} {i}"}]}) + "\n" for i in range(n)).encode()


def preference_jsonl(n: int = 12) -> bytes:
    return "".join(json.dumps({
        "input": {"messages": [{"role": "user", "content": f"say hi {i}"}]},
        "preferred_output": [{"role": "assistant", "content": f"hi {i}"}],
        "non_preferred_output": [{"role": "assistant", "content": f"go away {i}"}]}) + "\n"
        for i in range(n)).encode()


@dataclass
class Server:
    app: object
    url: str
    settings: Settings
    thread: threading.Thread
    server: object

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    @property
    def store(self):
        from tunery.api.deps import prepare_store
        from tunery.store import open_store

        if getattr(self.app.state, "store", None) is None:
            self.app.state.store = prepare_store(open_store(self.settings))
        return self.app.state.store

    def client(self, api_key: str = "sk-none", **kw):
        import openai

        return openai.OpenAI(base_url=self.base_url, api_key=api_key, max_retries=0, timeout=30, **kw)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        store = getattr(self.app.state, "store", None)
        if store is not None:
            store.close()


def start_server(settings: Settings, **app_kw) -> Server:
    """app_kw go to create_app (exposed=True: behave as a server listening beyond loopback)."""
    import uvicorn

    from tunery.api.app import create_app

    app = create_app(settings, **app_kw)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 15
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    return Server(app, f"http://127.0.0.1:{port}", settings, thread, server)


@pytest.fixture
def make_server(tunery_home):
    """make_server(app_kw=None, **settings_overrides) → a running Server; all are stopped after the test."""
    servers: list[Server] = []

    def make(app_kw: dict | None = None, **overrides) -> Server:
        settings = Settings.from_env(**overrides)
        srv = start_server(settings, **(app_kw or {}))
        servers.append(srv)
        return srv

    yield make
    for srv in servers:
        srv.stop()
    from tunery.store import db

    db._cache.clear()


@pytest.fixture
def server(make_server) -> Server:
    return make_server()


@pytest.fixture
def client(server):
    return server.client()


# --- PostgreSQL ------------------------------------------------------------------------------------

def _start_cluster() -> tuple[str, callable]:
    initdb = shutil.which("initdb") or next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))), None)
    if not initdb:
        raise RuntimeError("no initdb binary")
    bindir = Path(initdb).resolve().parent
    base = Path(tempfile.mkdtemp(prefix="tunery-pg-"))
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    prefix: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root: run the cluster as the postgres user
        runuser = shutil.which("runuser")
        if not runuser:
            raise RuntimeError("running as root and runuser is missing")
        shutil.chown(base, "postgres")
        shutil.chown(sock, "postgres")
        prefix = [runuser, "-u", "postgres", "--"]
    port = free_port()
    run = dict(check=True, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
    subprocess.run(prefix + [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                             "-E", "UTF8", "--no-sync"], **run)
    subprocess.run(prefix + [str(bindir / "pg_ctl"), "-D", str(data), "-w", "-l", str(base / "log"), "-o",
                             f"-p {port} -k {sock} -c listen_addresses='' -c fsync=off", "start"], **run)

    def stop():
        subprocess.run(prefix + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, stdin=subprocess.DEVNULL, timeout=60)
        shutil.rmtree(base, ignore_errors=True)

    return f"postgresql+psycopg://postgres@/postgres?host={sock}&port={port}", stop


@pytest.fixture(scope="session")
def pg_server_url():
    """An admin URL of a PostgreSQL server; skips (loudly) when none can be had."""
    url = os.environ.get("TUNERY_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    try:
        url, stop = _start_cluster()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", "") or ""
        pytest.skip(f"POSTGRESQL TESTS SKIPPED: no TUNERY_TEST_POSTGRES_URL and no local cluster could be "
                    f"started ({exc} {detail}). Run .ci/services to install PostgreSQL.")
    try:
        yield url
    finally:
        stop()


@pytest.fixture
def pg_url(pg_server_url):
    """A fresh, empty database on the PostgreSQL server, dropped after the test."""
    import sqlalchemy as sa

    from tunery.store.db import normalize_url

    name = "tunery_test_" + secrets.token_hex(6)
    admin = sa.create_engine(normalize_url(pg_server_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.engine.make_url(normalize_url(pg_server_url)).set(database=name)
    yield url.render_as_string(hide_password=False)
    from tunery.store import db

    for key, store in list(db._cache.items()):
        if name in key:
            store.close()
            del db._cache[key]
    with admin.connect() as c:
        c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def store_settings(request, tunery_home) -> Settings:
    """Settings for each backend: SQLite under TUNERY_HOME, or a fresh PostgreSQL database."""
    settings = Settings.from_env()
    if request.param == "postgres":
        settings = replace(settings, database_url=request.getfixturevalue("pg_url"))
    return settings


@pytest.fixture
def store(store_settings):
    from tunery.store import Store

    s = Store(store_settings)
    yield s
    s.close()
