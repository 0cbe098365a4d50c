"""The procedural renderer: the shapes world's pre-training distribution D_pre.

``render(caption, seed)`` draws N shapes of one color at non-overlapping random positions and sizes on the
background's texture. ``layout`` chooses how the shapes are placed: "random" (anywhere, the world up to
v6), "grid" (k of the 9 cells of a 3x3 grid) or "dice" (the die face of the count, turned, scaled and
shifted at random; docs/world.md, "Which world draws counts precisely"). Attributes that the caption leaves open ("Two circles" says nothing of color) are
drawn at random from the seed, and returned, so every image has a full ground truth.

``render_scene(scene, seed)`` draws a full :class:`Scene`, whose count may also be 0 (background only) or
6-7: scenes that no prompt or caption asks for, which the judge needs to learn that an empty or
over-drawn image is no "one" or "five". Prompts, captions and the pre-training data stay at 1-5.

Everything is numpy + PIL, anti-aliased by 4x supersampling of each shape's mask. Images are uint8
arrays of shape (size, size, 3); the default size is 64, the resolution of the world's base models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from t2ialign.core.seeds import stable_seed
from t2ialign.world import vocab
from t2ialign.world.prompts import PromptSpec, parse_prompt

DEFAULT_SIZE = 64
_SS = 4  # supersampling factor of shape masks

# Radius range of a shape, as a fraction of the image side, by count: more shapes, smaller shapes. 6 and
# 7 (judge scenes only) continue the trend a little below five's, so size alone does not give them away.
_RADIUS = {
    1: (0.13, 0.22),
    2: (0.11, 0.18),
    3: (0.10, 0.15),
    4: (0.09, 0.13),
    5: (0.085, 0.12),
    6: (0.08, 0.11),
    7: (0.075, 0.10),
}
_GAP = 0.045  # minimum free space between two shapes' circumscribed circles, fraction of the side
LAYOUTS = ("random", "grid", "dice")
# the die faces, in units of the face's half-spread: 2 and 3 on a diagonal, 4 the corners, 5 with the middle
_DICE = {
    1: ((0.0, 0.0),),
    2: ((-1.0, -1.0), (1.0, 1.0)),
    3: ((-1.0, -1.0), (0.0, 0.0), (1.0, 1.0)),
    4: ((-1.0, -1.0), (1.0, -1.0), (-1.0, 1.0), (1.0, 1.0)),
    5: ((-1.0, -1.0), (1.0, -1.0), (-1.0, 1.0), (1.0, 1.0), (0.0, 0.0)),
}


@dataclass(frozen=True)
class Placement:
    x: float  # center, pixels
    y: float
    r: float  # circumscribed radius, pixels


@dataclass(frozen=True)
class Rendered:
    image: np.ndarray  # (H, W, 3) uint8
    spec: PromptSpec  # full ground truth: every attribute set
    placements: tuple[Placement, ...]

    def pil(self) -> Image.Image:
        return Image.fromarray(self.image)


@dataclass(frozen=True)
class Scene:
    """A full scene for the judge: every attribute set, count from 0 to 7 (``vocab.SCENE_COUNTS``).

    Unlike a :class:`PromptSpec` (counts 1-5, what prompts may ask), a scene may be empty or over-drawn.
    Shape and color of an empty scene are drawn but not seen.
    """

    shape: str
    count: int
    color: str
    background: str

    def __post_init__(self):
        vocab.check_shape(self.shape)
        vocab.check_scene_count(self.count)
        vocab.check_color(self.color)
        vocab.check_background(self.background)


@dataclass(frozen=True)
class RenderedScene:
    image: np.ndarray  # (H, W, 3) uint8
    scene: Scene
    placements: tuple[Placement, ...]  # empty for count 0


def complete_spec(spec: PromptSpec, rng: np.random.Generator) -> PromptSpec:
    """Fill the attributes a prompt leaves open with random values."""

    def pick(values):
        return values[int(rng.integers(len(values)))]

    return PromptSpec(
        shape=spec.shape,
        count=spec.count if spec.count is not None else pick(list(vocab.COUNT_WORDS)),
        color=spec.color if spec.color is not None else pick(list(vocab.COLORS)),
        background=spec.background if spec.background is not None else pick(list(vocab.BACKGROUNDS)),
    )


def render(prompt: str | PromptSpec, seed: int, size: int = DEFAULT_SIZE, layout: str = "random") -> Rendered:
    """Render one image for a caption (or spec). Same (prompt, seed, size, layout) -> same pixels."""
    spec = parse_prompt(prompt) if isinstance(prompt, str) else prompt
    if not isinstance(size, int) or size < 16:
        raise ValueError(f"size must be an integer >= 16 pixels, got {size!r}")
    check_layout(layout)
    rng = np.random.default_rng(stable_seed("render", seed, spec.text(), size))
    full = complete_spec(spec, rng)
    image, placements = _draw(full.shape, full.count, full.color, full.background, rng, size, layout)
    return Rendered(image, full, placements)


def render_scene(scene: Scene, seed: int, size: int = DEFAULT_SIZE) -> RenderedScene:
    """Render a judge scene (0 to 7 shapes; see :class:`Scene`). Same (scene, seed, size) -> same pixels.

    Seeded apart from :func:`render`, so a scene's pixels are not those of the same caption's render.
    """
    if not isinstance(scene, Scene):
        raise TypeError(f"render_scene takes a Scene, got {type(scene).__name__}")
    if not isinstance(size, int) or size < 16:
        raise ValueError(f"size must be an integer >= 16 pixels, got {size!r}")
    parts = (scene.shape, scene.count, scene.color, scene.background)
    rng = np.random.default_rng(stable_seed("scene", seed, *parts, size))
    image, placements = _draw(*parts, rng, size)
    return RenderedScene(image, scene, placements)


def check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")


def _draw(
    shape: str,
    count: int,
    color: str,
    background: str,
    rng: np.random.Generator,
    size: int,
    layout: str = "random",
) -> tuple[np.ndarray, tuple[Placement, ...]]:
    """The pixels of a full scene: texture, placements, shapes, color jitter, shading (in this rng order)."""
    image = background_texture(background, rng, size)
    placements = place_shapes(count, rng, size, layout)
    alpha = np.zeros((size, size), np.float32)
    for p in placements:
        _stamp_shape(alpha, shape, p)
    rgb = np.asarray(vocab.COLORS[color], np.float32) / 255.0
    rgb = np.clip(rgb + rng.normal(0.0, 0.03, 3), 0.0, 1.0)  # per-image color jitter: a category, not a value
    # mild top-to-bottom shading of the shapes, as if lit from above
    shade = 1.0 + 0.06 * (0.5 - np.linspace(0.0, 1.0, size, dtype=np.float32))[:, None, None]
    fg = np.clip(rgb[None, None, :] * shade, 0.0, 1.0)
    out = image * (1.0 - alpha[..., None]) + fg * alpha[..., None]
    return np.round(out * 255.0).astype(np.uint8), tuple(placements)


# --- shapes ----------------------------------------------------------------------------------------------


def place_shapes(count: int, rng: np.random.Generator, size: int, layout: str = "random") -> list[Placement]:
    """Non-overlapping placements of ``count`` shapes, by ``layout`` (``LAYOUTS``).

    count: 0 to 7 (``vocab.SCENE_COUNTS``; "dice" 0 to 5); 0 gives no placements and draws nothing from rng.
    """
    vocab.check_scene_count(count)
    check_layout(layout)
    if count == 0:
        return []
    if layout == "grid":
        return _grid_shapes(count, rng, size)
    if layout == "dice":
        return _dice_shapes(count, rng, size)
    return _random_shapes(count, rng, size)


def _random_shapes(count: int, rng: np.random.Generator, size: int) -> list[Placement]:
    """Anywhere in the image (rejection sampling; shrinks the shapes if space runs out)."""
    lo, hi = _RADIUS[count]
    gap = _GAP * size
    scale = 1.0
    for _attempt in range(50):
        placed: list[Placement] = []
        for _ in range(count):
            r = float(rng.uniform(lo, hi)) * size * scale
            for _try in range(100):
                x, y = rng.uniform(r + 1.0, size - r - 1.0, 2)
                if all(math.hypot(x - q.x, y - q.y) >= r + q.r + gap for q in placed):
                    placed.append(Placement(float(x), float(y), r))
                    break
            else:
                break
        if len(placed) == count:
            return placed
        scale *= 0.95
    raise RuntimeError(f"could not place {count} shapes on a {size}x{size} image")  # pragma: no cover


def _grid_shapes(count: int, rng: np.random.Generator, size: int) -> list[Placement]:
    """k of the 9 cells of a 3x3 grid, one shape in each at a random spot inside it; the radius is the
    count's, capped so that two shapes in neighbouring cells keep the world's gap."""
    if count > 9:
        raise ValueError(f"the grid layout holds at most 9 shapes, got {count}")
    cell, gap = size / 3, _GAP * size
    lo, hi = _RADIUS[count]
    r = min(float(rng.uniform(lo, hi)) * size, cell / 2 - gap / 2 - 0.5)
    room = max(cell / 2 - r - gap / 2, 0.0)
    cells = rng.choice(9, size=count, replace=False)
    return [
        Placement(
            float((k % 3 + 0.5) * cell + rng.uniform(-room, room)),
            float((k // 3 + 0.5) * cell + rng.uniform(-room, room)),
            r,
        )
        for k in cells
    ]


def _dice_shapes(count: int, rng: np.random.Generator, size: int) -> list[Placement]:
    """The die face of the count: turned by a random angle, its spread and middle drawn at random, each
    shape jittered a little; the centers are kept inside the image, and the radius (the count's) shrinks
    until every two shapes keep the world's gap."""
    if count not in _DICE:
        raise ValueError(f"the dice layout draws 1 to 5 shapes, got {count}")
    lo, hi = _RADIUS[count]
    r = float(rng.uniform(lo, hi)) * size
    angle, spread = rng.uniform(0, 2 * math.pi), rng.uniform(0.22, 0.3) * size
    mx, my = size / 2 + rng.uniform(-0.06, 0.06, 2) * size
    c, s = math.cos(angle), math.sin(angle)
    centers = []
    for u, v in _DICE[count]:
        ju, jv = rng.uniform(-0.1, 0.1, 2)
        x, y = (u + ju) * spread, (v + jv) * spread
        centers.append((mx + c * x - s * y, my + s * x + c * y))
    gap = _GAP * size
    for _ in range(100):
        placed = [
            Placement(float(np.clip(x, r + 1, size - r - 1)), float(np.clip(y, r + 1, size - r - 1)), r)
            for x, y in centers
        ]
        if all(
            math.hypot(a.x - b.x, a.y - b.y) >= 2 * r + gap
            for i, a in enumerate(placed)
            for b in placed[i + 1 :]
        ):
            return placed
        r *= 0.95
    raise RuntimeError(f"could not place a die face of {count} on a {size}x{size} image")  # pragma: no cover


def _polygon(shape: str, r: float) -> list[tuple[float, float]] | None:
    """Vertices around the origin (y down) for polygonal shapes; None for the round ones."""

    def ring(n, radius, start_deg):
        return [
            (
                radius * math.cos(math.radians(start_deg + 360.0 * k / n)),
                radius * math.sin(math.radians(start_deg + 360.0 * k / n)),
            )
            for k in range(n)
        ]

    if shape == "square":
        h = 0.78 * r
        return [(-h, -h), (h, -h), (h, h), (-h, h)]
    if shape == "triangle":
        return [(x, y + 0.12 * r) for x, y in ring(3, 1.05 * r, -90.0)]
    if shape == "hexagon":
        return ring(6, r, 0.0)
    if shape == "diamond":
        return [(0.0, -r), (0.72 * r, 0.0), (0.0, r), (-0.72 * r, 0.0)]
    if shape == "star":
        outer, inner = ring(5, r, -90.0), ring(5, 0.45 * r, -54.0)
        return [v for pair in zip(outer, inner, strict=True) for v in pair]
    if shape == "cross":
        a, w = 0.92 * r, 0.32 * r
        return [
            (-w, -a),
            (w, -a),
            (w, -w),
            (a, -w),
            (a, w),
            (w, w),
            (w, a),
            (-w, a),
            (-w, w),
            (-a, w),
            (-a, -w),
            (-w, -w),
        ]
    if shape == "heart":
        pts = []
        for k in range(48):
            t = 2.0 * math.pi * k / 48
            x = 16.0 * math.sin(t) ** 3
            y = -(13.0 * math.cos(t) - 5.0 * math.cos(2 * t) - 2.0 * math.cos(3 * t) - math.cos(4 * t))
            pts.append((x * r / 16.5, (y + 2.5) * r / 16.5))
        return pts
    return None


def _stamp_shape(alpha: np.ndarray, shape: str, p: Placement) -> None:
    """Draw one anti-aliased shape into the (H, W) float alpha map, in place."""
    size = alpha.shape[0]
    x0, y0 = max(0, int(p.x - p.r) - 1), max(0, int(p.y - p.r) - 1)
    x1, y1 = min(size, int(p.x + p.r) + 2), min(size, int(p.y + p.r) + 2)
    w, h = (x1 - x0) * _SS, (y1 - y0) * _SS
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    cx, cy, r = (p.x - x0) * _SS, (p.y - y0) * _SS, p.r * _SS

    def disc(cxx, cyy, rr, fill):
        draw.ellipse([cxx - rr, cyy - rr, cxx + rr, cyy + rr], fill=fill)

    if shape == "circle":
        disc(cx, cy, 0.9 * r, 255)
    elif shape == "ring":
        disc(cx, cy, r, 255)
        disc(cx, cy, 0.55 * r, 0)
    elif shape == "crescent":
        disc(cx, cy, r, 255)
        disc(cx + 0.48 * r, cy - 0.12 * r, 0.8 * r, 0)
    else:
        poly = _polygon(shape, r)
        draw.polygon([(cx + dx, cy + dy) for dx, dy in poly], fill=255)
    patch = np.asarray(canvas, np.float32).reshape(y1 - y0, _SS, x1 - x0, _SS).mean(axis=(1, 3)) / 255.0
    np.maximum(alpha[y0:y1, x0:x1], patch, out=alpha[y0:y1, x0:x1])


# --- backgrounds -------------------------------------------------------------------------------------------


def _noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth value noise in [0, 1]: a cells x cells random grid upsampled bicubically to size x size."""
    grid = rng.random((cells, cells), dtype=np.float32)
    img = Image.fromarray(grid, mode="F").resize((size, size), Image.BICUBIC)
    return np.clip(np.asarray(img, np.float32), 0.0, 1.0)


def _mix(c0, c1, t: np.ndarray) -> np.ndarray:
    """Per-pixel blend of two RGB colors (0-255) by t in [0, 1] -> (H, W, 3) float in [0, 1]."""
    c0, c1 = np.asarray(c0, np.float32) / 255.0, np.asarray(c1, np.float32) / 255.0
    return c0 + (c1 - c0) * t[..., None]


def background_texture(name: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """The background's procedural texture, (size, size, 3) float32 in [0, 1]."""
    vocab.check_background(name)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    n1, n2 = _noise(rng, size, 6), _noise(rng, size, 16)
    if name == "forest":  # mottled mid greens with vertical brown trunks
        img = _mix((35, 80, 40), (85, 130, 60), 0.6 * n1 + 0.4 * n2)
        for _ in range(int(rng.integers(3, 7))):
            cx, half = rng.uniform(0, 1), rng.uniform(0.015, 0.035)
            trunk = np.clip((half - np.abs(xx - cx)) * size, 0.0, 1.0)
            img = img * (1 - trunk[..., None]) + _mix((70, 50, 32), (95, 70, 45), n2) * trunk[..., None]
    elif name == "city":  # pale sky over gray buildings with lit windows
        img = _mix((165, 178, 195), (195, 200, 210), yy)
        x = 0.0
        while x < 1.0:
            w, top = rng.uniform(0.12, 0.3), rng.uniform(0.15, 0.6)
            tone = rng.uniform(85, 140)
            inside = (xx >= x) & (xx < x + w) & (yy >= top)
            img[inside] = np.array([tone, tone, tone + 8], np.float32) / 255.0
            win = inside & (np.mod(xx * size, 4) < 1.3) & (np.mod(yy * size, 4) < 1.3) & (n2 > 0.35)
            img[win] = np.array([215, 200, 120], np.float32) / 255.0
            x += w + rng.uniform(0.0, 0.04)
    elif name == "moon":  # gray regolith, soft darker crater smudges
        img = _mix((125, 125, 130), (175, 175, 178), 0.5 * n1 + 0.5 * n2)
        for _ in range(int(rng.integers(2, 5))):
            cx, cy, rad = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.06, 0.16)
            d = np.sqrt((xx - cx) ** 2 + ((yy - cy) * 1.8) ** 2) / rad
            img *= (1.0 - 0.12 * np.clip(1.0 - d, 0.0, 1.0))[..., None]
    elif name == "beach":  # sea band above sand, a foam line between
        horizon = rng.uniform(0.3, 0.45) + 0.03 * np.sin(xx * 12.0 + rng.uniform(0, 6))
        sea = _mix((45, 120, 165), (80, 160, 195), n2)
        sand = _mix((210, 185, 135), (235, 215, 170), 0.5 * n1 + 0.5 * n2)
        t = np.clip((yy - horizon) * size / 2.0, 0.0, 1.0)[..., None]
        img = sea * (1 - t) + sand * t
        foam = np.clip(1.0 - np.abs(yy - horizon) * size / 1.5, 0.0, 1.0)[..., None]
        img = img * (1 - 0.6 * foam) + 0.6 * foam * np.array([0.93, 0.95, 0.95], np.float32)
    elif name == "desert":  # orange-tan dunes in sinusoidal bands
        phase, freq = rng.uniform(0, 6.28), rng.uniform(9.0, 14.0)
        bands = 0.5 + 0.5 * np.sin(yy * freq * 2 + np.sin(xx * 5.0 + phase) * 1.5)
        img = _mix((185, 125, 70), (225, 170, 105), 0.7 * bands + 0.3 * n2)
    elif name == "sea":  # under the sea: deep blue-teal, lighter at the top, wavy caustics
        img = _mix((35, 105, 140), (10, 45, 85), yy * 0.8 + 0.2 * n1)
        phase = rng.uniform(0, 6.28, 2)
        caustic = np.abs(np.sin(xx * 22 + 3 * np.sin(yy * 9 + phase[0]))) * np.abs(
            np.sin(yy * 19 + 3 * np.sin(xx * 7 + phase[1]))
        )
        img = img + 0.12 * (caustic**4)[..., None] * np.array([0.6, 1.0, 1.0], np.float32)
    elif name == "snow":  # cool light gray-blue with speckles and drifts
        img = _mix((175, 185, 205), (210, 216, 228), 0.6 * n1 + 0.4 * n2)
        speck = rng.random((size, size), dtype=np.float32) > 0.93
        img[speck] *= 0.9
    elif name == "sky":  # blue gradient with soft cloud blobs
        img = _mix((95, 150, 215), (165, 195, 230), yy)
        cloud = np.clip((n1 * 0.7 + n2 * 0.3 - 0.55) * 3.0, 0.0, 0.55)[..., None]
        img = img * (1 - cloud) + cloud * np.array([0.93, 0.94, 0.96], np.float32)
    return np.clip(img.astype(np.float32), 0.0, 1.0)


def grid(images: list[np.ndarray], cols: int, pad: int = 2) -> Image.Image:
    """Tile (H, W, 3) uint8 images into one PIL image, for looking at samples."""
    if not images:
        raise ValueError("no images to tile")
    h, w, _ = images[0].shape
    rows = math.ceil(len(images) / cols)
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        out[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = im
    return Image.fromarray(out)
