"""The labeling web app through FastAPI's TestClient: roles, input validation, undo, assignment, pages."""

import argparse
import io
import json
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from PIL import Image

from t2ialign.label import auth
from t2ialign.label.app import MAX_BODY_BYTES, create_app
from t2ialign.label.assignment import needs_label_from, pick_screen
from t2ialign.label.cli_serve import add_commands
from t2ialign.store import ImageState, LabelRow, LeaseRow, Store
from t2ialign.world.prompts import Prompt, PromptSpec, build_prompt_set

ADMIN_SECRET = "admin-secret-for-tests-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_SECRET}"}


def png_bytes(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (i % 256, i // 256 % 256, 7)).save(buf, format="PNG")
    return buf.getvalue()


def make_run(run_dir, n_prompts=2, per_prompt=3, prompts=None) -> list[int]:
    """A run with ``per_prompt`` small solid-colour images (role human) for each prompt; their ids."""
    prompts = prompts or build_prompt_set()[:n_prompts]
    with Store.open(run_dir) as store:
        store.add_prompts(prompts)
        records = []
        for i, p in enumerate(prompts):
            for j in range(per_prompt):
                sha = store.put_image_bytes(png_bytes(i * per_prompt + j))
                records.append(
                    dict(sha256=sha, prompt_text=p.text, model_id="test", seed=j, sampler={}, role="human")
                    | dict(width=8, height=8)
                )
        return store.add_images(records)


class Clock:
    def __init__(self):
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def run(tmp_path):
    path = tmp_path / "run"
    make_run(path)
    return path


@pytest.fixture
def app(run, clock):
    app = create_app(run, ADMIN_SECRET, k=2, lease_seconds=60, clock=clock, login_attempts=1000)
    yield app
    app.state.store.close()


@pytest.fixture
def client(app):
    with TestClient(app) as c:
        yield c


def new_labeler(client, name) -> dict:
    r = client.post("/api/admin/labelers", json={"name": name}, headers=ADMIN)
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


def lease(client, headers) -> list[int]:
    """The ids of the labeler's next screen, leased to them (labels are accepted only for leased work)."""
    return [im["id"] for im in client.get("/api/next", headers=headers).json()["images"]]


def labels(app) -> list[tuple[int, int, str]]:
    with app.state.store.session() as s:
        return [
            tuple(r) for r in s.execute(sa.select(LabelRow.image_id, LabelRow.labeler_id, LabelRow.value))
        ]


def image_ids(app) -> list[int]:
    return [im["id"] for im in app.state.store.list_images()]


# --- accounts ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "secret, match", [("", "no admin secret"), ("   \n", "no admin secret"), ("short", "16")]
)
def test_no_server_without_a_proper_admin_secret(run, secret, match):
    with pytest.raises(ValueError, match=match):
        create_app(run, secret)


def test_cli_serve_refuses_to_start_without_an_admin_secret(run, monkeypatch, capsys):
    from t2ialign.cli import main

    monkeypatch.delenv("T2IALIGN_ADMIN_SECRET", raising=False)
    assert main(["label", "serve", str(run), "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert "no admin secret" in err and "T2IALIGN_ADMIN_SECRET" in err and "--admin-secret-file" in err
    assert main(["label", "serve", str(run), "--admin-secret-file", str(run / "missing")]) == 2
    assert "cannot read --admin-secret-file" in capsys.readouterr().err


def test_cli_add_labeler_prints_a_token_that_signs_in(run, capsys, clock):
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="cmd", required=True))
    args = parser.parse_args(["add-labeler", str(run), "ann"])
    assert args.func(args) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    with Store.open(run) as store:
        acc = auth.authenticate(store, token)
        assert acc is not None and acc.name == "ann" and not acc.is_admin
        row = store.labeler_by_token_hash(auth.hash_token(token))
        assert row["token_hash"] != token and len(row["token_hash"]) == 64  # stored hashed
    with pytest.raises(ValueError, match="reserved"):
        args = parser.parse_args(["add-labeler", str(run), "admin"])
        args.func(args)
    with pytest.raises(ValueError, match="no run at"):
        args = parser.parse_args(["add-labeler", str(run / "nope"), "bob"])
        args.func(args)


def test_a_new_admin_secret_replaces_the_old_one(run, clock):
    app = create_app(run, ADMIN_SECRET)
    app.state.store.close()
    app = create_app(run, "another-admin-secret-0123456789")
    with TestClient(app) as c:
        assert c.get("/api/me", headers=ADMIN).status_code == 401
        r = c.get("/api/me", headers={"Authorization": "Bearer another-admin-secret-0123456789"})
        assert r.json() == {"name": "admin", "is_admin": True}


def test_admin_creates_accounts(client):
    ann = new_labeler(client, "ann")
    assert client.get("/api/me", headers=ann).json() == {"name": "ann", "is_admin": False}
    r = client.post("/api/admin/labelers", json={"name": "ann"}, headers=ADMIN)
    assert r.status_code == 409 and "already exists" in r.json()["detail"]
    for bad in ("admin", "a b", "<b>x</b>", ""):
        r = client.post("/api/admin/labelers", json={"name": bad}, headers=ADMIN)
        assert r.status_code == 422, bad


def test_login_sets_a_cookie_for_the_page(client):
    ann = new_labeler(client, "ann")
    token = ann["Authorization"].removeprefix("Bearer ")
    assert "Sign in" in client.get("/").text
    assert client.post("/api/login", json={"token": "wrong"}).status_code == 401
    r = client.post("/api/login", json={"token": token})
    assert r.status_code == 200
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    page = client.get("/")
    assert 'id="prompt"' in page.text and "ann" in page.text
    assert "script-src 'nonce-" in page.headers["content-security-policy"]
    assert client.get("/api/me").json()["name"] == "ann"
    client.post("/api/logout")
    assert client.get("/api/me").status_code == 401


# --- the role x endpoint matrix -----------------------------------------------------------------------------


def endpoints(image_id: int, sha: str) -> list[tuple[str, str, dict | None, bool]]:
    """(method, path, json body, admin only) of every authenticated endpoint."""
    return [
        ("GET", "/api/me", None, False),
        ("GET", "/api/next", None, False),
        ("GET", "/api/labels", None, False),
        ("POST", "/api/labels", {"image_id": image_id, "value": "good"}, False),
        ("DELETE", f"/api/labels/{image_id}", None, False),
        ("POST", "/api/undo", None, False),
        ("GET", f"/images/{sha}.png", None, False),
        ("GET", "/api/admin/stats", None, True),
        ("GET", "/api/admin/export.jsonl", None, True),
        ("POST", "/api/admin/labelers", {"name": "newbie"}, True),
    ]


def test_role_endpoint_matrix(client, app):
    ann = new_labeler(client, "ann")
    image = app.state.store.list_images()[0]
    for method, path, body, admin_only in endpoints(image["id"], image["sha256"]):
        for headers in ({}, {"Authorization": "Bearer not-a-token"}, {"Authorization": "Basic abc"}):
            r = client.request(method, path, json=body, headers=headers)
            assert r.status_code == 401, (method, path, headers, r.text)
            assert r.headers["www-authenticate"] == "Bearer"
        r = client.request(method, path, json=body, headers=ann)
        if admin_only:
            assert r.status_code == 403 and r.json()["detail"] == "only the admin may do this", (method, path)
        else:
            # DELETE and undo: ann has no label yet, except the one the POST above made
            assert r.status_code in (200, 404), (method, path, r.text)
    for method, path, body, admin_only in endpoints(image["id"], image["sha256"]):
        if admin_only:
            r = client.request(method, path, json=body, headers=ADMIN)
            assert r.status_code in (200, 201), (path, r.text)
    assert client.get("/admin", headers=ann).status_code == 403
    assert client.get("/admin").status_code == 401
    assert "Sign in" in client.get("/admin").text


def test_labelers_see_and_change_only_their_own_labels(client, app):
    ann, bob = new_labeler(client, "ann"), new_labeler(client, "bob")
    img, other = lease(client, bob)[:2]
    assert lease(client, ann)[:2] == [img, other]  # k = 2: both are sent to the same screen
    assert client.post("/api/labels", json={"image_id": img, "value": "good"}, headers=bob).status_code == 200
    assert client.get("/api/labels", headers=ann).json() == []
    assert [r["image_id"] for r in client.get("/api/labels", headers=bob).json()] == [img]
    r = client.delete(f"/api/labels/{img}", headers=ann)
    assert r.status_code == 404 and "no label" in r.json()["detail"]
    assert client.post("/api/undo", headers=ann).status_code == 404
    # ann's own answer on the same image is a second label; bob's stays as it was
    client.post("/api/labels", json={"image_id": img, "value": "bad"}, headers=ann)
    client.post("/api/labels", json={"image_id": other, "value": "skip"}, headers=ann)
    assert client.post("/api/undo", headers=ann).json()["undone"] == {"image_id": other, "value": "skip"}
    assert client.delete(f"/api/labels/{img}", headers=ann).status_code == 200
    assert [v for _, _, v in labels(app)] == ["good"]
    assert [r["value"] for r in client.get("/api/labels", headers=bob).json()] == ["good"]


# --- malformed input: 4xx with a clear message, nothing written ------------------------------------------


@pytest.mark.parametrize(
    "content, headers, status, message",
    [
        ('{"image_id": 1, "value": "good"', {"Content-Type": "application/json"}, 422, "JSON decode error"),
        (
            '{"image_id": 1, "value": "great"}',
            {"Content-Type": "application/json"},
            422,
            "'good', 'bad' or 'skip'",
        ),
        (
            '{"image_id": 1, "value": "GOOD"}',
            {"Content-Type": "application/json"},
            422,
            "'good', 'bad' or 'skip'",
        ),
        (
            '{"image_id": "1", "value": "good"}',
            {"Content-Type": "application/json"},
            422,
            "image_id: Input should be",
        ),
        ('{"image_id": 1.0, "value": "good"}', {"Content-Type": "application/json"}, 422, "image_id"),
        (
            '{"image_id": 0, "value": "good"}',
            {"Content-Type": "application/json"},
            422,
            "greater than or equal to 1",
        ),
        (
            '{"image_id": 99999, "value": "good"}',
            {"Content-Type": "application/json"},
            404,
            "unknown image id 99999",
        ),
        ('{"image_id": 1e30, "value": "good"}', {"Content-Type": "application/json"}, 422, "image_id"),
        ('{"image_id": 1}', {"Content-Type": "application/json"}, 422, "value: Field required"),
        (
            '{"image_id": 1, "value": "good", "labeler_id": 2}',
            {"Content-Type": "application/json"},
            422,
            "labeler_id: Extra",
        ),
        ("[1, 2]", {"Content-Type": "application/json"}, 422, "valid dictionary"),
        ("image_id=1&value=good", {"Content-Type": "application/x-www-form-urlencoded"}, 422, "dictionary"),
        (
            '{"image_id": 1, "value": "good", "pad": "' + "x" * MAX_BODY_BYTES + '"}',
            {},
            413,
            "larger than 16384",
        ),
    ],
)
def test_malformed_labels_are_refused_and_write_nothing(client, app, content, headers, status, message):
    ann = new_labeler(client, "ann")
    r = client.post("/api/labels", content=content, headers={**ann, **headers})
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]
    assert labels(app) == []


def test_an_oversized_chunked_body_is_refused(client, app):
    ann = new_labeler(client, "ann")

    def chunks():
        for _ in range(10):
            yield b"x" * 4096

    r = client.post("/api/labels", content=chunks(), headers={**ann, "Content-Type": "application/json"})
    assert r.status_code == 413 and "larger than" in r.json()["detail"]
    assert labels(app) == []


def test_only_images_to_label_take_labels(client, app, run):
    # an evaluation image is in the run but is not offered for labeling
    store = app.state.store
    sha = store.put_image_bytes(png_bytes(999))
    eval_id = store.add_image(sha, store.list_prompts()[0]["text"], "test", 0, {}, "eval", width=8, height=8)
    ann = new_labeler(client, "ann")
    r = client.post("/api/labels", json={"image_id": eval_id, "value": "good"}, headers=ann)
    assert r.status_code == 404 and labels(app) == []


@pytest.mark.parametrize(
    "path",
    [
        "/images/..%2Ft2ialign.db",
        "/images/..%2F..%2Fetc%2Fpasswd",
        "/images/%2e%2e%2ft2ialign.db",
        "/images/t2ialign.db",
        "/images/" + "A" * 64 + ".png",
        "/images/" + "a" * 63 + ".png",
        "/images/" + "0" * 64 + ".png",  # well-formed, no such file
        "/images/" + "0" * 64,
    ],
)
def test_image_urls_cannot_leave_the_images_folder(client, app, path):
    ann = new_labeler(client, "ann")
    r = client.get(path, headers=ann)
    assert r.status_code == 404, path
    assert "SQLite" not in r.text and "root:" not in r.text


def test_images_are_served_to_signed_in_users(client, app):
    ann = new_labeler(client, "ann")
    image = app.state.store.list_images()[0]
    r = client.get(f"/images/{image['sha256']}.png", headers=ann)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content == app.state.store.image_path(image["sha256"]).read_bytes()


def test_html_in_a_prompt_is_shown_escaped(tmp_path, clock):
    text = '<script>alert("x")</script><img src=x onerror=alert(1)> & two circles'
    make_run(tmp_path / "run", prompts=[Prompt(text, "count", "seen", PromptSpec("circle", count=2))])
    app = create_app(tmp_path / "run", ADMIN_SECRET, clock=clock)
    with TestClient(app) as c:
        page = c.get("/", headers=ADMIN).text
        api = c.get("/api/next", headers=ADMIN).json()
    assert (
        "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt; &amp; two"
        in page
    )
    assert "<script>alert" not in page and "<img src=x" not in page
    assert api["prompt"]["text"] == text  # JSON carries the raw text; only the page renders it


def test_the_database_commits_durably(app):
    with app.state.store.engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL: fsync at every commit


# --- labeling, resend and undo --------------------------------------------------------------------------------


def test_a_resend_makes_one_label_and_a_new_answer_replaces_it(client, app):
    ann = new_labeler(client, "ann")
    img = lease(client, ann)[0]
    for value in ("good", "good", "bad"):
        r = client.post("/api/labels", json={"image_id": img, "value": value}, headers=ann)
        assert r.json() == {"image_id": img, "value": value}
    assert [v for _, _, v in labels(app)] == ["bad"]


def test_undo_brings_the_image_back(client, app, clock):
    ann = new_labeler(client, "ann")
    screen = client.get("/api/next", headers=ann).json()
    ids = [im["id"] for im in screen["images"]]
    for i in ids:
        client.post("/api/labels", json={"image_id": i, "value": "good"}, headers=ann)
        clock.now += timedelta(seconds=1)
    assert client.get("/api/next", headers=ann).json()["prompt"]["id"] != screen["prompt"]["id"]
    r = client.post("/api/undo", headers=ann)
    assert r.json() == {"undone": {"image_id": ids[-1], "value": "good"}}
    assert sorted(i for i, _, _ in labels(app)) == ids[:-1]
    # the undone image is still leased to ann, so her next screen is that image again
    assert [im["id"] for im in client.get("/api/next", headers=ann).json()["images"]] == [ids[-1]]
    assert client.get("/api/next", headers=ann).json()["progress"]["mine"] == 2


# --- assignment ------------------------------------------------------------------------------------------------


def st(image_id, prompt_id, n_labels=0, n_leased=0, mine=None) -> ImageState:
    return ImageState(image_id, prompt_id, n_labels, n_leased, mine)


def test_needs_label_from():
    assert needs_label_from(st(1, 1), k=1)
    assert not needs_label_from(st(1, 1, n_labels=1), k=1)
    assert not needs_label_from(st(1, 1, n_labels=1, n_leased=1), k=2)
    assert needs_label_from(st(1, 1, n_labels=1), k=2)
    assert not needs_label_from(st(1, 1, mine="labeled"), k=3)
    assert not needs_label_from(st(1, 1, mine="leased"), k=3)


def test_pick_screen_takes_up_to_three_images_of_one_prompt():
    states = [st(i, 1 + (i - 1) // 4) for i in range(1, 9)]  # prompts 1, 2 with 4 images each
    assert pick_screen(states, k=3) == [1, 2, 3]
    assert pick_screen(states, k=3, per_screen=5) == [1, 2, 3, 4]  # never two prompts on a screen


def test_pick_screen_finishes_started_images_first():
    states = [st(1, 1), st(2, 1), st(3, 2, n_labels=1), st(4, 2), st(5, 3, n_leased=2)]
    assert pick_screen(states, k=3) == [5]  # prompt 3's image is closest to k
    assert pick_screen(states, k=2) == [3, 4]  # image 5 is full with k=2


def test_pick_screen_resumes_the_labelers_own_leases():
    states = [st(1, 1), st(2, 2, mine="labeled"), st(3, 2, mine="leased"), st(4, 2, mine="leased")]
    assert pick_screen(states, k=3) == [3, 4]


def test_pick_screen_never_repeats_a_labelers_image_and_stops_when_done():
    states = [st(1, 1, mine="labeled"), st(2, 1, n_labels=2), st(3, 1, n_labels=1, n_leased=1)]
    assert pick_screen(states, k=2) == []  # 2 and 3 have two labelers each, 1 is ann's own
    assert pick_screen(states, k=3) == [2, 3]
    assert pick_screen([], k=3) == []


def test_assignment_gives_each_image_k_distinct_labelers(client, app, clock):
    # k=2, 2 prompts x 3 images: ann and bob get prompt 1's images, cat and dan prompt 2's, eve nothing
    ann, bob, cat, dan, eve = (new_labeler(client, n) for n in ("ann", "bob", "cat", "dan", "eve"))
    first = client.get("/api/next", headers=ann).json()
    assert len(first["images"]) == 3
    assert client.get("/api/next", headers=ann).json()["images"] == first["images"]  # a reload: the same
    assert client.get("/api/next", headers=bob).json()["images"] == first["images"]
    third = client.get("/api/next", headers=cat).json()
    assert third["prompt"]["id"] != first["prompt"]["id"] and len(third["images"]) == 3
    assert client.get("/api/next", headers=dan).json()["images"] == third["images"]
    assert client.get("/api/next", headers=eve).json() == {
        "prompt": None,
        "images": [],
        "progress": {"images": 6, "labeled_k_times": 0, "labels": 0, "mine": 0},
    }


def test_leases_expire_so_no_image_is_stranded(client, app, clock):
    ann, bob, cat, dan, eve = (new_labeler(client, n) for n in ("ann", "bob", "cat", "dan", "eve"))
    held = [im["id"] for im in client.get("/api/next", headers=ann).json()["images"]]
    for who in (bob, cat, dan):
        client.get("/api/next", headers=who)  # bob holds prompt 1 with ann; cat and dan hold prompt 2
    client.post("/api/labels", json={"image_id": held[1], "value": "good"}, headers=ann)  # and walks away
    assert client.get("/api/next", headers=eve).json()["images"] == []
    clock.now += timedelta(seconds=59)
    assert client.get("/api/next", headers=eve).json()["images"] == []
    clock.now += timedelta(seconds=2)  # every lease (60 s) has expired
    got = [im["id"] for im in client.get("/api/next", headers=eve).json()["images"]]
    # the image ann labeled is the closest to k, so eve gets its prompt, that image first
    assert got == [held[1], held[0], held[2]]
    with app.state.store.session() as s:
        leases = s.execute(sa.select(LeaseRow.labeler_id, LeaseRow.image_id)).all()
    assert len(leases) == 3  # the expired ones were dropped
    # ann comes back: her labeled image is not offered again, the other two of the prompt are
    assert [im["id"] for im in client.get("/api/next", headers=ann).json()["images"]] == [held[0], held[2]]


def test_a_labeled_image_is_never_assigned_again_to_its_labeler(client, app, clock):
    ann = new_labeler(client, "ann")
    seen = []
    for _ in range(5):  # bounded: 2 prompts, so 2 screens and then nothing
        screen = client.get("/api/next", headers=ann).json()
        if not screen["images"]:
            break
        for im in screen["images"]:
            seen.append(im["id"])
            client.post("/api/labels", json={"image_id": im["id"], "value": "good"}, headers=ann)
        clock.now += timedelta(hours=1)  # even after the leases expire
    assert sorted(seen) == sorted(image_ids(app))


# --- admin -----------------------------------------------------------------------------------------------------


def test_admin_export_streams_one_json_object_per_label(client, app):
    ann = new_labeler(client, "ann")
    ids = lease(client, ann)
    for i, v in zip(ids[:3], ("good", "bad", "skip"), strict=True):
        client.post("/api/labels", json={"image_id": i, "value": v}, headers=ann)
    r = client.get("/api/admin/export.jsonl", headers=ADMIN)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    rows = [json.loads(line) for line in r.text.splitlines()]
    assert [(x["labeler"], x["label"]) for x in rows] == [("ann", "good"), ("ann", "bad"), ("ann", "skip")]
    images = {im["id"]: im for im in app.state.store.list_images()}
    assert (
        rows[0]["image_sha256"] == images[ids[0]]["sha256"] and rows[0]["prompt"] == images[ids[0]]["prompt"]
    )
    assert {"category", "model_id", "seed", "created_at", "updated_at"} <= set(rows[0])


def test_admin_stats_and_page(client, app):
    # label_summary comes from t2ialign.label.stats; here only its access and shape are checked
    ann = new_labeler(client, "ann")
    client.post("/api/labels", json={"image_id": image_ids(app)[0], "value": "good"}, headers=ann)
    r = client.get("/api/admin/stats", headers=ADMIN)
    assert r.status_code == 200 and isinstance(r.json(), dict)
    page = client.get("/admin", headers=ADMIN)
    assert page.status_code == 200 and "Fleiss" in page.text and "export.jsonl" in page.text
