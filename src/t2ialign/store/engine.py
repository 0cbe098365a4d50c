"""The database engine, the Alembic migrations, and the checks that opening a run directory makes."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from t2ialign.store._common import DB_FILENAME, StoreError

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# The dialects whose single-statement upsert (INSERT ... ON CONFLICT) set_label relies on.
SUPPORTED_DIALECTS: tuple[str, ...] = ("sqlite", "postgresql")
# How long a SQLite writer waits for another one's lock before failing (ms); labelers write concurrently.
SQLITE_BUSY_TIMEOUT_MS = 30_000


# --- engine and migrations --------------------------------------------------------------------------------


def alembic_config(connection=None, url: str | None = None) -> Config:
    """An Alembic config for the package's migrations; no alembic.ini needed.

    Pass an open ``connection`` (what ``Store.open`` does) or a database ``url`` (e.g. to autogenerate a
    new revision: ``command.revision(alembic_config(url=...), autogenerate=True, message=...)``).
    """
    cfg = Config()
    # ConfigParser interpolates '%', which may appear in a path or in a URL's escaped password.
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def _sqlite_on_connect(dbapi_connection, connection_record) -> None:
    # Take transaction control from the sqlite3 module (whose legacy mode starts no transaction before
    # a SELECT or DDL statement) so that a session and a migration are each one real transaction.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")  # first: WAL switch may need a lock
    cursor.execute("PRAGMA foreign_keys = ON")  # SQLite ignores foreign keys unless asked, per connection
    cursor.execute("PRAGMA journal_mode = WAL")  # readers do not block the writer, nor it them
    # Every commit reaches the disk before it returns: a label the web app acknowledged survives a crash.
    # (FULL is SQLite's usual default; set here so a build with another default cannot weaken it.)
    cursor.execute("PRAGMA synchronous = FULL")
    cursor.close()


def _sqlite_on_begin(conn) -> None:
    # IMMEDIATE takes the write lock at BEGIN, waiting up to busy_timeout for it. A deferred transaction
    # that reads and then writes fails at once ("database is locked") when another writer committed in
    # between; with concurrent labelers that would lose labels. Transactions here are short.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url) -> Engine:
    """An engine with the settings the store relies on (for SQLite: WAL, busy timeout, foreign keys)."""
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
    return engine


# --- opening helpers --------------------------------------------------------------------------------------


def _resolve_url(run_dir: Path, db_url: str | None):
    """The database URL: the run's SQLite file by default, else the given one if its dialect is supported."""
    if db_url is None:
        return make_url(f"sqlite:///{run_dir / DB_FILENAME}")
    try:
        url = make_url(db_url)
    except (ArgumentError, ValueError, TypeError) as e:
        raise StoreError(f"invalid database URL {db_url!r}: {e}") from e
    if url.get_backend_name() not in SUPPORTED_DIALECTS:
        raise StoreError(
            f"unsupported database {url.get_backend_name()!r} in {url.render_as_string(hide_password=True)}; "
            f"supported: {', '.join(SUPPORTED_DIALECTS)}"
        )
    return url


def _dirs_to_create(run_dir: Path) -> list[Path]:
    """The missing directories up to ``run_dir``, outermost first; StoreError if they cannot be made."""
    missing: list[Path] = []
    p = run_dir
    while not p.exists() and not p.is_symlink():
        missing.append(p)
        p = p.parent
    if not p.is_dir():
        if p == run_dir:
            raise StoreError(f"run directory {run_dir} exists but is not a directory")
        raise StoreError(f"cannot create run directory {run_dir}: {p} is not a directory")
    if not os.access(p, os.W_OK | os.X_OK):
        if p == run_dir:
            raise StoreError(f"run directory {run_dir} is not writable")
        raise StoreError(f"cannot create run directory {run_dir}: {p} is not writable")
    return missing[::-1]


def _probe_writable(run_dir: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=".write-test-")
    os.close(fd)
    os.unlink(tmp)


def _remove_created(created: list[Path]) -> None:
    """Undo a failed open: remove the files and (then empty) directories it made, newest first."""
    for p in reversed(created):
        with contextlib.suppress(OSError):
            if p.is_dir() and not p.is_symlink():
                p.rmdir()
            else:
                p.unlink()
