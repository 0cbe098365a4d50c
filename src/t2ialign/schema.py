"""The run database's schema: SQLAlchemy ORM classes, one per table.

The schema is owned by the Alembic migrations in ``t2ialign/migrations``; a change here without a new
migration fails ``tests/test_store.py``. ``t2ialign.store`` is the API over it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    MetaData,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from .world.prompts import CATEGORIES, SPLITS

# D_human (shown to labelers), D_unlabel (the paper's unlabeled set, Sec. 4.1) and evaluation images.
ROLES: tuple[str, ...] = ("human", "unlabeled", "eval")
LABEL_VALUES: tuple[str, ...] = ("good", "bad", "skip")


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


class LeaseRow(Base):
    """An image handed to a labeler to answer until ``expires_at``; while it lasts the image counts as taken.

    Leases keep k labelers from being sent to the same image at once, and expire so that an image a
    labeler walked away from goes back to the pool.
    """

    __tablename__ = "leases"
    __table_args__ = (UniqueConstraint("image_id", "labeler_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"))
    labeler_id: Mapped[int] = mapped_column(ForeignKey("labelers.id"))
    expires_at: Mapped[datetime]
    created_at: Mapped[datetime] = mapped_column(default=_utcnow)


@dataclass(frozen=True)
class ImageState:
    """How far one image to label (role human) is, as seen by one labeler; see :meth:`Store.assign_images`.

    ``n_labels``: labels by other labelers; ``n_leased``: active leases of other labelers who have not
    labeled it yet; ``mine``: "labeled", "leased" (an active lease, no label yet) or None.
    """

    image_id: int
    prompt_id: int
    n_labels: int
    n_leased: int
    mine: str | None
