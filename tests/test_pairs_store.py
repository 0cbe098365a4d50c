"""The store's pairwise preferences (``store.preferences``): pairs, leased and imported answers, listing."""

import io
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from PIL import Image
from sqlalchemy.exc import IntegrityError

from t2ialign.store import NotLeased, PreferencePairRow, PreferenceRow, Store
from t2ialign.world.prompts import build_prompt_set

NOW = datetime(2026, 1, 1, tzinfo=UTC)
LATER = NOW + timedelta(minutes=10)


def png(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (i, 3, 7)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def run(tmp_path):
    """A run with two prompts and three images each: (store, prompt texts, {prompt: [sha256, ...]})."""
    with Store.open(tmp_path / "run") as store:
        prompts = build_prompt_set()[:2]
        store.add_prompts(prompts)
        records = [
            dict(sha256=store.put_image_bytes(png(3 * i + j)), prompt_text=p.text, model_id="m", seed=j)
            | dict(sampler={}, role="human", width=8, height=8)
            for i, p in enumerate(prompts)
            for j in range(3)
        ]
        store.add_images(records)
        shas = {p.text: [r["sha256"] for r in records if r["prompt_text"] == p.text] for p in prompts}
        yield store, [p.text for p in prompts], shas


def lease(store, rater, pairs, now=NOW):
    return store.assign_pairs(rater, now, now + timedelta(minutes=10), lambda states: pairs)


def test_pairs_are_unordered_and_validated(run):
    store, texts, shas = run
    p, (x, y, z) = texts[0], shas[texts[0]]
    ids = store.add_pairs([(p, y, x), (p, x, z), (p, x, y)])
    assert ids[0] == ids[2] != ids[1]
    assert store.add_pairs([(p, x, y)], source="import:other") == [ids[0]]  # keeps id and source
    pairs = store.preference_pairs()
    assert [(q["image_a"], q["image_b"], q["source"]) for q in pairs] == [(x, y, "app"), (x, z, "app")]
    assert store.preference_pairs(source="import:other") == []
    other = shas[texts[1]][0]
    with pytest.raises(ValueError, match="not an image of prompt"):
        store.add_pairs([(p, x, other)])
    with pytest.raises(ValueError, match="two distinct images"):
        store.add_pairs([(p, x, x)])
    with pytest.raises(ValueError, match="not recorded"):
        store.add_pairs([(p, x, "0" * 64)])
    with pytest.raises(ValueError, match="unknown prompt"):
        store.add_pairs([("no such prompt", x, y)])
    with pytest.raises(ValueError, match="invalid pair source"):
        store.add_pairs([(p, x, y)], source="Import Pick")
    assert len(store.preference_pairs()) == 2


def test_the_database_keeps_one_row_per_unordered_pair(run):
    store, texts, shas = run
    (pid,) = store.add_pairs([(texts[0], *shas[texts[0]][:2])])
    (row,) = store.preference_pairs(pair_ids=[pid])
    with pytest.raises(IntegrityError, match="CHECK"), store.session() as s:  # the reverse order
        s.add(
            PreferencePairRow(
                prompt_id=row["prompt_id"],
                image_a_id=row["image_b_id"],
                image_b_id=row["image_a_id"],
                source="app",
            )
        )
    lab = store.add_labeler("r1")
    store.add_preferences([(pid, lab, "A")])
    with pytest.raises(IntegrityError, match="CHECK"), store.session() as s:
        s.execute(sa.update(PreferenceRow).values(choice="left"))


def test_leased_answers_follow_the_lease_and_k(run):
    store, texts, shas = run
    (pid,) = store.add_pairs([(texts[0], *shas[texts[0]][:2])])
    r1, r2, r3 = (store.add_labeler(n) for n in ("r1", "r2", "r3"))
    with pytest.raises(NotLeased, match="not leased"):
        store.add_preferences([(pid, r1, "A")], leased_at=NOW, k=2)
    assert lease(store, r1, [pid]) == [pid]
    assert store.add_preferences([(pid, r1, "A")], leased_at=NOW, k=2) == {
        "new": 1,
        "replaced": 0,
        "unchanged": 0,
    }
    # a change of one's own answer needs no lease; a resend changes nothing
    assert store.add_preferences([(pid, r1, "tie")], leased_at=LATER + LATER.resolution, k=2)["replaced"] == 1
    assert store.add_preferences([(pid, r1, "tie")], leased_at=NOW, k=2)["unchanged"] == 1
    lease(store, r2, [pid])
    lease(store, r3, [pid])
    store.add_preferences([(pid, r2, "B")], leased_at=NOW, k=2)
    with pytest.raises(NotLeased, match="has all the 2 preferences"):
        store.add_preferences([(pid, r3, "B")], leased_at=NOW, k=2)
    with pytest.raises(NotLeased, match="not leased"):  # a late answer after the lease expired
        store.add_preferences([(pid, r3, "B")], leased_at=LATER, k=3)
    states = {}
    store.assign_pairs(r3, NOW, LATER, lambda st: states.setdefault("s", st) and [])
    (st,) = states["s"]
    assert (st.n_answers, st.n_leased, st.mine) == (2, 0, "leased")
    assert store.pairs_progress(r1, k=2) == {"pairs": 1, "complete": 1, "answers": 2, "mine": 1}


def test_imported_answers_name_their_raters_and_orient_choices(run):
    store, texts, shas = run
    p, (x, y, z) = texts[0], shas[texts[0]]
    rows = [(p, y, x, "1@pick", "A"), (p, x, z, "1@pick", "tie"), (p, y, x, "2@pick", "B")]
    counts = store.import_preferences(rows, source="import:pick")
    assert counts == {"pairs": 2, "raters_new": 2, "new": 3, "replaced": 0, "unchanged": 0}
    assert store.import_preferences(rows, source="import:pick")["unchanged"] == 3
    got = [
        (r["labeler"], r["image_a"], r["image_b"], r["choice"], r["preferred"]) for r in store.preferences()
    ]
    assert got == [("1@pick", x, y, "B", y), ("1@pick", x, z, "tie", None), ("2@pick", x, y, "A", x)]
    assert {r["source"] for r in store.preferences()} == {"import:pick"}
    assert store.preferences(source="app") == []
    store.set_excluded("2@pick", True)
    assert [r["labeler"] for r in store.preferences(include_excluded=False)] == ["1@pick", "1@pick"]
    page = store.preferences(after_id=store.preferences()[0]["id"], limit=1)
    assert [r["choice"] for r in page] == ["tie"]
    store.add_labeler("person", token_hash="h")
    with pytest.raises(ValueError, match="labeler of the app"):
        store.import_preferences([(p, x, y, "person", "A")], source="import:pick")
    with pytest.raises(ValueError, match="invalid rater name"):
        store.import_preferences([(p, x, y, "pick:1", "A")], source="import:pick")
    with pytest.raises(ValueError, match="twice, otherwise"):
        store.import_preferences([(p, x, y, "3@pick", "A"), (p, y, x, "3@pick", "A")], source="import:pick")
    assert "3@pick" not in {r["labeler"] for r in store.preferences()}  # all or nothing
