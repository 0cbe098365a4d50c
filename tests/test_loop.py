"""The iterated loop (``t2ialign loop``): two rounds end to end on tiny models, labels that accumulate,
rounds that chain, resume after a kill at any stage, a changed config refused, people waited for."""

import io
import json
import threading
import time

import pytest

from t2ialign.cli import main
from t2ialign.config import ConfigError, LoopConfig, from_dict, load_config
from t2ialign.core import figures
from t2ialign.finetune import train as ft_train
from t2ialign.label.service import submit_label
from t2ialign.label.simulate import simulate_labels
from t2ialign.loop import run as loop_run
from t2ialign.loop.labels import LabelWaitTimeout, label_counts, wait_for_labels
from t2ialign.loop.state import changed_fields
from t2ialign.report.html import render_report
from t2ialign.store import Store
from t2ialign.world.prompts import build_prompt_set
from t2ialign.world.render import render

NAME = "two"
B, K = 8, 3  # labeled images per round, labels per image


def _tiny(pipe, clip) -> dict:
    gen = {"mixed_precision": "no", "num_inference_steps": 2, "batch_size": 16}
    return {
        "rounds": 2,
        "labels_per_round": B,
        "images_per_prompt": 2,
        "unlabeled_per_prompt": 1,
        "n_labelers": K,
        "model": str(pipe),
        "generate": gen,
        "reward": {"clip": str(clip), "epochs": 1, "hidden": [16]},
        "finetune": {
            "max_train_steps": 2,
            "checkpointing_steps": 1,
            "train_batch_size": 4,
            "pretrain_batch_size": 4,
            "pretrain_images": 8,
            "lr_warmup_steps": 0,
            "use_ema": False,
        },
        "evaluate": {
            "n_seen": 4,
            "n_unseen": 4,
            "images_per_prompt": 1,
            "best_of": 1,
            "keep": 1,
            "bootstrap_resamples": 200,
            "generate": {"role": "eval", **gen},
        },
    }


class Spy:
    """Wraps the stage functions that ``loop.run`` calls, recording each call's arguments."""

    def __init__(self, monkeypatch):
        self.calls: dict[str, list] = {}
        for name in ("generate", "simulate_labels", "train_reward", "finetune", "evaluate_models"):
            real = getattr(loop_run, name)
            monkeypatch.setattr(loop_run, name, self._wrap(name, real))

    def _wrap(self, name, real):
        def spy(*args, **kwargs):
            self.calls.setdefault(name, []).append((args, kwargs))
            return real(*args, **kwargs)

        return spy

    def n(self, name) -> int:
        return len(self.calls.get(name, []))


@pytest.fixture(scope="module")
def loop_run_dir(tmp_path_factory, tiny_pipeline_path, tiny_clip_path):
    """A run whose 2-round loop was killed in round 2's fine-tuning (after its checkpoints, before its
    pipeline), then rerun to the end; returns (run dir, config file, spies of the first and second run)."""
    root = tmp_path_factory.mktemp("loop")
    cfg_file = root / "loop.json"
    cfg_file.write_text(json.dumps({"loop": _tiny(tiny_pipeline_path, tiny_clip_path)}))
    cfg = load_config(cfg_file).loop
    mp = pytest.MonkeyPatch()
    with Store.open(root / "run") as store:
        store.add_prompts(build_prompt_set())
        first = Spy(mp)
        real_save = ft_train.save_outputs

        def killed_in_round_2(pipe, unet, cfg_, out, *a):
            if "round_2" in str(out):
                raise RuntimeError("killed")
            return real_save(pipe, unet, cfg_, out, *a)

        mp.setattr(ft_train, "save_outputs", killed_in_round_2)
        with pytest.raises(RuntimeError, match="killed"):
            loop_run.run_loop(cfg, store, NAME, progress=False)
        mp.undo()
        second = Spy(mp)
        section = loop_run.run_loop(cfg, store, NAME, progress=False)
        mp.undo()
    return root / "run", cfg_file, first, second, section


def _state(run, k):
    return json.loads((run / "loop" / NAME / f"round_{k}" / "state.json").read_text())["stages"]


def test_two_rounds_end_to_end_labels_accumulate_and_rounds_chain(loop_run_dir, tiny_pipeline_path):
    run, _, first, second, section = loop_run_dir
    s1, s2 = _state(run, 1), _state(run, 2)
    # the budget: B images to label per round, K answers at most on each, fresh prompts each round
    for s in (s1, s2):
        assert len(s["generate"]["human"]) == B and len(s["generate"]["prompts"]) == B // 2
        assert len(s["generate"]["unlabeled"]) == B // 2
        assert s["label"]["images"] == B and 0 < s["label"]["labeled_images"] <= B
        assert s["label"]["answers"] <= K * B
        assert s["finetune"]["n_model"] == B + B // 2  # D_model: the round's images only, not round 1's too
    assert not set(s1["generate"]["prompts"]) & set(s2["generate"]["prompts"])
    assert not set(s1["generate"]["human"]) & set(s2["generate"]["human"])
    # the reward of round 2 trains on the labels of rounds 1 and 2; of round 1, on round 1's
    rewards = [c[1]["images"] for c in first.calls["train_reward"]]
    assert rewards == [s1["generate"]["human"], sorted(s1["generate"]["human"] + s2["generate"]["human"])]
    labeled = s1["label"]["labeled_images"] + s2["label"]["labeled_images"]
    assert s2["reward"]["n_train"] + s2["reward"]["n_val"] == labeled
    assert s1["reward"]["n_train"] + s1["reward"]["n_val"] == s1["label"]["labeled_images"]
    # round 1 fine-tunes base, round 2 round 1's pipeline, each on its own images (d_model "round")
    fts = first.calls["finetune"]
    assert [c[0][0].pretrained_model_name_or_path for c in fts] == [
        str(tiny_pipeline_path),
        s1["finetune"]["pipeline"],
    ]
    assert fts[1][0][0].reward == s2["reward"]["path"] and s2["reward"]["path"].endswith("round_2/reward")
    assert set(fts[1][1]["images"]) == set(s2["generate"]["human"] + s2["generate"]["unlabeled"])
    assert (run / "loop" / NAME / "round_1" / "finetune" / "pipeline" / "model_index.json").is_file()
    # round 2 generated from round 1's model
    assert s2["generate"]["model"] == s1["finetune"]["pipeline"]
    # metrics.json: round 0 = base, then each round with its labels, paired deltas, FD_CLIP
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["loop"][NAME] == section
    rounds = section["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert [r["labels_total"] for r in rounds] == [0, s1["label"]["labeled_images"], labeled]
    for r in rounds[1:]:
        stat = r["evaluate"]["all"]["count"]
        assert set(stat) == {"delta", "ci95", "n_prompts", "n_images"}
        assert r["fd_clip"] >= 0 and r["model"].endswith(f"round_{r['round']}/finetune/pipeline")
        assert r["wall_s"] > 0
    assert rounds[0]["evaluate"] is None and rounds[0]["fd_clip"] >= 0
    assert (run / f"loop_{NAME}.png").stat().st_size > 1000
    assert "evaluate" not in metrics  # the loop's evaluations stay in its folder, not in evaluate


def test_a_loop_killed_mid_round_continues_without_redoing_finished_stages(loop_run_dir):
    run, _, first, second, _ = loop_run_dir
    assert [first.n(s) for s in ("generate", "simulate_labels", "train_reward")] == [4, 2, 2]  # 2 roles
    assert first.n("finetune") == 2 and first.n("evaluate_models") == 1  # killed in round 2's finetune
    # the rerun: round 1 untouched, round 2 from its finetune on, which continues its last checkpoint
    assert [second.n(s) for s in ("generate", "simulate_labels", "train_reward")] == [0, 0, 0]
    assert second.n("finetune") == 1 and second.n("evaluate_models") == 1
    assert second.calls["finetune"][0][1]["resume_from_checkpoint"] == "latest"
    s2 = _state(run, 2)
    assert s2["finetune"]["steps"] == 2 and s2["finetune"]["steps_this_call"] == 0


def test_the_same_command_again_does_nothing_and_a_changed_config_is_refused(loop_run_dir, capsys):
    run, cfg_file, *_ = loop_run_dir
    args = ["loop", str(run), "--config", str(cfg_file), "--name", NAME]
    before = _state(run, 2)
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "round 2:" in out and "count" in out and f"loop_{NAME}.png" in out
    assert _state(run, 2) == before
    assert main([*args, "--labels-per-round", "4"]) == 2
    err = capsys.readouterr().err
    assert "changed: labels_per_round: 8 -> 4" in err and "another --name" in err
    assert main([*args, "--finetune-steps", "3"]) == 2
    assert "finetune.max_train_steps: 2 -> 3" in capsys.readouterr().err
    # how long people are waited for is no part of what is computed
    assert main([*args, "--timeout-seconds", "5"]) == 0


def test_changed_fields_name_each_difference_and_leave_out_the_resumable_ones():
    old = {"rounds": 2, "poll_seconds": 1, "finetune": {"lr": 1}, "d_model": "round"}
    new = {"rounds": 5, "poll_seconds": 9, "finetune": {"lr": 2}, "d_model": "all"}
    assert changed_fields(old, new) == ['d_model: "round" -> "all"', "finetune.lr: 1 -> 2"]
    assert changed_fields(old, old) == []


def test_a_loop_started_before_a_config_field_existed_resumes(tmp_path):
    """A loop's config.json written before ``generate.compile`` was added lacks it; the rerun's config
    holds it at its default, which is the old behaviour, so the rerun is not refused. A stored value that
    differs still is, and a field the config no longer knows is compared as stored."""
    from t2ialign.config import to_dict
    from t2ialign.loop.state import check_config

    root = tmp_path / "loop"
    check_config(root, LoopConfig(), "rev")
    stored = json.loads((root / "config.json").read_text())
    del stored["config"]["generate"]["compile"]
    (root / "config.json").write_text(json.dumps(stored))
    check_config(root, LoopConfig(), "rev")  # accepted
    stored["config"]["generate"]["guidance_scale"] = 2.0
    (root / "config.json").write_text(json.dumps(stored))
    with pytest.raises(ValueError, match="generate.guidance_scale: 2.0 -> 5.0"):
        check_config(root, LoopConfig(), "rev")
    stored["config"] = to_dict(LoopConfig()) | {"retired_field": 1}
    (root / "config.json").write_text(json.dumps(stored))
    with pytest.raises(ValueError, match="retired_field: 1 -> null"):
        check_config(root, LoopConfig(), "rev")


def test_loop_config_is_validated():
    with pytest.raises(ConfigError, match="multiple of loop.images_per_prompt"):
        LoopConfig(labels_per_round=10, images_per_prompt=3)
    with pytest.raises(ConfigError, match="loop.d_model"):
        LoopConfig(d_model="some")
    with pytest.raises(ConfigError, match="loop.labelers"):
        LoopConfig(labelers="crowd")
    with pytest.raises(ConfigError, match="set by the loop"):
        from_dict(LoopConfig, {"finetune": {"pretrained_model_name_or_path": "x"}}, "loop")
    with pytest.raises(ConfigError, match="unknown"):
        from_dict(LoopConfig, {"roundz": 3}, "loop")


# --- people: the round waits for the web app's quota ------------------------------------------------------


@pytest.fixture
def people_store(tmp_path):
    with Store.open(tmp_path / "run") as store:
        store.add_prompts(build_prompt_set())
        text = store.list_prompts(split="seen")[0]["text"]
        records = []
        for seed in range(3):
            buf = io.BytesIO()
            render(text, seed).pil().save(buf, format="PNG")
            sha = store.put_image_bytes(buf.getvalue())
            records.append(
                dict(
                    sha256=sha,
                    prompt_text=text,
                    model_id="m",
                    seed=seed,
                    sampler={},
                    role="human",
                    width=64,
                    height=64,
                )
            )
        store.add_images(records)
        yield store, [r["sha256"] for r in records]


def _people_round(store, shas, **kw):
    cfg = LoopConfig(labelers="people", n_labelers=2, poll_seconds=0.02, **kw)
    state = {"round": 1, "stages": {"generate": {"human": shas}}}
    return loop_run.Round(cfg, store, "p", 1, store.run_dir / "loop" / "p", state, False, None)


def test_people_mode_waits_for_the_quota_and_says_how_many_answers_are_wanted(people_store, capsys):
    store, shas = people_store

    def people():  # two people answer in the web app, from another thread and connection
        with Store.open(store.run_dir) as other:
            ids = {im["sha256"]: im["id"] for im in other.list_images(role="human")}
            for name in ("ann", "bob"):
                who = other.add_labeler(name)
                for sha in shas:
                    time.sleep(0.03)
                    submit_label(other, who, ids[sha], "skip" if name == "bob" and sha == shas[0] else "good")

    t = threading.Thread(target=people)
    t.start()
    counts = loop_run.stage_label(_people_round(store, shas, timeout_seconds=30))
    t.join()
    out = capsys.readouterr().out
    assert "waiting for people: 6 of 6 answers still wanted (3 of 3 images short of 2)" in out
    assert "label serve" in out and "the quota is reached: 6 answers, 2 on each of 3 images" in out
    assert counts == {"images": 3, "labeled_images": 3, "answers": 6}


def test_people_mode_times_out_with_a_clear_message(people_store):
    store, shas = people_store
    a = store.add_labeler("ann")
    submit_label(store, a, store.list_images(role="human")[0]["id"], "good")
    with pytest.raises(LabelWaitTimeout, match=r"5 of 6 answers still wanted .* rerun the same command"):
        loop_run.stage_label(_people_round(store, shas, timeout_seconds=0.1))
    # a fake clock: the timeout is loop.timeout_seconds of waiting, whatever the poll interval
    ticks = iter(range(0, 1000, 10))
    said = []
    with pytest.raises(LabelWaitTimeout, match="after 30 s"):
        wait_for_labels(store, shas, 2, 10, 30, "r", said.append, lambda s: None, lambda: next(ticks))
    assert len(said) == 1  # said once: the count did not move
    assert label_counts(store, shas) == {"images": 3, "labeled_images": 1, "answers": 1}


def test_simulated_labelers_label_only_the_images_they_are_given(people_store):
    store, shas = people_store
    out = simulate_labels(store, n_labelers=2, images=shas[1:], progress=False)
    assert out["images"] == 2
    assert label_counts(store, shas[:1]) == {"images": 1, "labeled_images": 0, "answers": 0}
    assert label_counts(store, shas[1:])["answers"] == 4


# --- report and figure ----------------------------------------------------------------------------------------


def test_report_shows_the_loop_curve_and_table_or_says_how_to_measure_it(loop_run_dir):
    run, *_ = loop_run_dir
    metrics = json.loads((run / "metrics.json").read_text())
    html = render_report(metrics, run)
    section = html.split('<section id="loop">')[1].split("</section>")[0]
    assert "loop <code>two</code>" in section and "<img" in section and "labels so far" in section
    assert "2 of 2 rounds finished" in section and "base" in section
    empty = render_report({}, run).split('<section id="loop">')[1].split("</section>")[0]
    assert "not measured" in empty and "t2ialign loop RUN --rounds 3" in empty
    assert figures.loop_curve([]) is None
    assert figures.loop_curve(metrics["loop"][NAME]["rounds"][:1]) is None  # base alone: no curve yet
