"""The prompt set ([prompts])."""

from __future__ import annotations

from dataclasses import dataclass

from t2ialign.core.config import ConfigError
from t2ialign.world import vocab


@dataclass
class PromptsConfig:
    """Stage 1, the prompt set (``t2ialign prompts``)."""

    # Shapes that only the pre-training data shows: the paper's "unseen objects". Their prompts are
    # split "unseen_object" and never reach the feedback set.
    unseen_objects: tuple[str, ...] = vocab.DEFAULT_UNSEEN_OBJECTS
    # Share of each category's seen-object prompts held out as "unseen_prompt" (combinations of seen
    # words that feedback never shows). 0.1 leaves 2,751 seen prompts, about the paper's 2,700.
    unseen_prompt_fraction: float = 0.1
    # Seed of the held-out draw; same seed, same split.
    seed: int = 0

    def __post_init__(self):
        self.unseen_objects = tuple(self.unseen_objects)
        for s in self.unseen_objects:
            vocab.check_shape(s)
        if not 0.0 <= self.unseen_prompt_fraction < 1.0:
            raise ConfigError(
                f"prompts.unseen_prompt_fraction must be in [0, 1), got {self.unseen_prompt_fraction}"
            )
