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
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    Engine,
    case,
    create_engine,
    delete,
    event,
    func,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, sessionmaker

from .fsutil import atomic_write, fsync_dir
from .schema import (  # noqa: F401  (re-exported: the store's API names its rows and values)
    LABEL_VALUES,
    NAMING_CONVENTION,
    ROLES,
    SHOWN_SIDES,
    VOTE_CHOICES,
    Base,
    ComparisonImageRow,
    ComparisonLeaseRow,
    ComparisonQueryRow,
    ComparisonRow,
    ComparisonVoteRow,
    ImageRow,
    ImageState,
    LabelerRow,
    LabelRow,
    LeaseRow,
    PromptRow,
    QueryState,
    _utcnow,
)
from .world.prompts import CATEGORIES, SPLITS

DB_FILENAME = "t2ialign.db"
IMAGES_DIRNAME = "images"
METRICS_FILENAME = "metrics.json"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

# The dialects whose single-statement upsert (INSERT ... ON CONFLICT) set_label relies on.
SUPPORTED_DIALECTS: tuple[str, ...] = ("sqlite", "postgresql")
# How long a SQLite writer waits for another one's lock before failing (ms); labelers write concurrently.
SQLITE_BUSY_TIMEOUT_MS = 30_000

_SHA256 = re.compile(r"[0-9a-f]{64}")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_INT64 = (-(2**63), 2**63 - 1)


class StoreError(RuntimeError):
    """The run directory or its database cannot be opened or read."""


class VoteConflict(ValueError):
    """A side-by-side vote that the run's state refuses, not its form: the rater already voted otherwise
    on the query, or the query has all the votes it wants (the web app answers 409)."""


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
        self.set_labels([(image_id, labeler_id, value)])

    def set_labels(self, labels: list[tuple[int, int, str]]) -> None:
        """:meth:`set_label` for many (image_id, labeler_id, value) in one transaction: all or nothing.

        Every label is validated (values, and that each image and labeler exists) before anything is
        written. One commit for the lot is what makes bulk labeling fast (a commit is an fsync).
        """
        for image_id, labeler_id, value in labels:
            _check_one_of("label value", value, LABEL_VALUES)
            _check_int("image_id", image_id, 1, _INT64[1])
            _check_int("labeler_id", labeler_id, 1, _INT64[1])
        if len({(i, lab) for i, lab, _ in labels}) != len(labels):
            raise ValueError("the same (image, labeler) is given twice")
        if not labels:
            return
        insert = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}[self.engine.dialect.name]
        with self.session() as s:
            for ids, row, what in (
                ({i for i, _, _ in labels}, ImageRow, "image"),
                ({lab for _, lab, _ in labels}, LabelerRow, "labeler"),
            ):
                for chunk in _chunks(sorted(ids), 500):
                    found = set(s.scalars(select(row.id).where(row.id.in_(chunk))))
                    unknown = sorted(set(chunk) - found)
                    if unknown:
                        raise ValueError(f"unknown {what} id {unknown[0]}")
            now = _utcnow()
            for chunk in _chunks(labels, 500):
                stmt = insert(LabelRow).values(
                    [
                        dict(image_id=i, labeler_id=lab, value=v, created_at=now, updated_at=now)
                        for i, lab, v in chunk
                    ]
                )
                stmt = stmt.on_conflict_do_update(
                    index_elements=["image_id", "labeler_id"],
                    set_={"value": stmt.excluded.value, "updated_at": stmt.excluded.updated_at},
                )
                s.execute(stmt)

    def delete_label(self, image_id: int, labeler_id: int) -> bool:
        """Remove one labeler's label of one image (undo); True if there was one."""
        _check_int("image_id", image_id, 1, _INT64[1])
        _check_int("labeler_id", labeler_id, 1, _INT64[1])
        with self.session() as s:
            result = s.execute(
                delete(LabelRow).where(LabelRow.image_id == image_id, LabelRow.labeler_id == labeler_id)
            )
            return result.rowcount > 0

    def set_admin(self, name: str, token_hash: str) -> int:
        """Create or update the admin labeler ``name`` with this token hash; return its id.

        Called at every start of the web app, so changing the admin secret takes effect on restart and the
        old secret stops working.
        """
        _check_str("labeler name", name)
        _check_str("token_hash", token_hash)
        with self.session() as s:
            row = s.scalar(select(LabelerRow).where(LabelerRow.name == name))
            if row is None:
                row = LabelerRow(name=name, token_hash=token_hash, is_admin=True, is_simulated=False)
                s.add(row)
                s.flush()
            else:
                row.token_hash, row.is_admin = token_hash, True
            return row.id

    def labeler_by_token_hash(self, token_hash: str) -> dict[str, Any] | None:
        """The labeler (id, name, is_admin, token_hash) whose token hashes to ``token_hash``, or None."""
        _check_str("token_hash", token_hash)
        with self.session() as s:
            row = s.scalar(select(LabelerRow).where(LabelerRow.token_hash == token_hash).limit(1))
            if row is None:
                return None
            return {"id": row.id, "name": row.name, "is_admin": row.is_admin, "token_hash": row.token_hash}

    def images_by_id(self, image_ids: list[int]) -> list[dict[str, Any]]:
        """The images with these ids (id, sha256, role, model_id, seed, prompt_id, prompt, category), in the
        order given; unknown ids are left out."""
        for i in image_ids:
            _check_int("image_id", i, 1, _INT64[1])
        q = (
            select(ImageRow, PromptRow)
            .join(PromptRow, ImageRow.prompt_id == PromptRow.id)
            .where(ImageRow.id.in_(image_ids))
        )
        with self.session() as s:
            found = {
                image.id: {
                    "id": image.id,
                    "sha256": image.sha256,
                    "role": image.role,
                    "model_id": image.model_id,
                    "seed": image.seed,
                    "prompt_id": prompt.id,
                    "prompt": prompt.text,
                    "category": prompt.category,
                }
                for image, prompt in s.execute(q)
            }
        return [found[i] for i in image_ids if i in found]

    def labels_of(self, labeler_id: int) -> list[dict[str, Any]]:
        """One labeler's labels (image_id, sha256, value, created_at, updated_at), newest answer first."""
        _check_int("labeler_id", labeler_id, 1, _INT64[1])
        q = (
            select(LabelRow, ImageRow.sha256)
            .join(ImageRow, LabelRow.image_id == ImageRow.id)
            .where(LabelRow.labeler_id == labeler_id)
            .order_by(LabelRow.updated_at.desc(), LabelRow.id.desc())
        )
        with self.session() as s:
            return [
                {
                    "image_id": label.image_id,
                    "sha256": sha,
                    "value": label.value,
                    "created_at": _as_utc(label.created_at),
                    "updated_at": _as_utc(label.updated_at),
                }
                for label, sha in s.execute(q)
            ]

    def last_label(self, labeler_id: int) -> dict[str, Any] | None:
        """The labeler's most recent answer (image_id, value), or None if it has no labels."""
        _check_int("labeler_id", labeler_id, 1, _INT64[1])
        q = (
            select(LabelRow.image_id, LabelRow.value)
            .where(LabelRow.labeler_id == labeler_id)
            .order_by(LabelRow.updated_at.desc(), LabelRow.id.desc())
            .limit(1)
        )
        with self.session() as s:
            row = s.execute(q).first()
        return None if row is None else {"image_id": row.image_id, "value": row.value}

    def label_records(self, after_id: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        """Up to ``limit`` labels with id > ``after_id``, in id order, joined with their image, prompt and
        labeler: a page of an export. Short pages keep each read transaction (and SQLite's lock) short."""
        _check_int("after_id", after_id, 0, _INT64[1])
        _check_int("limit", limit, 1, 100_000)
        q = (
            select(LabelRow, ImageRow, PromptRow, LabelerRow.name)
            .join(ImageRow, LabelRow.image_id == ImageRow.id)
            .join(PromptRow, ImageRow.prompt_id == PromptRow.id)
            .join(LabelerRow, LabelRow.labeler_id == LabelerRow.id)
            .where(LabelRow.id > after_id)
            .order_by(LabelRow.id)
            .limit(limit)
        )
        with self.session() as s:
            return [
                {
                    "id": label.id,
                    "image_sha256": image.sha256,
                    "prompt": prompt.text,
                    "category": prompt.category,
                    "labeler": name,
                    "label": label.value,
                    "model_id": image.model_id,
                    "seed": image.seed,
                    "created_at": _as_utc(label.created_at),
                    "updated_at": _as_utc(label.updated_at),
                }
                for label, image, prompt, name in s.execute(q)
            ]

    # --- assignment (leases) ------------------------------------------------------------------------------

    def assign_images(
        self,
        labeler_id: int,
        now: datetime,
        expires_at: datetime,
        choose: Callable[[list[ImageState]], list[int]],
    ) -> list[int]:
        """Hand images to a labeler: in one transaction, drop expired leases, read the state of every image
        to label (role human) as seen by this labeler, let ``choose`` pick image ids from those states, and
        lease the picked ones to the labeler until ``expires_at``. Returns the picked ids.

        Assignments are serialized (SQLite: the transaction's write lock; PostgreSQL: an advisory lock), so
        two labelers asking at once cannot both take an image's last free place. ``choose`` is the policy
        (``t2ialign.labeling.assignment``); it must be quick, it runs inside the transaction.
        """
        return self._lease(
            labeler_id,
            now,
            expires_at,
            choose,
            _ASSIGNMENT_LOCK_KEY,
            LeaseRow,
            "image_id",
            _image_states,
            "image",
            "an image to label",
        )

    def labeling_progress(self, labeler_id: int, k: int) -> dict[str, int]:
        """Counts for a labeler's progress line: images to label (role human), those with >= k labels, all
        labels on them, and this labeler's labels."""
        _check_int("labeler_id", labeler_id, 1, _INT64[1])
        _check_int("k", k, 1, 1000)
        per_image = (
            select(LabelRow.image_id, func.count().label("n"))
            .join(ImageRow, LabelRow.image_id == ImageRow.id)
            .where(ImageRow.role == "human")
            .group_by(LabelRow.image_id)
            .subquery()
        )
        with self.session() as s:
            images = s.scalar(select(func.count()).select_from(ImageRow).where(ImageRow.role == "human"))
            done = s.scalar(select(func.count()).select_from(per_image).where(per_image.c.n >= k))
            labels = s.scalar(select(func.coalesce(func.sum(per_image.c.n), 0)))
            mine = s.scalar(
                select(func.count())
                .select_from(LabelRow)
                .join(ImageRow, LabelRow.image_id == ImageRow.id)
                .where(LabelRow.labeler_id == labeler_id, ImageRow.role == "human")
            )
        return {"images": images, "labeled_k_times": done, "labels": int(labels), "mine": mine}

    # --- side-by-side comparisons (paper Sec. 4.2, Fig. 3) ------------------------------------------------

    def add_comparison(
        self,
        name: str,
        first_model: str,
        second_model: str,
        raters_per_query: int,
        seed: int,
        queries: list[dict[str, Any]],
    ) -> int:
        """Record a side-by-side comparison "<first_model> vs <second_model>" and its queries; its id.

        ``queries``: dicts ``{"prompt": text, "first": [sha256, ...], "second": [sha256, ...],
        "first_shown_as": "A" or "B"}``, in the order raters are to get them. Each image must be recorded
        (:meth:`add_images`) as an image of that prompt; a query's two sets are non-empty, of equal size (at
        most ``MAX_COMPARISON_SET``), without an image twice in one set (the two sets may share images); a
        prompt has one query per comparison. Everything is validated before anything is written, in one
        transaction; a taken name is an error.
        """
        for label, value in (("comparison name", name), ("first_model", first_model)):
            _check_str(label, value)
        _check_str("second_model", second_model)
        if first_model == second_model:
            raise ValueError(f"the two models of a comparison need different names, both are {first_model!r}")
        _check_int("raters_per_query", raters_per_query, 1, 1000)
        _check_int("seed", seed, *_INT64)
        if not isinstance(queries, list) or not queries:
            raise ValueError("a comparison needs at least one query")
        texts: set[str] = set()
        for q in queries:
            if not isinstance(q, dict) or set(q) != {"prompt", "first", "second", "first_shown_as"}:
                raise ValueError(
                    f"a query is a dict with keys prompt, first, second, first_shown_as; got {q!r}"
                )
            _check_str("query prompt", q["prompt"])
            if q["prompt"] in texts:
                raise ValueError(f"prompt {q['prompt']!r} has two queries; one per prompt")
            texts.add(q["prompt"])
            _check_one_of(f"first_shown_as of {q['prompt']!r}:", q["first_shown_as"], SHOWN_SIDES)
            sets = (q["first"], q["second"])
            for images in sets:
                if not isinstance(images, list | tuple) or not 1 <= len(images) <= MAX_COMPARISON_SET:
                    raise ValueError(
                        f"each set of prompt {q['prompt']!r} needs 1 to {MAX_COMPARISON_SET} images, "
                        f"got {images!r}"
                    )
                for sha in images:
                    self.image_path(sha)  # the sha256's form
            if len(sets[0]) != len(sets[1]):
                raise ValueError(
                    f"the sets of prompt {q['prompt']!r} have {len(sets[0])} and {len(sets[1])} images; "
                    "a fair comparison shows as many of each"
                )
            for images in sets:  # one image may be in both sets, not twice in one
                if len(set(images)) != len(images):
                    raise ValueError(f"an image appears twice in one set of prompt {q['prompt']!r}")
        with self.session() as s:
            if s.scalar(select(ComparisonRow.id).where(ComparisonRow.name == name)) is not None:
                raise ValueError(f"a comparison named {name!r} already exists")
            prompt_ids: dict[str, int] = {}
            for chunk in _chunks(sorted(texts), 500):
                prompt_ids.update(
                    s.execute(select(PromptRow.text, PromptRow.id).where(PromptRow.text.in_(chunk))).all()
                )
            shas = sorted({sha for q in queries for sha in (*q["first"], *q["second"])})
            images: dict[str, tuple[int, int]] = {}
            for chunk in _chunks(shas, 500):
                q_ = select(ImageRow.sha256, ImageRow.id, ImageRow.prompt_id).where(
                    ImageRow.sha256.in_(chunk)
                )
                images.update({sha: (i, p) for sha, i, p in s.execute(q_)})
            for q in queries:
                if q["prompt"] not in prompt_ids:
                    raise ValueError(f"unknown prompt {q['prompt']!r}: add_prompts it first")
                for sha in (*q["first"], *q["second"]):
                    if sha not in images:
                        raise ValueError(f"image {sha} is not recorded in the run: add_images it first")
                    if images[sha][1] != prompt_ids[q["prompt"]]:
                        raise ValueError(f"image {sha} is not an image of prompt {q['prompt']!r}")
            comparison = ComparisonRow(
                name=name,
                first_model=first_model,
                second_model=second_model,
                raters_per_query=raters_per_query,
                seed=seed,
            )
            s.add(comparison)
            s.flush()
            for q in queries:
                row = ComparisonQueryRow(
                    comparison_id=comparison.id,
                    prompt_id=prompt_ids[q["prompt"]],
                    first_shown_as=q["first_shown_as"],
                )
                s.add(row)
                s.flush()
                s.add_all(
                    ComparisonImageRow(query_id=row.id, image_id=images[sha][0], model=model, position=i)
                    for model in ("first", "second")
                    for i, sha in enumerate(q[model])
                )
            return comparison.id

    def list_comparisons(self) -> list[dict[str, Any]]:
        """Every comparison (id, name, first_model, second_model, raters_per_query, seed, created_at) with
        its numbers of queries and votes, in id order."""
        n_queries = (
            select(ComparisonQueryRow.comparison_id, func.count().label("n"))
            .group_by(ComparisonQueryRow.comparison_id)
            .subquery()
        )
        n_votes = (
            select(ComparisonQueryRow.comparison_id, func.count().label("n"))
            .join(ComparisonVoteRow, ComparisonVoteRow.query_id == ComparisonQueryRow.id)
            .group_by(ComparisonQueryRow.comparison_id)
            .subquery()
        )
        q = (
            select(ComparisonRow, func.coalesce(n_queries.c.n, 0), func.coalesce(n_votes.c.n, 0))
            .outerjoin(n_queries, n_queries.c.comparison_id == ComparisonRow.id)
            .outerjoin(n_votes, n_votes.c.comparison_id == ComparisonRow.id)
            .order_by(ComparisonRow.id)
        )
        with self.session() as s:
            return [{**_comparison_dict(c), "queries": nq, "votes": nv} for c, nq, nv in s.execute(q)]

    def comparison(self, name: str) -> dict[str, Any] | None:
        """The comparison of this name (id, name, first_model, second_model, raters_per_query, seed,
        created_at), or None."""
        _check_str("comparison name", name)
        with self.session() as s:
            row = s.scalar(select(ComparisonRow).where(ComparisonRow.name == name))
            return None if row is None else _comparison_dict(row)

    def comparison_queries(
        self, comparison_id: int | None = None, query_ids: list[int] | None = None
    ) -> list[dict[str, Any]]:
        """Queries of one comparison (or the queries with these ids), in id order: id, comparison_id,
        raters_per_query, prompt_id, prompt, category, split, first_shown_as, and the sha256s of the
        ``first`` and ``second`` model's sets in their order."""
        q = (
            select(ComparisonQueryRow, ComparisonRow.raters_per_query, PromptRow)
            .join(ComparisonRow, ComparisonQueryRow.comparison_id == ComparisonRow.id)
            .join(PromptRow, ComparisonQueryRow.prompt_id == PromptRow.id)
            .order_by(ComparisonQueryRow.id)
        )
        if comparison_id is not None:
            _check_int("comparison_id", comparison_id, 1, _INT64[1])
            q = q.where(ComparisonQueryRow.comparison_id == comparison_id)
        if query_ids is not None:
            for i in query_ids:
                _check_int("query_id", i, 1, _INT64[1])
            q = q.where(ComparisonQueryRow.id.in_(query_ids))
        with self.session() as s:
            out = {
                row.id: {
                    "id": row.id,
                    "comparison_id": row.comparison_id,
                    "raters_per_query": wanted,
                    "prompt_id": prompt.id,
                    "prompt": prompt.text,
                    "category": prompt.category,
                    "split": prompt.split,
                    "first_shown_as": row.first_shown_as,
                    "first": [],
                    "second": [],
                }
                for row, wanted, prompt in s.execute(q)
            }
            for chunk in _chunks(sorted(out), 500):
                images = (
                    select(ComparisonImageRow.query_id, ComparisonImageRow.model, ImageRow.sha256)
                    .join(ImageRow, ComparisonImageRow.image_id == ImageRow.id)
                    .where(ComparisonImageRow.query_id.in_(chunk))
                    .order_by(ComparisonImageRow.query_id, ComparisonImageRow.position)
                )
                for query_id, model, sha in s.execute(images):
                    out[query_id][model].append(sha)
        return list(out.values())

    def comparison_votes(self, comparison_id: int) -> list[dict[str, Any]]:
        """The votes of one comparison in id order: query_id, labeler, is_simulated, alignment and fidelity
        (first / second / tie: which model's set the rater preferred), created_at."""
        _check_int("comparison_id", comparison_id, 1, _INT64[1])
        q = (
            select(ComparisonVoteRow, LabelerRow.name, LabelerRow.is_simulated)
            .join(ComparisonQueryRow, ComparisonVoteRow.query_id == ComparisonQueryRow.id)
            .join(LabelerRow, ComparisonVoteRow.labeler_id == LabelerRow.id)
            .where(ComparisonQueryRow.comparison_id == comparison_id)
            .order_by(ComparisonVoteRow.id)
        )
        with self.session() as s:
            return [
                {
                    "query_id": v.query_id,
                    "labeler": name,
                    "is_simulated": simulated,
                    "alignment": v.alignment,
                    "fidelity": v.fidelity,
                    "created_at": _as_utc(v.created_at),
                }
                for v, name, simulated in s.execute(q)
            ]

    def add_votes(self, votes: list[tuple[int, int, str, str]]) -> dict[str, int]:
        """Record side-by-side votes ``(query_id, labeler_id, alignment, fidelity)``, answers as the rater
        saw them (A, B or tie), in one transaction: all or nothing. Returns counts of new and unchanged votes.

        Each answer is translated to the model it names (first / second / tie) by the query's recorded
        A/B order, inside the transaction. One vote per (query, rater), and it is final: a resend of the same
        answers changes nothing, other answers raise :class:`VoteConflict`; so does a vote that would give
        a query more than its comparison's raters_per_query. Votes on one query are serialized (SQLite: the
        write lock; PostgreSQL: a row lock on the query), so concurrent raters cannot overfill a query.
        """
        for query_id, labeler_id, alignment, fidelity in votes:
            _check_int("query_id", query_id, 1, _INT64[1])
            _check_int("labeler_id", labeler_id, 1, _INT64[1])
            _check_one_of("alignment answer", alignment, (*SHOWN_SIDES, "tie"))
            _check_one_of("fidelity answer", fidelity, (*SHOWN_SIDES, "tie"))
        if len({(q, lab) for q, lab, _, _ in votes}) != len(votes):
            raise ValueError("the same (query, labeler) is given twice")
        counts = {"new": 0, "unchanged": 0}
        if not votes:
            return counts
        with self.session() as s:
            query_ids = sorted({q for q, _, _, _ in votes})
            queries: dict[int, tuple[str, int]] = {}
            for chunk in _chunks(query_ids, 500):
                locked = (
                    select(
                        ComparisonQueryRow.id,
                        ComparisonQueryRow.first_shown_as,
                        ComparisonRow.raters_per_query,
                    )
                    .join(ComparisonRow, ComparisonQueryRow.comparison_id == ComparisonRow.id)
                    .where(ComparisonQueryRow.id.in_(chunk))
                    .order_by(ComparisonQueryRow.id)  # one lock order: no deadlock between two writers
                    .with_for_update(of=ComparisonQueryRow)
                )
                queries.update({i: (shown, wanted) for i, shown, wanted in s.execute(locked)})
            unknown = [q for q in query_ids if q not in queries]
            if unknown:
                raise ValueError(f"unknown comparison query id {unknown[0]}")
            labeler_ids = sorted({lab for _, lab, _, _ in votes})
            for chunk in _chunks(labeler_ids, 500):
                found = set(s.scalars(select(LabelerRow.id).where(LabelerRow.id.in_(chunk))))
                if set(chunk) - found:
                    raise ValueError(f"unknown labeler id {sorted(set(chunk) - found)[0]}")
            stored: dict[tuple[int, int], tuple[str, str]] = {}
            n_votes: dict[int, int] = dict.fromkeys(query_ids, 0)
            for chunk in _chunks(query_ids, 500):
                rows = select(
                    ComparisonVoteRow.query_id,
                    ComparisonVoteRow.labeler_id,
                    ComparisonVoteRow.alignment,
                    ComparisonVoteRow.fidelity,
                ).where(ComparisonVoteRow.query_id.in_(chunk))
                for q, lab, a, f in s.execute(rows):
                    stored[(q, lab)] = (a, f)
                    n_votes[q] += 1
            new = []
            for q, lab, alignment, fidelity in votes:
                shown, wanted = queries[q]
                choice = (shown_to_choice(alignment, shown), shown_to_choice(fidelity, shown))
                if (q, lab) in stored:
                    if stored[(q, lab)] != choice:
                        raise VoteConflict(
                            f"rater {lab} already voted on query {q} with other answers, and a vote is final"
                        )
                    counts["unchanged"] += 1
                    continue
                n_votes[q] += 1
                if n_votes[q] > wanted:
                    raise VoteConflict(f"query {q} has all the {wanted} votes it wants already")
                new.append(dict(query_id=q, labeler_id=lab, alignment=choice[0], fidelity=choice[1]))
            s.add_all(ComparisonVoteRow(**v) for v in new)
            counts["new"] = len(new)
        return counts

    def assign_query(
        self,
        labeler_id: int,
        now: datetime,
        expires_at: datetime,
        choose: Callable[[list[QueryState]], list[int]],
    ) -> list[int]:
        """Hand comparison queries to a rater, as :meth:`assign_images` hands images: in one serialized
        transaction, drop expired leases, read every query's :class:`QueryState` for this rater, let
        ``choose`` pick query ids, lease them to the rater until ``expires_at``. Returns the picked ids."""
        return self._lease(
            labeler_id,
            now,
            expires_at,
            choose,
            _COMPARISON_LOCK_KEY,
            ComparisonLeaseRow,
            "query_id",
            _query_states,
            "query",
            "a comparison query",
        )

    def _lease(
        self, labeler_id, now, expires_at, choose, lock_key, lease_row, item_col, read_states, noun, what
    ) -> list[int]:
        """The shared body of :meth:`assign_images` and :meth:`assign_query`: one serialized transaction
        that drops expired leases, reads the states, lets ``choose`` pick ids and leases them."""
        _check_int("labeler_id", labeler_id, 1, _INT64[1])
        now, expires_at = _check_utc("now", now), _check_utc("expires_at", expires_at)
        with self.session() as s:
            if self.engine.dialect.name == "postgresql":
                s.execute(select(func.pg_advisory_xact_lock(lock_key)))
            if s.get(LabelerRow, labeler_id) is None:
                raise ValueError(f"unknown labeler id {labeler_id}")
            s.execute(delete(lease_row).where(lease_row.expires_at <= now))
            states = read_states(s, labeler_id)
            known = {getattr(st, item_col) for st in states}
            picked = list(choose(states))
            for i in picked:
                if i not in known:
                    raise ValueError(f"choose picked {noun} {i!r}, which is not {what}")
            upsert = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}[self.engine.dialect.name]
            for i in picked:
                stmt = upsert(lease_row).values(
                    **{item_col: i}, labeler_id=labeler_id, expires_at=expires_at, created_at=now
                )
                s.execute(
                    stmt.on_conflict_do_update(
                        index_elements=[item_col, "labeler_id"], set_={"expires_at": expires_at}
                    )
                )
            return picked

    def comparison_progress(self, labeler_id: int) -> dict[str, int]:
        """Counts for a rater's progress line over every comparison: queries, those with all the votes
        they want, all votes, and this rater's votes."""
        _check_int("labeler_id", labeler_id, 1, _INT64[1])
        per_query = (
            select(ComparisonVoteRow.query_id, func.count().label("n"))
            .group_by(ComparisonVoteRow.query_id)
            .subquery()
        )
        with self.session() as s:
            queries = s.scalar(select(func.count()).select_from(ComparisonQueryRow))
            complete = s.scalar(
                select(func.count())
                .select_from(ComparisonQueryRow)
                .join(ComparisonRow, ComparisonQueryRow.comparison_id == ComparisonRow.id)
                .join(per_query, per_query.c.query_id == ComparisonQueryRow.id)
                .where(per_query.c.n >= ComparisonRow.raters_per_query)
            )
            votes = s.scalar(select(func.count()).select_from(ComparisonVoteRow))
            mine = s.scalar(
                select(func.count())
                .select_from(ComparisonVoteRow)
                .where(ComparisonVoteRow.labeler_id == labeler_id)
            )
        return {"queries": queries, "complete": complete, "votes": votes, "mine": mine}

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


# --- assignment helpers -----------------------------------------------------------------------------------

# Any fixed 64-bit number: the key of the PostgreSQL advisory lock that serializes assignments.
_ASSIGNMENT_LOCK_KEY = 0x7432_6961_6C69_676E  # "t2ialign"


def _as_utc(t: datetime) -> datetime:
    """A datetime read from the database as an aware UTC datetime (SQLite hands back naive UTC ones)."""
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def _check_utc(name: str, t) -> datetime:
    # SQLite compares stored times as text, without their zone: every time written must be in UTC.
    if not isinstance(t, datetime) or t.tzinfo is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got {t!r}")
    return t.astimezone(UTC)


def _image_states(s: Session, labeler_id: int) -> list[ImageState]:
    """The :class:`ImageState` of every image with role human, for this labeler (expired leases already
    removed), in image id order.

    One SQL statement, so one snapshot: labels are written without the assignment lock, and on PostgreSQL
    (READ COMMITTED) each statement sees the newest commits. Counting labels and leases in two statements
    could miss a label committed in between and count its labeler in neither, and send one labeler too many.
    """
    mine = LabelRow.labeler_id == labeler_id
    labels = (
        select(
            LabelRow.image_id,
            func.sum(case((mine, 0), else_=1)).label("n_other"),
            func.max(case((mine, 1), else_=0)).label("labeled"),
        )
        .group_by(LabelRow.image_id)
        .subquery()
    )
    # Another labeler's lease counts only until that labeler answers (then the label counts instead).
    answered = (
        select(LabelRow.id)
        .where(LabelRow.image_id == LeaseRow.image_id, LabelRow.labeler_id == LeaseRow.labeler_id)
        .exists()
    )
    my_lease = LeaseRow.labeler_id == labeler_id
    leases = (
        select(
            LeaseRow.image_id,
            func.sum(case((my_lease, 0), (answered, 0), else_=1)).label("n_other"),
            func.max(case((my_lease, 1), else_=0)).label("leased"),
        )
        .group_by(LeaseRow.image_id)
        .subquery()
    )
    q = (
        select(
            ImageRow.id,
            ImageRow.prompt_id,
            func.coalesce(labels.c.n_other, 0),
            func.coalesce(leases.c.n_other, 0),
            func.coalesce(labels.c.labeled, 0),
            func.coalesce(leases.c.leased, 0),
        )
        .outerjoin(labels, labels.c.image_id == ImageRow.id)
        .outerjoin(leases, leases.c.image_id == ImageRow.id)
        .where(ImageRow.role == "human")
        .order_by(ImageRow.id)
    )
    return [
        ImageState(
            image_id=i,
            prompt_id=p,
            n_labels=int(n_labels),
            n_leased=int(n_leased),
            mine="labeled" if labeled else "leased" if leased else None,
        )
        for i, p, n_labels, n_leased, labeled, leased in s.execute(q)
    ]


# --- side-by-side helpers ---------------------------------------------------------------------------------

# Images per set of a comparison query at most (the paper shows sets of four).
MAX_COMPARISON_SET = 16
# The key of the PostgreSQL advisory lock that serializes comparison assignments (any fixed 64-bit number).
_COMPARISON_LOCK_KEY = 0x7432_6961_7362_7331  # "t2iasbs1"


def shown_to_choice(answer: str, first_shown_as: str) -> str:
    """A rater's answer (A, B or tie, as shown) as the model it prefers: first, second or tie."""
    _check_one_of("answer", answer, (*SHOWN_SIDES, "tie"))
    _check_one_of("first_shown_as", first_shown_as, SHOWN_SIDES)
    if answer == "tie":
        return "tie"
    return "first" if answer == first_shown_as else "second"


def _comparison_dict(row: ComparisonRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "first_model": row.first_model,
        "second_model": row.second_model,
        "raters_per_query": row.raters_per_query,
        "seed": row.seed,
        "created_at": _as_utc(row.created_at),
    }


def _query_states(s: Session, labeler_id: int) -> list[QueryState]:
    """The :class:`QueryState` of every comparison query for this rater (expired leases already removed),
    in query id order; one statement, so one snapshot (see :func:`_image_states`)."""
    mine = ComparisonVoteRow.labeler_id == labeler_id
    votes = (
        select(
            ComparisonVoteRow.query_id,
            func.sum(case((mine, 0), else_=1)).label("n_other"),
            func.max(case((mine, 1), else_=0)).label("voted"),
        )
        .group_by(ComparisonVoteRow.query_id)
        .subquery()
    )
    answered = (
        select(ComparisonVoteRow.id)
        .where(
            ComparisonVoteRow.query_id == ComparisonLeaseRow.query_id,
            ComparisonVoteRow.labeler_id == ComparisonLeaseRow.labeler_id,
        )
        .exists()
    )
    my_lease = ComparisonLeaseRow.labeler_id == labeler_id
    leases = (
        select(
            ComparisonLeaseRow.query_id,
            func.sum(case((my_lease, 0), (answered, 0), else_=1)).label("n_other"),
            func.max(case((my_lease, 1), else_=0)).label("leased"),
        )
        .group_by(ComparisonLeaseRow.query_id)
        .subquery()
    )
    q = (
        select(
            ComparisonQueryRow.id,
            ComparisonQueryRow.comparison_id,
            func.coalesce(votes.c.n_other, 0),
            func.coalesce(leases.c.n_other, 0),
            ComparisonRow.raters_per_query,
            func.coalesce(votes.c.voted, 0),
            func.coalesce(leases.c.leased, 0),
        )
        .join(ComparisonRow, ComparisonQueryRow.comparison_id == ComparisonRow.id)
        .outerjoin(votes, votes.c.query_id == ComparisonQueryRow.id)
        .outerjoin(leases, leases.c.query_id == ComparisonQueryRow.id)
        .order_by(ComparisonQueryRow.id)
    )
    return [
        QueryState(
            query_id=i,
            comparison_id=c,
            n_votes=int(n_votes),
            n_leased=int(n_leased),
            wanted=int(wanted),
            mine="voted" if voted else "leased" if leased else None,
        )
        for i, c, n_votes, n_leased, wanted, voted, leased in s.execute(q)
    ]


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


def open_existing(run_dir: str | Path, db_url: str | None = None) -> Store:
    """The store of an existing run; a ValueError, not a new empty run, when ``run_dir`` has no database
    (commands that read a run must not create one by a typo)."""
    if db_url is None and not (Path(run_dir) / DB_FILENAME).is_file():
        raise ValueError(
            f"no run at {run_dir} (no {DB_FILENAME}); run `t2ialign prompts --run {run_dir}` first"
        )
    return Store.open(run_dir, db_url=db_url)


def _chunks(items: list, n: int) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i : i + n]
