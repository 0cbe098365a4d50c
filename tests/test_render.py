"""The renderer (D_pre): determinism, ground truth, geometry, the dataset's captions."""

import math

import numpy as np
import pytest

from t2ialign.world import vocab
from t2ialign.world.dataset import CAPTION_TEMPLATES, PretrainDataset, caption_for
from t2ialign.world.prompts import PromptSpec, parse_prompt
from t2ialign.world.render import background_texture, render


def test_same_seed_same_pixels_other_seed_other_pixels():
    a = render("Two blue circles in the forest", seed=7)
    b = render("Two blue circles in the forest", seed=7)
    c = render("Two blue circles in the forest", seed=8)
    assert a.image.dtype == np.uint8 and a.image.shape == (64, 64, 3)
    assert np.array_equal(a.image, b.image)
    assert not np.array_equal(a.image, c.image)


def test_open_attributes_are_filled_and_named_ones_kept():
    r = render("Three stars", seed=1)
    assert r.spec.count == 3 and r.spec.shape == "star"
    assert r.spec.color in vocab.COLORS and r.spec.background in vocab.BACKGROUNDS
    seen = {render("Three stars", seed=s).spec.color for s in range(40)}
    assert len(seen) > 3, "open attributes vary with the seed"


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5])
def test_shapes_do_not_overlap_and_stay_inside(count):
    for seed in range(30):
        r = render(PromptSpec("star", count=count, color="red", background="snow"), seed=seed)
        assert len(r.placements) == count
        for i, p in enumerate(r.placements):
            assert p.r <= p.x <= 64 - p.r and p.r <= p.y <= 64 - p.r
            for q in r.placements[i + 1 :]:
                assert math.hypot(p.x - q.x, p.y - q.y) > p.r + q.r


def test_shapes_are_drawn_in_their_color():
    r = render(PromptSpec("square", count=1, color="red", background="snow"), seed=0)
    p = r.placements[0]
    center = r.image[int(p.y), int(p.x)].astype(int)
    assert abs(center - np.array(vocab.COLORS["red"])).max() < 40
    corner = r.image[0, 0].astype(int)
    assert abs(corner - np.array(vocab.COLORS["red"])).max() > 60


def test_backgrounds_are_distinct_textures():
    # texture statistics: mean color, color spread, horizontal and vertical edge energy (averaged over draws)
    def stats(name):
        feats = []
        for seed in range(8):
            t = background_texture(name, np.random.default_rng(seed), 64)
            gx, gy = np.abs(np.diff(t, axis=1)).mean(), np.abs(np.diff(t, axis=0)).mean()
            feats.append(np.concatenate([t.reshape(-1, 3).mean(0), t.reshape(-1, 3).std(0), [gx, gy]]))
        return np.mean(feats, axis=0)

    feats = {b: stats(b) for b in vocab.BACKGROUNDS}
    names = list(feats)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert np.abs(feats[a] - feats[b]).max() > 0.03, (a, b)


def test_render_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown word"):
        render("Two mauve circles", seed=0)
    with pytest.raises(ValueError, match="count"):
        render(PromptSpec("circle", count=9), seed=0)
    with pytest.raises(ValueError, match="size"):
        render("circle", seed=0, size=8)


def test_pretrain_dataset_uses_every_template_and_true_captions():
    ds = PretrainDataset(length=400, seed=0)
    seen_templates = set()
    for i in range(400):
        scene, template = ds.scene(i)
        seen_templates.add(template)
        caption = caption_for(scene, template)
        parsed = parse_prompt(caption)
        for kind, value in parsed.constrained().items():
            assert getattr(scene, kind) == value, "a caption never lies about its image"
    assert seen_templates == set(CAPTION_TEMPLATES)
    item = ds[3]
    assert item["pixel_values"].shape == (3, 64, 64)
    assert -1.0 <= float(item["pixel_values"].min()) and float(item["pixel_values"].max()) <= 1.0
    assert np.array_equal(ds[3]["pixel_values"].numpy(), item["pixel_values"].numpy())
    assert {"circle", "circles"} & {caption_for(PromptSpec("circle", 2, "red", "sky"), "plain")} == {
        "circles"
    }


def test_pretrain_dataset_validates():
    with pytest.raises(ValueError, match="unknown caption template"):
        PretrainDataset(length=10, caption_weights={"poem": 1.0})
    with pytest.raises(ValueError, match="length"):
        PretrainDataset(length=0)
    with pytest.raises(IndexError):
        PretrainDataset(length=2)[2]
