"""The command line: each command end to end on tiny inputs, and clear errors."""

import json

from PIL import Image

from t2ialign.cli import main


def test_prompts_writes_the_store_and_prints_counts(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["prompts", "--run", str(run)]) == 0
    out = capsys.readouterr().out
    assert "combination" in out and "unseen_object" in out and "3820 new prompts" in out
    assert (run / "t2ialign.db").is_file()
    metrics = json.loads((run / "metrics.json").read_text())
    assert sum(metrics["prompts"]["counts"].values()) == 3820
    assert main(["prompts", "--run", str(run)]) == 0
    assert "0 new prompts" in capsys.readouterr().out


def test_prompts_into_an_unwritable_place_is_a_clear_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert main(["prompts", "--run", str(blocker / "run")]) == 2
    assert "error" in capsys.readouterr().err
    assert blocker.read_text() == "not a directory"


def test_bad_config_is_a_clear_error(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[prompts]\nunseen_objekts = ['heart']\n")
    assert main(["prompts", "--run", str(tmp_path / "r"), "--config", str(cfg)]) == 2
    assert "unknown key(s) in prompts: unseen_objekts" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_render_and_judge_round_trip(tmp_path, capsys):
    out = tmp_path / "x.png"
    assert main(["world", "render", "Four pink hearts in the snow", "--seed", "3", "--out", str(out)]) == 0
    assert Image.open(out).size == (64, 64)
    capsys.readouterr()
    assert main(["world", "judge", str(out), "--prompt", "Four pink hearts in the snow", "--json"]) == 0
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["verdict"] == "good" and verdict["reading"]["count"][0] == 4
    assert verdict["count_label"] == "4"
    assert main(["world", "render", "Two mauve circles", "--out", str(out)]) == 2
    assert "unknown word 'mauve'" in capsys.readouterr().err
    assert main(["world", "judge", str(tmp_path / "nope.png"), "--prompt", "circle"]) == 2


def test_judge_selftest_prints_one_json_object(capsys):
    assert main(["world", "judge", "--selftest", "--json", "--n", "40"]) == 0
    report = json.loads(capsys.readouterr().out)
    for name in ("clean", "degraded"):
        assert {"verdict_accuracy", "skip_rate", "per_attribute"} <= set(report[name])
        assert set(report[name]["per_attribute"]) == {"count", "color", "shape", "background"}
        assert set(report[name]["per_count_class"]) <= {"0", "1", "2", "3", "4", "5", "6+"}


def test_judge_prints_six_or_more_as_6_plus(tmp_path, capsys):
    from t2ialign.world.render import Scene, render_scene

    out = tmp_path / "many.png"
    Image.fromarray(render_scene(Scene("circle", 7, "red", "snow"), seed=0).image).save(out)
    assert main(["world", "judge", str(out), "--prompt", "Five red circles in the snow"]) == 0
    text = capsys.readouterr().out
    assert ": bad (" in text and "count=6+" in text


def test_perturb_command(capsys):
    assert main(["world", "perturb", "A green colored circle", "--n", "4"]) == 0
    lines = capsys.readouterr().out.split("\n")
    assert len([x for x in lines if x]) == 3
