"""The run database's schema: SQLAlchemy ORM classes, one per table.

The schema is owned by the Alembic migrations in ``t2ialign/store/migrations``; a change here without a new
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
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from t2ialign.world.prompts import CATEGORIES, SPLITS

# D_human (shown to labelers), D_unlabel (the paper's unlabeled set, Sec. 4.1) and evaluation images.
ROLES: tuple[str, ...] = ("human", "unlabeled", "eval")
# A prompt's split: the world's three (Table 1), or "imported", a free caption of a public preference set
# (docs/formats.md) with no category nor attributes. Not in world.prompts.SPLITS: the stages that build
# prompt sets, train or evaluate by split only know the world's, and so leave imported prompts out.
IMPORTED_SPLIT = "imported"
PROMPT_SPLITS: tuple[str, ...] = (*SPLITS, IMPORTED_SPLIT)
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
    """A prompt of the run's prompt set (paper Table 1), with the attributes it asks for; or a free caption
    of an imported preference set (split "imported": no category, shape, count, color nor background)."""

    __tablename__ = "prompts"
    __table_args__ = (
        CheckConstraint(_one_of("category", CATEGORIES, nullable=True), name="category"),
        CheckConstraint(_one_of("split", PROMPT_SPLITS), name="split"),
        # a world prompt always names its object; an imported caption names none of the attributes
        CheckConstraint(
            f"(split = '{IMPORTED_SPLIT}' AND shape IS NULL AND category IS NULL AND count IS NULL"
            f" AND color IS NULL AND background IS NULL) OR (split != '{IMPORTED_SPLIT}' AND shape IS NOT NULL)",
            name="imported",
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(String, unique=True)
    category: Mapped[str | None] = mapped_column(String)  # NULL: a free caption outside the 4 templates
    split: Mapped[str] = mapped_column(String)
    shape: Mapped[str | None] = mapped_column(String)  # NULL: an imported caption
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
    # Excluded from the training labels (a careless rater, see label.stats.rater_quality); rows kept.
    excluded: Mapped[bool] = mapped_column(default=False, server_default=false())
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


class GoldRow(Base):
    """The known answer of a gold image: an image mixed into the labeling queue to measure each rater's
    accuracy (``label.stats.rater_quality``). A gold image has role "eval", so it is never in D_human:
    its labels are never training feedback, nor counted in Table 1, the exports or the progress."""

    __tablename__ = "gold_answers"
    __table_args__ = (CheckConstraint(_one_of("answer", ("good", "bad")), name="answer"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), unique=True)
    answer: Mapped[str] = mapped_column(String)
    created_at: Mapped[datetime] = mapped_column(default=_utcnow)


class SessionRow(Base):
    """A signed-in browser of a labeler: the cookie holds a random session id, the database its sha256.

    Distinct from the labeler's token, so that signing out, revoking or rotating ends a session on the
    server (a cookie that still holds the id is refused), and the token itself never sits in a cookie.
    """

    __tablename__ = "sessions"
    __table_args__ = (Index(None, "labeler_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    id_hash: Mapped[str] = mapped_column(String(64), unique=True)
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


# --- side-by-side human evaluation (paper Sec. 4.2, Fig. 3) -----------------------------------------------

# Which model's set a vote prefers. "first" is the model named first in "<first> vs <second>" (e.g. the
# fine-tuned model in "fine-tuned vs original"); a vote for it is what Fig. 3 counts as positive.
VOTE_CHOICES: tuple[str, ...] = ("first", "second", "tie")
# The anonymous names under which raters see the two sets, and the answers they give.
SHOWN_SIDES: tuple[str, ...] = ("A", "B")
COMPARISON_MODELS: tuple[str, ...] = ("first", "second")


class ComparisonRow(Base):
    """A side-by-side evaluation of two models ("<first_model> vs <second_model>"): one query per prompt."""

    __tablename__ = "comparisons"
    __table_args__ = (CheckConstraint("raters_per_query >= 1", name="raters_per_query"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String, unique=True)
    first_model: Mapped[str] = mapped_column(String)  # a label for reports, e.g. "fine-tuned"
    second_model: Mapped[str] = mapped_column(String)  # e.g. "original"
    raters_per_query: Mapped[int]  # votes wanted per query, from distinct raters (9 in the paper)
    seed: Mapped[int] = mapped_column(BigInteger)  # of the A/B order and of the query order
    created_at: Mapped[datetime] = mapped_column(default=_utcnow)


class ComparisonQueryRow(Base):
    """One prompt of a comparison: two sets of its images, shown as A and B in a recorded random order.

    ``first_shown_as``: "A" if the first model's set is shown as A (the second's as B), else "B". Raters
    never see which model made which set.
    """

    __tablename__ = "comparison_queries"
    __table_args__ = (
        UniqueConstraint("comparison_id", "prompt_id"),
        CheckConstraint(_one_of("first_shown_as", SHOWN_SIDES), name="first_shown_as"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    comparison_id: Mapped[int] = mapped_column(ForeignKey("comparisons.id"))
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id"))
    first_shown_as: Mapped[str] = mapped_column(String)
    created_at: Mapped[datetime] = mapped_column(default=_utcnow)


class ComparisonImageRow(Base):
    """An image of one of a query's two sets; ``model`` says which set, ``position`` its place in it.

    An image may be in both sets of a query (rejection sampling's best 4 of 16 can include some of the
    first 4, the random baseline), never twice in one set.
    """

    __tablename__ = "comparison_images"
    __table_args__ = (
        UniqueConstraint("query_id", "model", "image_id"),
        CheckConstraint(_one_of("model", COMPARISON_MODELS), name="model"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    query_id: Mapped[int] = mapped_column(ForeignKey("comparison_queries.id"))
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"))
    model: Mapped[str] = mapped_column(String)
    position: Mapped[int]


class ComparisonVoteRow(Base):
    """One rater's answer to one query: which model's set is better for alignment and for fidelity.

    Stored in model terms (first / second / tie), translated from the A / B / tie the rater clicked by the
    query's recorded order in the transaction that writes it. At most one per (query, rater), final.
    """

    __tablename__ = "comparison_votes"
    __table_args__ = (
        UniqueConstraint("query_id", "labeler_id"),
        CheckConstraint(_one_of("alignment", VOTE_CHOICES), name="alignment"),
        CheckConstraint(_one_of("fidelity", VOTE_CHOICES), name="fidelity"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    query_id: Mapped[int] = mapped_column(ForeignKey("comparison_queries.id"))
    labeler_id: Mapped[int] = mapped_column(ForeignKey("labelers.id"))
    alignment: Mapped[str] = mapped_column(String)
    fidelity: Mapped[str] = mapped_column(String)
    created_at: Mapped[datetime] = mapped_column(default=_utcnow)


class ComparisonLeaseRow(Base):
    """A query handed to a rater until ``expires_at`` (as :class:`LeaseRow` for images): while it lasts the
    query counts as taken, so no more raters are sent to it than it needs votes."""

    __tablename__ = "comparison_leases"
    __table_args__ = (UniqueConstraint("query_id", "labeler_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    query_id: Mapped[int] = mapped_column(ForeignKey("comparison_queries.id"))
    labeler_id: Mapped[int] = mapped_column(ForeignKey("labelers.id"))
    expires_at: Mapped[datetime]
    created_at: Mapped[datetime] = mapped_column(default=_utcnow)


@dataclass(frozen=True)
class QueryState:
    """How far one comparison query is, as seen by one rater; see :meth:`Store.assign_query`.

    ``n_votes``: votes by other raters; ``n_leased``: active leases of other raters who have not voted on
    it; ``wanted``: the comparison's raters_per_query; ``mine``: "voted", "leased" or None.
    """

    query_id: int
    comparison_id: int
    n_votes: int
    n_leased: int
    wanted: int
    mine: str | None


# --- pairwise preferences (issue 17): which of two images of one prompt is better, or a tie --------------

# A rater's answer to a pair: "A" prefers the pair's image_a, "B" its image_b.
PREFERENCE_CHOICES: tuple[str, ...] = ("A", "B", "tie")
# The source of pairs made in this run for the labeling app (``t2ialign label pairs create``); importers of
# public data name theirs "import:<dataset>" (e.g. "import:pickapic").
APP_SOURCE = "app"


class PreferencePairRow(Base):
    """Two distinct images of one prompt, to be compared by raters; one row per unordered image pair.

    Stored in a canonical order, ``image_a_id < image_b_id``, which the database enforces together with
    the uniqueness of (image_a_id, image_b_id): so (x, y) and (y, x) are one pair. The order is not the
    order a rater sees (the app draws the sides per rater, ``label.pairs.shown_swapped``). ``source`` says
    where the pair comes from: "app" or "import:<dataset>".
    """

    __tablename__ = "preference_pairs"
    __table_args__ = (
        UniqueConstraint("image_a_id", "image_b_id"),
        CheckConstraint("image_a_id < image_b_id", name="image_order"),
        Index(None, "prompt_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id"))
    image_a_id: Mapped[int] = mapped_column(ForeignKey("images.id"))
    image_b_id: Mapped[int] = mapped_column(ForeignKey("images.id"))
    source: Mapped[str] = mapped_column(String)
    created_at: Mapped[datetime] = mapped_column(default=_utcnow)


class PreferenceRow(Base):
    """One rater's answer to one pair: "A" (image_a is better), "B" (image_b) or "tie"; at most one per
    (pair, rater). A rater may change their own answer, as a label (``updated_at`` orders changes)."""

    __tablename__ = "preferences"
    __table_args__ = (
        UniqueConstraint("pair_id", "labeler_id"),
        CheckConstraint(_one_of("choice", PREFERENCE_CHOICES), name="choice"),
        Index(None, "labeler_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    pair_id: Mapped[int] = mapped_column(ForeignKey("preference_pairs.id"))
    labeler_id: Mapped[int] = mapped_column(ForeignKey("labelers.id"))
    choice: Mapped[str] = mapped_column(String)
    created_at: Mapped[datetime] = mapped_column(default=_utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=_utcnow, onupdate=_utcnow)


class PreferenceLeaseRow(Base):
    """A pair handed to a rater until ``expires_at`` (as :class:`LeaseRow` for images): while it lasts
    the pair counts as taken, so no more than k raters are sent to it."""

    __tablename__ = "preference_leases"
    __table_args__ = (UniqueConstraint("pair_id", "labeler_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    pair_id: Mapped[int] = mapped_column(ForeignKey("preference_pairs.id"))
    labeler_id: Mapped[int] = mapped_column(ForeignKey("labelers.id"))
    expires_at: Mapped[datetime]
    created_at: Mapped[datetime] = mapped_column(default=_utcnow)


@dataclass(frozen=True)
class PairState:
    """How far one preference pair is, as seen by one rater; see :meth:`Store.assign_pairs`.

    ``n_answers``: answers by other raters; ``n_leased``: active leases of other raters who have not
    answered yet; ``mine``: "answered", "leased" (an active lease, no answer yet) or None.
    """

    pair_id: int
    prompt_id: int
    n_answers: int
    n_leased: int
    mine: str | None
