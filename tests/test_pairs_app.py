"""The labeling app's pairwise mode (/pairs) through FastAPI's TestClient: leases, k, the shown sides,
sign-in, CSRF and Host checks, as the binary labels' tests check them."""

import io
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select

from t2ialign.label.app import create_app
from t2ialign.label.pairs import create_pairs
from t2ialign.store import LabelerRow, Store
from t2ialign.world.prompts import Prompt, PromptSpec, build_prompt_set

ADMIN_SECRET = "admin-secret-for-tests-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_SECRET}"}


def png_bytes(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (i % 256, 40, 7)).save(buf, format="PNG")
    return buf.getvalue()


def make_run(run_dir, prompts=None, per_prompt=3) -> None:
    """A run with ``per_prompt`` images of each prompt (role human) and every pair of them (source app)."""
    prompts = prompts or build_prompt_set()[:2]
    with Store.open(run_dir) as store:
        store.add_prompts(prompts)
        store.add_images(
            [
                dict(sha256=store.put_image_bytes(png_bytes(i * per_prompt + j)), prompt_text=p.text)
                | dict(model_id="test", seed=j, sampler={}, role="human", width=8, height=8)
                for i, p in enumerate(prompts)
                for j in range(per_prompt)
            ]
        )
        create_pairs(store)


class Clock:
    def __init__(self):
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def app(tmp_path, clock):
    make_run(tmp_path / "run")
    app = create_app(tmp_path / "run", ADMIN_SECRET, k=2, lease_seconds=60, clock=clock, login_attempts=1000)
    yield app
    app.state.store.close()


@pytest.fixture
def client(app):
    with TestClient(app) as c:
        yield c


def new_rater(client, name) -> dict:
    r = client.post("/api/admin/labelers", json={"name": name}, headers=ADMIN)
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


def next_pair(client, headers) -> dict | None:
    r = client.get("/api/pairs/next", headers=headers)
    assert r.status_code == 200, r.text
    return r.json()["pair"]


def answer(client, headers, pair_id, value, **kw):
    return client.post(
        "/api/pairs/answers", json={"pair_id": pair_id, "answer": value}, headers={**headers, **kw}
    )


def test_each_pair_gets_k_distinct_raters_and_no_rater_sees_a_pair_twice(client, app):
    raters = [new_rater(client, f"r{i}") for i in range(3)]
    n_pairs = len(app.state.store.preference_pairs())
    seen: dict[int, list[int]] = {}
    for i, r in enumerate(raters):
        while (pair := next_pair(client, r)) is not None:
            assert i not in seen.get(pair["id"], []), "a rater was handed a pair twice"
            seen.setdefault(pair["id"], []).append(i)
            assert answer(client, r, pair["id"], "tie").json()["status"] == "new"
    assert len(seen) == n_pairs and all(len(v) == 2 for v in seen.values())  # k = 2, then no more
    counts = {}
    for row in app.state.store.preferences():
        counts[row["pair_id"]] = counts.get(row["pair_id"], 0) + 1
    assert set(counts.values()) == {2}
    progress = client.get("/api/pairs/next", headers=raters[2]).json()["progress"]
    assert progress == {"pairs": n_pairs, "complete": n_pairs, "answers": 2 * n_pairs, "mine": 0}


def test_the_answer_as_shown_is_stored_as_the_image_it_names(client, app):
    swapped = set()
    for i in range(8):  # several raters: both sides are drawn
        r = new_rater(client, f"r{i}")
        pair = next_pair(client, r)
        assert answer(client, r, pair["id"], "A").status_code == 200
        stored = [p for p in app.state.store.preferences() if p["labeler"] == f"r{i}"]
        assert f"/images/{stored[0]['preferred']}.png" == pair["A"]  # the image shown on the left
        swapped.add(pair["A"] != f"/images/{stored[0]['image_a']}.png")
    assert swapped == {True, False}  # some raters saw image_b on the left


def test_answers_need_a_lease_and_never_exceed_k(client, app, clock):
    ann, bob, cy = (new_rater(client, n) for n in ("ann", "bob", "cy"))
    pair_id = app.state.store.preference_pairs()[0]["id"]
    r = answer(client, ann, pair_id, "A")
    assert r.status_code == 409 and "not leased" in r.json()["detail"]
    assert answer(client, ann, 10**6, "A").status_code == 404
    assert answer(client, ann, pair_id, "left").status_code == 422
    first = next_pair(client, ann)
    clock.now += timedelta(seconds=61)  # the lease expired: a late answer is refused
    assert answer(client, ann, first["id"], "A").status_code == 409
    again = next_pair(client, ann)  # and the pair is handed out anew
    assert again["id"] == first["id"] and answer(client, ann, again["id"], "B").status_code == 200
    assert answer(client, ann, again["id"], "tie").json()["status"] == "replaced"  # one's own: a change
    assert answer(client, ann, again["id"], "tie").json()["status"] == "unchanged"
    assert next_pair(client, bob)["id"] == again["id"]
    cy_pair = next_pair(client, cy)
    assert cy_pair["id"] != again["id"]  # ann answered, bob holds the lease: k = 2 taken
    with app.state.store.session() as s:
        cy_id = s.scalar(select(LabelerRow.id).where(LabelerRow.name == "cy"))
    expires = clock.now + timedelta(seconds=60)
    lease_cy = app.state.store.assign_pairs(cy_id, clock.now, expires, lambda st: [again["id"]])
    assert lease_cy == [again["id"]]  # a stale lease forced on cy, as a race would leave it
    assert answer(client, bob, again["id"], "A").status_code == 200
    r = answer(client, cy, again["id"], "A")
    assert r.status_code == 409 and "has all the 2 preferences" in r.json()["detail"]


def test_sign_in_csrf_and_host_are_enforced(client, app, tmp_path):
    assert client.get("/api/pairs/next").status_code == 401
    assert answer(client, {}, 1, "A").status_code == 401
    assert client.get("/pairs").status_code == 200 and "Sign in" in client.get("/pairs").text
    ann = new_rater(client, "ann")
    pair = next_pair(client, ann)
    token = ann["Authorization"].removeprefix("Bearer ")
    assert client.post("/api/login", json={"token": token}).status_code == 200
    for hostile in ({"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
        r = answer(client, {}, pair["id"], "A", **hostile)
        assert r.status_code == 403 and "refused" in r.json()["detail"]
    assert app.state.store.preferences() == []
    same = {"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"}
    assert answer(client, {}, pair["id"], "A", **same).status_code == 200  # the page itself may
    hosted = create_app(tmp_path / "run", ADMIN_SECRET, allowed_hosts=("labels.example.org",))
    try:
        with TestClient(hosted, base_url="http://labels.example.org") as c:
            r = c.get("/api/pairs/next", headers={**ADMIN, "Host": "attacker.example"})
            assert r.status_code == 400 and "unknown Host" in r.json()["detail"]
    finally:
        hosted.state.store.close()


def test_the_page_shows_the_prompt_escaped_and_both_images(tmp_path, clock):
    spec = PromptSpec("circle", color="red")
    make_run(
        tmp_path / "run",
        prompts=[Prompt("<script>alert(1)</script> circle", None, "seen", spec)],
        per_prompt=2,
    )
    app = create_app(tmp_path / "run", ADMIN_SECRET, k=1, clock=clock)
    try:
        with TestClient(app) as c:
            c.post("/api/login", json={"token": ADMIN_SECRET})
            page = c.get("/pairs")
            assert page.status_code == 200
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text and "<script>alert" not in page.text
            assert page.text.count('<img src="/images/') == 2 and 'data-pair-id="' in page.text
            pair_id = int(page.text.split('data-pair-id="')[1].split('"')[0])
            assert c.post("/api/pairs/answers", json={"pair_id": pair_id, "answer": "tie"}).status_code == 200
            assert "Nothing left for you to compare" in c.get("/pairs").text
    finally:
        app.state.store.close()
