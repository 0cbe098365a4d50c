"""Label export / import: JSONL and Parquet, byte-identical exports, round trips, refused bad files."""

import argparse
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from t2ialign.label.cli_data import add_commands
from t2ialign.label.export import COLUMNS, export_labels, import_labels, label_rows
from t2ialign.label.service import submit_label
from t2ialign.store import LabelerRow, Store
from t2ialign.world.prompts import build_prompt_set
from t2ialign.world.render import render

TEXTS = ["Two circles", "A green colored circle", "A circle in the forest", "Two blue circles in the forest"]
SAMPLER = {"scheduler": "DDIMScheduler", "num_inference_steps": 2, "guidance_scale": 7.5, "eta": None}


@pytest.fixture
def store(tmp_path):
    """4 prompts x 2 images, labeled by a person (some) and two simulated labelers (all)."""
    with Store.open(tmp_path / "run") as s:
        s.add_prompts(p for p in build_prompt_set() if p.text in TEXTS)
        records = []
        for text in TEXTS:
            for seed in (0, 1):
                buf = io.BytesIO()
                render(text, seed).pil().save(buf, format="PNG")
                records.append(
                    dict(sha256=s.put_image_bytes(buf.getvalue()), prompt_text=text, model_id="test-sd")
                    | dict(seed=seed, sampler=SAMPLER, role="human", width=64, height=64)
                    | dict(model_revision="abc123" if seed else None)
                )
        image_ids = s.add_images(records)
        alice = s.add_labeler("alice")
        sims = [s.add_labeler(f"sim-{i}", is_simulated=True) for i in (1, 2)]
        for k, image in enumerate(image_ids):
            for j, labeler in enumerate(sims):
                submit_label(s, labeler, image, ("good", "bad", "skip")[(k + j) % 3])
            if k % 2:
                submit_label(s, alice, image, "good")
        submit_label(s, alice, image_ids[1], "bad")  # a changed answer: updated_at after created_at
        yield s


def empty_run(path) -> Store:
    return Store.open(path)


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_two_exports_are_byte_identical(store, tmp_path, suffix):
    assert export_labels(store, tmp_path / f"a{suffix}") == 20
    assert export_labels(store, tmp_path / f"b{suffix}") == 20
    assert (tmp_path / f"a{suffix}").read_bytes() == (tmp_path / f"b{suffix}").read_bytes()


def test_jsonl_rows_columns_and_order(store, tmp_path):
    export_labels(store, tmp_path / "l.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "l.jsonl").read_text().splitlines()]
    assert all(tuple(r) == COLUMNS for r in rows)
    assert [(r["image_sha256"], r["labeler"]) for r in rows] == sorted(
        (r["image_sha256"], r["labeler"]) for r in rows
    )
    r = next(r for r in rows if r["labeler"] == "alice" and r["label"] == "bad")
    assert r["created_at"].endswith("Z") and r["created_at"] < r["updated_at"]
    assert r["labeler_is_simulated"] is False and r["model_id"] == "test-sd" and r["role"] == "human"
    assert json.loads(r["sampler"]) == SAMPLER
    assert {x["category"] for x in rows} == {"count", "color", "background", "combination"}
    assert {x["model_revision"] for x in rows} == {None, "abc123"}


def test_datasets_reads_the_parquet_export(store, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import datasets

    export_labels(store, tmp_path / "labels.parquet")
    ds = datasets.load_dataset(
        "parquet",
        data_files=str(tmp_path / "labels.parquet"),
        split="train",
        cache_dir=str(tmp_path / "cache"),
    )
    assert ds.column_names == list(COLUMNS) and len(ds) == 20
    assert ds.to_list() == label_rows(store)


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_export_import_export_is_byte_identical(store, tmp_path, suffix):
    first = tmp_path / f"first{suffix}"
    export_labels(store, first)
    with empty_run(tmp_path / "new") as new:
        counts = import_labels(new, first, images_from=store.run_dir)
        assert counts["prompts"] == 4 and counts["images"] == 8 and counts["labelers"] == 3
        assert counts["labels"] == {"new": 20, "replaced": 0, "unchanged": 0}
        export_labels(new, tmp_path / f"second{suffix}")
        assert first.read_bytes() == (tmp_path / f"second{suffix}").read_bytes()
        with new.session() as s:
            assert {r.name: r.is_simulated for r in s.query(LabelerRow)} == {
                "alice": False,
                "sim-1": True,
                "sim-2": True,
            }
        # the files came from the run given (an export carries none), checked against their sha256
        assert all(new.image_path(im["sha256"]).is_file() for im in new.list_images())
        again = import_labels(new, first)  # into a run that has them: nothing changes
        assert again["labels"] == {"new": 0, "replaced": 0, "unchanged": 20} and again["images"] == 0


def test_jsonl_import_then_parquet_export_equals_parquet_export(store, tmp_path):
    export_labels(store, tmp_path / "a.jsonl")
    export_labels(store, tmp_path / "a.parquet")
    with empty_run(tmp_path / "new") as new:
        import_labels(new, tmp_path / "a.jsonl", images_from=store.run_dir)
        export_labels(new, tmp_path / "b.parquet")
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()


def test_import_replaces_a_changed_label(store, tmp_path):
    export_labels(store, tmp_path / "a.jsonl")
    lines = (tmp_path / "a.jsonl").read_text().splitlines()
    row = json.loads(lines[0])
    row["label"] = {"good": "bad", "bad": "good", "skip": "good"}[row["label"]]
    row["updated_at"] = "2030-01-01T00:00:00.000000Z"
    (tmp_path / "b.jsonl").write_text("\n".join([json.dumps(row), *lines[1:]]) + "\n")
    counts = import_labels(store, tmp_path / "b.jsonl")
    assert counts["labels"] == {"new": 0, "replaced": 1, "unchanged": 19}
    first = label_rows(store)[0]
    assert first["label"] == row["label"] and first["updated_at"] == row["updated_at"]


def _jsonl_with(tmp_path, store, change) -> str:
    export_labels(store, tmp_path / "good.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "good.jsonl").read_text().splitlines()]
    change(rows)
    (tmp_path / "bad.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path / "bad.jsonl"


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda rows: rows[2].update(label="maybe"), "line 3: label must be one of good, bad, skip"),
        (lambda rows: rows[4].pop("seed"), "line 5: missing column.s. seed"),
        (lambda rows: rows[0].update(extra=1), "line 1: unknown column.s. extra"),
        (lambda rows: rows[1].update(prompt="Two dragons"), "line 2: prompt 'Two dragons'"),
        (lambda rows: rows[1].update(category="color"), "line 2: prompt .* is of category"),
        (lambda rows: rows[3].update(created_at="2024-01-01T00:00:00"), "line 4: created_at .* no time zone"),
        (lambda rows: rows[3].update(seed="7"), "line 4: seed must be an integer"),
        (lambda rows: rows[3].update(sampler="{"), "line 4: sampler must be a JSON object"),
        (lambda rows: rows[3].update(sampler='{"eta": NaN}'), "line 4: sampler must be a JSON object"),
        (lambda rows: rows[1].update(seed=rows[1]["seed"] + 1), "line 2: image .* described differently"),
        (lambda rows: rows.append(dict(rows[0])), "line 21: a second label"),
    ],
)
def test_malformed_jsonl_rows_are_refused_and_nothing_is_written(store, tmp_path, change, match):
    bad = _jsonl_with(tmp_path, store, change)
    with empty_run(tmp_path / "new") as new:
        with pytest.raises(ValueError, match=match):
            import_labels(new, bad)
        assert new.list_prompts() == [] and new.list_images() == [] and label_rows(new) == []
        with new.session() as s:
            assert s.query(LabelerRow).count() == 0


def test_malformed_parquet_is_refused_and_nothing_is_written(store, tmp_path):
    export_labels(store, tmp_path / "a.parquet")
    table = pq.read_table(tmp_path / "a.parquet")
    pq.write_table(table.drop_columns(["label"]), tmp_path / "no_label.parquet")
    values = table.column("label").to_pylist()
    values[5] = "great"
    changed = table.set_column(COLUMNS.index("label"), "label", pa.array(values))
    pq.write_table(changed, tmp_path / "bad_label.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with empty_run(tmp_path / "new") as new:
        with pytest.raises(ValueError, match="missing column.s. label"):
            import_labels(new, tmp_path / "no_label.parquet")
        with pytest.raises(ValueError, match="row 6: label must be one of"):
            import_labels(new, tmp_path / "bad_label.parquet")
        with pytest.raises(ValueError, match="not a readable Parquet file"):
            import_labels(new, tmp_path / "junk.parquet")
        assert new.list_prompts() == [] and label_rows(new) == []


def test_import_that_contradicts_the_run_writes_nothing(store, tmp_path):
    export_labels(store, tmp_path / "a.jsonl")
    with empty_run(tmp_path / "new") as new:
        # the run holds "Two circles" in another split: the file cannot be merged into it
        prompt = next(p for p in build_prompt_set() if p.text == "Two circles")
        new.add_prompts([type(prompt)(prompt.text, prompt.category, "unseen_prompt", prompt.spec)])
        with pytest.raises(ValueError, match="prompt 'Two circles' is stored in this run"):
            import_labels(new, tmp_path / "a.jsonl", images_from=store.run_dir)
        assert len(new.list_prompts()) == 1 and new.list_images() == [] and label_rows(new) == []
    with empty_run(tmp_path / "other") as other:
        other.add_labeler("sim-1")  # a person named like a simulated labeler
        with pytest.raises(ValueError, match="labeler 'sim-1' is a person in this run"):
            import_labels(other, tmp_path / "a.jsonl", images_from=store.run_dir)
        assert other.list_prompts() == [] and label_rows(other) == []


def test_unknown_suffix_is_an_error(store, tmp_path):
    with pytest.raises(ValueError, match=".jsonl or .parquet"):
        export_labels(store, tmp_path / "labels.csv")
    with pytest.raises(ValueError, match=".jsonl or .parquet"):
        import_labels(store, tmp_path / "labels.csv")


def _cli(argv) -> int:
    parser = argparse.ArgumentParser(prog="t2ialign label")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_export_and_import(store, tmp_path, capsys):
    out = tmp_path / "l.parquet"
    assert _cli(["export", str(store.run_dir), str(out)]) == 0
    assert "20 labels written" in capsys.readouterr().out
    assert _cli(["import", str(tmp_path / "copy"), str(out), "--images-from", str(store.run_dir)]) == 0
    assert json.loads(capsys.readouterr().out)["labels"]["new"] == 20
    (tmp_path / "bad.jsonl").write_text('{"label": "good"}\n')
    with pytest.raises(ValueError, match="line 1: missing column"):
        _cli(["import", str(tmp_path / "never"), str(tmp_path / "bad.jsonl")])
    assert not (tmp_path / "never").exists()  # validated before the run is created
    with pytest.raises(ValueError, match="no run at"):
        _cli(["export", str(tmp_path / "nowhere"), str(out)])
