"""The one lease/quota rule of the store (``store.leases``), for images (labels) and comparison queries
(votes) alike: how far each item is for a rater, the serialized assignment, and the check of answers."""

import io
from datetime import UTC, datetime, timedelta

import pytest
from PIL import Image
from sqlalchemy import select

from t2ialign.store import ComparisonQueryRow, ImageRow, NotLeased, Store, VoteConflict
from t2ialign.store.leases import IMAGES, QUERIES, Taken, admit, mine_state, read_taken, with_taken
from t2ialign.world.prompts import build_prompt_set

NOW = datetime(2026, 1, 1, tzinfo=UTC)
LATER = NOW + timedelta(minutes=10)


def png(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (i, 3, 7)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def store(tmp_path):
    """A run with two prompts, two human images each, a comparison of one query per prompt (1 vs 1
    image), and three raters."""
    with Store.open(tmp_path / "run") as store:
        prompts = build_prompt_set()[:2]
        store.add_prompts(prompts)
        records = [
            dict(sha256=store.put_image_bytes(png(2 * i + j)), prompt_text=p.text, model_id="m", seed=j)
            | dict(sampler={}, role="human", width=8, height=8)
            for i, p in enumerate(prompts)
            for j in range(2)
        ]
        store.add_images(records)
        shas = [r["sha256"] for r in records]
        queries = [
            {"prompt": p.text, "first": [shas[2 * i]], "second": [shas[2 * i + 1]], "first_shown_as": "A"}
            for i, p in enumerate(prompts)
        ]
        store.add_comparison("c", "ft", "orig", 2, 0, queries)
        for name in ("r1", "r2", "r3"):
            store.add_labeler(name)
        yield store


def taken_rows(store, work, row, labeler_id):
    with store.session() as s:
        return s.execute(with_taken(select(row.id).order_by(row.id), work, labeler_id, row.id)).all()


def lease(store, work, rater, items, now=NOW):
    assign = store.assign_images if work is IMAGES else store.assign_query
    return assign(rater, now, now + timedelta(minutes=10), lambda states: items)


@pytest.mark.parametrize("work, row", [(IMAGES, ImageRow), (QUERIES, ComparisonQueryRow)])
def test_with_taken_counts_others_answers_and_leases_and_mine(store, work, row):
    first, second = [r[0] for r in taken_rows(store, work, row, 1)][:2]
    for rater, items in ((1, [first]), (2, [second]), (3, [first, second])):
        lease(store, work, rater, items)
    assert taken_rows(store, work, row, 1)[:2] == [(first, 0, 1, 0, 1), (second, 0, 2, 0, 0)]
    if work is IMAGES:
        store.set_labels([(second, 2, "good")], leased_at=NOW)
    else:
        store.add_votes([(second, 2, "A", "tie")], leased_at=NOW)
    # r2's lease no longer counts once r2 answered: their answer does
    assert taken_rows(store, work, row, 1)[:2] == [(first, 0, 1, 0, 1), (second, 1, 1, 0, 0)]
    assert taken_rows(store, work, row, 2)[:2] == [(first, 0, 2, 0, 0), (second, 0, 1, 1, 1)]


def test_assign_drops_expired_leases_and_refuses_an_unknown_pick(store):
    seen = []

    def look(states):
        seen.append({st.query_id: st.n_leased for st in states})
        return []

    assert lease(store, QUERIES, 1, [1]) == [1]
    store.assign_query(2, NOW, LATER, look)
    store.assign_query(2, LATER, LATER + timedelta(minutes=10), look)  # r1's lease expired at LATER
    assert seen == [{1: 1, 2: 0}, {1: 0, 2: 0}]
    with pytest.raises(ValueError, match="choose picked query 99, which is not a comparison query"):
        lease(store, QUERIES, 1, [99])
    with pytest.raises(ValueError, match="unknown labeler id 42"):
        lease(store, QUERIES, 42, [])


def test_read_taken_reads_answers_counts_and_active_leases(store):
    lease(store, IMAGES, 1, [1, 2])
    store.set_labels([(1, 1, "good")], leased_at=NOW)
    with store.session() as s:
        taken = read_taken(s, IMAGES, [1, 2, 3], NOW)
        assert taken.answers == {(1, 1): ("good",)}
        assert dict(taken.counts) == {1: 1}
        assert taken.leased == {(1, 1), (2, 1)}
        assert read_taken(s, IMAGES, [1, 2], LATER).leased == set()
        assert read_taken(s, IMAGES, [1, 2], None).leased == set()  # leases only for a leased answer


def test_admit_a_label_may_change_a_vote_is_final():
    taken = Taken(answers={(1, 7): ("good",)}, leased={(2, 7)})
    assert admit(IMAGES, taken, 1, 7, ("bad",), 1, leased=True) is False  # a change of their own label
    taken = Taken(answers={(1, 7): ("first", "tie")})
    assert admit(QUERIES, taken, 1, 7, ("first", "tie"), 1, leased=True) is False  # a resend
    with pytest.raises(VoteConflict, match="a vote is final"):
        admit(QUERIES, taken, 1, 7, ("second", "tie"), 1, leased=True)


@pytest.mark.parametrize("work, full", [(IMAGES, NotLeased), (QUERIES, VoteConflict)])
def test_admit_wants_a_lease_and_counts_up_to_wanted(work, full):
    taken = Taken(leased={(1, 7), (1, 8)})
    with pytest.raises(NotLeased, match=f"{work.words.noun} 1 is not leased to you .* {work.words.next_url}"):
        admit(work, taken, 1, 9, ("x",), 2, leased=True)
    assert admit(work, taken, 1, 9, ("x",), 2, leased=False)  # not the web app's path: no lease needed
    assert admit(work, taken, 1, 7, ("x",), 2, leased=True)
    with pytest.raises(full, match=f"has all the 2 {work.words.answers} it wants already") as e:
        admit(work, taken, 1, 8, ("x",), 2, leased=True)
    assert (e.type is NotLeased) == (work is IMAGES)
    assert admit(work, taken, 1, 8, ("x",), None, leased=True)  # None: any number (gold images)
    assert taken.counts[1] == 4


def test_mine_state():
    assert [mine_state(1, 1, "voted"), mine_state(0, 1, "voted"), mine_state(0, 0, "labeled")] == [
        "voted",
        "leased",
        None,
    ]
