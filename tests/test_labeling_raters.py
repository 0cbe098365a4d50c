"""Careless raters are visible: agreement with the others' majority, speed and skips, in the admin view;
and a labeler can be excluded from the training labels without losing their rows."""

import random
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from t2ialign.cli import main
from t2ialign.label.app import create_app
from t2ialign.label.simulate import simulated_answer
from t2ialign.label.stats import rater_quality
from t2ialign.store import LabelerRow, LabelRow, LeaseRow, Store
from test_labeling_app import ADMIN, ADMIN_SECRET, make_run


def _label(store, run_noise: dict[str, float], seed=0) -> None:
    """Every image labeled by each labeler: the truth (a seeded coin per image) through the simulated
    labeler's noise model (``simulated_answer``), one answer every ``12 s`` per labeler."""
    images = store.list_images()
    truth = {im["sha256"]: random.Random(f"truth:{im['sha256']}").choice(["good", "bad"]) for im in images}
    for name, noise in run_noise.items():
        lab = store.add_labeler(name)
        store.set_labels(
            [
                (im["id"], lab, simulated_answer(truth[im["sha256"]], noise, 0.05, seed, name, im["sha256"]))
                for im in images
            ]
        )
        with store.session() as s:  # answers 12 s apart: 5 per minute (a careful pace)
            for j, row in enumerate(s.scalars(sa.select(LabelRow).where(LabelRow.labeler_id == lab))):
                row.created_at = row.created_at + timedelta(seconds=12 * j)


def test_a_high_noise_simulated_labeler_stands_out(tmp_path):
    make_run(tmp_path / "run", n_prompts=10, per_prompt=6)  # 60 images
    with Store.open(tmp_path / "run") as store:
        _label(store, {"ann": 0.05, "bob": 0.05, "cat": 0.05, "dan": 0.05, "careless": 0.45})
        q = rater_quality(store)
    assert q["careless"]["flags"] == ["low agreement"]
    assert all(q[n]["flags"] == [] for n in ("ann", "bob", "cat", "dan"))
    assert q["careless"]["agreement"] < 0.7 < min(q[n]["agreement"] for n in ("ann", "bob", "cat", "dan"))
    assert all(q[n]["compared"] >= 40 and 4.9 < q[n]["per_minute"] < 5.1 for n in q)
    assert all(q[n]["skip_rate"] < 0.2 for n in q)


def test_fast_and_skipping_raters_are_flagged(tmp_path):
    make_run(tmp_path / "run", n_prompts=4, per_prompt=4)
    with Store.open(tmp_path / "run") as store:
        ids = [im["id"] for im in store.list_images()]
        fast = store.add_labeler("fast")
        store.set_labels([(i, fast, "skip" if j % 2 else "good") for j, i in enumerate(ids)])
        with store.session() as s:  # one answer a second
            for j, row in enumerate(s.scalars(sa.select(LabelRow).where(LabelRow.labeler_id == fast))):
                row.created_at = row.created_at + timedelta(seconds=j)
        q = rater_quality(store)["fast"]
    assert q["flags"] == ["fast", "skips a lot"] and q["per_minute"] == 60.0 and q["skip_rate"] == 0.5
    assert q["agreement"] is None and q["compared"] == 0  # nobody else to agree with


def test_the_admin_view_shows_raters_and_exclude_keeps_the_rows(tmp_path, capsys):
    run = tmp_path / "run"
    make_run(run, n_prompts=10, per_prompt=6)
    with Store.open(run) as store:
        _label(store, {"ann": 0.05, "bob": 0.05, "cat": 0.05, "careless": 0.45})
    assert main(["label", "exclude", str(run), "careless"]) == 0
    assert "excluded from the training labels" in capsys.readouterr().out
    assert main(["label", "exclude", str(run), "nobody"]) == 2
    app = create_app(run, ADMIN_SECRET)
    try:
        with TestClient(app) as c:
            raters = c.get("/api/admin/stats", headers=ADMIN).json()["raters"]
            assert raters["careless"]["excluded"] is True and raters["careless"]["flags"] == ["low agreement"]
            page = c.get("/admin", headers=ADMIN).text
            assert "Raters" in page and "low agreement" in page and "t2ialign label exclude" in page
        store = app.state.store
        with store.session() as s:
            careless = s.scalar(sa.select(LabelerRow.id).where(LabelerRow.name == "careless"))
        assert store.excluded_labeler_ids() == {careless}
        with store.session() as s:  # excluded, not deleted
            assert s.scalar(sa.select(sa.func.count()).select_from(LabelRow)) == 4 * 60
    finally:
        app.state.store.close()
    assert main(["label", "exclude", str(run), "careless", "--include"]) == 0
    with Store.open(run) as store:
        assert store.excluded_labeler_ids() == set()


def test_an_online_backup_restores(tmp_path, capsys):
    # README, "Deploying the labeling app": the backup is taken while the app serves, then restored.
    run = tmp_path / "run"
    make_run(run, n_prompts=2, per_prompt=3)
    with Store.open(run) as store:
        _label(store, {"ann": 0.05, "bob": 0.05})
        app = create_app(run, ADMIN_SECRET)
        try:
            with TestClient(app) as c:  # the server holds the database open while the backup runs
                assert c.get("/healthz").status_code == 200
                assert main(["label", "backup", str(run), str(tmp_path / "b.db")]) == 0
        finally:
            app.state.store.close()
        expected = [(r.image_id, r.labeler_id, r.value) for r in _rows(store)]
    assert "integrity_check ok" in capsys.readouterr().out
    assert main(["label", "backup", str(run), str(tmp_path / "b.db")]) == 2  # never overwrites
    restored = tmp_path / "restored"
    restored.mkdir()
    (restored / "t2ialign.db").write_bytes((tmp_path / "b.db").read_bytes())
    with Store.open(restored) as store:
        assert [(r.image_id, r.labeler_id, r.value) for r in _rows(store)] == expected and len(expected) == 12
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"


def _rows(store):
    with store.session() as s:
        return list(s.scalars(sa.select(LabelRow).order_by(LabelRow.id)))


# --- gold images -------------------------------------------------------------------------------------------


def _screens(client, headers, answer) -> list[int]:
    """Answer every screen until none is left (bounded); the ids answered, in order."""
    done = []
    for _ in range(100):
        images = client.get("/api/next", headers=headers).json()["images"]
        if not images:
            return done
        for im in images:
            r = client.post(
                "/api/labels", json={"image_id": im["id"], "value": answer(im["id"])}, headers=headers
            )
            assert r.status_code == 200, r.text
            done.append(im["id"])
    raise AssertionError("more than 100 screens")


def test_gold_images_are_mixed_in_answered_by_all_and_never_feedback(tmp_path):
    from t2ialign.label.export import label_rows
    from t2ialign.label.simulate import add_gold_images
    from t2ialign.label.stats import label_summary
    from t2ialign.reward.data import labeled_images

    run = tmp_path / "run"
    make_run(run, n_prompts=8, per_prompt=3)  # 24 images to label
    with Store.open(run) as store:
        assert add_gold_images(store, 24, seed=1) == {"good": 12, "bad": 12}
        gold = store.gold_answers()
    app = create_app(run, ADMIN_SECRET, k=2, gold_rate=0.5)
    try:
        with TestClient(app) as c:
            ann, bob = (
                {
                    "Authorization": f"Bearer {c.post('/api/admin/labelers', json={'name': n}, headers=ADMIN).json()['token']}"
                }
                for n in ("ann", "bob")
            )
            # ann answers gold images right, bob (careless) wrong
            done_ann = _screens(c, ann, lambda i: gold.get(i, "good"))
            done_bob = _screens(c, bob, lambda i: {"good": "bad", "bad": "good"}.get(gold.get(i), "good"))
            raters = c.get("/api/admin/stats", headers=ADMIN).json()["raters"]
        store = app.state.store
        gold_ann = [i for i in done_ann if i in gold]
        gold_bob = [i for i in done_bob if i in gold]
        # mixed in: some of each one's screens were gold, and each answered every image to label
        assert 0 < len(gold_ann) and 0 < len(gold_bob)
        assert len(done_ann) - len(gold_ann) == len(done_bob) - len(gold_bob) == 24
        assert raters["ann"]["gold_accuracy"] == 1.0
        assert raters["bob"]["gold"] == len(gold_bob) >= 5 and raters["bob"]["gold_accuracy"] == 0.0
        assert (
            "low gold accuracy" in raters["bob"]["flags"]
            and "low gold accuracy" not in raters["ann"]["flags"]
        )
        # never feedback: not in Table 1, the export, the progress or the reward's training set
        summary = label_summary(store)
        assert summary["progress"]["labels"] == summary["table1"]["total"]["n"] == 48
        assert len(label_rows(store)) == 48
        assert {r["sha256"] for r in labeled_images(store)}.isdisjoint(
            {im["sha256"] for im in store.images_by_id(list(gold))}
        )
    finally:
        app.state.store.close()


def test_gold_images_must_have_role_eval_and_rates_are_checked(tmp_path):
    run = tmp_path / "run"
    ids = make_run(run, n_prompts=1, per_prompt=2)
    with Store.open(run) as store:
        with pytest.raises(ValueError, match="gold images have role 'eval'"):
            store.set_gold({ids[0]: "good"})
        with pytest.raises(ValueError, match="unknown gold answer"):
            store.set_gold({ids[0]: "skip"})
        # every rater may answer a gold image: k does not apply to it
        from t2ialign.label.simulate import add_gold_images

        add_gold_images(store, 1)
        (g,) = store.gold_answers()
        now = datetime.now(UTC)
        labs = [store.add_labeler(n) for n in ("a", "b", "c")]
        with store.session() as s:
            s.add_all(
                LeaseRow(image_id=g, labeler_id=lab, expires_at=now + timedelta(minutes=1)) for lab in labs
            )
        for lab in labs:
            store.set_labels([(g, lab, "good")], leased_at=now, k=1)
        with store.session() as s:
            assert (
                s.scalar(sa.select(sa.func.count()).select_from(LabelRow).where(LabelRow.image_id == g)) == 3
            )
    with pytest.raises(ValueError, match="gold_rate must be in"):
        create_app(run, ADMIN_SECRET, gold_rate=1.5)
