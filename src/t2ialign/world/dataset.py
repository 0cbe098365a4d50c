"""D_pre, the shapes world's pre-training dataset: an unlimited, seeded stream of (image, caption) pairs.

Every item is a full scene (all four attributes drawn uniformly, unseen objects included, as the paper's
LAION holds objects its feedback never shows) with a caption that names a random subset of its
attributes, through every template of the grammar, plain object names included. Like web alt-text, a
caption is true but often incomplete.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from . import vocab
from .prompts import PromptSpec
from .render import DEFAULT_SIZE, render, stable_seed

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
DEFAULT_CAPTION_WEIGHTS: dict[str, float] = {name: 1.0 for name in CAPTION_TEMPLATES}


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
        caption_weights: dict[str, float] | None = None,
        shapes=None,
    ):
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        weights = dict(DEFAULT_CAPTION_WEIGHTS if caption_weights is None else caption_weights)
        for name, w in weights.items():
            if name not in CAPTION_TEMPLATES:
                raise ValueError(f"unknown caption template {name!r}; known: {', '.join(CAPTION_TEMPLATES)}")
            if w < 0:
                raise ValueError(f"caption weight of {name!r} must be >= 0, got {w}")
        total = sum(weights.values())
        if total <= 0:
            raise ValueError("caption weights sum to zero")
        self.templates = list(weights)
        self.probs = np.array([weights[t] / total for t in self.templates])
        self.shapes = list(vocab.SHAPES if shapes is None else shapes)
        for s in self.shapes:
            vocab.check_shape(s)
        self.length, self.seed, self.size = length, seed, size

    def __len__(self) -> int:
        return self.length

    def scene(self, i: int) -> tuple[PromptSpec, str]:
        rng = np.random.default_rng(stable_seed("d_pre", self.seed, i))
        scene = PromptSpec(
            shape=self.shapes[rng.integers(len(self.shapes))],
            count=int(rng.integers(vocab.MIN_COUNT, vocab.MAX_COUNT + 1)),
            color=vocab.values("color")[rng.integers(len(vocab.COLORS))],
            background=vocab.values("background")[rng.integers(len(vocab.BACKGROUNDS))],
        )
        return scene, self.templates[rng.choice(len(self.templates), p=self.probs)]

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.length:
            raise IndexError(i)
        scene, template = self.scene(i)
        image = render(scene, seed=stable_seed("d_pre_image", self.seed, i), size=self.size).image
        pixels = torch.from_numpy(image).permute(2, 0, 1).float() / 127.5 - 1.0
        return {
            "pixel_values": pixels,
            "caption": caption_for(scene, template),
            "attributes": scene.as_dict(),
        }
