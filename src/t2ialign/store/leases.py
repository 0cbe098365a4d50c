"""Work handed out with leases and answered by distinct raters: images to label, comparison queries and
preference pairs.

One rule serves both (paper Sec. 4.1: k labels per image; Sec. 4.2: nine votes per query), each from a
distinct rater. An item is *taken* by a rater who answered it or holds an active lease on it; a rater is
handed items they have not taken while fewer than the wanted number of others have, and may answer only
what they were handed. :func:`with_taken` is the one query of how far each item is for a rater (what the
assignment policies choose from), :func:`assign` the serialized transaction that leases their choice, and
:func:`read_taken` with :func:`admit` the check every leased answer passes before it is written.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import Select, case, delete, func, select
from sqlalchemy.orm import Session

from t2ialign.store._common import _INT64, NotLeased, VoteConflict, _check_int, _check_utc, _chunks, _insert
from t2ialign.store.schema import (
    ComparisonLeaseRow,
    ComparisonVoteRow,
    LabelerRow,
    LabelRow,
    LeaseRow,
    PreferenceLeaseRow,
    PreferenceRow,
)


class Words(NamedTuple):
    """How the errors name one kind of work, and what an answer beyond the wanted number raises."""

    noun: str
    what: str  # what choose must pick: "an image to label"
    next_url: str  # where the web app hands out this work
    answers: str  # the answers' plural noun
    full: type[VoteConflict]


@dataclass(frozen=True)
class Work:
    """One kind of leased work: the table of its answers and of its leases, one row per (item, rater)."""

    answer: type
    lease: type
    key: str  # the column of both that names the item
    values: tuple[str, ...]  # the answer's columns
    lock_key: int  # of the PostgreSQL advisory lock that serializes assignments (any fixed 64-bit number)
    final: bool  # an answer cannot be changed (a vote); else a rater may change their own (a label)
    words: Words


# Keys of the PostgreSQL advisory locks that serialize assignments (any fixed 64-bit numbers).
IMAGES_LOCK_KEY = 0x7432_6961_6C69_676E  # "t2ialign"
QUERIES_LOCK_KEY = 0x7432_6961_7362_7331  # "t2iasbs1"
# The labels of images (paper Sec. 4.1), k per image: a rater may change their own label.
IMAGE_WORDS = Words("image", "an image to label", "/api/next", "labels", NotLeased)
IMAGES = Work(LabelRow, LeaseRow, "image_id", ("value",), IMAGES_LOCK_KEY, False, IMAGE_WORDS)
# The votes on side-by-side queries (Sec. 4.2), raters_per_query per query: a vote is final.
QUERY_WORDS = Words("query", "a comparison query", "/api/compare/next", "votes", VoteConflict)
QUERIES = Work(
    ComparisonVoteRow,
    ComparisonLeaseRow,
    "query_id",
    ("alignment", "fidelity"),
    QUERIES_LOCK_KEY,
    True,
    QUERY_WORDS,
)
PAIRS_LOCK_KEY = 0x7432_6961_7061_6972  # "t2iapair"
# The pairwise preferences (A / B / tie) on preference pairs, k per pair: a rater may change their own.
PAIR_WORDS = Words("pair", "a preference pair", "/api/pairs/next", "preferences", NotLeased)
PAIRS = Work(PreferenceRow, PreferenceLeaseRow, "pair_id", ("choice",), PAIRS_LOCK_KEY, False, PAIR_WORDS)


# --- how far each item is, for one rater ------------------------------------------------------------------


def with_taken(q: Select, work: Work, labeler_id: int, item_id) -> Select:
    """``q`` (a select of items whose id column is ``item_id``) with four more columns, for this rater:
    answers by others, active leases of others who have not answered yet, whether the rater answered
    (0/1) and whether they hold a lease (0/1). Expired leases must be gone already (:func:`assign`).

    One SQL statement, so one snapshot: answers are written without the assignment lock, and on PostgreSQL
    (READ COMMITTED) each statement sees the newest commits. Counting answers and leases in two statements
    could miss an answer committed in between and count its rater in neither, and send one rater too many.
    """
    answer, lease = work.answer, work.lease
    mine = answer.labeler_id == labeler_id
    answers = (
        select(
            getattr(answer, work.key).label("item"),
            func.sum(case((mine, 0), else_=1)).label("n_other"),
            func.max(case((mine, 1), else_=0)).label("mine"),
        )
        .group_by(getattr(answer, work.key))
        .subquery()
    )
    # Another rater's lease counts only until that rater answers (then the answer counts instead).
    answered = (
        select(answer.id)
        .where(getattr(answer, work.key) == getattr(lease, work.key), answer.labeler_id == lease.labeler_id)
        .exists()
    )
    my_lease = lease.labeler_id == labeler_id
    leases = (
        select(
            getattr(lease, work.key).label("item"),
            func.sum(case((my_lease, 0), (answered, 0), else_=1)).label("n_other"),
            func.max(case((my_lease, 1), else_=0)).label("mine"),
        )
        .group_by(getattr(lease, work.key))
        .subquery()
    )
    columns = (answers.c.n_other, leases.c.n_other, answers.c.mine, leases.c.mine)
    return (
        q.add_columns(*(func.coalesce(c, 0) for c in columns))
        .outerjoin(answers, answers.c.item == item_id)
        .outerjoin(leases, leases.c.item == item_id)
    )


def mine_state(answered: int, leased: int, done: str) -> str | None:
    """The state's ``mine``: ``done`` ("labeled", "voted") if the rater answered, "leased", or None."""
    return done if answered else "leased" if leased else None


def assign(
    s: Session,
    work: Work,
    labeler_id: int,
    now: datetime,
    expires_at: datetime,
    choose: Callable[[list], list[int]],
    read_states: Callable[[Session, int], list],
) -> list[int]:
    """Hand items to a rater in the session's transaction: drop expired leases, read the states of the
    items as seen by this rater, let ``choose`` pick ids from them, and lease the picked ones to the rater
    until ``expires_at``. Returns the picked ids.

    Assignments are serialized (SQLite: the transaction's write lock; PostgreSQL: an advisory lock), so
    two raters asking at once cannot both take an item's last free place. ``choose`` is the policy
    (``t2ialign.label.assignment``); it must be quick, it runs inside the transaction.
    """
    _check_int("labeler_id", labeler_id, 1, _INT64[1])
    now, expires_at = _check_utc("now", now), _check_utc("expires_at", expires_at)
    if s.get_bind().dialect.name == "postgresql":
        s.execute(select(func.pg_advisory_xact_lock(work.lock_key)))
    if s.get(LabelerRow, labeler_id) is None:
        raise ValueError(f"unknown labeler id {labeler_id}")
    s.execute(delete(work.lease).where(work.lease.expires_at <= now))
    states = read_states(s, labeler_id)
    known = {getattr(st, work.key) for st in states}
    picked = list(choose(states))
    for i in picked:
        if i not in known:
            raise ValueError(f"choose picked {work.words.noun} {i!r}, which is not {work.words.what}")
    for i in picked:
        stmt = _insert(s)(work.lease).values(
            **{work.key: i}, labeler_id=labeler_id, expires_at=expires_at, created_at=now
        )
        s.execute(
            stmt.on_conflict_do_update(
                index_elements=[work.key, "labeler_id"], set_={"expires_at": expires_at}
            )
        )
    return picked


# --- the check of every answer ----------------------------------------------------------------------------


@dataclass
class Taken:
    """What the answers to some items meet: the stored answers (item, rater) -> values, the number of
    answers per item, and the (item, rater) pairs with a lease active at the answers' time."""

    answers: dict[tuple[int, int], tuple] = field(default_factory=dict)
    counts: Counter = field(default_factory=Counter)
    leased: set[tuple[int, int]] = field(default_factory=set)


def read_taken(s: Session, work: Work, item_ids: list[int], now: datetime | None) -> Taken:
    """The :class:`Taken` of these items; leases only with ``now`` (the time of a leased answer)."""
    taken = Taken()
    answer, lease = work.answer, work.lease
    for chunk in _chunks(sorted(item_ids), 500):
        columns = (getattr(answer, work.key), answer.labeler_id, *(getattr(answer, v) for v in work.values))
        for item, lab, *values in s.execute(select(*columns).where(columns[0].in_(chunk))):
            taken.answers[(item, lab)] = tuple(values)
            taken.counts[item] += 1
        if now is not None:
            rows = select(getattr(lease, work.key), lease.labeler_id).where(
                getattr(lease, work.key).in_(chunk), lease.expires_at > now
            )
            taken.leased.update((item, lab) for item, lab in s.execute(rows))
    return taken


def admit(
    work: Work, taken: Taken, item: int, rater: int, answer: tuple, wanted: int | None, leased: bool
) -> bool:
    """Whether the rater's answer to the item is a new one (then counted in ``taken``), or False for one
    they gave before: a change of their own label, or a resend of the same vote. Raises
    :class:`VoteConflict` for another answer to a vote (it is final), ``NotLeased`` for a new answer
    without an active lease (when ``leased``: the web app's path), and ``work.words.full`` for an answer beyond
    ``wanted`` (None: any number)."""
    old = taken.answers.get((item, rater))
    if old is not None:
        if work.final and old != answer:
            raise VoteConflict(
                f"rater {rater} already voted on query {item} with other answers, and a vote is final"
            )
        return False  # a change of their own answer (or a resend): always theirs to make
    words = work.words
    if leased and (item, rater) not in taken.leased:
        raise NotLeased(
            f"{words.noun} {item} is not leased to you (or its lease expired): ask {words.next_url} for work"
        )
    taken.counts[item] += 1
    if wanted is not None and taken.counts[item] > wanted:
        raise words.full(f"{words.noun} {item} has all the {wanted} {words.answers} it wants already")
    return True
