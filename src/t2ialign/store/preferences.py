"""Pairwise preferences (issue 17): pairs of two images of one prompt, and raters' answers A / B / tie.

The tables (``store.schema``): ``preference_pairs`` (:class:`PreferencePairRow`: a prompt, two distinct
images of it in canonical order ``image_a_id < image_b_id``, and a ``source``: "app" for pairs made for the
labeling app, "import:<dataset>" for imported ones), ``preferences`` (:class:`PreferenceRow`: one answer
per (pair, rater), "A" meaning the pair's image_a is better, "B" image_b, or "tie") and
``preference_leases`` (the app's leases, the rule of ``store.leases``, Work ``PAIRS``).

How the others use it:

* make pairs: :meth:`PreferencesMixin.add_pairs` ``[(prompt, sha_x, sha_y), ...]`` -> pair ids (an
  existing pair, in either order, keeps its id and source);
* the app: :meth:`~PreferencesMixin.assign_pairs` leases pairs to a rater,
  :meth:`~PreferencesMixin.add_preferences` writes their leased answers (with ``leased_at`` and ``k``);
* simulated raters: :meth:`~PreferencesMixin.add_preferences` without ``leased_at``;
* importers of public data (Pick-a-Pic, ImageReward, HPDv2): :meth:`~PreferencesMixin.import_preferences`
  ``[(prompt, sha_x, sha_y, rater name such as "1234@pickapic", choice), ...]``, the choice relative to the order *given*
  (A: sha_x is better); it makes the pairs and the raters it names, without leases or k;
* readers (Bradley-Terry reward, Diffusion-DPO, exports): :meth:`~PreferencesMixin.preferences`, one
  row per answer with the two images' sha256s, the prompt, the rater and ``preferred`` (the better
  image's sha256, None for a tie); :meth:`~PreferencesMixin.preference_pairs` lists the pairs.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, aliased

from t2ialign.store import schema as db
from t2ialign.store._common import (
    _INT64,
    _as_utc,
    _check_int,
    _check_known,
    _check_one_of,
    _check_str,
    _check_utc,
    _chunks,
    _insert,
)
from t2ialign.store.leases import PAIRS, admit, assign, mine_state, read_taken, with_taken
from t2ialign.store.schema import (
    APP_SOURCE,
    PREFERENCE_CHOICES,
    ImageRow,
    LabelerRow,
    PairState,
    PreferencePairRow,
    PreferenceRow,
    PromptRow,
)

# A pair's source: "app", or "import:<dataset>" and alike; plain, as it appears in exports and filters.
_SOURCE = re.compile(r"[a-z0-9][a-z0-9_.:-]{0,63}")
# Imported raters' names: the labeling app's rule (label.auth), so /admin can show them as they are.
_RATER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
FLIP = {"A": "B", "B": "A", "tie": "tie"}


def check_source(source: str) -> str:
    """``source`` if it is a valid pair source (1 to 64 of a-z 0-9 _ . : -), else ValueError."""
    if not isinstance(source, str) or not _SOURCE.fullmatch(source):
        raise ValueError(
            f"invalid pair source {source!r}: 1 to 64 of a-z, 0-9, _ . : -, e.g. 'app' or 'import:pickapic'"
        )
    return source


class PreferencesMixin:
    """The pairwise-preference part of :class:`~t2ialign.store.Store` (it needs ``self.session``)."""

    def add_pairs(self, pairs: list[tuple[str, str, str]], source: str = APP_SOURCE) -> list[int]:
        """Record pairs ``(prompt text, sha256 x, sha256 y)`` of ``source``; the pair id of each, in order.

        Both images must be recorded (:meth:`add_images`) as images of that prompt, and distinct. A pair
        that exists already (in either order, of any source) keeps its id and its source; the same pair
        twice in ``pairs`` gets the same id twice. Stored as (image_a, image_b) with image_a the one of
        the smaller image id: use :meth:`preference_pairs` to see which is which. One transaction.
        """
        check_source(source)
        with self.session() as s:
            return [pid for pid, _ in _add_pairs(s, self.image_path, pairs, source)]

    def preference_pairs(
        self, source: str | None = None, pair_ids: list[int] | None = None
    ) -> list[dict[str, Any]]:
        """Pairs (of ``source``, or with these ids), in id order: id, source, prompt_id, prompt, category,
        split, image_a and image_b (sha256s), image_a_id, image_b_id, n_preferences (answers so far)."""
        a, b = aliased(ImageRow), aliased(ImageRow)
        n = select(PreferenceRow.pair_id, func.count().label("n")).group_by(PreferenceRow.pair_id).subquery()
        q = (
            select(PreferencePairRow, PromptRow, a.sha256, b.sha256, func.coalesce(n.c.n, 0))
            .join(PromptRow, PreferencePairRow.prompt_id == PromptRow.id)
            .join(a, PreferencePairRow.image_a_id == a.id)
            .join(b, PreferencePairRow.image_b_id == b.id)
            .outerjoin(n, n.c.pair_id == PreferencePairRow.id)
            .order_by(PreferencePairRow.id)
        )
        if source is not None:
            q = q.where(PreferencePairRow.source == check_source(source))
        if pair_ids is not None:
            for i in pair_ids:
                _check_int("pair_id", i, 1, _INT64[1])
            q = q.where(PreferencePairRow.id.in_(pair_ids))
        with self.session() as s:
            return [
                {
                    "id": pair.id,
                    "source": pair.source,
                    "prompt_id": prompt.id,
                    "prompt": prompt.text,
                    "category": prompt.category,
                    "split": prompt.split,
                    "image_a": sha_a,
                    "image_b": sha_b,
                    "image_a_id": pair.image_a_id,
                    "image_b_id": pair.image_b_id,
                    "n_preferences": int(count),
                }
                for pair, prompt, sha_a, sha_b, count in s.execute(q)
            ]

    def assign_pairs(
        self,
        labeler_id: int,
        now: datetime,
        expires_at: datetime,
        choose: Callable[[list[PairState]], list[int]],
        source: str = APP_SOURCE,
    ) -> list[int]:
        """Hand pairs of ``source`` to a rater, as :meth:`assign_images` hands images: in one serialized
        transaction, drop expired leases, read every such pair's :class:`PairState` for this rater, let
        ``choose`` pick pair ids (``label.pairs.pick_pair``), lease them until ``expires_at``. The ids."""
        check_source(source)
        with self.session() as s:
            return assign(
                s, PAIRS, labeler_id, now, expires_at, choose, lambda s, lab: _pair_states(s, lab, source)
            )

    def add_preferences(
        self, answers: list[tuple[int, int, str]], leased_at: datetime | None = None, k: int | None = None
    ) -> dict[str, int]:
        """Record answers ``(pair_id, labeler_id, choice)``, choice "A" (the pair's image_a is better), "B"
        or "tie" as stored, in one transaction: all or nothing. Counts of new, replaced, unchanged.

        A rater's later answer to a pair replaces their earlier one (a resend changes nothing, not even
        ``updated_at``). ``leased_at`` (the web app's path): a new answer needs a lease of the pair to this
        rater active at ``leased_at``; with ``k``, a new answer to a pair with k answers already is refused;
        both raise :class:`NotLeased` and nothing is written (the labels' rule, ``store.leases``).
        """
        if leased_at is not None:
            leased_at = _check_utc("leased_at", leased_at)
        _check_int("k", k, 1, 100_000, nullable=True)
        for pair_id, labeler_id, choice in answers:
            _check_int("pair_id", pair_id, 1, _INT64[1])
            _check_int("labeler_id", labeler_id, 1, _INT64[1])
            _check_one_of("preference choice", choice, PREFERENCE_CHOICES)
        if len({(p, lab) for p, lab, _ in answers}) != len(answers):
            raise ValueError("the same (pair, labeler) is given twice")
        if not answers:
            return {"new": 0, "replaced": 0, "unchanged": 0}
        with self.session() as s:
            _check_known(s, PreferencePairRow, {p for p, _, _ in answers}, "preference pair")
            _check_known(s, LabelerRow, {lab for _, lab, _ in answers}, "labeler")
            return _write_preferences(s, answers, leased_at, k)

    def import_preferences(self, rows: list[tuple[str, str, str, str, str]], source: str) -> dict[str, int]:
        """Import answers of public data: ``(prompt, sha256 x, sha256 y, rater name, choice)``, choice "A"
        (x is better), "B" (y) or "tie" relative to the order given, in one transaction: all or nothing.

        Makes the pairs (:meth:`add_pairs` with ``source``, e.g. "import:pickapic") and the raters the rows
        name (no token, so they cannot sign in; name them by the dataset, "1234@pickapic": 1 to 64 letters,
        digits or . _ @ -, as the app's names), and writes
        the answers without leases or k. A rater name of the app (a labeler with a token, the admin or a
        simulated one) is refused. A rerun of the same rows changes nothing. Batches of about 10,000 rows
        per call keep each transaction short. Returns counts: pairs (distinct ones in the rows), raters_new,
        new, replaced, unchanged.
        """
        check_source(source)
        for row in rows:
            if not isinstance(row, tuple | list) or len(row) != 5:
                raise ValueError(
                    f"an imported answer is (prompt, sha256 x, sha256 y, rater, choice), got {row!r}"
                )
            if not isinstance(row[3], str) or not _RATER.fullmatch(row[3]):
                raise ValueError(
                    f"invalid rater name {row[3]!r}: 1 to 64 letters, digits or . _ @ -, e.g. '1234@pickapic'"
                )
            _check_one_of("preference choice", row[4], PREFERENCE_CHOICES)
        with self.session() as s:
            made = _add_pairs(s, self.image_path, [(p, x, y) for p, x, y, _, _ in rows], source)
            raters, n_new = _import_raters(s, sorted({r[3] for r in rows}))
            answers = {}
            for (pair_id, flipped), row in zip(made, rows, strict=True):
                key = (pair_id, raters[row[3]])
                choice = FLIP[row[4]] if flipped else row[4]
                if answers.setdefault(key, choice) != choice:
                    raise ValueError(
                        f"rater {row[3]!r} answers the pair of {row[1]}, {row[2]} twice, otherwise"
                    )
            counts = _write_preferences(s, [(p, lab, c) for (p, lab), c in answers.items()], None, None)
            return {"pairs": len({pid for pid, _ in made}), "raters_new": n_new, **counts}

    def preferences(
        self,
        source: str | None = None,
        after_id: int = 0,
        limit: int | None = None,
        include_excluded: bool = True,
    ) -> list[dict[str, Any]]:
        """Answers (of pairs of ``source``, or all) with id > ``after_id``, in id order, at most ``limit``
        (a page of an export; None: all). Each: id, pair_id, source, prompt, category, split, image_a and
        image_b (sha256s), labeler, is_simulated, excluded (see :meth:`set_excluded`), choice (A / B /
        tie), preferred (the better image's sha256, None for a tie), created_at, updated_at. Without
        ``include_excluded`` the answers of excluded raters are left out (what training should read)."""
        _check_int("after_id", after_id, 0, _INT64[1])
        _check_int("limit", limit, 1, 10_000_000, nullable=True)
        a, b = aliased(ImageRow), aliased(ImageRow)
        q = (
            select(PreferenceRow, PreferencePairRow.source, PromptRow, a.sha256, b.sha256, LabelerRow)
            .join(PreferencePairRow, PreferenceRow.pair_id == PreferencePairRow.id)
            .join(PromptRow, PreferencePairRow.prompt_id == PromptRow.id)
            .join(a, PreferencePairRow.image_a_id == a.id)
            .join(b, PreferencePairRow.image_b_id == b.id)
            .join(LabelerRow, PreferenceRow.labeler_id == LabelerRow.id)
            .where(PreferenceRow.id > after_id)
            .order_by(PreferenceRow.id)
            .limit(limit)
        )
        if source is not None:
            q = q.where(PreferencePairRow.source == check_source(source))
        if not include_excluded:
            q = q.where(LabelerRow.excluded.is_(False))
        with self.session() as s:
            return [_preference_dict(*row) for row in s.execute(q)]

    def pairs_progress(self, labeler_id: int, k: int, source: str = APP_SOURCE) -> dict[str, int]:
        """Counts for a rater's progress line over the pairs of ``source``: pairs, those with >= k answers
        (``complete``), all answers on them, and this rater's answers (``mine``)."""
        _check_int("labeler_id", labeler_id, 1, _INT64[1])
        _check_int("k", k, 1, 100_000)
        check_source(source)
        per_pair = (
            select(PreferenceRow.pair_id, func.count().label("n"))
            .join(PreferencePairRow, PreferenceRow.pair_id == PreferencePairRow.id)
            .where(PreferencePairRow.source == source)
            .group_by(PreferenceRow.pair_id)
            .subquery()
        )
        with self.session() as s:
            pairs = s.scalar(
                select(func.count()).select_from(PreferencePairRow).where(PreferencePairRow.source == source)
            )
            complete = s.scalar(select(func.count()).select_from(per_pair).where(per_pair.c.n >= k))
            answers = s.scalar(select(func.coalesce(func.sum(per_pair.c.n), 0)))
            mine = s.scalar(
                select(func.count())
                .select_from(PreferenceRow)
                .join(PreferencePairRow, PreferenceRow.pair_id == PreferencePairRow.id)
                .where(PreferenceRow.labeler_id == labeler_id, PreferencePairRow.source == source)
            )
        return {"pairs": pairs, "complete": complete, "answers": int(answers), "mine": mine}


# --- helpers ------------------------------------------------------------------------------------------------


def _preference_dict(p: PreferenceRow, source, prompt: PromptRow, sha_a, sha_b, rater: LabelerRow) -> dict:
    return {
        "id": p.id,
        "pair_id": p.pair_id,
        "source": source,
        "prompt": prompt.text,
        "category": prompt.category,
        "split": prompt.split,
        "image_a": sha_a,
        "image_b": sha_b,
        "labeler": rater.name,
        "is_simulated": rater.is_simulated,
        "excluded": rater.excluded,
        "choice": p.choice,
        "preferred": {"A": sha_a, "B": sha_b, "tie": None}[p.choice],
        "created_at": _as_utc(p.created_at),
        "updated_at": _as_utc(p.updated_at),
    }


def _check_pairs(pairs, check_sha: Callable[[str], object]) -> None:
    for pair in pairs:
        if not isinstance(pair, tuple | list) or len(pair) != 3:
            raise ValueError(f"a pair is (prompt text, sha256, sha256), got {pair!r}")
        _check_str("pair prompt", pair[0])
        check_sha(pair[1])
        check_sha(pair[2])
        if pair[1] == pair[2]:
            raise ValueError(f"a pair needs two distinct images, got {pair[1]} twice")


def _add_pairs(s: Session, check_sha: Callable[[str], object], pairs, source: str) -> list[tuple[int, bool]]:
    """(pair id, flipped) of each (prompt, sha x, sha y), creating the missing pairs; ``flipped``: y is the
    stored image_a (x had the larger image id). ValueError for an unknown prompt or image, or an image
    of another prompt; ``check_sha`` checks a sha256's form (``Store.image_path``)."""
    _check_pairs(pairs, check_sha)
    prompt_ids: dict[str, int] = {}
    for chunk in _chunks(sorted({p[0] for p in pairs}), 500):
        prompt_ids.update(
            s.execute(select(PromptRow.text, PromptRow.id).where(PromptRow.text.in_(chunk))).all()
        )
    images: dict[str, tuple[int, int]] = {}
    for chunk in _chunks(sorted({sha for p in pairs for sha in p[1:]}), 500):
        rows = select(ImageRow.sha256, ImageRow.id, ImageRow.prompt_id).where(ImageRow.sha256.in_(chunk))
        images.update({sha: (i, p) for sha, i, p in s.execute(rows)})
    wanted: list[tuple[int, int, int, bool]] = []  # (prompt id, image_a id, image_b id, flipped)
    for prompt, x, y in pairs:
        if prompt not in prompt_ids:
            raise ValueError(f"unknown prompt {prompt!r}: add_prompts it first")
        for sha in (x, y):
            if sha not in images:
                raise ValueError(f"image {sha} is not recorded in the run: add_images it first")
            if images[sha][1] != prompt_ids[prompt]:
                raise ValueError(f"image {sha} is not an image of prompt {prompt!r}")
        ix, iy = images[x][0], images[y][0]
        wanted.append((prompt_ids[prompt], min(ix, iy), max(ix, iy), ix > iy))
    found: dict[tuple[int, int], int] = {}
    for chunk in _chunks(sorted({w[1] for w in wanted}), 500):
        rows = select(PreferencePairRow.image_a_id, PreferencePairRow.image_b_id, PreferencePairRow.id)
        found.update(
            {(a, b): i for a, b, i in s.execute(rows.where(PreferencePairRow.image_a_id.in_(chunk)))}
        )
    new = {
        (a, b): PreferencePairRow(prompt_id=p, image_a_id=a, image_b_id=b, source=source)
        for p, a, b, _ in wanted
        if (a, b) not in found
    }
    s.add_all(new.values())
    s.flush()
    found.update({key: row.id for key, row in new.items()})
    return [(found[(a, b)], flipped) for _, a, b, flipped in wanted]


def _import_raters(s: Session, names: list[str]) -> tuple[dict[str, int], int]:
    """{name: labeler id} of an import's raters, creating the missing ones (no token), and how many were
    new; ValueError for a name of the app's (a labeler with a token, the admin, or a simulated one)."""
    found: dict[str, LabelerRow] = {}
    for chunk in _chunks(names, 500):
        found.update({r.name: r for r in s.scalars(select(LabelerRow).where(LabelerRow.name.in_(chunk)))})
    for name, r in found.items():
        if r.token_hash is not None or r.is_admin or r.is_simulated:
            raise ValueError(
                f"rater {name!r} is a labeler of the app, not of an import: name imported raters 'ID@dataset'"
            )
    new = {name: LabelerRow(name=name, is_simulated=False) for name in names if name not in found}
    s.add_all(new.values())
    s.flush()
    return {name: (found.get(name) or new[name]).id for name in names}, len(new)


def _write_preferences(
    s: Session, answers: list[tuple[int, int, str]], leased_at: datetime | None, k: int | None
) -> dict[str, int]:
    """Admit and upsert answers (pair, rater, choice) in the session's transaction; see add_preferences."""
    pair_ids = sorted({p for p, _, _ in answers})
    if s.get_bind().dialect.name == "postgresql":  # one lock order: no deadlock between two writers
        s.execute(
            select(PreferencePairRow.id)
            .where(PreferencePairRow.id.in_(pair_ids))
            .order_by(PreferencePairRow.id)
            .with_for_update()
        )
    taken = read_taken(s, PAIRS, pair_ids, leased_at)
    counts = {"new": 0, "replaced": 0, "unchanged": 0}
    pending = []
    for p, lab, choice in answers:
        old = taken.answers.get((p, lab))
        if admit(PAIRS, taken, p, lab, (choice,), k, leased=leased_at is not None):
            counts["new"] += 1
        elif old == (choice,):
            counts["unchanged"] += 1
            continue
        else:
            counts["replaced"] += 1
        pending.append((p, lab, choice))
    now = db._utcnow()
    for chunk in _chunks(pending, 500):
        stmt = _insert(s)(PreferenceRow).values(
            [dict(pair_id=p, labeler_id=lab, choice=c, created_at=now, updated_at=now) for p, lab, c in chunk]
        )
        s.execute(
            stmt.on_conflict_do_update(
                index_elements=["pair_id", "labeler_id"],
                set_={"choice": stmt.excluded.choice, "updated_at": stmt.excluded.updated_at},
            )
        )
    return counts


def _pair_states(s: Session, labeler_id: int, source: str) -> list[PairState]:
    """The :class:`PairState` of every pair of ``source`` for this rater (expired leases already removed),
    in pair id order; one statement, so one snapshot (``leases.with_taken``)."""
    q = (
        select(PreferencePairRow.id, PreferencePairRow.prompt_id)
        .where(PreferencePairRow.source == source)
        .order_by(PreferencePairRow.id)
    )
    return [
        PairState(i, p, int(n_answers), int(n_leased), mine_state(answered, leased, "answered"))
        for i, p, n_answers, n_leased, answered, leased in s.execute(
            with_taken(q, PAIRS, labeler_id, PreferencePairRow.id)
        )
    ]
