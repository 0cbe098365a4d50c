"""The reward model ([reward])."""

from __future__ import annotations

from dataclasses import dataclass, field

from t2ialign.core.config import ConfigError, at_least_one

REWARD_OBJECTIVES = ("mse", "bradley_terry")


@dataclass
class ImageTowerConfig:
    """Beyond the paper (issue 14, part 4): fine-tune the CLIP image tower together with the reward's MLP,
    as ImageReward and PickScore do, where the frozen embedding cannot carry an attribute (the world CLIP
    reads counts poorly: ``benchmarks/reward_probes.py``). The text tower stays frozen."""

    # 0: the frozen embedding (the paper); n: the last n transformer layers of the image tower, its final
    # layer norm and its projection; -1: the whole image tower
    layers: int = 0
    lr: float = 1e-4  # AdamW learning rate of the tower's weights (the MLP keeps reward.lr)

    def __post_init__(self):
        if self.layers < -1:
            raise ConfigError(
                f"reward.image_tower.layers must be -1 (all), 0 (frozen) or n > 0, got {self.layers}"
            )
        if self.lr <= 0:
            raise ConfigError(f"reward.image_tower.lr must be > 0, got {self.lr}")


@dataclass
class RewardConfig:
    """Stage 4, the reward model r_phi (``t2ialign reward train``; paper Sec. 3.2)."""

    clip: str | None = None  # a local transformers CLIP folder; None = the shipped world CLIP
    hidden: tuple[int, ...] = (512, 256)  # MLP widths on [x, z, x * z]
    dropout: float = 0.1
    pc_weight: float = 0.5  # lambda of Eq. 3; 0 switches the prompt-classification loss off
    temperature: float = (
        0.1  # T of Eq. 2; rewards live in about [0, 1], so a small T makes the softmax decisive
    )
    n_prompts: int = 8  # N of Eq. 2: the original prompt and N - 1 perturbations
    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-3  # AdamW
    weight_decay: float = 1e-4
    val_fraction: float = 0.16  # held-out images of seen prompts (4.5k of 27.5k in the paper)
    half_data: bool = False  # train on half the images per prompt (the paper's Fig. 4b ablation)
    seed: int = 0
    image_tower: ImageTowerConfig = field(default_factory=ImageTowerConfig)
    # "mse": Eq. 1-3 on the binary labels (the paper); "bradley_terry": beyond the paper, on pairwise
    # preferences (``t2ialign label pairs``, or imported public sets), with Eq. 2 on the preferred images
    objective: str = "mse"

    def __post_init__(self):
        self.hidden = tuple(self.hidden)
        if self.objective not in REWARD_OBJECTIVES:
            raise ConfigError(
                f"reward.objective must be one of {', '.join(REWARD_OBJECTIVES)}, got {self.objective!r}"
            )
        if self.pc_weight < 0 or self.temperature <= 0:
            raise ConfigError("reward.pc_weight must be >= 0 and reward.temperature > 0")
        if self.n_prompts < 2:
            raise ConfigError(f"reward.n_prompts counts the original and must be >= 2, got {self.n_prompts}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"reward.val_fraction must be in (0, 1), got {self.val_fraction}")
        at_least_one(self, "reward", "epochs", "batch_size")
