"""The world judge: verdict math by hand, the shipped judge's accuracy, save/load, bad input."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from t2ialign.config import JudgeTrainConfig
from t2ialign.world import vocab
from t2ialign.world.degrade import degrade, train_augment
from t2ialign.world.judge import (
    HEAD_VALUES,
    HEADS,
    NO_SHAPE,
    Judge,
    JudgeNet,
    class_index,
    decide,
    head_loss,
    match_probability,
    selftest,
    to_batch,
    train_judge,
)
from t2ialign.world.prompts import PromptSpec
from t2ialign.world.render import Scene, render, render_scene


def test_decide_thresholds():
    assert decide(0.9, 0.6, 0.4) == "good"
    assert decide(0.6, 0.6, 0.4) == "good"
    assert decide(0.5, 0.6, 0.4) == "skip"
    assert decide(0.4, 0.6, 0.4) == "bad"
    assert decide(0.01, 0.6, 0.4) == "bad"


def _probs(**peaks) -> dict[str, torch.Tensor]:
    """Hand-made (1, n_classes) probabilities per head: {kind: {value: p}}, zeros elsewhere."""
    probs = {k: torch.zeros(1, HEADS[k]) for k in vocab.ATTRIBUTES}
    for kind, values in peaks.items():
        for value, p in values.items():
            probs[kind][0, class_index(kind, value)] = p
    return probs


def test_the_count_head_reads_zero_to_five_and_six_or_more():
    assert HEADS["count"] == 7 and HEAD_VALUES["count"] == [0, 1, 2, 3, 4, 5, 6]
    assert JudgeNet(channels=(8, 8)).heads["count"].out_features == 7
    assert [class_index("count", k) for k in range(9)] == [0, 1, 2, 3, 4, 5, 6, 6, 6]
    assert [vocab.count_label(c) for c in HEAD_VALUES["count"]] == ["0", "1", "2", "3", "4", "5", "6+"]


def test_match_probability_is_the_product_over_named_attributes():
    probs = _probs(
        count={0: 0.2, 2: 0.5},
        shape={"circle": 0.8},
        color={"red": 0.9},
        background={"forest": 0.25},
    )
    count_prompt = PromptSpec("circle", count=2)  # judged on count and object only
    combo = PromptSpec("circle", count=2, color="red", background="forest")
    wrong = PromptSpec("star", count=2)
    color_prompt = PromptSpec("circle", color="red")  # names no count: P(count >= 1) = 1 - 0.2
    p = match_probability(
        {k: v.repeat(4, 1) for k, v in probs.items()}, [count_prompt, combo, wrong, color_prompt]
    )
    assert p.tolist() == pytest.approx([0.5 * 0.8, 0.5 * 0.8 * 0.9 * 0.25, 0.0, 0.8 * 0.9 * 0.8])


def test_six_or_more_is_no_five_and_an_empty_image_matches_no_prompt():
    many = _probs(count={5: 0.05, 6: 0.95}, shape={"circle": 1.0}, color={"red": 1.0})
    five, red = PromptSpec("circle", count=5), PromptSpec("circle", color="red")
    assert match_probability(many, [five]).tolist() == pytest.approx([0.05])  # bad: over-drawn
    assert match_probability(many, [red]).tolist() == pytest.approx([1.0])  # a color prompt names no count
    # an empty image, even if the shape and color heads guess "red circle" with certainty
    empty = _probs(
        count={0: 0.97, 1: 0.03}, shape={"circle": 1.0}, color={"red": 1.0}, background={"sky": 1.0}
    )
    prompts = [
        PromptSpec("circle", color="red"),
        PromptSpec("circle", background="sky"),
        PromptSpec("circle", 1),
    ]
    assert match_probability(
        {k: v.repeat(3, 1) for k, v in empty.items()}, prompts
    ).tolist() == pytest.approx([0.03, 0.03, 0.03])
    with pytest.raises(ValueError, match="7 classes"):
        match_probability({**many, "count": torch.full((1, 5), 0.2)}, [five])


def test_head_loss_is_cross_entropy_and_skips_empty_scenes():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    logp = torch.log_softmax(logits, dim=-1)
    assert float(head_loss(logits, torch.tensor([0, NO_SHAPE]))) == pytest.approx(float(-logp[0, 0]))
    hard = torch.tensor([0, 2])
    assert float(head_loss(logits, hard)) == pytest.approx(
        float(torch.nn.functional.cross_entropy(logits, hard))
    )
    nothing = head_loss(logits.requires_grad_(), torch.tensor([NO_SHAPE, NO_SHAPE]))
    assert float(nothing.detach()) == 0.0
    nothing.backward()  # a batch of empty images only still backpropagates (zeros), never NaN
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_degradations_keep_shape_and_dtype():
    img = render("Two red stars on the moon", seed=0).image
    rng = np.random.default_rng(0)
    for out in (degrade(img, rng), train_augment(img, rng)):
        assert out.dtype == np.uint8 and out.shape == img.shape
    assert not np.array_equal(degrade(img, rng), img)


def test_to_batch_accepts_pil_arrays_and_tensors_of_any_size():
    img = render("circle", seed=0).image
    big = Image.fromarray(img).resize((128, 128))
    x = to_batch([img, big], 64)
    assert x.shape == (2, 3, 64, 64) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert to_batch(torch.from_numpy(np.stack([img, img])), 64).shape == (2, 3, 64, 64)
    with pytest.raises(ValueError, match="uint8"):
        to_batch([img.astype(np.float32)], 64)
    with pytest.raises(ValueError, match="no images"):
        to_batch([], 64)


def test_shipped_judge_reads_renders_and_meets_targets():
    judge = Judge.load()
    report = selftest(judge, n=400, seed=123, progress=False)
    # The targets are >= 99% / >= 95% verdicts and <= 5% skips (measured on 2,000 renders in the
    # README); 400 renders leave a little room for sampling noise.
    assert report["clean"]["verdict_accuracy"] >= 0.98
    assert report["degraded"]["verdict_accuracy"] >= 0.94
    assert report["clean"]["skip_rate"] <= 0.06 and report["degraded"]["skip_rate"] <= 0.06
    for kind in vocab.ATTRIBUTES:
        assert report["clean"]["per_attribute"][kind] >= 0.95
    for name in ("clean", "degraded"):
        per_class = report[name]["per_count_class"]
        assert list(per_class) == ["0", "1", "2", "3", "4", "5", "6+"]
        assert min(per_class.values()) >= 0.95, per_class
        assert set(report[name]["by_scene"]) == {"empty", "1-5", "6+"}


def test_shipped_judge_reads_empty_and_over_drawn_renders():
    judge = Judge.load()
    rng = np.random.default_rng(7)
    scenes = [
        Scene(
            shape=vocab.values("shape")[rng.integers(10)],
            count=count,
            color=vocab.values("color")[rng.integers(9)],
            background=vocab.values("background")[rng.integers(8)],
        )
        for count in (0, 0, 0, 0, 6, 6, 6, 6, 7, 7)
    ]
    images = [render_scene(s, seed=100 + i).image for i, s in enumerate(scenes)]
    probs = judge.read(images)
    assert probs["count"].argmax(dim=1).tolist() == [class_index("count", s.count) for s in scenes]
    # "Five ..." on six or seven shapes is bad; so is any prompt on an empty image
    prompts = [
        PromptSpec(s.shape, color=s.color) if s.count == 0 else PromptSpec(s.shape, count=5) for s in scenes
    ]
    assert [v.label for v in judge.judge(images, prompts)] == ["bad"] * len(scenes)
    many = [i for i, s in enumerate(scenes) if s.count > 0]
    colors = [PromptSpec(scenes[i].shape, color=scenes[i].color) for i in many]
    assert [v.label for v in judge.judge([images[i] for i in many], colors)] == ["good"] * len(many)


def test_shipped_judge_reads_the_world_models_city_as_city():
    """Generated images, not renders: 17 city images of world v5 that a person read as the city and the
    judge before its median-filter augmentation read as the moon (15) or snow (2), and 8 of its moon
    images (tests/data/v5_city_and_moon.json says where they come from)."""
    data = Path(__file__).parent / "data"
    meta = json.loads((data / "v5_city_and_moon.json").read_text())
    strip = np.asarray(Image.open(data / "v5_city_and_moon.png").convert("RGB"))
    images = [strip[:, 64 * i : 64 * (i + 1)] for i in range(strip.shape[1] // 64)]
    assert len(images) == len(meta["background"]) == 25
    read = Judge.load().read(images)["background"].argmax(dim=1).tolist()
    read = [HEAD_VALUES["background"][k] for k in read]
    city = [r for r, want in zip(read, meta["background"], strict=True) if want == "city"]
    moon = [r for r, want in zip(read, meta["background"], strict=True) if want == "moon"]
    assert city.count("city") >= 15, city  # the shipped judge: 16 of 17
    assert moon.count("moon") == len(moon), moon


def test_judge_verdicts_for_true_and_perturbed_prompts():
    judge = Judge.load()
    truth = "Three blue triangles in the desert"
    img = render(truth, seed=5).image
    v = judge.judge([img] * 3, [truth, "Four blue triangles in the desert", "A red colored triangle"])
    assert [x.label for x in v] == ["good", "bad", "bad"]
    assert v[0].reading["count"][0] == 3 and v[0].reading["color"][0] == "blue"


def test_judge_rejects_bad_input(tmp_path):
    judge = Judge.load()
    img = render("circle", seed=0).image
    with pytest.raises(ValueError, match="2 prompts"):
        judge.judge([img], ["circle", "square"])
    with pytest.raises(ValueError, match="unknown word"):
        judge.judge([img], ["A dog"])
    with pytest.raises(FileNotFoundError, match="train-judge"):
        Judge.load(tmp_path / "missing")


def test_an_old_five_class_judge_is_refused(tmp_path):
    Judge(JudgeNet(channels=(8, 8)), JudgeTrainConfig(channels=(8, 8))).save(tmp_path / "old")
    meta = json.loads((tmp_path / "old" / "config.json").read_text())
    assert meta["vocab"]["count"] == [0, 1, 2, 3, 4, 5, 6]
    meta["vocab"]["count"] = [1, 2, 3, 4, 5]  # what a judge of before the 0 and 6+ classes saved
    (tmp_path / "old" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="old 5-class judge.*train-judge"):
        Judge.load(tmp_path / "old")


def test_train_save_load_round_trip(tmp_path):
    cfg = JudgeTrainConfig(n_train=256, n_val=16, epochs=1, batch_size=64, channels=(8, 8, 16, 16))
    report = train_judge(cfg, tmp_path / "j", progress=False)
    assert set(report) == {"clean", "degraded"}
    loaded = Judge.load(tmp_path / "j")
    assert loaded.config == cfg
    imgs = [render("Two red stars", seed=s).image for s in range(4)]
    torch.manual_seed(0)
    fresh = Judge.load(tmp_path / "j").read(imgs)
    again = loaded.read(imgs)
    for k in vocab.ATTRIBUTES:
        assert torch.equal(fresh[k], again[k])
