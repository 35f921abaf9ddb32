"""Alembic environment: tunery passes its own connection in (see tunery.store.db.run_migrations).

`alembic -c <ini>` also works for developers: it reads sqlalchemy.url from the ini or
TUNERY_DATABASE_URL / the default SQLite database under TUNERY_HOME.
"""

from alembic import context
from sqlalchemy import engine_from_config, pool

from tunery.store.tables import Base

config = context.config
target_metadata = Base.metadata


def _run(connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=connection.dialect.name == "sqlite", compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    from tunery.settings import get_settings
    from tunery.store.db import normalize_url

    url = config.get_main_option("sqlalchemy.url") or normalize_url(get_settings().database_url)
    engine = engine_from_config({"sqlalchemy.url": url}, prefix="sqlalchemy.", poolclass=pool.NullPool)
    with engine.connect() as conn:
        _run(conn)
