"""Alembic environment of the run store; ``t2ialign.store.Store.open`` drives it, no alembic.ini needed.

Online with a connection given in ``config.attributes["connection"]`` (what ``Store.open`` does, inside its
transaction), else with ``sqlalchemy.url`` from the config; offline (``--sql``) renders SQL from the URL.
"""

from alembic import context
from sqlalchemy.engine import make_url

from t2ialign.store import make_engine
from t2ialign.store.schema import Base

config = context.config
target_metadata = Base.metadata


def _configure(**kwargs) -> None:
    context.configure(
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things; batch mode copies the table instead.
        render_as_batch=kwargs.pop("dialect_name") == "sqlite",
        compare_type=True,
        **kwargs,
    )


def run_migrations_offline() -> None:
    url = config.get_main_option("sqlalchemy.url")
    _configure(url=url, dialect_name=make_url(url).get_backend_name(), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection=connection, dialect_name=connection.dialect.name)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database: pass config.attributes['connection'] or set sqlalchemy.url")
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            _configure(connection=connection, dialect_name=connection.dialect.name)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
