"""The run store: database round trips, content-addressed images, labels, metrics and migrations."""

import collections
import io
import json
import threading

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from PIL import Image
from sqlalchemy.exc import IntegrityError

from t2ialign.store import (
    Base,
    ImageRow,
    LabelRow,
    PromptRow,
    Store,
    StoreError,
    alembic_config,
)
from t2ialign.world.prompts import Prompt, PromptSpec, build_prompt_set


def png_bytes(color=(255, 0, 0), size=(8, 6)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def store(tmp_path):
    with Store.open(tmp_path / "run") as s:
        yield s


@pytest.fixture
def prompt_set():
    return build_prompt_set()


def add_one_image(store, prompt_text, color=(255, 0, 0), role="human") -> int:
    sha = store.put_image_bytes(png_bytes(color))
    sampler = {"scheduler": "DDIM", "steps": 2, "guidance_scale": 7.5}
    return store.add_image(sha, prompt_text, "tiny-sd", 7, sampler, role, width=8, height=6)


def count_rows(store, model) -> int:
    with store.session() as s:
        return s.scalar(sa.select(sa.func.count()).select_from(model))


# --- opening ---------------------------------------------------------------------------------------------


def test_open_creates_the_run_layout_with_sqlite_settings(tmp_path):
    with Store.open(tmp_path / "a" / "b") as store:
        assert (tmp_path / "a" / "b" / "t2ialign.db").is_file()
        assert store.images_dir.is_dir()
        with store.engine.connect() as c:
            assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert c.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
            assert c.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_reopening_keeps_data_and_is_at_head(tmp_path, prompt_set):
    with Store.open(tmp_path / "run") as store:
        store.add_prompts(prompt_set[:10])
        image_id = add_one_image(store, prompt_set[0].text)
        labeler = store.add_labeler("ann")
        store.set_label(image_id, labeler, "good")
        store.update_metrics(prompts={"n": 10})
    with Store.open(tmp_path / "run") as store:
        assert sum(store.prompt_counts().values()) == 10
        assert count_rows(store, LabelRow) == 1
        assert store.read_metrics() == {"prompts": {"n": 10}}
        with store.engine.connect() as c:
            current = MigrationContext.configure(c).get_current_revision()
        assert current == ScriptDirectory.from_config(alembic_config()).get_current_head()


def test_run_dir_under_a_regular_file_is_refused_and_nothing_is_created(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(StoreError, match=str(blocker)):
        Store.open(blocker / "run" / "deeper")
    assert sorted(tmp_path.rglob("*")) == before


def test_run_dir_that_is_a_file_is_refused(tmp_path):
    path = tmp_path / "run"
    path.write_text("x")
    with pytest.raises(StoreError, match="not a directory"):
        Store.open(path)
    assert path.read_text() == "x"


def test_failed_open_removes_what_it_created(tmp_path):
    # The run directory can be made, but the database (given by URL) cannot: nothing may stay behind.
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="run"):
        Store.open(tmp_path / "new" / "run", db_url=f"sqlite:///{blocker}/sub/x.db")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_bad_db_urls_are_refused_before_anything_is_created(tmp_path):
    with pytest.raises(StoreError, match="unsupported database 'mysql'"):
        Store.open(tmp_path / "run", db_url="mysql://u@localhost/db")
    with pytest.raises(StoreError, match="invalid database URL"):
        Store.open(tmp_path / "run", db_url="not a url")
    assert list(tmp_path.iterdir()) == []


def test_explicit_db_url(tmp_path):
    db = tmp_path / "elsewhere.db"
    with Store.open(tmp_path / "run", db_url=f"sqlite:///{db}") as store:
        store.add_prompts(build_prompt_set()[:3])
    assert db.is_file() and not (tmp_path / "run" / "t2ialign.db").exists()


# --- schema and migrations -------------------------------------------------------------------------------


def test_migrations_match_the_models(store):
    # A model change without a new migration makes this fail.
    with store.engine.connect() as c:
        assert compare_metadata(MigrationContext.configure(c), Base.metadata) == []


def test_the_migration_check_notices_a_model_change(store):
    changed = sa.MetaData()
    for table in Base.metadata.tables.values():
        table.to_metadata(changed)
    changed.tables["labels"].append_column(sa.Column("comment", sa.String(), nullable=True))
    with store.engine.connect() as c:
        diffs = compare_metadata(MigrationContext.configure(c), changed)
    assert [(d[0], d[3].name) for d in diffs] == [("add_column", "comment")]


def test_downgrade_and_upgrade_again(store):
    with store.engine.begin() as c:
        command.downgrade(alembic_config(connection=c), "base")
    assert set(sa.inspect(store.engine).get_table_names()) == {"alembic_version"}
    with store.engine.begin() as c:
        command.upgrade(alembic_config(connection=c), "head")
    assert {"prompts", "images", "labelers", "labels"} <= set(sa.inspect(store.engine).get_table_names())


def _checks(engine, table) -> list[tuple[str, str]]:
    return sorted(
        (c["name"], " ".join(c["sqltext"].split())) for c in sa.inspect(engine).get_check_constraints(table)
    )


def test_migrated_checks_match_the_models(store):
    # compare_metadata compares no CHECK constraint: the prompts table's (0008) are compared here, of a
    # database migrated from 0001 against one the ORM creates.
    fresh = sa.create_engine("sqlite://")
    Base.metadata.create_all(fresh)
    for table in Base.metadata.tables:
        assert _checks(store.engine, table) == _checks(fresh, table), table
    assert "ck_prompts_imported" in dict(_checks(store.engine, "prompts"))


def test_0008_keeps_a_run_with_images_and_downgrades(store, prompt_set):
    # The prompts table is made anew on SQLite while images reference it: the foreign keys must hold at
    # commit, and every row keep its id.
    store.add_prompts(prompt_set[:3])
    image_id = add_one_image(store, prompt_set[1].text)
    before = store.list_prompts()
    with store.engine.begin() as c:
        command.downgrade(alembic_config(connection=c), "0007")
    assert _checks(store.engine, "prompts")[-1][1] == "split IN ('seen', 'unseen_prompt', 'unseen_object')"
    with store.engine.begin() as c:
        command.upgrade(alembic_config(connection=c), "head")
        assert c.exec_driver_sql("PRAGMA foreign_key_check").all() == []
    assert store.list_prompts() == before
    assert store.list_images()[0]["id"] == image_id and store.list_images()[0]["prompt"] == prompt_set[1].text
    store.add_free_prompts(["a cat in a hat"])
    with pytest.raises(IntegrityError), store.engine.begin() as c:  # an imported caption has no old row
        command.downgrade(alembic_config(connection=c), "0007")
    assert store.list_prompts(split="imported")[0]["text"] == "a cat in a hat"


def test_database_enforces_checks_and_foreign_keys(store, prompt_set):
    store.add_prompts(prompt_set[:1])
    image_id = add_one_image(store, prompt_set[0].text)
    labeler = store.add_labeler("ann")
    with pytest.raises(IntegrityError, match="CHECK"), store.session() as s:
        s.execute(sa.update(ImageRow).values(role="training"))
    with pytest.raises(IntegrityError, match="CHECK"), store.session() as s:
        s.execute(sa.update(PromptRow).values(split="test"))
    with pytest.raises(IntegrityError, match="FOREIGN KEY"), store.session() as s:
        s.add(LabelRow(image_id=image_id + 100, labeler_id=labeler, value="good"))
    with pytest.raises(IntegrityError, match="UNIQUE"), store.session() as s:
        s.add_all([LabelRow(image_id=image_id, labeler_id=labeler, value=v) for v in ("good", "bad")])
    assert count_rows(store, LabelRow) == 0


# --- prompts ---------------------------------------------------------------------------------------------


def test_prompt_round_trip_is_idempotent(store, prompt_set):
    assert store.add_prompts(prompt_set) == len(prompt_set)
    assert store.add_prompts(prompt_set) == 0
    assert store.prompt_counts() == dict(collections.Counter((p.category, p.split) for p in prompt_set))
    p = next(p for p in prompt_set if p.category == "combination")
    with store.session() as s:
        row = s.scalar(sa.select(PromptRow).where(PromptRow.text == p.text))
        got = (row.category, row.split, row.shape, row.count, row.color, row.background)
    assert got == (p.category, p.split, p.spec.shape, p.spec.count, p.spec.color, p.spec.background)


def test_free_caption_has_no_category(store):
    spec = PromptSpec("circle", color="red", background="forest")
    assert store.add_prompts([Prompt(spec.text(), None, "seen", spec)]) == 1
    assert store.prompt_counts() == {(None, "seen"): 1}


@pytest.mark.parametrize("field, value", [("category", "style"), ("split", "test")])
def test_bad_prompt_fields_write_nothing(store, prompt_set, field, value):
    good = prompt_set[:5]
    bad = Prompt(**{"text": "x", "category": "count", "split": "seen", "spec": good[0].spec, field: value})
    with pytest.raises(ValueError, match=f"unknown {field}"):
        store.add_prompts([*good, bad])
    assert store.prompt_counts() == {}


def test_a_stored_prompt_cannot_change_its_split(store, prompt_set):
    p = prompt_set[0]
    store.add_prompts([p])
    other = "seen" if p.split != "seen" else "unseen_prompt"
    with pytest.raises(ValueError, match="already stored"):
        store.add_prompts([*prompt_set[1:5], Prompt(p.text, p.category, other, p.spec)])
    assert sum(store.prompt_counts().values()) == 1


# --- images ----------------------------------------------------------------------------------------------


def test_image_round_trip(store, prompt_set):
    store.add_prompts(prompt_set[:1])
    data = png_bytes()
    sha = store.put_image_bytes(data)
    path = store.image_path(sha)
    assert path == store.run_dir / "images" / sha[:2] / f"{sha}.png"
    assert path.read_bytes() == data
    assert store.put_image_bytes(data) == sha  # no-op
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp files left
    sampler = {"scheduler": "DDIM", "steps": 50, "guidance_scale": 7.5, "eta": 0.0}
    image_id = store.add_image(
        sha,
        prompt_set[0].text,
        "tiny-sd",
        2**40,
        sampler,
        "unlabeled",
        width=8,
        height=6,
        model_revision="r1",
    )
    with store.session() as s:
        row = s.get(ImageRow, image_id)
        prompt = s.get(PromptRow, row.prompt_id)
    assert (row.sha256, row.seed, row.sampler, row.role, row.model_revision) == (
        sha,
        2**40,
        sampler,
        "unlabeled",
        "r1",
    )
    assert (row.width, row.height, prompt.text) == (8, 6, prompt_set[0].text)


@pytest.mark.parametrize(
    "bad",
    ["../etc/passwd", "A" * 64, "a" * 63, "a" * 65, "a" * 64 + "\n", "../" + "a" * 61, "g" * 64, None, 123],
)
def test_bad_sha256_is_rejected(store, bad):
    with pytest.raises(ValueError, match="sha256"):
        store.image_path(bad)


def test_put_rejects_non_png(store):
    with pytest.raises(ValueError, match="not a PNG"):
        store.put_image_bytes(b"GIF89a" + b"\0" * 30)
    assert list(store.images_dir.iterdir()) == []


@pytest.mark.parametrize(
    "change, match",
    [
        ({"role": "training"}, "unknown image role"),
        ({"prompt_text": "Seven moons"}, "unknown prompt"),
        ({"sha256": "0" * 64}, "no image file"),
        ({"width": 9}, "not the 9x6"),
        ({"seed": 2**64}, "seed"),
        ({"sampler": {"guidance_scale": float("nan")}}, "finite"),
        ({"model_id": ""}, "model_id"),
    ],
)
def test_bad_image_records_write_nothing(store, prompt_set, change, match):
    store.add_prompts(prompt_set[:1])
    args = {
        "sha256": store.put_image_bytes(png_bytes()),
        "prompt_text": prompt_set[0].text,
        "model_id": "tiny-sd",
        "seed": 0,
        "sampler": {"steps": 2},
        "role": "human",
        "width": 8,
        "height": 6,
    }
    with pytest.raises(ValueError, match=match):
        store.add_image(**{**args, **change})
    assert count_rows(store, ImageRow) == 0


def test_an_image_is_recorded_once(store, prompt_set):
    store.add_prompts(prompt_set[:1])
    add_one_image(store, prompt_set[0].text)
    with pytest.raises(ValueError, match="already recorded"):
        add_one_image(store, prompt_set[0].text)
    assert count_rows(store, ImageRow) == 1


# --- labelers and labels ---------------------------------------------------------------------------------


def test_one_label_per_image_and_labeler(store, prompt_set):
    store.add_prompts(prompt_set[:1])
    img_a = add_one_image(store, prompt_set[0].text, color=(255, 0, 0))
    img_b = add_one_image(store, prompt_set[0].text, color=(0, 0, 255))
    ann = store.add_labeler("ann", token_hash="h" * 64, is_admin=True)
    bot = store.add_labeler("judge", is_simulated=True)
    store.set_label(img_a, ann, "good")
    store.set_label(img_a, bot, "bad")
    store.set_label(img_b, ann, "skip")
    with store.session() as s:
        first = s.scalar(sa.select(LabelRow).where(LabelRow.image_id == img_a, LabelRow.labeler_id == ann))
    store.set_label(img_a, ann, "bad")  # upsert, not a second row
    with store.session() as s:
        rows = s.scalars(sa.select(LabelRow).order_by(LabelRow.id)).all()
    assert [(r.image_id, r.labeler_id, r.value) for r in rows] == [
        (img_a, ann, "bad"),
        (img_a, bot, "bad"),
        (img_b, ann, "skip"),
    ]
    assert rows[0].id == first.id and rows[0].created_at == first.created_at
    assert rows[0].updated_at > first.updated_at


def test_bad_labels_write_nothing(store, prompt_set):
    store.add_prompts(prompt_set[:1])
    image_id = add_one_image(store, prompt_set[0].text)
    ann = store.add_labeler("ann")
    with pytest.raises(ValueError, match="unknown label value"):
        store.set_label(image_id, ann, "great")
    with pytest.raises(ValueError, match="unknown image id"):
        store.set_label(image_id + 1, ann, "good")
    with pytest.raises(ValueError, match="unknown labeler id"):
        store.set_label(image_id, ann + 1, "good")
    with pytest.raises(ValueError, match="already exists"):
        store.add_labeler("ann")
    with pytest.raises(ValueError, match="is_admin"):
        store.add_labeler("bob", is_admin="yes")
    assert count_rows(store, LabelRow) == 0


def test_bulk_labels_are_all_or_nothing(store, prompt_set):
    store.add_prompts(prompt_set[:1])
    a = add_one_image(store, prompt_set[0].text, color=(255, 0, 0))
    b = add_one_image(store, prompt_set[0].text, color=(0, 255, 0))
    ann = store.add_labeler("ann")
    with pytest.raises(ValueError, match="unknown image id"):
        store.set_labels([(a, ann, "good"), (b + 7, ann, "bad")])
    with pytest.raises(ValueError, match="given twice"):
        store.set_labels([(a, ann, "good"), (a, ann, "bad")])
    assert count_rows(store, LabelRow) == 0
    store.set_labels([(a, ann, "good"), (b, ann, "bad")])
    store.set_labels([(a, ann, "skip")])
    with store.session() as s:
        assert dict(s.execute(sa.select(LabelRow.image_id, LabelRow.value)).all()) == {a: "skip", b: "bad"}


def test_concurrent_labelers_lose_nothing(tmp_path, prompt_set):
    # Two stores (as two web-app workers would) write labels at once; every label lands, none twice.
    with Store.open(tmp_path / "run") as store:
        store.add_prompts(prompt_set[:1])
        images = [add_one_image(store, prompt_set[0].text, color=(i, 0, 0)) for i in range(10)]
        labelers = [store.add_labeler(f"l{i}") for i in range(2)]
    errors = []

    def work(labeler):
        try:
            with Store.open(tmp_path / "run") as s:
                for _ in range(2):  # the second pass is a resend
                    for image in images:
                        s.set_label(image, labeler, "good")
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(lab,)) for lab in labelers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with Store.open(tmp_path / "run") as store:
        assert count_rows(store, LabelRow) == len(images) * len(labelers)


# --- metrics ---------------------------------------------------------------------------------------------


def test_metrics_round_trip(store):
    assert store.read_metrics() == {}
    store.update_metrics(prompts={"counts": {"count/seen": 36}}, reward={"acc": 0.5})
    store.update_metrics(reward={"acc": 0.75})
    expected = {"prompts": {"counts": {"count/seen": 36}}, "reward": {"acc": 0.75}}
    assert store.read_metrics() == expected
    assert json.loads(store.metrics_path.read_text()) == expected
    assert not [p for p in store.run_dir.iterdir() if p.name.endswith(".tmp")]


def test_bad_metrics_write_nothing(store):
    store.update_metrics(a=1)
    with pytest.raises(ValueError, match="finite"):
        store.update_metrics(loss=float("nan"))
    with pytest.raises(ValueError, match="JSON"):
        store.update_metrics(obj=object())
    assert store.read_metrics() == {"a": 1}
