"""Side-by-side comparisons (paper Sec. 4.2, Fig. 3): queries, their leases and the raters' votes."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from t2ialign.store._common import (
    _INT64,
    _as_utc,
    _check_int,
    _check_known,
    _check_one_of,
    _check_str,
    _check_utc,
    _chunks,
)
from t2ialign.store.leases import QUERIES, admit, assign, mine_state, read_taken, with_taken
from t2ialign.store.schema import (
    SHOWN_SIDES,
    ComparisonImageRow,
    ComparisonQueryRow,
    ComparisonRow,
    ComparisonVoteRow,
    ImageRow,
    LabelerRow,
    PromptRow,
    QueryState,
)


class ComparisonsMixin:
    """The side-by-side part of :class:`~t2ialign.store.Store` (it needs ``self.session``)."""

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
        comparison = _comparison_row(name, first_model, second_model, raters_per_query, seed)
        if not isinstance(queries, list) or not queries:
            raise ValueError("a comparison needs at least one query")
        texts: set[str] = set()
        for q in queries:
            _check_query(q, texts, self.image_path)  # image_path checks the sha256's form
        with self.session() as s:
            if s.scalar(select(ComparisonRow.id).where(ComparisonRow.name == name)) is not None:
                raise ValueError(f"a comparison named {name!r} already exists")
            prompt_ids, images = _prompts_and_images(s, queries)
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
                    ComparisonImageRow(query_id=row.id, image_id=images[sha], model=model, position=i)
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

    def add_votes(
        self, votes: list[tuple[int, int, str, str]], leased_at: datetime | None = None
    ) -> dict[str, int]:
        """Record side-by-side votes ``(query_id, labeler_id, alignment, fidelity)``, answers as the rater
        saw them (A, B or tie), in one transaction: all or nothing. Returns counts of new and unchanged votes.

        Each answer is translated to the model it names (first / second / tie) by the query's recorded
        A/B order, inside the transaction. One vote per (query, rater), and it is final: a resend of the same
        answers changes nothing, other answers raise :class:`VoteConflict`; so does a vote that would give
        a query more than its comparison's raters_per_query. Votes on one query are serialized (SQLite: the
        write lock; PostgreSQL: a row lock on the query), so concurrent raters cannot overfill a query.

        ``leased_at`` (the web app's path): a new vote needs a lease of the query to this rater that is
        still active at ``leased_at``, else :class:`NotLeased`: raters answer only what they were handed.
        The rule is the labels' too (``store.leases``).
        """
        if leased_at is not None:
            leased_at = _check_utc("leased_at", leased_at)
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
            queries = _lock_queries(s, query_ids)
            _check_known(s, LabelerRow, {lab for _, lab, _, _ in votes}, "labeler")
            taken = read_taken(s, QUERIES, query_ids, leased_at)
            new = []
            for q, lab, alignment, fidelity in votes:
                shown, wanted = queries[q]
                choice = (shown_to_choice(alignment, shown), shown_to_choice(fidelity, shown))
                if admit(QUERIES, taken, q, lab, choice, wanted, leased=leased_at is not None):
                    new.append(
                        ComparisonVoteRow(query_id=q, labeler_id=lab, alignment=choice[0], fidelity=choice[1])
                    )
                else:
                    counts["unchanged"] += 1
            s.add_all(new)
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
        with self.session() as s:
            return assign(s, QUERIES, labeler_id, now, expires_at, choose, _query_states)

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


# --- side-by-side helpers ---------------------------------------------------------------------------------

# Images per set of a comparison query at most (the paper shows sets of four).
MAX_COMPARISON_SET = 16


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


def _comparison_row(name, first, second, raters, seed) -> ComparisonRow:
    """The comparison's row, its fields validated (not its name's freedom: that needs the database)."""
    for label, value in (("comparison name", name), ("first_model", first), ("second_model", second)):
        _check_str(label, value)
    if first == second:
        raise ValueError(f"the two models of a comparison need different names, both are {first!r}")
    _check_int("raters_per_query", raters, 1, 1000)
    _check_int("seed", seed, *_INT64)
    return ComparisonRow(
        name=name, first_model=first, second_model=second, raters_per_query=raters, seed=seed
    )


def _check_query(q, texts: set[str], check_sha: Callable[[str], object]) -> None:
    """ValueError unless ``q`` is a well-formed query (see ``add_comparison``) of a prompt not in ``texts``
    (the prompts of the queries before it), which it joins; ``check_sha`` checks a sha256's form."""
    if not isinstance(q, dict) or set(q) != {"prompt", "first", "second", "first_shown_as"}:
        raise ValueError(f"a query is a dict with keys prompt, first, second, first_shown_as; got {q!r}")
    _check_str("query prompt", q["prompt"])
    if q["prompt"] in texts:
        raise ValueError(f"prompt {q['prompt']!r} has two queries; one per prompt")
    texts.add(q["prompt"])
    _check_one_of(f"first_shown_as of {q['prompt']!r}:", q["first_shown_as"], SHOWN_SIDES)
    sets = (q["first"], q["second"])
    for images in sets:
        if not isinstance(images, list | tuple) or not 1 <= len(images) <= MAX_COMPARISON_SET:
            raise ValueError(
                f"each set of prompt {q['prompt']!r} needs 1 to {MAX_COMPARISON_SET} images, got {images!r}"
            )
        for sha in images:
            check_sha(sha)
    if len(sets[0]) != len(sets[1]):
        raise ValueError(
            f"the sets of prompt {q['prompt']!r} have {len(sets[0])} and {len(sets[1])} images; "
            "a fair comparison shows as many of each"
        )
    for images in sets:  # one image may be in both sets, not twice in one
        if len(set(images)) != len(images):
            raise ValueError(f"an image appears twice in one set of prompt {q['prompt']!r}")


def _prompts_and_images(s: Session, queries: list[dict[str, Any]]) -> tuple[dict[str, int], dict[str, int]]:
    """The ids of the queries' prompts (text -> id) and images (sha256 -> id); ValueError for a prompt or
    an image not recorded in the run, or an image of another prompt than its query's."""
    prompt_ids: dict[str, int] = {}
    for chunk in _chunks(sorted({q["prompt"] for q in queries}), 500):
        prompt_ids.update(
            s.execute(select(PromptRow.text, PromptRow.id).where(PromptRow.text.in_(chunk))).all()
        )
    shas = sorted({sha for q in queries for sha in (*q["first"], *q["second"])})
    images: dict[str, tuple[int, int]] = {}
    for chunk in _chunks(shas, 500):
        rows = select(ImageRow.sha256, ImageRow.id, ImageRow.prompt_id).where(ImageRow.sha256.in_(chunk))
        images.update({sha: (i, p) for sha, i, p in s.execute(rows)})
    for q in queries:
        if q["prompt"] not in prompt_ids:
            raise ValueError(f"unknown prompt {q['prompt']!r}: add_prompts it first")
        for sha in (*q["first"], *q["second"]):
            if sha not in images:
                raise ValueError(f"image {sha} is not recorded in the run: add_images it first")
            if images[sha][1] != prompt_ids[q["prompt"]]:
                raise ValueError(f"image {sha} is not an image of prompt {q['prompt']!r}")
    return prompt_ids, {sha: i for sha, (i, _) in images.items()}


def _lock_queries(s: Session, query_ids: list[int]) -> dict[int, tuple[str, int]]:
    """{query id: (first_shown_as, raters_per_query)} of these queries, whose rows are locked for the
    transaction (PostgreSQL; SQLite's write lock serializes anyway); ValueError for an unknown id."""
    queries: dict[int, tuple[str, int]] = {}
    for chunk in _chunks(query_ids, 500):
        locked = (
            select(ComparisonQueryRow.id, ComparisonQueryRow.first_shown_as, ComparisonRow.raters_per_query)
            .join(ComparisonRow, ComparisonQueryRow.comparison_id == ComparisonRow.id)
            .where(ComparisonQueryRow.id.in_(chunk))
            .order_by(ComparisonQueryRow.id)  # one lock order: no deadlock between two writers
            .with_for_update(of=ComparisonQueryRow)
        )
        queries.update({i: (shown, wanted) for i, shown, wanted in s.execute(locked)})
    unknown = [q for q in query_ids if q not in queries]
    if unknown:
        raise ValueError(f"unknown comparison query id {unknown[0]}")
    return queries


def _query_states(s: Session, labeler_id: int) -> list[QueryState]:
    """The :class:`QueryState` of every comparison query for this rater (expired leases already removed),
    in query id order; one statement, so one snapshot (``leases.with_taken``)."""
    q = (
        select(ComparisonQueryRow.id, ComparisonQueryRow.comparison_id, ComparisonRow.raters_per_query)
        .join(ComparisonRow, ComparisonQueryRow.comparison_id == ComparisonRow.id)
        .order_by(ComparisonQueryRow.id)
    )
    rows = s.execute(with_taken(q, QUERIES, labeler_id, ComparisonQueryRow.id))
    return [
        QueryState(i, c, int(n_votes), int(n_leased), int(wanted), mine_state(voted, leased, "voted"))
        for i, c, wanted, n_votes, n_leased, voted, leased in rows
    ]
