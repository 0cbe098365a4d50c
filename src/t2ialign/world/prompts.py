"""Prompts of the paper's four categories (Table 1), their splits, parsing, and perturbations (Appendix E).

A prompt is a :class:`PromptSpec` (which attributes it asks for) rendered by one grammar:

=============  ==================================  =========================================
category       paper's example (Table 1)           shapes world
=============  ==================================  =========================================
count          "Two dogs"                          "Two circles"
color          "A green colored dog"               "A green colored circle"
background     "A dog in the forest"               "A circle in the forest"
combination    "Two blue dogs in the forest"       "Two blue circles in the forest"
=============  ==================================  =========================================

The same grammar writes the pre-training captions, which may name any subset of the attributes, down to
the plain object name ("circle", "stars"). ``parse_prompt`` reads any of them back.
"""

from __future__ import annotations

import itertools
import random
import re
from dataclasses import dataclass, field, replace

from t2ialign.core.seeds import stable_seed
from t2ialign.world import vocab

CATEGORIES: tuple[str, ...] = ("count", "color", "background", "combination")
# seen: may be shown to labelers (the feedback set); unseen_prompt: held-out combinations of seen words;
# unseen_object: prompts about objects that only the pre-training data shows.
SPLITS: tuple[str, ...] = ("seen", "unseen_prompt", "unseen_object")


@dataclass(frozen=True)
class PromptSpec:
    """What a prompt asks for. ``None`` means the prompt does not constrain that attribute."""

    shape: str
    count: int | None = None
    color: str | None = None
    background: str | None = None

    def __post_init__(self):
        vocab.check_shape(self.shape)
        if self.count is not None:
            vocab.check_count(self.count)
        if self.color is not None:
            vocab.check_color(self.color)
        if self.background is not None:
            vocab.check_background(self.background)

    @property
    def category(self) -> str | None:
        """The paper's category (Table 1), or None for captions outside its four templates."""
        given = (self.count is not None, self.color is not None, self.background is not None)
        return {
            (True, False, False): "count",
            (False, True, False): "color",
            (False, False, True): "background",
            (True, True, True): "combination",
        }.get(given)

    def constrained(self) -> dict[str, object]:
        """The attributes this prompt constrains, shape always included."""
        return {k: v for k, v in self.as_dict().items() if v is not None}

    def as_dict(self) -> dict[str, object]:
        return {"count": self.count, "color": self.color, "shape": self.shape, "background": self.background}

    def text(self, plain: bool = False) -> str:
        """Canonical text. ``plain`` drops the article of an uncounted object ("circle" not "A circle")."""
        noun = vocab.SHAPES[self.shape] if self.count not in (None, 1) else self.shape
        words: list[str] = []
        if self.count is not None:
            words.append(vocab.COUNT_WORDS[self.count])
        if self.color is not None:
            words.append(self.color)
            if self.category == "color":  # the paper's template: "A green colored dog"
                words.append("colored")
        words.append(noun)
        if self.background is not None:
            words.append(vocab.BACKGROUNDS[self.background])
        if self.count is None and not plain:
            words.insert(0, "an" if words[0][0] in "aeiou" else "a")
        text = " ".join(words)
        return text[0].upper() + text[1:]

    def __str__(self) -> str:
        return self.text()


@dataclass(frozen=True)
class Prompt:
    """One prompt of a prompt set: text, category and split, with its parsed attributes."""

    text: str
    category: str
    split: str
    spec: PromptSpec = field(compare=False)


# --- parsing -------------------------------------------------------------------------------------------

_NUMBER_WORDS = {"zero": 0, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10}
_PLURAL_TO_SHAPE = {plural: shape for shape, plural in vocab.SHAPES.items()}
_BG_BY_PHRASE = {phrase: name for name, phrase in vocab.BACKGROUNDS.items()}
_WORD = {v: k for k, v in vocab.COUNT_WORDS.items()}
_PATTERN = re.compile(
    r"^(?:(?P<count>{counts})|(?P<article>a|an))?\s*(?P<color>{colors})?\s*(?P<colored>colored)?\s*"
    r"(?P<noun>{nouns})(?:\s+(?P<bg>{bgs}))?$".format(
        counts="|".join(vocab.COUNT_WORDS.values()),
        colors="|".join(vocab.COLORS),
        nouns="|".join(sorted([*vocab.SHAPES, *vocab.SHAPES.values()], key=len, reverse=True)),
        bgs="|".join(re.escape(p) for p in vocab.BACKGROUNDS.values()),
    )
)
_KNOWN_WORDS = (
    set(vocab.COUNT_WORDS.values())
    | set(vocab.COLORS)
    | set(vocab.SHAPES)
    | set(vocab.SHAPES.values())
    | {w for p in vocab.BACKGROUNDS.values() for w in p.split()}
    | {"a", "an", "colored"}
)
_EXAMPLE = (
    "'Two circles', 'A green colored circle', 'A circle in the forest', 'Two blue circles in the forest'"
)


def parse_prompt(text: str) -> PromptSpec:
    """Read a caption of the world's grammar back into a :class:`PromptSpec`.

    Raises ValueError, naming the offending word where there is one, for anything else.
    """
    if not isinstance(text, str):
        raise ValueError(f"a prompt must be a string, got {type(text).__name__}")
    norm = " ".join(text.strip().rstrip(".").lower().split())
    if not norm:
        raise ValueError("empty prompt")
    for word in norm.split():
        if word in _NUMBER_WORDS or word.isdigit():
            n = _NUMBER_WORDS.get(word, word)
            raise ValueError(
                f"count {n} in prompt {text!r} is out of range: counts go from one to {vocab.COUNT_WORDS[vocab.MAX_COUNT]}"
            )
        if word not in _KNOWN_WORDS:
            raise ValueError(f"unknown word {word!r} in prompt {text!r}; prompts look like {_EXAMPLE}")
    m = _PATTERN.match(norm)
    if m is None:
        raise ValueError(f"malformed prompt {text!r}; prompts look like {_EXAMPLE}")
    noun = m["noun"]
    plural = noun in _PLURAL_TO_SHAPE
    shape = _PLURAL_TO_SHAPE.get(noun, noun)
    count = _WORD[m["count"]] if m["count"] else None
    if m["colored"] and not m["color"]:
        raise ValueError(f"malformed prompt {text!r}: 'colored' needs a color before it")
    if count is not None and plural != (count > 1):
        raise ValueError(f"malformed prompt {text!r}: {m['count']!r} does not agree with {noun!r}")
    if m["article"] and plural:
        raise ValueError(f"malformed prompt {text!r}: {m['article']!r} before a plural noun")
    bg = _BG_BY_PHRASE[m["bg"]] if m["bg"] else None
    return PromptSpec(shape=shape, count=count, color=m["color"], background=bg)


# --- the prompt set and its splits ------------------------------------------------------------------------


def category_specs(category: str, shapes) -> list[PromptSpec]:
    """Every prompt of one category over the given shapes, in a fixed order."""
    counts, colors, bgs = list(vocab.COUNT_WORDS), list(vocab.COLORS), list(vocab.BACKGROUNDS)
    if category == "count":
        return [PromptSpec(shape=s, count=n) for s in shapes for n in counts]
    if category == "color":
        return [PromptSpec(shape=s, color=c) for s in shapes for c in colors]
    if category == "background":
        return [PromptSpec(shape=s, background=b) for s in shapes for b in bgs]
    if category == "combination":
        return [
            PromptSpec(shape=s, count=n, color=c, background=b)
            for s, n, c, b in itertools.product(shapes, counts, colors, bgs)
        ]
    raise ValueError(f"unknown category {category!r}; known: {', '.join(CATEGORIES)}")


def build_prompt_set(
    unseen_objects=vocab.DEFAULT_UNSEEN_OBJECTS,
    unseen_prompt_fraction: float = 0.1,
    seed: int = 0,
) -> list[Prompt]:
    """The full prompt set: every prompt of the four categories, each in one split.

    Prompts about ``unseen_objects`` are ``unseen_object``. Of the others, a seeded ``unseen_prompt_fraction``
    of each category is held out as ``unseen_prompt``: combinations of seen words that feedback never
    shows. Every word of a held-out prompt still appears in some ``seen`` prompt (checked here).
    """
    for s in unseen_objects:
        vocab.check_shape(s)
    if not 0.0 <= unseen_prompt_fraction < 1.0:
        raise ValueError(f"unseen_prompt_fraction must be in [0, 1), got {unseen_prompt_fraction}")
    seen_shapes = [s for s in vocab.SHAPES if s not in unseen_objects]
    if not seen_shapes:
        raise ValueError("every shape is an unseen object: nothing is left for the feedback set")
    out: list[Prompt] = []
    for category in CATEGORIES:
        specs = category_specs(category, seen_shapes)
        order = list(range(len(specs)))
        random.Random(f"{seed}:{category}").shuffle(order)
        held = set(order[: round(unseen_prompt_fraction * len(specs))])
        for i, spec in enumerate(specs):
            out.append(Prompt(spec.text(), category, "unseen_prompt" if i in held else "seen", spec))
        for spec in category_specs(category, list(unseen_objects)):
            out.append(Prompt(spec.text(), category, "unseen_object", spec))
    seen_values = {(k, v) for p in out if p.split == "seen" for k, v in p.spec.constrained().items()}
    for p in out:
        if p.split == "unseen_prompt":
            missing = set(p.spec.constrained().items()) - seen_values
            if missing:  # only when the fraction is so large that a word vanishes from the feedback set
                raise ValueError(f"unseen_prompt_fraction {unseen_prompt_fraction} leaves {missing} unseen")
    return out


# --- perturbations (Appendix E) ---------------------------------------------------------------------------


def perturb(prompt: str | PromptSpec, n: int, seed: int = 0, shapes=None) -> list[str]:
    """The paper's rule-based perturbations: ``n - 1`` prompts whose meaning differs from ``prompt``.

    Each is made by changing the value of an attribute the prompt names (count, color, background) or its
    object; single changes first, two at once only when single changes run out. The prompt's template is
    kept ("Red dog" -> {"Blue dog", ..., "Green dog"}). Deterministic in (prompt, seed); never equal to the
    original, never two alike. ``shapes`` limits object changes (e.g. to the seen objects).
    """
    spec = parse_prompt(prompt) if isinstance(prompt, str) else prompt
    if n < 2:
        raise ValueError(f"n counts the original prompt too and must be >= 2, got {n}")
    pool = {
        "count": list(vocab.COUNT_WORDS),
        "color": list(vocab.COLORS),
        "shape": list(vocab.SHAPES if shapes is None else shapes),
        "background": list(vocab.BACKGROUNDS),
    }
    for s in pool["shape"]:
        vocab.check_shape(s)
    attrs = list(spec.constrained())
    singles, doubles = [], []
    for k in range(1, 3):
        for combo in itertools.combinations(attrs, k):
            for new in itertools.product(*[[v for v in pool[a] if v != getattr(spec, a)] for a in combo]):
                (singles if k == 1 else doubles).append(replace(spec, **dict(zip(combo, new, strict=True))))
    rng = random.Random(stable_seed(seed, spec.text(), bits=64))
    rng.shuffle(singles)
    rng.shuffle(doubles)
    candidates = singles + doubles
    if len(candidates) < n - 1:
        raise ValueError(
            f"prompt {spec.text()!r} has only {len(candidates)} perturbations, {n - 1} asked for"
        )
    return [c.text() for c in candidates[: n - 1]]


def spec_of(prompt_row: dict) -> PromptSpec:
    """The spec of a stored prompt row (``Store.list_prompts``)."""
    return PromptSpec(prompt_row["shape"], prompt_row["count"], prompt_row["color"], prompt_row["background"])
