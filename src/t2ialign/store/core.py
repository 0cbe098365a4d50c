"""The run store: opening a run directory, its prompts, images and metrics (labels and comparisons come
from the mixins)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import unicodedata
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from alembic import command
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from t2ialign.core.fsutil import atomic_write, fsync_dir, loads_json_object
from t2ialign.store._common import (
    _INT64,
    _SHA256,
    DB_FILENAME,
    IMAGES_DIRNAME,
    METRICS_FILENAME,
    StoreError,
    _check_int,
    _check_one_of,
    _check_str,
    _chunks,
    _insert,
    _png_size,
    _prompt_fields,
)
from t2ialign.store.comparisons import ComparisonsMixin
from t2ialign.store.engine import (
    _dirs_to_create,
    _probe_writable,
    _remove_created,
    _resolve_url,
    alembic_config,
    make_engine,
)
from t2ialign.store.labels import LabelsMixin
from t2ialign.store.preferences import PreferencesMixin
from t2ialign.store.schema import IMPORTED_SPLIT, PROMPT_SPLITS, ROLES, ImageRow, PromptRow
from t2ialign.world.prompts import CATEGORIES

# The longest free caption stored (characters): far above any public set's captions, a bound on what a
# malformed file can write into the prompts table.
MAX_CAPTION_CHARS = 2000

# --- the store --------------------------------------------------------------------------------------------


class Store(LabelsMixin, ComparisonsMixin, PreferencesMixin):
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

    def add_free_prompts(self, texts: Iterable[str]) -> dict[str, int]:
        """Store free captions (of an imported preference set) as prompts of split "imported", with no
        category nor attributes; return {text: prompt id} for every text given.

        Idempotent: a text already stored keeps its row and id, whatever its split (a caption that is a
        prompt of the run's world stays that prompt). Texts must be non-empty strings of at most
        MAX_CAPTION_CHARS characters without control characters (newlines, tabs, NUL...): all are validated
        before anything is written, and they are written in one transaction.
        """
        wanted = list(dict.fromkeys(check_caption(t) for t in texts))
        with self.session() as s:
            # ON CONFLICT DO NOTHING: an import running at the same time may add the same caption
            insert = _insert(s)
            for chunk in _chunks(wanted, 500):
                rows = [dict(text=t, split=IMPORTED_SPLIT) for t in chunk]
                s.execute(insert(PromptRow).values(rows).on_conflict_do_nothing(index_elements=["text"]))
            ids: dict[str, int] = {}
            for chunk in _chunks(wanted, 500):
                ids.update(
                    s.execute(select(PromptRow.text, PromptRow.id).where(PromptRow.text.in_(chunk))).all()
                )
        return {t: ids[t] for t in wanted}

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

    def open_image(self, sha256: str):
        """The stored image as an RGB ``PIL.Image``."""
        from PIL import Image

        with Image.open(self.image_path(sha256)) as im:
            return im.convert("RGB")

    def image_array(self, sha256: str) -> np.ndarray:
        """The stored image as an (H, W, 3) uint8 array."""
        return np.asarray(self.open_image(sha256))

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
        """Stored prompts (text, category, split and attributes), in id order, optionally filtered. Imported
        captions (split "imported") come with the world's prompts unless a split is asked for; their
        category and attributes, shape included, are None."""
        q = select(PromptRow).order_by(PromptRow.id)
        if split is not None:
            _check_one_of("split", split, PROMPT_SPLITS)
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

    # --- metrics ------------------------------------------------------------------------------------------

    def read_metrics(self) -> dict[str, Any]:
        """metrics.json as a dict ({} before any stage wrote to it)."""
        try:
            text = self.metrics_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        return loads_json_object(text, str(self.metrics_path), StoreError)

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


def check_caption(text) -> str:
    """The text, if it can be a free caption of the run (:meth:`Store.add_free_prompts`); else ValueError."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"a free caption must be a non-empty string, got {text!r}")
    if len(text) > MAX_CAPTION_CHARS:
        raise ValueError(
            f"caption {text[:60]!r}... has {len(text)} characters, more than {MAX_CAPTION_CHARS}"
        )
    bad = next((c for c in text if unicodedata.category(c) == "Cc"), None)
    if bad is not None:
        raise ValueError(f"caption {text!r} holds the control character {bad!r}")
    return text


def open_existing(run_dir: str | Path, db_url: str | None = None) -> Store:
    """The store of an existing run; a ValueError, not a new empty run, when ``run_dir`` has no database
    (commands that read a run must not create one by a typo)."""
    if db_url is None and not (Path(run_dir) / DB_FILENAME).is_file():
        raise ValueError(
            f"no run at {run_dir} (no {DB_FILENAME}); run `t2ialign prompts --run {run_dir}` first"
        )
    return Store.open(run_dir, db_url=db_url)
