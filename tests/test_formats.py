"""Public preference sets in their own schemas (Pick-a-Pic v2 Parquet, ImageReward and HPDv2 test.json),
written small by the tests, parsed, imported into a run; bad input refused with the file and row named."""

import argparse
import hashlib
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from sqlalchemy.exc import IntegrityError

from t2ialign.label.cli_data import add_commands
from t2ialign.label.formats import (
    detect_format,
    import_preferences,
    read_pickapic,
    read_ranked,
    to_png,
)
from t2ialign.store import MAX_CAPTION_CHARS, PromptRow, Store
from t2ialign.world.prompts import Prompt, PromptSpec, build_prompt_set
from t2ialign.world.render import render

TEXTS = ["Two circles", "A circle in the forest"]
COLORS = [(255, 0, 0), (0, 128, 0), (0, 0, 255), (200, 200, 0), (0, 200, 200), (90, 90, 90)]


def encoded(color, fmt="JPEG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format=fmt)
    return buf.getvalue()


def png_sha(data: bytes) -> str:
    return hashlib.sha256(to_png(data, "test")[0]).hexdigest()


@pytest.fixture
def run(tmp_path):
    with Store.open(tmp_path / "run") as s:
        s.add_prompts(p for p in build_prompt_set() if p.text in TEXTS)
        yield s


def pickapic_rows():
    """Four rows of Pick-a-Pic v2's schema: image 0 wins, image 1 wins, a tie, and an unlabeled pair."""
    jpg = [encoded(c) for c in COLORS]
    rows = []
    for i, (l0, l1, has) in enumerate(
        [(1.0, 0.0, True), (0.0, 1.0, True), (0.5, 0.5, True), (0.0, 0.0, False)]
    ):
        rows.append(
            {
                "are_different": True,
                "best_image_uid": f"u{i}-0" if l0 == 1.0 else f"u{i}-1" if l1 == 1.0 else "",
                "caption": TEXTS[i % 2],
                "has_label": has,
                "image_0_uid": f"u{i}-0",
                "image_1_uid": f"u{i}-1",
                "jpg_0": jpg[2 * i % 6],
                "jpg_1": jpg[(2 * i + 1) % 6],
                "label_0": l0,
                "label_1": l1,
                "model_0": "sdxl",
                "model_1": "sd2.1",
                "ranking_id": 100 + i,
                "user_id": 7 + i % 2,
            }
        )
    return rows


def write_pickapic(path, rows, row_group_size=2):
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size)
    return path


def test_pickapic_parses_by_batches_and_skips_unlabeled(tmp_path):
    path = write_pickapic(tmp_path / "train-00000-of-00645.parquet", pickapic_rows())
    assert detect_format(path) == "pickapic"
    recs = list(read_pickapic(path, batch_size=1))
    assert [r.choice for r in recs] == ["A", "B", "tie"]
    assert [r.rater for r in recs] == ["7", "8", "7"]
    assert recs[0].prompt == "Two circles" and recs[0].model_a == "sdxl" and recs[0].model_b == "sd2.1"
    assert recs[1].image_a == pickapic_rows()[1]["jpg_0"] and recs[1].source.endswith("row 2")


@pytest.mark.parametrize(
    "change, match",
    [
        ({"label_0": 0.7, "label_1": 0.3}, r"row 2: label_0, label_1 must be 1/0, 0/1 or 0.5/0.5"),
        ({"label_0": 1.0, "label_1": 1.0}, r"row 2: label_0, label_1 must be"),
        ({"caption": ""}, r"row 2: caption must be a non-empty string"),
        ({"jpg_1": None}, r"row 2: jpg_1 must hold the image's bytes"),
    ],
)
def test_pickapic_bad_rows_name_the_row(tmp_path, change, match):
    rows = pickapic_rows()
    rows[1] |= change
    path = write_pickapic(tmp_path / "p.parquet", rows)
    with pytest.raises(ValueError, match=match):
        list(read_pickapic(path))


def test_pickapic_missing_column_and_junk(tmp_path):
    table = pa.Table.from_pylist(pickapic_rows()).drop_columns(["jpg_1"])
    pq.write_table(table, tmp_path / "p.parquet")
    with pytest.raises(ValueError, match=r"missing column\(s\) jpg_1"):
        list(read_pickapic(tmp_path / "p.parquet"))
    assert detect_format(tmp_path / "p.parquet") == "t2ialign"  # not Pick-a-Pic's schema: the default reader
    (tmp_path / "junk.parquet").write_bytes(b"nope")
    with pytest.raises(ValueError, match="not a readable Parquet file"):
        list(read_pickapic(tmp_path / "junk.parquet"))


def write_ranked(tmp_path, fmt, items, images_dir="images"):
    """A test.json in ``fmt``'s keys; images (PNG / WebP) under tmp_path/images_dir."""
    (tmp_path / images_dir / "part-1").mkdir(parents=True, exist_ok=True)
    for k, c in enumerate(COLORS):
        (tmp_path / images_dir / "part-1" / f"{k}.webp").write_bytes(encoded(c, "WEBP"))
    keys = {"imagereward": ("generations", "ranking"), "hpdv2": ("image_path", "rank")}[fmt]
    data = [
        {"id": f"x{i}", "prompt": p, keys[0]: files, keys[1]: ranks}
        for i, (p, files, ranks) in enumerate(items)
    ]
    path = tmp_path / "test.json"
    path.write_text(json.dumps(data))
    return path


FILES3 = [f"part-1/{k}.webp" for k in range(3)]


def test_imagereward_ranking_to_pairs_with_ties(tmp_path):
    path = write_ranked(tmp_path, "imagereward", [("Two circles", FILES3, [1, 2, 2])])
    assert detect_format(path) == "imagereward"
    recs = list(read_ranked(path, "imagereward", image_root=tmp_path / "images"))
    assert [r.choice for r in recs] == ["A", "A", "tie"]  # pairs (1,2), (1,3), (2,3): 1 = best
    assert recs[2].image_a == (tmp_path / "images" / FILES3[1]).read_bytes() and recs[0].rater is None


def test_hpdv2_rank_per_image_lower_is_better(tmp_path):
    path = write_ranked(tmp_path, "hpdv2", [("Two circles", FILES3, [2, 0, 1])], images_dir=".")
    assert detect_format(path) == "hpdv2"
    recs = list(read_ranked(path, "hpdv2"))  # paths relative to the file's folder by default
    assert [r.choice for r in recs] == ["B", "B", "A"]
    assert "item 1 (id x0) images 2 and 3" in recs[2].source


@pytest.mark.parametrize(
    "fmt, item, match",
    [
        ("imagereward", ("Two circles", FILES3, [0, 1, 2]), r"item 1 \(id x0\): unknown rank 0"),
        ("imagereward", ("Two circles", FILES3, [1, "2", 3]), r"unknown rank '2'"),
        ("hpdv2", ("Two circles", FILES3, [0, 1]), r"rank must be a list of one rank per image \(3\)"),
        ("hpdv2", ("Two circles", FILES3[:1], [0]), r"image_path must be a list of two or more"),
        ("hpdv2", ("Two circles", ["part-1/9.webp", FILES3[0]], [0, 1]), r"missing image file .*9\.webp"),
        ("hpdv2", ("Two circles", ["../secret.png", FILES3[0]], [0, 1]), r"must be relative"),
        ("hpdv2", ("", FILES3, [0, 1, 2]), r"prompt must be a non-empty string"),
    ],
)
def test_ranked_bad_items_name_the_item(tmp_path, fmt, item, match):
    path = write_ranked(tmp_path, fmt, [item], images_dir=".")
    with pytest.raises(ValueError, match=match):
        list(read_ranked(path, fmt))


def test_ranked_missing_key_and_unknown_json(tmp_path):
    (tmp_path / "test.json").write_text(json.dumps([{"prompt": "Two circles", "generations": []}]))
    with pytest.raises(ValueError, match="pass --format"):
        detect_format(tmp_path / "test.json")
    with pytest.raises(ValueError, match=r"item 1: missing key\(s\) ranking"):
        list(read_ranked(tmp_path / "test.json", "imagereward"))


def test_import_pickapic_into_the_run(run, tmp_path):
    path = write_pickapic(tmp_path / "p.parquet", pickapic_rows())
    counts = import_preferences(run, read_pickapic(path), "pickapic", batch=2)
    assert counts["records"] == 3 and counts["new"] == 3 and counts["raters_new"] == 2
    assert counts["images"] == 6  # six colors, stored as PNG
    prefs = run.preferences(source="import:pickapic")
    rows = pickapic_rows()
    by_pair = {frozenset((p["image_a"], p["image_b"])): p for p in prefs}
    win = by_pair[frozenset((png_sha(rows[0]["jpg_0"]), png_sha(rows[0]["jpg_1"])))]
    assert win["preferred"] == png_sha(rows[0]["jpg_0"]) and win["labeler"] == "7@pickapic"
    lose = by_pair[frozenset((png_sha(rows[1]["jpg_0"]), png_sha(rows[1]["jpg_1"])))]
    assert lose["preferred"] == png_sha(rows[1]["jpg_1"]) and lose["labeler"] == "8@pickapic"
    assert sorted(p["choice"] for p in prefs if p["preferred"] is None) == ["tie"]
    images = {im["sha256"]: im for im in run.list_images()}
    assert images[png_sha(rows[0]["jpg_0"])]["model_id"] == "sdxl"
    assert {im["role"] for im in images.values()} == {"unlabeled"}  # never handed to labelers
    again = import_preferences(run, read_pickapic(path), "pickapic")
    assert again["new"] == 0 and again["unchanged"] == 3 and again["images"] == 0


def test_import_ranking_into_the_run(run, tmp_path):
    items = [
        ("Two circles", FILES3, [1, 2, 2]),
        ("A circle in the forest", [f"part-1/{k}.webp" for k in (3, 0)], [2, 1]),
    ]
    path = write_ranked(tmp_path, "imagereward", items)
    with pytest.raises(
        ValueError,
        match=r"item 2 \(id x1\) images 1 and 2: image B \(\w+\) is an image of prompt 'Two circles'",
    ):
        import_preferences(run, read_ranked(path, "imagereward", tmp_path / "images"), "imagereward")
    # the same file (0.webp) under two prompts is refused: an image belongs to one prompt; a fixed file:
    items[1] = ("A circle in the forest", ["part-1/3.webp", "part-1/3.webp"], [1, 1])
    path = write_ranked(tmp_path, "imagereward", items)
    counts = import_preferences(run, read_ranked(path, "imagereward", tmp_path / "images"), "imagereward")
    assert counts["new"] == 3 and counts["same_image"] == 1
    prefs = run.preferences(source="import:imagereward")
    assert {p["labeler"] for p in prefs} == {"consensus@imagereward"}
    assert sorted(p["choice"] for p in prefs if p["preferred"] is None) == ["tie"]


FREE = ["a cat in a hat", "A red apple on a table, oil painting"]


def free_rows():
    """pickapic_rows with free captions on rows 1 and 3 (row 2 keeps the world prompt "A circle in the
    forest", a prompt of the run)."""
    rows = pickapic_rows()
    rows[0]["caption"], rows[2]["caption"] = FREE
    return rows


def test_import_stores_free_captions_as_imported_prompts(run, tmp_path):
    world = {p["text"]: p for p in run.list_prompts()}
    path = write_pickapic(tmp_path / "free.parquet", free_rows())
    counts = import_preferences(run, read_pickapic(path), "pickapic", batch=2)
    assert counts["records"] == 3 and counts["new"] == 3 and counts["prompts_new"] == 2
    imported = run.list_prompts(split="imported")
    assert [p["text"] for p in imported] == FREE
    assert all(
        (p["category"], p["shape"], p["count"], p["color"], p["background"]) == (None,) * 5 for p in imported
    )
    assert {p["text"]: p for p in run.list_prompts() if p["split"] != "imported"} == world  # rows kept
    prefs = run.preferences(source="import:pickapic")
    assert sorted((p["prompt"], p["split"], p["choice"]) for p in prefs) == [
        ("A circle in the forest", "seen", "B"),
        ("A red apple on a table, oil painting", "imported", "tie"),
        ("a cat in a hat", "imported", "A"),
    ]
    again = import_preferences(run, read_pickapic(path), "pickapic")
    assert again["prompts_new"] == 0 and again["unchanged"] == 3 and len(run.list_prompts()) == 4


def test_import_into_a_run_without_prompts(tmp_path):
    rows = free_rows()
    rows[1]["caption"] = "Two circles"  # a world prompt's text, not a prompt of this run: a free caption
    with Store.open(tmp_path / "empty") as store:
        counts = import_preferences(
            store, read_pickapic(write_pickapic(tmp_path / "f.parquet", rows)), "pickapic"
        )
        assert counts["prompts_new"] == 3
        assert {p["split"] for p in store.list_prompts()} == {"imported"}


def test_add_free_prompts_is_idempotent_and_validated(run):
    world = run.list_prompts()[0]
    ids = run.add_free_prompts(["a cat", world["text"], "a cat"])
    assert ids == {"a cat": ids["a cat"], world["text"]: world["id"]}
    assert run.add_free_prompts(["a cat"]) == {"a cat": ids["a cat"]}
    assert run.list_prompts(split="seen")[0]["id"] == world["id"]  # a world prompt stays a world prompt
    for bad, match in [
        ("", "non-empty string"),
        ("   ", "non-empty string"),
        (3, "non-empty string"),
        ("x" * (MAX_CAPTION_CHARS + 1), "more than"),
        ("a cat\nin a hat", "control character"),
        ("a\x00cat", "control character"),
    ]:
        with pytest.raises(ValueError, match=match):
            run.add_free_prompts(["a dog", bad])
    assert [p["text"] for p in run.list_prompts(split="imported")] == ["a cat"]  # nothing of a bad call
    with pytest.raises(ValueError, match="unknown split"):  # world prompts are the world's splits only
        run.add_prompts([Prompt("a dog", None, "imported", PromptSpec("circle"))])


def test_the_schema_refuses_an_imported_prompt_with_attributes(run):
    with pytest.raises(IntegrityError, match="CHECK"), run.session() as s:
        s.add(PromptRow(text="a cat", split="imported", shape="circle"))
    with pytest.raises(IntegrityError, match="CHECK"), run.session() as s:
        s.add(PromptRow(text="a dog", split="seen", shape=None))


def test_import_refuses_bad_captions_and_non_images(run, tmp_path):
    rows = pickapic_rows()
    rows[1]["caption"] = "a cat\tin a hat"
    with pytest.raises(ValueError, match=r"row 2: caption 'a cat\\tin a hat' holds the control character"):
        import_preferences(run, read_pickapic(write_pickapic(tmp_path / "a.parquet", rows)), "pickapic")
    rows = pickapic_rows()
    rows[0]["jpg_1"] = b"not an image"
    with pytest.raises(ValueError, match=r"row 1 image B: not an image PIL can read"):
        import_preferences(run, read_pickapic(write_pickapic(tmp_path / "b.parquet", rows)), "pickapic")
    assert run.preferences() == [] and run.list_prompts(split="imported") == []


# --- the stages that read prompts, with imported ones in the run ---------------------------------------------


@pytest.fixture
def mixed(tmp_path):
    """A run with the world's prompts (the full set), one rendered image of role unlabeled of a seen
    prompt, and a Pick-a-Pic import with free captions (role unlabeled too)."""
    with Store.open(tmp_path / "mixed") as store:
        store.add_prompts(build_prompt_set())
        buf = io.BytesIO()
        render(TEXTS[0], 0).pil().save(buf, format="PNG")
        sha = store.put_image_bytes(buf.getvalue())
        store.add_image(sha, TEXTS[0], "test", 0, {}, "unlabeled", width=64, height=64)
        rows = read_pickapic(write_pickapic(tmp_path / "free.parquet", free_rows()))
        import_preferences(store, rows, "pickapic")
        yield store


def test_prompt_selection_leaves_imported_prompts_out(mixed):
    from t2ialign.evaluate.run import evaluation_prompts, feedback_prompts

    groups = evaluation_prompts(mixed, 30, 30)
    assert set(groups) == {"seen", "unseen_prompt", "unseen_object"}
    chosen = {p for ps in groups.values() for p in ps} | {p["text"] for p in feedback_prompts(mixed, 30, 30)}
    assert not chosen & set(FREE)
    assert {p["split"] for p in feedback_prompts(mixed, 30, 30)} == {"seen"}


def test_cli_prompts_and_label_stats_with_imported_prompts(mixed, capsys):
    from t2ialign.cli import main

    # the prompts table counted (category, split) keys with sorted(): None (an imported caption's
    # category) next to strings failed; imported captions are counted apart
    assert main(["prompts", "--run", str(mixed.run_dir)]) == 0
    out = capsys.readouterr().out
    assert "2 imported captions" in out
    section = mixed.read_metrics()["prompts"]
    assert section["imported"] == 2 and sum(section["counts"].values()) == len(build_prompt_set())
    assert _cli(["stats", str(mixed.run_dir), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["pairs"]["pairs"] == {"import:pickapic": 3}


def test_the_judge_is_never_asked_about_an_imported_caption(mixed):
    from t2ialign.label.oracle import judge_stored
    from t2ialign.label.simulate import simulate_labels
    from t2ialign.label.simulate_votes import query_evidence
    from t2ialign.reward.data import labeled_images
    from t2ialign.world.judge import Judge

    imported = [im for im in mixed.list_images() if im["prompt"] in FREE]
    with pytest.raises(
        ValueError, match="imported caption .* the world judge reads the world's prompts only"
    ):
        judge_stored(mixed, imported, judge=None)
    assert query_evidence(mixed, [], judge=None) == {}  # it read a spec of every prompt, shapes of None too
    judge = Judge.load()
    report = simulate_labels(mixed, 2, noise=0.0, skip=0.0, role="unlabeled", judge=judge, progress=False)
    labeled = labeled_images(mixed, role="unlabeled")
    # the world's images of role unlabeled are labeled, an imported one of a world prompt too (the judge
    # reads it against its prompt); those of free captions are left out, not a judge error
    assert {r["prompt"] for r in labeled} == {TEXTS[0], TEXTS[1]} and report["images"] == 3
    assert labeled_images(mixed) == []  # the reward's training labels (role human): none of the import


def _cli(argv) -> int:
    parser = argparse.ArgumentParser(prog="t2ialign label")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_import_detects_or_is_told_the_format(run, tmp_path, capsys):
    path = write_pickapic(tmp_path / "p.parquet", pickapic_rows())
    assert _cli(["import", str(run.run_dir), str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["new"] == 3
    hp = write_ranked(tmp_path, "hpdv2", [("Two circles", FILES3, [0, 1, 2])])
    argv = [
        "import",
        str(run.run_dir),
        str(hp),
        "--format",
        "hpdv2",
        "--image-root",
        str(tmp_path / "images"),
    ]
    assert _cli(argv) == 0
    assert json.loads(capsys.readouterr().out)["new"] == 3
    with pytest.raises(ValueError, match="test.json is not a readable Parquet file"):
        _cli(["import", str(run.run_dir), str(hp), "--format", "pickapic"])
    with pytest.raises(ValueError, match="no run at"):
        _cli(["import", str(tmp_path / "nowhere"), str(path)])


# --- exports that carry images ------------------------------------------------------------------------------


@pytest.fixture
def labeled(run):
    """The run with 2 prompts x 2 rendered images, labeled by two simulated labelers and a person."""
    from t2ialign.label.service import submit_label
    from t2ialign.world.render import render

    records = []
    for text in TEXTS:
        for seed in (0, 1):
            buf = io.BytesIO()
            render(text, seed).pil().save(buf, format="PNG")
            records.append(
                dict(sha256=run.put_image_bytes(buf.getvalue()), prompt_text=text, model_id="test-sd")
                | dict(seed=seed, sampler={}, role="human", width=64, height=64)
            )
    ids = run.add_images(records)
    raters = [run.add_labeler("sim-1", is_simulated=True), run.add_labeler("sim-2", is_simulated=True)]
    answers = [("good", "good"), ("bad", "good"), ("bad", "bad"), ("skip", "skip")]
    for image, pair in zip(ids, answers, strict=True):
        for rater, value in zip(raters, pair, strict=True):
            submit_label(run, rater, image, value)
    return run


@pytest.fixture
def hf(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import datasets

    return datasets


def test_parquet_export_with_images_yields_pil_images(labeled, tmp_path, hf):
    import numpy as np

    from t2ialign.label.export import COLUMNS, IMAGE_SCHEMA, SCHEMA, export_labels, label_rows

    assert export_labels(labeled, tmp_path / "a.parquet", images=True) == 8
    export_labels(labeled, tmp_path / "b.parquet", images=True)
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    # the schema metadata is the one datasets itself writes for these features
    features = hf.Features.from_arrow_schema(SCHEMA)
    features["image"] = hf.Image()
    assert IMAGE_SCHEMA.metadata == features.arrow_schema.metadata
    ds = hf.load_dataset(
        "parquet", data_files=str(tmp_path / "a.parquet"), split="train", cache_dir=str(tmp_path / "c")
    )
    assert ds.column_names == [*COLUMNS, "image"] and isinstance(ds.features["image"], hf.Image)
    rows = label_rows(labeled)
    for got, want in zip(ds, rows, strict=True):
        assert isinstance(got["image"], Image.Image)
        assert np.array_equal(
            np.asarray(got["image"].convert("RGB")), labeled.image_array(want["image_sha256"])
        )
        assert {k: got[k] for k in COLUMNS} == want


def test_export_with_images_imports_without_images_from(labeled, tmp_path):
    from t2ialign.label.export import export_labels, import_labels

    export_labels(labeled, tmp_path / "a.parquet", images=True)
    with Store.open(tmp_path / "new") as new:
        counts = import_labels(new, tmp_path / "a.parquet")  # the pictures come from the file
        assert counts["images"] == 4 and counts["labels"]["new"] == 8
        export_labels(new, tmp_path / "b.parquet", images=True)
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()


def test_imagefolder_export_reads_in_datasets_as_diffusers_does(labeled, tmp_path, hf):
    import os

    from t2ialign.label.export import export_imagefolder

    out = tmp_path / "folder"
    assert export_imagefolder(labeled, out) == 4
    lines = [json.loads(x) for x in (out / "metadata.jsonl").read_text().splitlines()]
    assert sorted(r["majority"] or "none" for r in lines) == ["bad", "good", "none", "tie"]
    first = (out / "metadata.jsonl").read_bytes()
    export_imagefolder(labeled, out)  # again, over the first: the same files
    assert (out / "metadata.jsonl").read_bytes() == first and len(list((out / "images").iterdir())) == 4
    ds = hf.load_dataset("imagefolder", data_dir=str(out), split="train", cache_dir=str(tmp_path / "c"))
    assert ds.column_names[:2] == ["image", "text"] and "majority" in ds.column_names
    by_sha = {r["image_sha256"]: r for r in ds}
    for r in lines:
        got = by_sha[r["image_sha256"]]
        assert got["text"] == r["text"] and got["n_good"] == r["n_good"]
        assert got["image"].tobytes() == labeled.open_image(r["image_sha256"]).tobytes()
    # diffusers' train_text_to_image.py: load_dataset("imagefolder", data_files={"train": DIR/**}),
    # then --image_column image (default) and --caption_column text (default), strings
    files = {"train": os.path.join(out, "**")}
    ds2 = hf.load_dataset("imagefolder", data_files=files, cache_dir=str(tmp_path / "c2"))["train"]
    assert {"image", "text"} <= set(ds2.column_names) and all(isinstance(t, str) for t in ds2["text"])
    good = tmp_path / "good"
    assert export_imagefolder(labeled, good, only_good=True) == 1
    (tmp_path / "taken").mkdir()
    with pytest.raises(ValueError, match="not an imagefolder export"):
        export_imagefolder(labeled, tmp_path / "taken")


def test_cli_export_formats(labeled, tmp_path, capsys):
    from t2ialign.label.export import IMAGE_COLUMN

    assert _cli(["export", str(labeled.run_dir), str(tmp_path / "l.parquet")]) == 0
    assert IMAGE_COLUMN in pq.read_schema(tmp_path / "l.parquet").names  # the CLI carries images
    assert _cli(["export", str(labeled.run_dir), str(tmp_path / "n.parquet"), "--no-images"]) == 0
    assert IMAGE_COLUMN not in pq.read_schema(tmp_path / "n.parquet").names
    argv = ["export", str(labeled.run_dir), str(tmp_path / "f"), "--format", "imagefolder", "--only-good"]
    assert _cli(argv) == 0
    assert "1 images and metadata.jsonl" in capsys.readouterr().out
    with pytest.raises(ValueError, match="writes a .jsonl file"):
        _cli(["export", str(labeled.run_dir), str(tmp_path / "x.parquet"), "--format", "jsonl"])
    assert _cli(["import", str(tmp_path / "copy"), str(tmp_path / "l.parquet")]) == 0  # no --images-from
