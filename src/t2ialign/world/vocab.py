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

# Counts beyond the prompts', for the judge only. Prompts and captions ask for one to five shapes (above);
# the judge must also tell an empty image (0) and an over-drawn one (six or more) from those, so the
# renderer's judge scenes (``render.render_scene``) draw 0 to 7 shapes, and the judge's count head reads
# the classes in JUDGE_COUNTS: 0, 1, ..., 5 and MANY, which stands for "six or more". The class index of a
# count k is min(k, MANY) (``count_class``): 6 and 7 shapes are both class 6.
SCENE_COUNTS: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7)
MANY = MAX_COUNT + 1
JUDGE_COUNTS: tuple[int, ...] = tuple(range(0, MANY + 1))

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


def check_scene_count(count: int) -> int:
    """A count the renderer can draw for the judge (SCENE_COUNTS: 0 to 7), not only the prompts' 1-5."""
    if isinstance(count, bool) or not isinstance(count, int) or count not in SCENE_COUNTS:
        raise ValueError(
            f"a scene has {SCENE_COUNTS[0]} to {SCENE_COUNTS[-1]} shapes (prompts ask for "
            f"{MIN_COUNT} to {MAX_COUNT}), got {count!r}"
        )
    return count


def count_class(count: int) -> int:
    """The judge's count class of a number of shapes: the count itself up to five, MANY (6) above."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"a count is an integer >= 0, got {count!r}")
    return min(count, MANY)


def count_label(count_class_value: int) -> str:
    """How a count class reads to people: "0" ... "5", and "6+" for MANY (six or more)."""
    return f"{MANY}+" if count_class_value >= MANY else str(count_class_value)


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
