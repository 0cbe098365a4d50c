"""The shapes world's vocabulary: objects (shapes), colors, counts and backgrounds.

The paper's objects (dog, cat, ...) are shapes here, its backgrounds ("in the forest") are procedural
textures. Every word has exactly one meaning and every meaning one canonical phrase, so a caption can be
parsed back into its attributes (``t2ialign.world.prompts.parse_prompt``) and judged from pixels.

RGB values are the *nominal* colors; the renderer jitters them a little per shape so that "red" is a
category, not a single pixel value.
"""

from __future__ import annotations

# Shapes, with their plural forms. Order matters: it is the class index of the judge's shape head.
SHAPES: dict[str, str] = {
    "circle": "circles",
    "square": "squares",
    "triangle": "triangles",
    "star": "stars",
    "heart": "hearts",
    "cross": "crosses",
    "hexagon": "hexagons",
    "diamond": "diamonds",
    "crescent": "crescents",
    "ring": "rings",
}

# Nominal sRGB colors (0-255). Saturated hues, chosen far apart so that blur and JPEG keep them apart.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 35),
    "orange": (245, 135, 20),
    "yellow": (245, 220, 30),
    "green": (40, 185, 55),
    "blue": (35, 80, 235),
    "purple": (135, 45, 200),
    "pink": (250, 125, 195),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
}

# Backgrounds: the phrase used in captions -> short name used in file names and the database.
BACKGROUNDS: dict[str, str] = {
    "forest": "in the forest",
    "city": "in the city",
    "moon": "on the moon",
    "beach": "on the beach",
    "desert": "in the desert",
    "sea": "under the sea",
    "snow": "in the snow",
    "sky": "in the sky",
}

COUNT_WORDS: dict[int, str] = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}
MIN_COUNT, MAX_COUNT = 1, 5

# Shapes that the pre-training data (the renderer) draws but the feedback set never shows: the paper's
# "unseen objects" (footnote 1). Chosen so that each has a seen shape of similar complexity.
DEFAULT_UNSEEN_OBJECTS: tuple[str, ...] = ("heart", "hexagon")

ATTRIBUTES: tuple[str, ...] = ("count", "color", "shape", "background")


def _check(kind: str, value: str, known) -> str:
    if value not in known:
        raise ValueError(f"unknown {kind} {value!r}; known {kind}s: {', '.join(known)}")
    return value


def check_shape(shape: str) -> str:
    return _check("shape", shape, SHAPES)


def check_color(color: str) -> str:
    return _check("color", color, COLORS)


def check_background(background: str) -> str:
    return _check("background", background, BACKGROUNDS)


def check_count(count: int) -> int:
    if isinstance(count, bool) or not isinstance(count, int) or not MIN_COUNT <= count <= MAX_COUNT:
        raise ValueError(f"count must be an integer from {MIN_COUNT} to {MAX_COUNT}, got {count!r}")
    return count


def index(kind: str, value) -> int:
    """Class index of an attribute value (the judge's label encoding)."""
    return values(kind).index(value)


def values(kind: str) -> list:
    """All values of one attribute, in class-index order."""
    return {
        "count": list(COUNT_WORDS),
        "color": list(COLORS),
        "shape": list(SHAPES),
        "background": list(BACKGROUNDS),
    }[kind]
