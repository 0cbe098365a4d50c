"""Evaluation ([evaluate])."""

from __future__ import annotations

from dataclasses import dataclass, field

from t2ialign.config.generate import GenerateConfig
from t2ialign.core.config import ConfigError, at_least_one


@dataclass
class EvaluateConfig:
    """Stage 7, evaluation (``t2ialign evaluate``; paper Sec. 4.2, Fig. 3, Table 2)."""

    n_seen: int = 60  # evaluation prompts of seen objects and templates, never given feedback
    n_unseen: int = 60  # half unseen prompts of seen objects, half prompts of unseen objects
    # Judged images per prompt of every model, seed indices 0..N-1 (the same seeds for every model, which
    # pairs them): 120 prompts x 20 = 2,400 per model, so that a paired difference of count on the 15
    # seen count prompts is known to a few points. More images per prompt, not more prompts: the count
    # prompts are few (36 seen, 4 unseen-prompt in all) and each evaluation prompt is one feedback loses.
    images_per_prompt: int = 20
    # Rejection sampling keeps the best `keep` of `best_of` candidates by reward (the paper: 4 of 16). Fig. 3
    # shows sets of `keep` images: the first `keep` seeds of a model, and for rejection sampling the best
    # `keep` of the first `best_of` candidates, exactly the paper's. The world evaluation of rejection
    # sampling keeps the best images_per_prompt of images_per_prompt x best_of / keep candidates (the
    # paper's 1 in 4; best 20 of 80 at the defaults), which must be a whole number.
    best_of: int = 16
    keep: int = 4  # <= best_of and <= images_per_prompt
    bootstrap_resamples: int = 4000  # resamples of the paired bootstrap over prompts (evaluate.paired)
    bootstrap_seed: int = 0  # seed of those resamples: same run, same intervals
    reward: str | None = None  # reward model folder; None = RUN/reward
    inception: str | None = None  # local Inception-v3 FID weights (.pth / .safetensors) for true FID
    # sampling of every model: steps, guidance, scheduler, batch size, precision, seed (role is always eval)
    generate: GenerateConfig = field(default_factory=lambda: GenerateConfig(role="eval"))
    seed: int = 0  # which prompts are the evaluation prompts

    def __post_init__(self):
        names = ("n_seen", "n_unseen", "images_per_prompt", "best_of", "keep", "bootstrap_resamples")
        at_least_one(self, "evaluate", *names)
        if self.keep > self.best_of:
            raise ConfigError(f"evaluate.keep ({self.keep}) must be <= evaluate.best_of ({self.best_of})")
        if self.keep > self.images_per_prompt:
            raise ConfigError(
                f"evaluate.keep ({self.keep}) must be <= evaluate.images_per_prompt ({self.images_per_prompt}): "
                "Fig. 3 shows each model's first `keep` images"
            )
        if (self.images_per_prompt * self.best_of) % self.keep:
            raise ConfigError(
                f"evaluate.images_per_prompt x best_of / keep = {self.images_per_prompt} x {self.best_of} / "
                f"{self.keep} is no whole number of rejection-sampling candidates per prompt"
            )

    @property
    def rejection_candidates(self) -> int:
        """Candidates per prompt of the evaluated rejection sampling, which keeps images_per_prompt of them."""
        return self.images_per_prompt * self.best_of // self.keep
