"""The iterated loop ([loop])."""

from __future__ import annotations

from dataclasses import dataclass, field

from t2ialign.config.evaluate import EvaluateConfig
from t2ialign.config.finetune import FinetuneConfig
from t2ialign.config.generate import GenerateConfig
from t2ialign.config.reward import RewardConfig
from t2ialign.core.config import ConfigError, at_least_one

LOOP_LABELERS = ("simulated", "people")
LOOP_D_MODEL = ("round", "all")


@dataclass
class LoopConfig:
    """Beyond the paper (issue 17): the iterated loop, ``t2ialign loop RUN --rounds K``. Each round
    generates from the current model on fresh feedback prompts, collects labels, retrains the reward on
    every label of the loop so far, fine-tunes the current model and evaluates it paired with base."""

    rounds: int = 3  # where the loop stops; raising it and rerunning continues a finished loop
    # the labeling budget: labeled images per round (D_human), each labeled by n_labelers
    labels_per_round: int = 600
    images_per_prompt: int = 6  # D_human images per drawn prompt; labels_per_round must be a multiple
    unlabeled_per_prompt: int = 4  # D_unlabel images per drawn prompt (0: none)
    # D_model of a round's fine-tuning: "round" = this round's images, sampled from the model being
    # fine-tuned (on-policy, as DDPO's RWR rounds: earlier rounds' images are samples of older models
    # whose lesson the current model has already taken); "all" = every image of the loop so far
    d_model: str = "round"
    # "simulated": the world's simulated labelers label each round at once; "people": the round waits
    # until the web app (`t2ialign label serve RUN --k n_labelers`) has n_labelers answers per image
    labelers: str = "simulated"
    n_labelers: int = 3
    noise: float = 0.05  # simulated labelers: share of flipped answers
    skip: float = 0.05  # simulated labelers: share of skips
    poll_seconds: float = 30.0  # people: seconds between two looks at the store
    timeout_seconds: float = 7 * 24 * 3600.0  # people: give up waiting after this long (rerun: wait again)
    model: str | None = None  # the base pipeline (round 1's current model); None = the shipped world model
    seed: int = 0  # the draw of each round's prompts
    # how feedback images are sampled (generate.model and generate.role are set by the loop)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    # each round's fine-tuning; max_train_steps counts the steps of one round. pretrained_model_name_or_path
    # and reward are the loop's (the current model and this round's reward)
    finetune: FinetuneConfig = field(default_factory=lambda: FinetuneConfig(max_train_steps=200))
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)  # reward: this round's

    def __post_init__(self):
        at_least_one(self, "loop", "rounds", "labels_per_round", "images_per_prompt", "n_labelers")
        if self.labels_per_round % self.images_per_prompt:
            raise ConfigError(
                f"loop.labels_per_round ({self.labels_per_round}) must be a multiple of "
                f"loop.images_per_prompt ({self.images_per_prompt}): each drawn prompt gets all its images"
            )
        if self.unlabeled_per_prompt < 0:
            raise ConfigError(f"loop.unlabeled_per_prompt must be >= 0, got {self.unlabeled_per_prompt}")
        if self.d_model not in LOOP_D_MODEL:
            raise ConfigError(f"loop.d_model must be one of {', '.join(LOOP_D_MODEL)}, got {self.d_model!r}")
        if self.labelers not in LOOP_LABELERS:
            raise ConfigError(
                f"loop.labelers must be one of {', '.join(LOOP_LABELERS)}, got {self.labelers!r}"
            )
        if not (0.0 <= self.noise <= 0.5 and 0.0 <= self.skip <= 0.5):
            raise ConfigError("loop.noise and loop.skip must be probabilities in [0, 0.5]")
        if not (self.poll_seconds > 0 and self.timeout_seconds > 0):
            raise ConfigError("loop.poll_seconds and loop.timeout_seconds must be > 0")
        set_by_loop = {
            "generate.model": self.generate.model,
            "finetune.pretrained_model_name_or_path": self.finetune.pretrained_model_name_or_path,
            "finetune.reward": self.finetune.reward,
            "evaluate.reward": self.evaluate.reward,
        }
        for name, value in set_by_loop.items():
            if value is not None:
                raise ConfigError(
                    f"loop.{name} is set by the loop each round (the current model, this round's reward): "
                    "leave it out; loop.model names the base pipeline"
                )
