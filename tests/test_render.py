"""The renderer (D_pre): determinism, ground truth, geometry, the dataset's captions; the judge's scenes
with 0 and 6-7 shapes."""

import math
from collections import deque

import numpy as np
import pytest

from t2ialign.world import vocab
from t2ialign.world.dataset import PretrainDataset, caption_for, web_caption
from t2ialign.world.prompts import PromptSpec, parse_prompt
from t2ialign.world.render import _GAP, Scene, background_texture, place_shapes, render, render_scene


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


@pytest.mark.parametrize("layout", ["grid", "dice"])
def test_the_other_layouts_keep_the_count_the_gap_and_the_frame(layout):
    size = 64
    for count in range(1, 6):
        for seed in range(100):
            shapes = place_shapes(count, np.random.default_rng(seed), size, layout)
            assert len(shapes) == count
            for i, p in enumerate(shapes):
                assert p.r > 0.05 * size
                assert p.r + 1 - 1e-6 <= p.x <= size - p.r - 1 + 1e-6
                assert p.r + 1 - 1e-6 <= p.y <= size - p.r - 1 + 1e-6
                for q in shapes[i + 1 :]:
                    assert math.hypot(p.x - q.x, p.y - q.y) >= p.r + q.r + _GAP * size - 1e-6
        # drawn: as many separate blobs as asked
        image = render(PromptSpec("circle", count, "black", "snow"), seed=count, layout=layout).image
        assert _components(image.mean(axis=2) < 80) == count


def test_the_die_faces_differ_by_pattern():
    """Asked five, the die face has a shape in its middle and four around it; asked four, the middle is
    empty: the count is in the pattern, not only in the number of shapes."""

    def nearest_to_middle(shapes):
        mx, my = np.mean([s.x for s in shapes]), np.mean([s.y for s in shapes])
        return min(math.hypot(s.x - mx, s.y - my) for s in shapes)

    for seed in range(50):
        assert nearest_to_middle(place_shapes(5, np.random.default_rng(seed), 64, "dice")) < 6
        assert nearest_to_middle(place_shapes(4, np.random.default_rng(seed), 64, "dice")) > 12


def test_the_layout_is_part_of_the_seed_and_checked():
    spec = PromptSpec("circle", 3, "red", "beach")
    a = render(spec, seed=1, layout="dice")
    assert np.array_equal(a.image, render(spec, seed=1, layout="dice").image)
    assert not np.array_equal(a.image, render(spec, seed=1).image)
    assert render(spec, seed=1).placements == render(spec, seed=1, layout="random").placements
    with pytest.raises(ValueError, match="unknown layout"):
        render(spec, seed=1, layout="hexagonal")
    with pytest.raises(ValueError, match="1 to 5"):
        place_shapes(6, np.random.default_rng(0), 64, "dice")


def _components(mask: np.ndarray) -> int:
    """Number of 8-connected components of a boolean (H, W) mask."""
    seen, n = np.zeros_like(mask), 0
    for y, x in zip(*np.nonzero(mask), strict=True):
        if seen[y, x]:
            continue
        n += 1
        seen[y, x] = True
        queue = deque([(y, x)])
        while queue:
            a, b = queue.popleft()
            for u in range(max(0, a - 1), min(mask.shape[0], a + 2)):
                for v in range(max(0, b - 1), min(mask.shape[1], b + 2)):
                    if mask[u, v] and not seen[u, v]:
                        seen[u, v] = True
                        queue.append((u, v))
    return n


@pytest.mark.parametrize("count", [0, 1, 5, 6, 7])
def test_judge_scenes_draw_that_many_separate_shapes(count):
    # red on snow: the red channel exceeds the green by ~190 inside a shape and ~0 outside; half of that
    # splits anti-aliased edges. Every shape, a few seeds; the smallest 7-shape rings and stars included.
    for shape in vocab.SHAPES:
        for seed in range(3):
            r = render_scene(Scene(shape, count, "red", "snow"), seed=seed)
            assert len(r.placements) == count and r.image.shape == (64, 64, 3)
            im = r.image.astype(int)
            assert _components(im[..., 0] - im[..., 1] > 95) == count, (shape, seed)
            for i, p in enumerate(r.placements):
                for q in r.placements[i + 1 :]:
                    assert math.hypot(p.x - q.x, p.y - q.y) > p.r + q.r


def test_judge_scenes_are_seeded_and_shapes_shrink_with_count():
    scene = Scene("star", 6, "blue", "sky")
    assert np.array_equal(render_scene(scene, seed=3).image, render_scene(scene, seed=3).image)
    assert not np.array_equal(render_scene(scene, seed=3).image, render_scene(scene, seed=4).image)
    empty = render_scene(Scene("star", 0, "blue", "forest"), seed=0)
    assert empty.placements == ()

    def mean_radius(count):
        return np.mean(
            [p.r for s in range(20) for p in render_scene(Scene("circle", count, "red", "sky"), s).placements]
        )

    assert mean_radius(7) < mean_radius(6) < mean_radius(5)


def test_prompts_still_ask_for_one_to_five():
    # 0 and 6-7 shapes exist only as judge scenes: no prompt, caption or PromptSpec names them
    for count in (0, 6, 7):
        with pytest.raises(ValueError, match="count"):
            PromptSpec("circle", count=count)
    with pytest.raises(ValueError, match="out of range"):
        parse_prompt("Six circles")
    with pytest.raises(ValueError, match="0 to 7 shapes"):
        Scene("circle", 8, "red", "sky")
    with pytest.raises(TypeError, match="Scene"):
        render_scene(PromptSpec("circle", count=2), seed=0)


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


def test_pretrain_dataset_captions_are_web_like():
    ds = PretrainDataset(length=3000, seed=0)
    named = {k: 0 for k in ("count", "color", "background")}
    wrong = 0
    for i in range(3000):
        scene, caption = ds.scene(i)
        assert ds.scene(i) == (scene, caption), "an item's caption is fixed by (seed, i)"
        parsed = parse_prompt(caption)
        assert parsed.shape == scene.shape
        for kind in named:
            if getattr(parsed, kind) is not None:
                named[kind] += 1
                if kind == "count":
                    # a stated count is right or off by one, never further
                    assert abs(parsed.count - scene.count) <= 1
                    wrong += parsed.count != scene.count
                else:
                    assert getattr(parsed, kind) == getattr(scene, kind), "colors and places never lie"
    # the default rates (count 0.1, color 0.6, background 0.5; a fifth of named counts wrong), +-4 sigma
    assert abs(named["count"] / 3000 - 0.1) < 0.022
    assert abs(named["color"] / 3000 - 0.6) < 0.036
    assert abs(named["background"] / 3000 - 0.5) < 0.037
    assert 0.1 < wrong / named["count"] < 0.3
    item = ds[3]
    assert item["pixel_values"].shape == (3, 64, 64)
    assert -1.0 <= float(item["pixel_values"].min()) and float(item["pixel_values"].max()) <= 1.0
    assert np.array_equal(ds[3]["pixel_values"].numpy(), item["pixel_values"].numpy())
    assert caption_for(PromptSpec("circle", 2, "red", "sky"), "plain") == "circles"


def test_web_caption_rates_at_the_extremes():
    rng = np.random.default_rng(0)
    scene = PromptSpec("star", 1, "red", "sky")
    assert web_caption(scene, rng, {"count": 0, "color": 0, "background": 0}, 0.0) == "star"
    assert (
        web_caption(scene, rng, {"count": 1, "color": 1, "background": 1}, 0.0) == "One red star in the sky"
    )
    # a wrong count of one is two; of five, four
    assert web_caption(scene, rng, {"count": 1, "color": 0, "background": 0}, 1.0) == "Two stars"
    five = PromptSpec("star", 5, "red", "sky")
    assert web_caption(five, rng, {"count": 1, "color": 0, "background": 0}, 1.0) == "Four stars"
    three = PromptSpec("star", 3, "red", "sky")
    got = {web_caption(three, rng, {"count": 1, "color": 0, "background": 0}, 1.0) for _ in range(50)}
    assert got == {"Two stars", "Four stars"}


def test_pretrain_dataset_validates():
    with pytest.raises(ValueError, match="caption rates must name exactly"):
        PretrainDataset(length=10, caption_rates={"poem": 1.0})
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        PretrainDataset(length=10, caption_rates={"count": 1.5, "color": 0.5, "background": 0.5})
    with pytest.raises(ValueError, match="count error rate"):
        PretrainDataset(length=10, count_error_rate=-0.1)
    with pytest.raises(ValueError, match="length"):
        PretrainDataset(length=0)
    with pytest.raises(IndexError):
        PretrainDataset(length=2)[2]
