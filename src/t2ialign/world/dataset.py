"""D_pre, the shapes world's pre-training dataset: an unlimited, seeded stream of (image, caption) pairs.

Every item is a full scene (all four attributes drawn uniformly, unseen objects included, as the paper's
LAION holds objects its feedback never shows) with a web-like caption: like alt-text, it names the object
and each other attribute only sometimes, and it states counts seldom and not always right (people
miscount; a caption says "three" of four stars). Rates in ``DEFAULT_CAPTION_RATES`` and
``DEFAULT_COUNT_ERROR_RATE``; docs/world.md says why these values.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from t2ialign.core.seeds import stable_seed
from t2ialign.world import vocab
from t2ialign.world.prompts import PromptSpec
from t2ialign.world.render import DEFAULT_SIZE, check_layout, render

# Which attributes a caption names, besides the object, and how often. The four Table 1 templates,
# the plain name, and the other partial combinations.
CAPTION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "plain": (),
    "count": ("count",),
    "color": ("color",),
    "background": ("background",),
    "combination": ("count", "color", "background"),
    "count_color": ("count", "color"),
    "color_background": ("color", "background"),
    "count_background": ("count", "background"),
}
# How often a caption names each attribute besides the object (independently), and how often a stated
# count is off by one. World v4 named each attribute half the time, always right: its data stated the
# count correctly in half the captions, so feedback had nothing to add about counts (issue 14).
DEFAULT_CAPTION_RATES: dict[str, float] = {"count": 0.1, "color": 0.6, "background": 0.5}
DEFAULT_COUNT_ERROR_RATE = 0.2
CAPTIONED = ("count", "color", "background")


def check_caption_rates(rates: dict[str, float], count_error_rate: float) -> None:
    """ValueError unless ``rates`` gives a probability for exactly count, color and background."""
    if set(rates) != set(CAPTIONED):
        raise ValueError(f"caption rates must name exactly {', '.join(CAPTIONED)}; got {', '.join(rates)}")
    for name, r in rates.items():
        if not 0.0 <= r <= 1.0:
            raise ValueError(f"caption rate of {name!r} must be in [0, 1], got {r}")
    if not 0.0 <= count_error_rate <= 1.0:
        raise ValueError(f"count error rate must be in [0, 1], got {count_error_rate}")


def web_caption(
    scene: PromptSpec,
    rng: np.random.Generator,
    rates: dict[str, float] = DEFAULT_CAPTION_RATES,
    count_error_rate: float = DEFAULT_COUNT_ERROR_RATE,
) -> str:
    """A web-like caption of a full scene: each of count, color and background named with its rate; a
    named count is off by one with probability ``count_error_rate`` (one -> two, five -> four, else
    either neighbour). Always four draws from ``rng``, so captions of later items do not shift."""
    u = rng.random(4)
    named = {k: getattr(scene, k) for k, x in zip(CAPTIONED, u[:3], strict=True) if x < rates[k]}
    if "count" in named and u[3] < count_error_rate:
        c = named["count"]
        up = c == vocab.MIN_COUNT or (c != vocab.MAX_COUNT and u[3] < count_error_rate / 2)
        named["count"] = c + 1 if up else c - 1
    if not named:
        return caption_for(scene, "plain")
    return PromptSpec(scene.shape, **named).text()


def caption_for(scene: PromptSpec, template: str) -> str:
    """The caption of a full scene under one template (which attributes it names)."""
    if template not in CAPTION_TEMPLATES:
        raise ValueError(f"unknown caption template {template!r}; known: {', '.join(CAPTION_TEMPLATES)}")
    if template == "plain":  # the bare object name, plural when there are several
        return vocab.SHAPES[scene.shape] if scene.count > 1 else scene.shape
    named = CAPTION_TEMPLATES[template]
    return PromptSpec(scene.shape, **{k: getattr(scene, k) for k in named}).text()


class PretrainDataset(Dataset):
    """Item i -> {"pixel_values": (3, size, size) float in [-1, 1], "caption": str, "attributes": dict}.

    Deterministic in (seed, i); ``length`` only bounds an epoch, the distribution is unlimited.
    """

    def __init__(
        self,
        length: int,
        seed: int = 0,
        size: int = DEFAULT_SIZE,
        caption_rates: dict[str, float] | None = None,
        count_error_rate: float = DEFAULT_COUNT_ERROR_RATE,
        shapes=None,
        layout: str = "random",
    ):
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        check_layout(layout)
        self.layout = layout
        self.caption_rates = dict(DEFAULT_CAPTION_RATES if caption_rates is None else caption_rates)
        check_caption_rates(self.caption_rates, count_error_rate)
        self.count_error_rate = count_error_rate
        self.shapes = list(vocab.SHAPES if shapes is None else shapes)
        for s in self.shapes:
            vocab.check_shape(s)
        self.length, self.seed, self.size = length, seed, size

    def __len__(self) -> int:
        return self.length

    def scene(self, i: int) -> tuple[PromptSpec, str]:
        """(the full scene of item i, its caption)."""
        rng = np.random.default_rng(stable_seed("d_pre", self.seed, i))
        scene = PromptSpec(
            shape=self.shapes[rng.integers(len(self.shapes))],
            count=int(rng.integers(vocab.MIN_COUNT, vocab.MAX_COUNT + 1)),
            color=vocab.values("color")[rng.integers(len(vocab.COLORS))],
            background=vocab.values("background")[rng.integers(len(vocab.BACKGROUNDS))],
        )
        return scene, web_caption(scene, rng, self.caption_rates, self.count_error_rate)

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.length:
            raise IndexError(i)
        scene, caption = self.scene(i)
        seed = stable_seed("d_pre_image", self.seed, i)
        image = render(scene, seed=seed, size=self.size, layout=self.layout).image
        pixels = torch.from_numpy(image).permute(2, 0, 1).float() / 127.5 - 1.0
        return {
            "pixel_values": pixels,
            "caption": caption,
            "attributes": scene.as_dict(),
        }
