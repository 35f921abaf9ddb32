"""Engine, sessions and start-up migrations.

SQLite (the default, under TUNERY_HOME) runs in WAL mode with a busy timeout, and every
write transaction starts with BEGIN IMMEDIATE so two writers queue up instead of failing
with "database is locked" when a read lock is upgraded. PostgreSQL is used when
TUNERY_DATABASE_URL points at one (postgresql://… is read as postgresql+psycopg://…).
"""

from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from tunery.settings import Settings, get_settings

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
SQLITE_BUSY_MS = 30_000


def now() -> int:
    """Unix seconds, the unit of every stored timestamp."""
    return int(time.time())


def normalize_url(url: str) -> str:
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def _json_serializer(value) -> str:
    # NaN/inf (a diverged loss) are stored as null: PostgreSQL's JSON rejects them, and so does the wire.
    from tunery.store.wire import json_safe

    return json.dumps(json_safe(value), allow_nan=False)


def make_engine(url: str) -> Engine:
    url = normalize_url(url)
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        if u.database and u.database != ":memory:":
            Path(u.database).parent.mkdir(parents=True, exist_ok=True)
        memory = not u.database or u.database == ":memory:"
        # An in-memory database exists per connection: share one connection so migrations are seen.
        extra = {"poolclass": StaticPool} if memory else {}
        engine = create_engine(url, json_serializer=_json_serializer, **extra,
                               connect_args={"timeout": SQLITE_BUSY_MS / 1000, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            # Take transaction control from pysqlite so BEGIN IMMEDIATE below is what runs.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):
            mode = conn.get_execution_options().get("sqlite_begin", "IMMEDIATE")
            conn.exec_driver_sql(f"BEGIN {mode}")

        return engine
    return create_engine(url, json_serializer=_json_serializer, pool_pre_ping=True, pool_size=10, max_overflow=20)


def run_migrations(engine: Engine) -> None:
    """Bring the schema to the newest revision (idempotent; safe when several processes start)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            # Serialize concurrent start-ups (server + workers) on one advisory lock.
            conn.execute(text("SELECT pg_advisory_lock(727274)"))
            conn.commit()
        try:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
            conn.commit()
        finally:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_unlock(727274)"))
                conn.commit()


class Store:
    """The database plus the blob directory. Create one per process (open_store caches it)."""

    def __init__(self, settings: Settings | None = None, *, migrate: bool = True):
        self.settings = (settings or get_settings()).ensure_dirs()
        self.url = normalize_url(self.settings.database_url)
        self.engine = make_engine(self.url)
        if migrate:
            if self.engine.dialect.name == "sqlite":
                from filelock import FileLock

                db = make_url(self.url).database or "memory"
                with FileLock(str(self.settings.home / ".migrate.lock")) if db == "memory" else \
                        FileLock(db + ".migrate.lock"):
                    run_migrations(self.engine)
            else:
                run_migrations(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._read_engine = (self.engine.execution_options(sqlite_begin="DEFERRED")
                             if self.engine.dialect.name == "sqlite" else self.engine)
        self._read_sessions = sessionmaker(self._read_engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @property
    def files_dir(self) -> Path:
        return self.settings.files_dir

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A write transaction: commits on success, rolls back on any error."""
        with self._sessions() as s, s.begin():
            yield s

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only transaction (never takes SQLite's write lock)."""
        with self._read_sessions() as s, s.begin():
            yield s

    def close(self) -> None:
        self.engine.dispose()


_cache: dict[str, Store] = {}
_cache_lock = threading.Lock()


def open_store(settings: Settings | None = None) -> Store:
    """The process's Store for these settings (migrated on first open)."""
    settings = settings or get_settings()
    key = f"{normalize_url(settings.database_url)}|{settings.home}"
    with _cache_lock:
        store = _cache.get(key)
        if store is None:
            store = _cache[key] = Store(settings)
        return store
