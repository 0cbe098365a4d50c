"""Side-by-side human evaluation (paper Fig. 3): schema, comparisons, votes over HTTP, tallies, simulated
raters, the plot and the CLI."""

import argparse
import io
import json
import os
import threading
import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from fastapi.testclient import TestClient
from PIL import Image, ImageFilter

from t2ialign.label import sidebyside
from t2ialign.label.app import MAX_BODY_BYTES, create_app
from t2ialign.label.cli_data import add_commands
from t2ialign.label.sidebyside import (
    create_comparison,
    pick_query,
    plot_fig3,
    render_distance,
    shown_order,
    simulate_votes,
    submit_vote,
    tally,
    tally_votes,
    two_thirds_threshold,
)
from t2ialign.store import (
    Base,
    ComparisonImageRow,
    ComparisonQueryRow,
    ComparisonRow,
    ComparisonVoteRow,
    QueryState,
    Store,
    VoteConflict,
    alembic_config,
)
from t2ialign.world.judge import Judge
from t2ialign.world.prompts import Prompt, PromptSpec, build_prompt_set
from t2ialign.world.render import render

ADMIN_SECRET = "admin-secret-for-tests-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_SECRET}"}
MODELS = ("ft", "orig")  # model_id of the first and of the second model's images


def png(rgb, size=8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), rgb).save(buf, format="PNG")
    return buf.getvalue()


def add_images(store, prompt_text, model_id, pixels) -> list[str]:
    """Record images (PNG bytes or RGB arrays) as role eval images of a prompt by a model; their sha256s."""
    shas, records = [], []
    for j, image in enumerate(pixels):
        data = image
        if not isinstance(image, bytes):
            buf = io.BytesIO()
            Image.fromarray(image).save(buf, format="PNG")
            data = buf.getvalue()
        sha = store.put_image_bytes(data)
        w, h = Image.open(io.BytesIO(data)).size
        shas.append(sha)
        records.append(
            dict(sha256=sha, prompt_text=prompt_text, model_id=model_id, seed=j, sampler={}, role="eval")
            | dict(width=w, height=h)
        )
    store.add_images(records)
    return shas


def make_run(run_dir, n_prompts=3, per_set=2, prompts=None) -> dict[str, tuple[list[str], list[str]]]:
    """A run whose prompts each have ``per_set`` solid-colour images by model "ft" and by "orig"; the sets."""
    prompts = prompts or build_prompt_set()[:n_prompts]
    sets = {}
    with Store.open(run_dir) as store:
        store.add_prompts(prompts)
        for i, p in enumerate(prompts):
            first = add_images(store, p.text, "ft", [png((i, j, 1)) for j in range(per_set)])
            second = add_images(store, p.text, "orig", [png((i, j, 2)) for j in range(per_set)])
            sets[p.text] = (first, second)
    return sets


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
    sets = make_run(path)
    return path, sets


@pytest.fixture
def app(run, clock):
    app = create_app(run[0], ADMIN_SECRET, lease_seconds=60, clock=clock)
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


def count(store, model) -> int:
    with store.session() as s:
        return s.scalar(sa.select(sa.func.count()).select_from(model))


def model_of(store, url: str) -> str:
    """Which model made the image behind an image URL (what the rater must not be told)."""
    sha = url.removeprefix("/images/").removesuffix(".png")
    (image,) = [im for im in store.list_images() if im["sha256"] == sha]
    return image["model_id"]


# --- schema ------------------------------------------------------------------------------------------------


def test_migrations_match_the_models_and_0003_downgrades(tmp_path):
    with Store.open(tmp_path / "run") as store:
        with store.engine.connect() as c:
            assert compare_metadata(MigrationContext.configure(c), Base.metadata) == []
        new = {
            "comparisons",
            "comparison_queries",
            "comparison_images",
            "comparison_votes",
            "comparison_leases",
        }
        assert new <= set(sa.inspect(store.engine).get_table_names())
        with store.engine.begin() as c:
            command.downgrade(alembic_config(connection=c), "0002")
        assert not new & set(sa.inspect(store.engine).get_table_names())
        with store.engine.begin() as c:
            command.upgrade(alembic_config(connection=c), "head")
        with store.engine.connect() as c:
            assert compare_metadata(MigrationContext.configure(c), Base.metadata) == []


# --- comparisons -------------------------------------------------------------------------------------------


def test_shown_order_is_balanced_and_seeded():
    shown, order = shown_order(11, seed=3)
    assert sorted(shown) == ["A"] * 6 + ["B"] * 5 and sorted(order) == list(range(11))
    assert shown_order(11, seed=3) == (shown, order)
    assert shown_order(11, seed=4) != (shown, order)


def test_create_comparison_records_sets_and_the_order(run):
    run_dir, sets = run
    with Store.open(run_dir) as store:
        cid = create_comparison(store, "ft-vs-orig", "fine-tuned", "original", sets, seed=1)
        queries = store.comparison_queries(cid)
        assert sorted(q["prompt"] for q in queries) == sorted(sets)
        for q in queries:
            assert (q["first"], q["second"]) == sets[q["prompt"]] and q["raters_per_query"] == 9
        assert {q["first_shown_as"] for q in queries} == {"A", "B"}  # 3 queries: 2 and 1
        shown, order = shown_order(3, seed=1)
        prompts = sorted(sets)
        assert [(q["prompt"], q["first_shown_as"]) for q in queries] == [
            (prompts[i], shown[i]) for i in order
        ]
        (c,) = store.list_comparisons()
        assert (c["name"], c["first_model"], c["second_model"], c["queries"], c["votes"]) == (
            "ft-vs-orig",
            "fine-tuned",
            "original",
            3,
            0,
        )
        with pytest.raises(ValueError, match="already exists"):
            create_comparison(store, "ft-vs-orig", "fine-tuned", "original", sets)
        assert count(store, ComparisonRow) == 1


def write_evaluate_images(run_dir, images: dict) -> None:
    """RUN/evaluate/images.json as ``t2ialign evaluate`` writes it: model name -> prompt -> sha256s."""
    (run_dir / "evaluate").mkdir(exist_ok=True)
    (run_dir / "evaluate" / "images.json").write_text(json.dumps({"prompts": {}, "images": images}))


def test_sets_from_evaluate(run):
    run_dir, sets = run
    path = run_dir / "evaluate" / "images.json"
    with pytest.raises(ValueError, match="run `t2ialign evaluate` first"):
        sidebyside.sets_from_evaluate(path, "finetuned", "base")
    one = sorted(sets)[0]
    write_evaluate_images(
        run_dir,
        {
            "finetuned": {p: a for p, (a, _) in sets.items()},
            "base": {p: b for p, (_, b) in sets.items()} | {one: []},  # no base images for one prompt
        },
    )
    assert sidebyside.sets_from_evaluate(path, "finetuned", "base") == {
        p: v for p, v in sets.items() if p != one
    }
    with pytest.raises(ValueError, match="no images of model 'rejection'; it has: finetuned, base"):
        sidebyside.sets_from_evaluate(path, "rejection", "base")
    path.write_text("[1]")
    with pytest.raises(ValueError, match="not written by `t2ialign evaluate`"):
        sidebyside.sets_from_evaluate(path, "finetuned", "base")


def test_sets_from_evaluate_takes_the_fig3_sets_not_every_judged_image(run):
    # evaluate judges many images per prompt ("images") and keeps the paper's 4 per prompt for Fig. 3
    # ("sets": the first seeds; rejection sampling's best 4 of the first 16)
    run_dir, sets = run
    path = run_dir / "evaluate" / "images.json"
    many = {p: a + b for p, (a, b) in sets.items()}
    data = {
        "prompts": {},
        "images": {"finetuned": many, "base": many},
        "sets": {
            "finetuned": {p: a for p, (a, _) in sets.items()},
            "base": {p: b for p, (_, b) in sets.items()},
        },
        "keep": 4,
    }
    (run_dir / "evaluate").mkdir(exist_ok=True)
    path.write_text(json.dumps(data))
    assert sidebyside.sets_from_evaluate(path, "finetuned", "base") == sets
    path.write_text(json.dumps(data | {"sets": [1]}))
    with pytest.raises(ValueError, match='"sets" must be an object'):
        sidebyside.sets_from_evaluate(path, "finetuned", "base")


def test_the_two_sets_may_share_images(run):
    # rejection sampling's best 4 of 16 may include some of the first 4, which are the random baseline
    run_dir, sets = run
    p0 = sorted(sets)[0]
    a, b = sets[p0]
    with Store.open(run_dir) as store:
        create_comparison(store, "c", "rejection", "base", {p0: ([a[0], b[0]], b)})
        (q,) = store.comparison_queries(store.comparison("c")["id"])
        assert (q["first"], q["second"]) == ([a[0], b[0]], b)


def bad_sets(sets):
    prompts = sorted(sets)
    p0, p1 = prompts[0], prompts[1]
    (a, b), (c, _) = sets[p0], sets[p1]
    return {
        "unknown prompt": ({"three green circles": (a, b)}, "unknown prompt"),
        "image of another prompt": ({p0: ([a[0], c[0]], b)}, "not an image of prompt"),
        "unequal sets": ({p0: (a, b[:1])}, "2 and 1 images"),
        "empty set": ({p0: ([], [])}, "1 to 16 images"),
        "repeated image": ({p0: ([a[0], a[0]], b)}, "appears twice in one set"),
        "unknown sha": ({p0: ([a[0], "0" * 64], b)}, "not recorded"),
        "not a sha": ({p0: ([a[0], "../x"], b)}, "not a sha256"),
        "not a pair": ({p0: (a,)}, "must be a pair"),
        "no sets": ({}, "non-empty"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "unknown prompt",
        "image of another prompt",
        "unequal sets",
        "empty set",
        "repeated image",
        "unknown sha",
        "not a sha",
        "not a pair",
        "no sets",
    ],
)
def test_bad_comparisons_write_nothing(run, case):
    run_dir, sets = run
    with Store.open(run_dir) as store:
        given, match = bad_sets(sets)[case]
        good = {p: v for p, v in sets.items() if p not in given} if given else {}  # the rest are fine
        with pytest.raises(ValueError, match=match):
            create_comparison(store, "c", "fine-tuned", "original", {**good, **given})
        for model in (ComparisonRow, ComparisonQueryRow, ComparisonImageRow):
            assert count(store, model) == 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"name": "a b"}, "invalid comparison name"),
        ({"name": "../x"}, "invalid comparison name"),
        ({"first_model": "same", "second_model": "same"}, "different names"),
        ({"first_model": " "}, "non-empty"),
        ({"raters_per_query": 0}, r"raters_per_query must be an integer in \[1, 1000\]"),
        ({"raters_per_query": True}, "raters_per_query"),
    ],
)
def test_bad_comparison_settings_write_nothing(run, kwargs, match):
    run_dir, sets = run
    args = dict(name="c", first_model="fine-tuned", second_model="original", raters_per_query=9) | kwargs
    with Store.open(run_dir) as store:
        with pytest.raises(ValueError, match=match):
            create_comparison(store, sets=sets, **args)
        assert count(store, ComparisonRow) == 0


# --- assignment ---------------------------------------------------------------------------------------------


def qs(query_id, n_votes=0, n_leased=0, wanted=3, mine=None) -> QueryState:
    return QueryState(query_id, 1, n_votes, n_leased, wanted, mine)


def test_pick_query():
    assert pick_query([]) == []
    assert pick_query([qs(1), qs(2)]) == [1]
    assert pick_query([qs(1), qs(2, n_votes=1)]) == [2]  # finish started queries first
    assert pick_query([qs(1, n_votes=2, n_leased=1), qs(2)]) == [2]  # 1 is taken by 3 raters
    assert pick_query([qs(1, mine="voted"), qs(2, mine="leased"), qs(3, n_votes=2)]) == [2]  # resume
    assert pick_query([qs(1, mine="voted"), qs(2, n_votes=3)]) == []


def test_assignment_gives_each_query_its_raters_and_leases_expire(tmp_path, clock):
    sets = make_run(tmp_path / "run", n_prompts=2)
    with Store.open(tmp_path / "run") as store:
        create_comparison(store, "c", "fine-tuned", "original", sets, raters_per_query=2)
    app = create_app(tmp_path / "run", ADMIN_SECRET, lease_seconds=60, clock=clock)
    with TestClient(app) as client:
        ann, bob, cat, dan, eve = (new_rater(client, n) for n in ("ann", "bob", "cat", "dan", "eve"))
        first = client.get("/api/compare/next", headers=ann).json()["query"]
        assert client.get("/api/compare/next", headers=ann).json()["query"] == first  # a reload: the same
        assert client.get("/api/compare/next", headers=bob).json()["query"] == first
        second = client.get("/api/compare/next", headers=cat).json()["query"]
        assert second["id"] != first["id"]
        assert client.get("/api/compare/next", headers=dan).json()["query"] == second
        assert client.get("/api/compare/next", headers=eve).json()["query"] is None  # every place is taken
        vote = {"query_id": first["id"], "alignment": "A", "fidelity": "tie"}
        assert client.post("/api/compare/votes", json=vote, headers=ann).status_code == 200
        assert client.get("/api/compare/next", headers=ann).json()["query"] is None  # ann voted on first
        clock.now += timedelta(seconds=61)  # bob, cat and dan walked away: their leases expire
        assert client.get("/api/compare/next", headers=eve).json()["query"]["id"] == first["id"]
        progress = client.get("/api/compare/next", headers=eve).json()["progress"]
        assert progress == {"queries": 2, "complete": 0, "votes": 1, "mine": 0}
    app.state.store.close()


# --- votes over HTTP ----------------------------------------------------------------------------------------


def test_a_vote_round_trip_with_two_raters(client, app, run):
    store = app.state.store
    create_comparison(store, "ft-vs-orig", "fine-tuned", "original", run[1], raters_per_query=2)
    ann, bob = new_rater(client, "ann"), new_rater(client, "bob")
    while True:
        r = client.get("/api/compare/next", headers=ann)
        assert "fine-tuned" not in r.text and "ft-vs-orig" not in r.text  # blind: no model, no comparison
        query = r.json()["query"]
        if query is None:
            break
        assert client.get("/api/compare/next", headers=bob).json()["query"] == query
        assert len(query["A"]) == len(query["B"]) == 2
        for headers, pick in ((ann, "ft"), (bob, "orig")):  # ann prefers ft's set, bob orig's, on alignment
            side = "A" if model_of(store, query["A"][0]) == pick else "B"
            vote = {"query_id": query["id"], "alignment": side, "fidelity": "tie"}
            r = client.post("/api/compare/votes", json=vote, headers=headers)
            assert r.status_code == 200 and r.json() == {**vote, "status": "new"}
        for url in query["A"] + query["B"]:  # the images are served to raters
            assert client.get(url, headers=bob).status_code == 200
    result = client.get("/api/admin/compare", headers=ADMIN).json()["comparisons"][0]
    assert result["alignment"]["histogram"] == [0, 3, 0]  # each query: one vote for ft of two
    assert result["fidelity"]["histogram"] == [3, 0, 0] and result["fidelity"]["tie_share"] == 1.0
    assert result == json.loads(json.dumps(tally(store, "ft-vs-orig")))
    page = client.get("/admin/compare", headers=ADMIN)
    assert page.status_code == 200 and "fine-tuned" in page.text and "votes for fine-tuned" in page.text


def test_ab_order_is_random_but_votes_count_for_the_right_model(tmp_path, clock):
    sets = make_run(tmp_path / "run", n_prompts=8)
    app = create_app(tmp_path / "run", ADMIN_SECRET, clock=clock)
    store = app.state.store
    create_comparison(store, "c", "fine-tuned", "original", sets, raters_per_query=1, seed=5)
    with TestClient(app) as client:
        ann = new_rater(client, "ann")
        shown_first = []
        while query := client.get("/api/compare/next", headers=ann).json()["query"]:
            ft_side = "A" if model_of(store, query["A"][0]) == "ft" else "B"
            assert {model_of(store, u) for u in query[ft_side]} == {"ft"}
            assert {model_of(store, u) for u in query["B" if ft_side == "A" else "A"]} == {"orig"}
            shown_first.append(ft_side)
            # alignment: always the fine-tuned set; fidelity: always the top row, whatever it holds
            vote = {"query_id": query["id"], "alignment": ft_side, "fidelity": "A"}
            assert client.post("/api/compare/votes", json=vote, headers=ann).status_code == 200
    assert sorted(shown_first) == ["A"] * 4 + ["B"] * 4  # the order varies, balanced
    result = tally(store, "c")
    assert result["alignment"]["histogram"] == [0, 8] and result["alignment"]["share_ge_threshold"] == 1.0
    assert result["fidelity"]["histogram"] == [4, 4]  # "A" meant ft on 4 queries, orig on the other 4
    votes = store.comparison_votes(store.comparison("c")["id"])
    order = {q["id"]: q["first_shown_as"] for q in store.comparison_queries(store.comparison("c")["id"])}
    assert all(v["fidelity"] == ("first" if order[v["query_id"]] == "A" else "second") for v in votes)
    app.state.store.close()


def test_a_resend_changes_nothing_and_a_vote_is_final(client, app, run):
    store = app.state.store
    create_comparison(store, "c", "fine-tuned", "original", run[1])
    ann = new_rater(client, "ann")
    query = client.get("/api/compare/next", headers=ann).json()["query"]
    vote = {"query_id": query["id"], "alignment": "B", "fidelity": "A"}
    assert client.post("/api/compare/votes", json=vote, headers=ann).json()["status"] == "new"
    assert client.post("/api/compare/votes", json=vote, headers=ann).json()["status"] == "unchanged"
    r = client.post("/api/compare/votes", json={**vote, "fidelity": "tie"}, headers=ann)
    assert r.status_code == 409 and "a vote is final" in r.json()["detail"]
    (v,) = store.comparison_votes(store.comparison("c")["id"])
    assert (v["labeler"], v["query_id"]) == ("ann", query["id"]) and count(store, ComparisonVoteRow) == 1
    assert client.get("/api/compare/next", headers=ann).json()["query"]["id"] != query["id"]


def test_a_full_query_takes_no_more_votes(client, app, run):
    store = app.state.store
    create_comparison(store, "c", "fine-tuned", "original", run[1], raters_per_query=2)
    query_id = store.comparison_queries(store.comparison("c")["id"])[0]["id"]
    raters = [new_rater(client, n) for n in ("ann", "bob", "cat")]
    # ann and bob are handed the query; cat is sent elsewhere, and a vote on it anyway is refused
    assert [client.get("/api/compare/next", headers=h).json()["query"]["id"] == query_id for h in raters] == [
        True,
        True,
        False,
    ]
    vote = {"query_id": query_id, "alignment": "A", "fidelity": "B"}
    assert [client.post("/api/compare/votes", json=vote, headers=h).status_code for h in raters] == [
        200,
        200,
        409,
    ]
    assert count(store, ComparisonVoteRow) == 2
    assert client.get("/api/compare/next", headers=raters[2]).json()["query"]["id"] != query_id


def test_concurrent_votes_never_overfill_a_query(run):
    run_dir, sets = run
    with Store.open(run_dir) as store:
        create_comparison(store, "c", "fine-tuned", "original", sets, raters_per_query=9)
        query_id = store.comparison_queries(store.comparison("c")["id"])[0]["id"]
        raters = [store.add_labeler(f"r{i}") for i in range(14)]
        results, barrier = [], threading.Barrier(len(raters))

        def vote(rater_id):
            barrier.wait()
            try:
                results.append(submit_vote(store, rater_id, query_id, "A", "tie"))
            except VoteConflict:
                results.append("conflict")

        threads = [threading.Thread(target=vote, args=(r,)) for r in raters]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results) == ["conflict"] * 5 + ["new"] * 9
        assert count(store, ComparisonVoteRow) == 9


def test_roles_of_the_compare_endpoints(client, app, run):
    create_comparison(app.state.store, "c", "fine-tuned", "original", run[1])
    ann = new_rater(client, "ann")
    query_id = app.state.store.comparison_queries(app.state.store.comparison("c")["id"])[0]["id"]
    vote = {"query_id": query_id, "alignment": "A", "fidelity": "A"}
    for method, path, body in (("GET", "/api/compare/next", None), ("POST", "/api/compare/votes", vote)):
        for headers in ({}, {"Authorization": "Bearer not-a-token"}):
            assert client.request(method, path, json=body, headers=headers).status_code == 401
    r = client.get("/api/admin/compare", headers=ann)
    assert r.status_code == 403 and r.json()["detail"] == "only the admin may do this"
    assert client.get("/admin/compare", headers=ann).status_code == 403
    assert client.get("/admin/compare").status_code == 401
    assert "Sign in" in client.get("/compare").text
    page = client.get("/compare", headers=ann)
    assert page.status_code == 200 and 'id="vote"' in page.text and "fine-tuned" not in page.text
    assert "script-src 'nonce-" in page.headers["content-security-policy"]
    assert count(app.state.store, ComparisonVoteRow) == 0


@pytest.mark.parametrize(
    "content, status, message",
    [
        ('{"query_id": 1, "alignment": "A", "fidelity": "B"', 422, "JSON decode error"),
        (
            '{"query_id": 1, "alignment": "a", "fidelity": "B"}',
            422,
            "alignment: Input should be 'A', 'B' or 'tie'",
        ),
        ('{"query_id": 1, "alignment": "first", "fidelity": "B"}', 422, "alignment"),
        ('{"query_id": 1, "alignment": "A", "fidelity": "TIE"}', 422, "fidelity"),
        ('{"query_id": 1, "alignment": "A"}', 422, "fidelity: Field required"),
        ('{"query_id": "1", "alignment": "A", "fidelity": "B"}', 422, "query_id: Input should be"),
        ('{"query_id": 0, "alignment": "A", "fidelity": "B"}', 422, "greater than or equal to 1"),
        ('{"query_id": 1e30, "alignment": "A", "fidelity": "B"}', 422, "query_id"),
        ('{"query_id": 1, "alignment": "A", "fidelity": "B", "labeler_id": 1}', 422, "labeler_id: Extra"),
        ('{"query_id": 99999, "alignment": "A", "fidelity": "B"}', 404, "unknown query id 99999"),
        ("[1, 2]", 422, "valid dictionary"),
        (
            '{"query_id": 1, "alignment": "A", "fidelity": "B", "pad": "' + "x" * MAX_BODY_BYTES + '"}',
            413,
            "larger",
        ),
    ],
)
def test_bad_votes_are_refused_and_write_nothing(client, app, run, content, status, message):
    create_comparison(app.state.store, "c", "fine-tuned", "original", run[1])
    ann = new_rater(client, "ann")
    r = client.post(
        "/api/compare/votes", content=content, headers={**ann, "Content-Type": "application/json"}
    )
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]
    assert count(app.state.store, ComparisonVoteRow) == 0


def test_bad_votes_in_the_library_write_nothing(run):
    run_dir, sets = run
    with Store.open(run_dir) as store:
        create_comparison(store, "c", "fine-tuned", "original", sets)
        q1, q2 = (q["id"] for q in store.comparison_queries(store.comparison("c")["id"])[:2])
        ann = store.add_labeler("ann")
        for votes, match in (
            ([(ann, q1, "A", "B"), (ann, q2, "first", "B")], "unknown alignment answer"),
            ([(ann, q1, "A", "B"), (ann, 9999, "A", "B")], "unknown comparison query id 9999"),
            ([(ann, q1, "A", "B"), (9999, q2, "A", "B")], "unknown labeler id 9999"),
            ([(ann, q1, "A", "B"), (ann, q1, "A", "B")], "given twice"),
        ):
            with pytest.raises(ValueError, match=match):
                sidebyside.submit_votes(store, votes)
            assert count(store, ComparisonVoteRow) == 0


def test_html_in_prompts_and_model_names_is_escaped(tmp_path, clock):
    text = '<script>alert("x")</script> & two circles'
    sets = make_run(tmp_path / "run", prompts=[Prompt(text, "count", "seen", PromptSpec("circle", count=2))])
    app = create_app(tmp_path / "run", ADMIN_SECRET, clock=clock)
    create_comparison(app.state.store, "c", "<b>ft</b>", "orig", sets)
    with TestClient(app) as c:
        page = c.get("/compare", headers=ADMIN).text
        admin = c.get("/admin/compare", headers=ADMIN).text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; two circles" in page
    assert "<script>alert" not in page
    assert "&lt;b&gt;ft&lt;/b&gt;" in admin and "<b>ft</b>" not in admin
    app.state.store.close()


# --- tallies --------------------------------------------------------------------------------------------------


def test_two_thirds_threshold():
    assert [two_thirds_threshold(n) for n in (1, 3, 6, 9, 12)] == [1, 3, 5, 7, 9]


def test_tally_arithmetic_on_hand_made_votes():
    votes = {
        1: ["first"] * 7 + ["second", "tie"],  # 7 positive
        2: ["first"] * 9,  # 9 positive
        3: ["first"] * 2 + ["second"] * 6 + ["tie"],  # 2 positive, 6 for the second model
        4: ["first"] * 4,  # incomplete: left out
    }
    t = tally_votes(votes, n_raters=9)
    assert t["histogram"] == [0, 0, 1, 0, 0, 0, 0, 1, 0, 1]
    assert t["percent"] == [0.0, 0.0, 33.3, 0.0, 0.0, 0.0, 0.0, 33.3, 0.0, 33.3]
    assert (t["queries"], t["incomplete"], t["threshold"]) == (3, 1, 7)
    assert t["share_ge_threshold"] == 0.6667 and t["share_second_ge_threshold"] == 0.0
    assert t["tie_share"] == round(2 / 27, 4)
    assert t["vote_share"] == {
        "first": round(18 / 27, 4),
        "second": round(7 / 27, 4),
        "tie": round(2 / 27, 4),
    }
    t = tally_votes({1: ["second"] * 8 + ["first"], 2: ["tie"] * 9}, n_raters=9)
    assert t["histogram"] == [1, 1, 0, 0, 0, 0, 0, 0, 0, 0] and t["share_second_ge_threshold"] == 0.5
    empty = tally_votes({1: []}, n_raters=9)
    assert empty["queries"] == 0 and empty["percent"] is None and empty["share_ge_threshold"] is None
    with pytest.raises(ValueError, match="more than 9"):
        tally_votes({1: ["tie"] * 10}, n_raters=9)
    with pytest.raises(ValueError, match="first, second or tie"):
        tally_votes({1: ["A"] * 9}, n_raters=9)


def test_tally_of_a_stored_comparison(run):
    run_dir, sets = run
    with Store.open(run_dir) as store:
        create_comparison(store, "c", "fine-tuned", "original", sets, raters_per_query=3)
        queries = store.comparison_queries(store.comparison("c")["id"])
        raters = [store.add_labeler(n) for n in ("ann", "bob", "cat")]
        first = {q["id"]: q["first_shown_as"] for q in queries}
        second = {i: "B" if s == "A" else "A" for i, s in first.items()}
        q1, q2, q3 = (q["id"] for q in queries)
        votes = [
            (raters[0], q1, first[q1], "tie"),
            (raters[1], q1, first[q1], "tie"),
            (raters[2], q1, "tie", "tie"),  # q1: 2 for the first model
            (raters[0], q2, first[q2], second[q2]),
            (raters[1], q2, first[q2], second[q2]),
            (raters[2], q2, first[q2], second[q2]),  # q2: 3 for the first, fidelity 3 for the second
            (raters[0], q3, second[q3], first[q3]),  # q3: one vote, incomplete
        ]
        assert sidebyside.submit_votes(store, votes) == {"new": 7, "unchanged": 0}
        t = tally(store, "c")
        assert t["alignment"]["histogram"] == [0, 0, 1, 1] and t["alignment"]["incomplete"] == 1
        assert t["alignment"]["share_ge_threshold"] == 0.5  # threshold 3 of 3
        assert (
            t["fidelity"]["histogram"] == [2, 0, 0, 0] and t["fidelity"]["share_second_ge_threshold"] == 0.5
        )
        assert t["comparison"] == {
            "name": "c",
            "first_model": "fine-tuned",
            "second_model": "original",
            "raters_per_query": 3,
            "seed": 0,
            "queries": 3,
        }
        assert set(t["by_split"]) == {q["split"] for q in queries}
        text = sidebyside.format_tally(t)
        assert ">= 3 votes for fine-tuned on 50.0% of 2 queries" in text
        with pytest.raises(ValueError, match=r"no comparison named 'x' .*known: c"):
            tally(store, "x")


def test_plot_fig3_writes_a_png(tmp_path):
    votes = {i: ["first"] * (i % 10) + ["tie"] * (9 - i % 10) for i in range(30)}
    per_question = tally_votes(votes, 9)
    result = {
        "comparison": {
            "name": "c",
            "first_model": "fine-tuned",
            "second_model": "original",
            "raters_per_query": 9,
        },
        "alignment": per_question,
        "fidelity": tally_votes({1: []}, 9),  # no complete query yet: still a figure
    }
    path = plot_fig3(result, tmp_path / "fig3.png")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 500


# --- simulated raters -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def judge():
    return Judge.load()


def renders(spec, seeds) -> list[np.ndarray]:
    return [render(spec, seed=s).image for s in seeds]


def test_render_distance_ranks_clean_renders_above_degraded_ones(judge):
    spec = PromptSpec("circle", count=2, color="red", background="forest")
    clean = renders(spec, range(4))
    blurred = [np.asarray(Image.fromarray(im).filter(ImageFilter.GaussianBlur(1.5))) for im in clean]
    rng = np.random.default_rng(0)
    noisy = [np.clip(im + rng.normal(0, 40, im.shape), 0, 255).astype(np.uint8) for im in clean]
    d_clean, d_blur, d_noise = (render_distance(judge, ims) for ims in (clean, blurred, noisy))
    # about 1 for a clean render (the judge retrained with its median filter puts one of these at 2.08)
    assert np.mean(d_clean) < 1.5 and max(d_clean) < 2.5
    assert all(c < b and c < n for c, b, n in zip(d_clean, d_blur, d_noise, strict=True))
    wrong = renders(PromptSpec("square", count=4, color="blue", background="beach"), range(4))
    assert max(render_distance(judge, wrong)) < 2.0  # a clean render of anything has good fidelity


def test_simulated_raters_prefer_the_prompts_renders(tmp_path, judge):
    """First model: renders of the prompt; second: renders of another prompt (a model that ignores the
    prompt), both clean. Alignment goes to the first nearly unanimously; fidelity has no winner."""
    prompts = [p for p in build_prompt_set() if p.split == "seen"][::97][:4]
    with Store.open(tmp_path / "run") as store:
        store.add_prompts(prompts)
        sets = {}
        for i, p in enumerate(prompts):
            other = prompts[(i + 2) % len(prompts)].spec
            first = add_images(store, p.text, "ft", renders(p.spec, range(4)))
            second = add_images(store, p.text, "orig", renders(other, range(10, 14)))
            sets[p.text] = (first, second)
        create_comparison(store, "c", "renders", "wrong prompt", sets, seed=2)
        report = simulate_votes(store, "c", judge=judge, seed=0)
        assert report["votes"] == {"new": 36, "unchanged": 0} and report["left_out_full"] == 0
        t = tally(store, "c")
        assert t["alignment"]["queries"] == 4 and t["alignment"]["share_ge_threshold"] == 1.0
        assert t["fidelity"]["share_ge_threshold"] < 1.0 and t["fidelity"]["share_second_ge_threshold"] < 1.0
        # a rerun with the same settings changes nothing; a full comparison takes no more simulated votes
        again = simulate_votes(store, "c", judge=judge, seed=0)
        assert again["votes"] == {"new": 0, "unchanged": 36}
        assert tally(store, "c") == t
        with pytest.raises(VoteConflict, match="a vote is final"):
            simulate_votes(store, "c", judge=judge, seed=1, noise=0.5)
        assert tally(store, "c") == t  # nothing written


def test_simulated_raters_prefer_clean_images_for_fidelity(tmp_path, judge):
    prompts = [p for p in build_prompt_set() if p.split == "seen"][5::131][:3]
    with Store.open(tmp_path / "run") as store:
        store.add_prompts(prompts)
        sets = {}
        for p in prompts:
            clean = renders(p.spec, range(4))
            blurred = [np.asarray(Image.fromarray(im).filter(ImageFilter.GaussianBlur(2.0))) for im in clean]
            sets[p.text] = (
                add_images(store, p.text, "ft", clean),
                add_images(store, p.text, "orig", blurred),
            )
        create_comparison(store, "c", "clean", "blurred", sets, raters_per_query=9)
        bob = store.add_labeler("bob")  # a person voted first: the simulation completes the rest
        query = store.comparison_queries(store.comparison("c")["id"])[0]
        submit_vote(store, bob, query["id"], "tie", "tie")
        report = simulate_votes(store, "c", judge=judge)
        assert report["votes"]["new"] == 26 and report["left_out_full"] == 1
        t = tally(store, "c")
        assert t["fidelity"]["queries"] == 3 and t["fidelity"]["share_ge_threshold"] == 1.0


def test_simulate_refuses_bad_settings(run, judge):
    run_dir, sets = run
    with Store.open(run_dir) as store:
        create_comparison(store, "c", "fine-tuned", "original", sets, raters_per_query=3)
        for kwargs, match in (
            ({"n_raters": 4}, r"n_raters must be an integer in \[1, 3\]"),
            ({"noise": 0.7}, "noise"),
            ({"tie_margin": -1}, "tie_margin"),
        ):
            with pytest.raises(ValueError, match=match):
                simulate_votes(store, "c", judge=judge, **kwargs)
        assert count(store, ComparisonVoteRow) == 0


# --- CLI ------------------------------------------------------------------------------------------------------


def cli(*argv) -> int:
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="cmd", required=True))
    args = parser.parse_args([str(a) for a in argv])
    return args.func(args)


def test_cli_compare_create_simulate_tally(run, tmp_path, capsys):
    run_dir, sets = run
    write_evaluate_images(
        run_dir,
        {"finetuned": {p: a for p, (a, _) in sets.items()}, "base": {p: b for p, (_, b) in sets.items()}},
    )
    assert (
        cli("compare", "create", run_dir, "a", "--first", "finetuned", "--second", "base", "--raters", "3")
        == 0
    )
    sets_file = tmp_path / "sets.json"
    sets_file.write_text(json.dumps({p: [a[:1], b[:1]] for p, (a, b) in sets.items()}))
    assert (
        cli("compare", "create", run_dir, "b", "--first", "ft", "--second", "orig", "--sets", sets_file) == 0
    )
    assert cli("compare", "simulate", run_dir, "a", "--raters", "3") == 0
    capsys.readouterr()
    assert cli("compare", "tally", run_dir, "a") == 0
    out = capsys.readouterr().out
    assert "finetuned vs base" in out and "alignment" in out
    assert (run_dir / "fig3_a.png").is_file()
    with Store.open(run_dir) as store:
        metrics = store.read_metrics()["side_by_side"]
        assert metrics["a"]["alignment"]["queries"] == 3
        assert [c["name"] for c in store.list_comparisons()] == ["a", "b"]
        queries = store.comparison_queries(store.comparison("a")["id"])
        assert {q["prompt"]: (q["first"], q["second"]) for q in queries} == sets
    assert cli("compare", "list", run_dir) == 0
    assert "a: finetuned vs base, 3 queries, 9 votes of 9 wanted" in capsys.readouterr().out
    for argv, match in (
        (
            ["create", run_dir, "c", "--first", "rejection", "--second", "base"],
            "no images of model 'rejection'",
        ),
        (
            ["create", run_dir, "c", "--first", "x", "--second", "y", "--sets", tmp_path / "nope.json"],
            "cannot read",
        ),
        (["create", run_dir, "a", "--first", "finetuned", "--second", "base"], "already exists"),
        (["create", run_dir / "missing", "c", "--first", "finetuned", "--second", "base"], "no run at"),
        (["tally", run_dir, "nope"], "no comparison named"),
        (["tally", run_dir, "../x"], "invalid comparison name"),
        (["tally", run_dir / "missing", "a"], "no run at"),
    ):
        with pytest.raises(ValueError, match=match):
            cli("compare", *argv)


# --- PostgreSQL -------------------------------------------------------------------------------------------------


@pytest.fixture
def postgres_url():
    """A fresh database on the server of $T2IALIGN_TEST_POSTGRES_URL, dropped afterwards."""
    base = os.environ.get("T2IALIGN_TEST_POSTGRES_URL")
    if not base:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true but T2IALIGN_TEST_POSTGRES_URL is not set")
        pytest.skip("set T2IALIGN_TEST_POSTGRES_URL (postgresql+psycopg://...) to run the PostgreSQL tests")
    url = sa.make_url(base)
    name = f"t2ialign_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.exec_driver_sql(f'CREATE DATABASE "{name}"')
        yield url.set(database=name).render_as_string(hide_password=False)
        with admin.connect() as c:
            c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.dispose()


def test_postgresql_votes_never_overfill_a_query(tmp_path, postgres_url, clock):
    prompts = build_prompt_set()[:2]
    with Store.open(tmp_path / "run", db_url=postgres_url) as store:
        with store.engine.connect() as c:
            assert compare_metadata(MigrationContext.configure(c), Base.metadata) == []
        store.add_prompts(prompts)
        sets = {
            p.text: (
                add_images(store, p.text, "ft", [png((i, 0, 1)), png((i, 1, 1))]),
                add_images(store, p.text, "orig", [png((i, 0, 2)), png((i, 1, 2))]),
            )
            for i, p in enumerate(prompts)
        }
        create_comparison(store, "c", "fine-tuned", "original", sets, raters_per_query=9)
        raters = [store.add_labeler(f"r{i}") for i in range(14)]
        query_id = sidebyside.next_query(store, raters[0], 60, now=clock())["id"]
        results, barrier = [], threading.Barrier(len(raters))

        def vote(rater_id):
            barrier.wait()
            try:
                results.append(submit_vote(store, rater_id, query_id, "A", "tie"))
            except VoteConflict:
                results.append("conflict")

        threads = [threading.Thread(target=vote, args=(r,)) for r in raters]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results) == ["conflict"] * 5 + ["new"] * 9
        first_shown_as = store.comparison_queries(query_ids=[query_id])[0]["first_shown_as"]
        histogram = tally(store, "c")["alignment"]["histogram"]
        assert histogram[9 if first_shown_as == "A" else 0] == 1 and sum(histogram) == 1


# --- the page in a real browser ---------------------------------------------------------------------------------


def test_compare_page_with_the_keyboard(tmp_path, chromium):
    """Headless Chromium signs in at /compare, answers two queries with the keyboard; the database holds
    exactly those votes, attributed to the right model whatever the A/B order."""
    from labeling_server import server

    html_prompt = '<img src=x onerror="window.__xss=1">Two circles & <b>friends</b>'
    prompts = [
        Prompt(html_prompt, "count", "seen", PromptSpec("circle", count=2)),
        Prompt("A red colored square", "color", "seen", PromptSpec("square", color="red")),
    ]
    run_dir = tmp_path / "run"
    with Store.open(run_dir) as store:
        store.add_prompts(prompts)
        sets = {
            p.text: (
                add_images(store, p.text, "ft", renders(p.spec, range(2))),
                add_images(store, p.text, "orig", renders(p.spec, range(5, 7))),
            )
            for p in prompts
        }
        create_comparison(store, "c", "fine-tuned", "original", sets, raters_per_query=3, seed=1)
        order = {q["prompt"]: q["first_shown_as"] for q in store.comparison_queries(1)}
    with server(run_dir, tmp_path / "server.log", ADMIN_SECRET) as (url, _):
        token = httpx_post(f"{url}/api/admin/labelers", {"name": "ann"})["token"]
        page = chromium.new_page()
        page.set_default_timeout(30_000)
        errors = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{url}/compare")
        page.fill("#token", token)
        page.press("#token", "Enter")
        page.wait_for_selector("#prompt")
        page.wait_for_function(
            "() => Array.from(document.images).every((im) => im.complete && im.naturalWidth > 0)"
        )
        assert page.locator(".set img").count() == 4
        assert page.evaluate("window.__xss") is None
        prompts_seen = [page.text_content("#prompt")]
        page.keyboard.press("a")  # alignment: A
        page.keyboard.press("Enter")  # one answer only: nothing is sent
        page.keyboard.press("t")  # fidelity: tie
        page.keyboard.press("Enter")
        page.wait_for_function(
            "(t) => document.getElementById('prompt').textContent !== t", arg=prompts_seen[0]
        )
        prompts_seen.append(page.text_content("#prompt"))
        for key in ("b", "b", "Enter"):
            page.keyboard.press(key)
        page.wait_for_selector("text=Nothing left for you to compare")
        assert errors == []
    assert sorted(prompts_seen) == sorted(p.text for p in prompts)

    def choice(prompt, answer):
        return "tie" if answer == "tie" else "first" if order[prompt] == answer else "second"

    with Store.open(run_dir) as store:
        got = {(v["query_id"], v["alignment"], v["fidelity"]) for v in store.comparison_votes(1)}
        ids = {q["prompt"]: q["id"] for q in store.comparison_queries(1)}
    assert got == {
        (ids[prompts_seen[0]], choice(prompts_seen[0], "A"), "tie"),
        (ids[prompts_seen[1]], choice(prompts_seen[1], "B"), choice(prompts_seen[1], "B")),
    }


def httpx_post(url, body) -> dict:
    import httpx

    r = httpx.post(url, json=body, headers=ADMIN, timeout=30)
    assert r.status_code == 201, r.text
    return r.json()
