"""The world judge: verdict math by hand, the shipped judge's accuracy, save/load, bad input."""

import numpy as np
import pytest
import torch
from PIL import Image

from t2ialign.config import JudgeTrainConfig
from t2ialign.world import vocab
from t2ialign.world.degrade import degrade, train_augment
from t2ialign.world.judge import Judge, decide, match_probability, selftest, to_batch, train_judge
from t2ialign.world.prompts import PromptSpec
from t2ialign.world.render import render


def test_decide_thresholds():
    assert decide(0.9, 0.6, 0.4) == "good"
    assert decide(0.6, 0.6, 0.4) == "good"
    assert decide(0.5, 0.6, 0.4) == "skip"
    assert decide(0.4, 0.6, 0.4) == "bad"
    assert decide(0.01, 0.6, 0.4) == "bad"


def test_match_probability_is_the_product_over_named_attributes():
    probs = {k: torch.full((1, len(vocab.values(k))), 0.0) for k in vocab.ATTRIBUTES}
    probs["count"][0, vocab.index("count", 2)] = 0.5
    probs["shape"][0, vocab.index("shape", "circle")] = 0.8
    probs["color"][0, vocab.index("color", "red")] = 0.9
    probs["background"][0, vocab.index("background", "forest")] = 0.25
    count_prompt = PromptSpec("circle", count=2)  # judged on count and object only
    combo = PromptSpec("circle", count=2, color="red", background="forest")
    wrong = PromptSpec("star", count=2)
    p = match_probability({k: v.repeat(3, 1) for k, v in probs.items()}, [count_prompt, combo, wrong])
    assert p.tolist() == pytest.approx([0.5 * 0.8, 0.5 * 0.8 * 0.9 * 0.25, 0.0])


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
