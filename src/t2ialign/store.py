"""The run store: one run directory holding the database, the images and the metrics of every stage.

Layout of a run directory::

    t2ialign.db      SQLite database (or any SQLAlchemy URL given to ``Store.open``, e.g. PostgreSQL)
    images/ab/abcd…png  PNG files named by the sha256 of their bytes (content-addressed, never rewritten)
    metrics.json     one top-level section per stage, rewritten atomically

The schema is owned by the Alembic migrations shipped in ``t2ialign/migrations``; ``Store.open`` upgrades
the database to the newest revision, so an old run directory keeps working with a newer package. A model
change here without a new migration fails ``tests/test_store.py``.

Every method validates its input and raises ``ValueError`` before writing anything; each method is one
transaction, so a failure leaves the database as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import struct
import tempfile
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Engine,
    ForeignKey,
    Index,
    MetaData,
    String,
    UniqueConstraint,
    create_engine,
    event,
    func,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from .fsutil import atomic_write, fsync_dir
from .world.prompts import CATEGORIES, SPLITS

DB_FILENAME = "t2ialign.db"
IMAGES_DIRNAME = "images"
METRICS_FILENAME = "metrics.json"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

# D_human (shown to labelers), D_unlabel (the paper's unlabeled set, Sec. 4.1) and evaluation images.
ROLES: tuple[str, ...] = ("human", "unlabeled", "eval")
LABEL_VALUES: tuple[str, ...] = ("good", "bad", "skip")
# The dialects whose single-statement upsert (INSERT ... ON CONFLICT) set_label relies on.
SUPPORTED_DIALECTS: tuple[str, ...] = ("sqlite", "postgresql")
# How long a SQLite writer waits for another one's lock before failing (ms); labelers write concurrently.
SQLITE_BUSY_TIMEOUT_MS = 30_000

_SHA256 = re.compile(r"[0-9a-f]{64}")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_INT64 = (-(2**63), 2**63 - 1)


class StoreError(RuntimeError):
    """The run directory or its database cannot be opened or read."""


# --- schema -------------------------------------------------------------------------------------------------

# Fixed constraint names, the same on every database, so that later migrations can name what they alter
# (SQLite's batch mode needs names to drop or recreate constraints).
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def _one_of(column: str, values: Iterable[str], nullable: bool = False) -> str:
    """SQL for a CHECK constraint that limits ``column`` to ``values``; portable to any database."""
    listed = ", ".join(f"'{v}'" for v in values)
    return f"{column} IS NULL OR {column} IN ({listed})" if nullable else f"{column} IN ({listed})"


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    # SQLite stores no time zone and hands back naive datetimes (in UTC); PostgreSQL returns aware ones.
    type_annotation_map = {datetime: DateTime(timezone=True)}


class PromptRow(Base):
    """A prompt of the run's prompt set (paper Table 1), with the attributes it asks for."""

    __tablename__ = "prompts"
    __table_args__ = (
        CheckConstraint(_one_of("category", CATEGORIES, nullable=True), name="category"),
        CheckConstraint(_one_of("split", SPLITS), name="split"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(String, unique=True)
    category: Mapped[str | None] = mapped_column(String)  # NULL: a free caption outside the 4 templates
    split: Mapped[str] = mapped_column(String)
    shape: Mapped[str] = mapped_column(String)
    count: Mapped[int | None]
    color: Mapped[str | None] = mapped_column(String)
    background: Mapped[str | None] = mapped_column(String)
    created_at: Mapped[datetime] = mapped_column(default=_utcnow)


class ImageRow(Base):
    """A generated image: its file (by sha256), the prompt and the exact sampling that made it."""

    __tablename__ = "images"
    __table_args__ = (
        CheckConstraint(_one_of("role", ROLES), name="role"),
        Index(None, "prompt_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id"))
    model_id: Mapped[str] = mapped_column(String)
    model_revision: Mapped[str | None] = mapped_column(String)
    seed: Mapped[int] = mapped_column(BigInteger)  # torch generator seeds are 64-bit
    sampler: Mapped[dict[str, Any]] = mapped_column(JSON)  # scheduler, steps, guidance_scale, ...
    role: Mapped[str] = mapped_column(String)
    width: Mapped[int]
    height: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(default=_utcnow)


class LabelerRow(Base):
    """A person (or a simulated labeler) who gives feedback; the web app authenticates by token_hash."""

    __tablename__ = "labelers"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String, unique=True)
    token_hash: Mapped[str | None] = mapped_column(String)
    is_admin: Mapped[bool] = mapped_column(default=False)
    is_simulated: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=_utcnow)


class LabelRow(Base):
    """Binary feedback on one image by one labeler (paper Sec. 4.1); at most one per (image, labeler)."""

    __tablename__ = "labels"
    __table_args__ = (
        UniqueConstraint("image_id", "labeler_id"),
        CheckConstraint(_one_of("value", LABEL_VALUES), name="value"),
        Index(None, "image_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"))
    labeler_id: Mapped[int] = mapped_column(ForeignKey("labelers.id"))
    value: Mapped[str] = mapped_column(String)
    created_at: Mapped[datetime] = mapped_column(default=_utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=_utcnow, onupdate=_utcnow)


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


# --- files ------------------------------------------------------------------------------------------------


def _png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; ValueError for anything that is not a PNG."""
    if len(data) < 24 or data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR":
        raise ValueError("not a PNG file: the store keeps PNG images only")
    return struct.unpack(">II", data[16:24])


def _check_str(name: str, value, nullable: bool = False) -> None:
    if value is None and nullable:
        return
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")


def _check_int(name: str, value, lo: int, hi: int, nullable: bool = False) -> None:
    if value is None and nullable:
        return
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")


def _check_one_of(name: str, value, allowed: tuple[str, ...], nullable: bool = False) -> None:
    if value is None and nullable:
        return
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; known: {', '.join(allowed)}")


def _prompt_fields(p) -> dict[str, Any]:
    """The row of one prompt (a ``t2ialign.world.prompts.Prompt`` or alike), validated."""
    spec = p.spec
    row = {
        "text": p.text,
        "category": p.category,
        "split": p.split,
        "shape": spec.shape,
        "count": spec.count,
        "color": spec.color,
        "background": spec.background,
    }
    _check_str("prompt text", row["text"])
    _check_one_of(f"category of prompt {p.text!r}:", row["category"], CATEGORIES, nullable=True)
    _check_one_of(f"split of prompt {p.text!r}:", row["split"], SPLITS)
    _check_str(f"shape of prompt {p.text!r}", row["shape"])
    _check_int(f"count of prompt {p.text!r}", row["count"], 0, _INT64[1], nullable=True)
    _check_str(f"color of prompt {p.text!r}", row["color"], nullable=True)
    _check_str(f"background of prompt {p.text!r}", row["background"], nullable=True)
    return row


# --- the store --------------------------------------------------------------------------------------------


class Store:
    """A run directory: database, content-addressed images and metrics. Open with :meth:`Store.open`."""

    def __init__(self, run_dir: Path, engine: Engine):
        self.run_dir = run_dir
        self.images_dir = run_dir / IMAGES_DIRNAME
        self.metrics_path = run_dir / METRICS_FILENAME
        self.engine = engine
        # expire_on_commit=False: rows read in a session stay readable after it commits and closes.
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def open(cls, run_dir: str | Path, db_url: str | None = None) -> Store:
        """Open (creating if needed) the run directory and bring its database to the newest schema.

        ``db_url`` is any SQLAlchemy URL of a supported dialect (SQLite, PostgreSQL); by default the
        database is ``run_dir/t2ialign.db``. Raises StoreError, naming the path, when the directory cannot
        be created or written or the database cannot be opened or migrated; whatever this call created
        is removed again, so a failed open leaves nothing behind.
        """
        run_dir = Path(run_dir).expanduser().absolute()
        url = _resolve_url(run_dir, db_url)
        to_create = _dirs_to_create(run_dir)
        images_dir = run_dir / IMAGES_DIRNAME
        created: list[Path] = []  # what this call made, removed again if it fails
        engine = None
        try:
            for d in to_create:
                d.mkdir()
                created.append(d)
            _probe_writable(run_dir)  # os.access says yes to root even on a read-only file system
            if not images_dir.is_dir():
                images_dir.mkdir()  # fails, as it should, if a file has the name
                created.append(images_dir)
            if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
                db = Path(url.database)
                if not db.exists():  # never touch the side files of a database that was there before
                    created += [db, *(Path(f"{db}{suffix}") for suffix in ("-wal", "-shm", "-journal"))]
            engine = make_engine(url)
            with engine.begin() as conn:  # the whole upgrade is one transaction
                command.upgrade(alembic_config(connection=conn), "head")
        except BaseException as e:
            if engine is not None:
                engine.dispose()
            _remove_created(created)
            if isinstance(e, Exception):
                raise StoreError(f"cannot open run directory {run_dir}: {e}") from e
            raise
        return cls(run_dir, engine)

    def close(self) -> None:
        """Close every pooled database connection."""
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({str(self.run_dir)!r}, db={self.engine.url.render_as_string(hide_password=True)!r})"

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """A session in one transaction: committed when the block ends, rolled back if it raises."""
        with self._sessions.begin() as s:
            yield s

    # --- prompts ------------------------------------------------------------------------------------------

    def add_prompts(self, prompts: Iterable) -> int:
        """Store prompts (objects with ``text, category, split, spec``); return how many were new.

        Idempotent: a prompt already stored with the same text and fields is skipped. One with the same
        text but another category, split or attribute is an error, not a silent skip: a run's prompt set
        must not change under its images and labels. All prompts are validated before anything is written,
        and they are written in one transaction.
        """
        rows: dict[str, dict[str, Any]] = {}
        for p in prompts:
            row = _prompt_fields(p)
            if rows.setdefault(row["text"], row) != row:
                raise ValueError(f"prompt {row['text']!r} is given twice with different fields")
        with self.session() as s:
            texts = list(rows)
            stored: dict[str, dict[str, Any]] = {}
            for i in range(0, len(texts), 500):  # bounded IN lists
                for r in s.scalars(select(PromptRow).where(PromptRow.text.in_(texts[i : i + 500]))):
                    stored[r.text] = {k: getattr(r, k) for k in rows[r.text]}
            for text, old in stored.items():
                if old != rows[text]:
                    raise ValueError(f"prompt {text!r} is already stored as {old}, not {rows[text]}")
            new = [row for text, row in rows.items() if text not in stored]
            if new:
                s.add_all(PromptRow(**row) for row in new)
        return len(new)

    def prompt_counts(self) -> dict[tuple[str | None, str], int]:
        """Number of stored prompts per (category, split)."""
        with self.session() as s:
            q = select(PromptRow.category, PromptRow.split, func.count()).group_by(
                PromptRow.category, PromptRow.split
            )
            return {(c, sp): n for c, sp, n in s.execute(q)}

    # --- images -------------------------------------------------------------------------------------------

    def image_path(self, sha256: str) -> Path:
        """Path of the image with this sha256 (whether or not it exists): ``images/ab/abcd….png``.

        Only 64 lowercase hex digits are accepted, so a name from outside (a URL) cannot leave images/.
        """
        if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
            raise ValueError(f"not a sha256 (64 lowercase hex digits): {sha256!r}")
        return self.images_dir / sha256[:2] / f"{sha256}.png"

    def put_image_bytes(self, png_bytes: bytes) -> str:
        """Store a PNG under the sha256 of its bytes and return the sha256; storing it again is a no-op.

        The file appears atomically (temp file, fsync, rename): a reader never sees part of an image.
        """
        if not isinstance(png_bytes, bytes | bytearray | memoryview):
            raise TypeError(f"png_bytes must be bytes, got {type(png_bytes).__name__}")
        data = bytes(png_bytes)
        _png_size(data)
        sha = hashlib.sha256(data).hexdigest()
        path = self.image_path(sha)
        if path.is_file():
            return sha
        if not path.parent.is_dir():
            path.parent.mkdir(exist_ok=True)
            fsync_dir(self.images_dir)
        atomic_write(path, data)
        return sha

    def add_image(
        self,
        sha256: str,
        prompt_text: str,
        model_id: str,
        seed: int,
        sampler: dict[str, Any],
        role: str,
        *,
        width: int,
        height: int,
        model_revision: str | None = None,
    ) -> int:
        """Record an image already put with :meth:`put_image_bytes`; return its id.

        ``sampler`` is the JSON-able sampling setup (scheduler, steps, guidance_scale, ...) so the image
        can be remade from (model, prompt, seed, sampler). ``width``/``height`` must match the PNG.
        """
        record = dict(sha256=sha256, prompt_text=prompt_text, model_id=model_id, seed=seed, sampler=sampler)
        record.update(role=role, width=width, height=height, model_revision=model_revision)
        return self.add_images([record])[0]

    def add_images(self, records: list[dict[str, Any]]) -> list[int]:
        """Record many images (dicts of :meth:`add_image`'s arguments) in one transaction; their ids.

        Every record is validated before anything is written: one bad record writes none of them.
        """
        rows = []
        for r in records:
            path = self.image_path(r["sha256"])
            _check_one_of("image role", r["role"], ROLES)
            _check_str("model_id", r["model_id"])
            _check_str("model_revision", r.get("model_revision"), nullable=True)
            _check_int("seed", r["seed"], *_INT64)
            _check_int("width", r["width"], 1, 2**31 - 1)
            _check_int("height", r["height"], 1, 2**31 - 1)
            sampler = r["sampler"]
            if not isinstance(sampler, dict) or not all(isinstance(k, str) for k in sampler):
                raise ValueError(f"sampler must be a dict with string keys, got {sampler!r}")
            try:
                json.dumps(sampler, allow_nan=False)
            except (TypeError, ValueError) as e:
                raise ValueError(f"sampler must be JSON-serializable with finite numbers: {e}") from e
            if not path.is_file():
                raise ValueError(
                    f"no image file {r['sha256']} in {self.images_dir}; put_image_bytes it first"
                )
            with open(path, "rb") as f:
                size = _png_size(f.read(24))
            if size != (r["width"], r["height"]):
                raise ValueError(
                    f"image {r['sha256']} is {size[0]}x{size[1]}, not the {r['width']}x{r['height']} given"
                )
            rows.append(r)
        if len({r["sha256"] for r in rows}) != len(rows):
            raise ValueError("the same image sha256 is given twice")
        with self.session() as s:
            texts = sorted({r["prompt_text"] for r in rows})
            prompt_ids = dict(
                s.execute(select(PromptRow.text, PromptRow.id).where(PromptRow.text.in_(texts))).all()
            )
            for t in texts:
                if t not in prompt_ids:
                    raise ValueError(f"unknown prompt {t!r}: add_prompts it first")
            shas = [r["sha256"] for r in rows]
            existing = s.scalar(select(ImageRow.sha256).where(ImageRow.sha256.in_(shas)).limit(1))
            if existing is not None:
                raise ValueError(f"image {existing} is already recorded")
            objs = [
                ImageRow(
                    sha256=r["sha256"],
                    prompt_id=prompt_ids[r["prompt_text"]],
                    model_id=r["model_id"],
                    model_revision=r.get("model_revision"),
                    seed=r["seed"],
                    sampler=r["sampler"],
                    role=r["role"],
                    width=r["width"],
                    height=r["height"],
                )
                for r in rows
            ]
            s.add_all(objs)
            s.flush()
            return [o.id for o in objs]

    def list_prompts(self, split: str | None = None, category: str | None = None) -> list[dict[str, Any]]:
        """Stored prompts (text, category, split and attributes), in id order, optionally filtered."""
        q = select(PromptRow).order_by(PromptRow.id)
        if split is not None:
            _check_one_of("split", split, SPLITS)
            q = q.where(PromptRow.split == split)
        if category is not None:
            _check_one_of("category", category, CATEGORIES)
            q = q.where(PromptRow.category == category)
        with self.session() as s:
            return [
                {
                    k: getattr(r, k)
                    for k in ("id", "text", "category", "split", "shape", "count", "color", "background")
                }
                for r in s.scalars(q)
            ]

    def list_images(self, model_id: str | None = None, role: str | None = None) -> list[dict[str, Any]]:
        """Stored images with their prompt text, in id order, optionally filtered."""
        q = (
            select(ImageRow, PromptRow.text)
            .join(PromptRow, ImageRow.prompt_id == PromptRow.id)
            .order_by(ImageRow.id)
        )
        if model_id is not None:
            q = q.where(ImageRow.model_id == model_id)
        if role is not None:
            _check_one_of("image role", role, ROLES)
            q = q.where(ImageRow.role == role)
        keys = ("id", "sha256", "model_id", "model_revision", "seed", "sampler", "role", "width", "height")
        with self.session() as s:
            return [{**{k: getattr(r, k) for k in keys}, "prompt": text} for r, text in s.execute(q)]

    # --- labelers and labels ------------------------------------------------------------------------------

    def add_labeler(
        self, name: str, token_hash: str | None = None, is_admin: bool = False, is_simulated: bool = False
    ) -> int:
        """Create a labeler and return its id. ``token_hash`` is a hash, never the token itself."""
        _check_str("labeler name", name)
        _check_str("token_hash", token_hash, nullable=True)
        for flag, value in (("is_admin", is_admin), ("is_simulated", is_simulated)):
            if not isinstance(value, bool):
                raise ValueError(f"{flag} must be a bool, got {value!r}")
        with self.session() as s:
            if s.scalar(select(LabelerRow.id).where(LabelerRow.name == name)) is not None:
                raise ValueError(f"a labeler named {name!r} already exists")
            row = LabelerRow(name=name, token_hash=token_hash, is_admin=is_admin, is_simulated=is_simulated)
            s.add(row)
            s.flush()
            return row.id

    def set_label(self, image_id: int, labeler_id: int, value: str) -> None:
        """Set one labeler's label of one image (good / bad / skip); a second call replaces the first.

        One statement (INSERT ... ON CONFLICT DO UPDATE), so a resend or two concurrent requests cannot
        create a second label; committed when this returns.
        """
        _check_one_of("label value", value, LABEL_VALUES)
        _check_int("image_id", image_id, 1, _INT64[1])
        _check_int("labeler_id", labeler_id, 1, _INT64[1])
        insert = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}[self.engine.dialect.name]
        with self.session() as s:
            if s.get(ImageRow, image_id) is None:
                raise ValueError(f"unknown image id {image_id}")
            if s.get(LabelerRow, labeler_id) is None:
                raise ValueError(f"unknown labeler id {labeler_id}")
            now = _utcnow()
            stmt = insert(LabelRow).values(
                image_id=image_id, labeler_id=labeler_id, value=value, created_at=now, updated_at=now
            )
            stmt = stmt.on_conflict_do_update(
                index_elements=["image_id", "labeler_id"],
                set_={"value": stmt.excluded.value, "updated_at": stmt.excluded.updated_at},
            )
            s.execute(stmt)

    # --- metrics ------------------------------------------------------------------------------------------

    def read_metrics(self) -> dict[str, Any]:
        """metrics.json as a dict ({} before any stage wrote to it)."""
        try:
            text = self.metrics_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        try:
            metrics = json.loads(text)
        except json.JSONDecodeError as e:
            raise StoreError(f"{self.metrics_path} is not valid JSON: {e}") from e
        if not isinstance(metrics, dict):
            raise StoreError(f"{self.metrics_path} must hold a JSON object, got {type(metrics).__name__}")
        return metrics

    def update_metrics(self, **sections: Any) -> None:
        """Replace the given top-level sections of metrics.json, keep the others; written atomically.

        Values must be JSON with finite numbers (a NaN is an error, not a silent ``NaN`` token). Stages
        run one at a time per run directory; two concurrent updates could lose one of them.
        """
        metrics = self.read_metrics()
        metrics.update(sections)
        try:
            text = json.dumps(metrics, indent=2, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ValueError(f"metrics must be JSON-serializable with finite numbers: {e}") from e
        atomic_write(self.metrics_path, (text + "\n").encode("utf-8"))


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
