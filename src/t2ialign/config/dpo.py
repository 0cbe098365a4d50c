"""Diffusion-DPO ([dpo], [dpo.train])."""

from __future__ import annotations

from dataclasses import dataclass, field

from t2ialign.config.finetune import SD_LEARNING_RATE, FinetuneConfig
from t2ialign.core.config import ConfigError

DPO_PAIR_SOURCES = ("labels", "preferences")  # binary labels (good x bad) or pairwise feedback
# FinetuneConfig's fields that belong to Eq. 4 alone: [dpo.train] keeps them at DPO's defaults
DPO_UNUSED_TRAIN_FIELDS = (
    "reward",
    "weights",
    "use_unlabeled",
    "top_k_per_prompt",
    "reward_range",
    "beta",
    "pretrain_data",
    "pretrain_images",
    "pretrain_cfg_dropout",
    "pretrain_batch_size",
)


@dataclass
class DPOTrainConfig(FinetuneConfig):
    """[dpo.train]: finetune's training settings with DPO's defaults (a FinetuneConfig, so the shared
    training functions take it). DPO trains on labeled D_human images only and has no D_pre term."""

    weights: str = "labels"  # pairs come from labeled images of D_human
    use_unlabeled: bool = False
    beta: float = 0.0  # Eq. 4's D_pre weight: off (DPO's KL strength is dpo.beta)
    train_batch_size: int = 16  # pairs (2 images each) per process per micro-step
    # finetune's former default, on any model (finetune's own now follows the model)
    learning_rate: float = SD_LEARNING_RATE


@dataclass
class DPOConfig:
    """Diffusion-DPO (``t2ialign dpo``; Wallace et al. 2023), beyond the paper: the UNet trained on pairs
    (a preferred and a rejected image of one prompt) against a frozen reference, the base UNet.

    Loss per pair = -log sigmoid(-beta / 2 * ((e_w - e_l) - (ref_e_w - ref_e_l))), with e the per-sample
    denoising MSE of winner w and loser l at the same noise and timestep. ``train`` holds the shared
    training settings (model, LoRA or full UNet, batches, AdamW, EMA, accelerate, checkpoints, seed) as
    the finetune stage reads them; its train_batch_size counts pairs (2 images each) per process per
    micro-step, and Eq. 4's own fields (DPO_UNUSED_TRAIN_FIELDS) stay at their defaults here.
    """

    # KL strength (dimensionless; it multiplies differences of MSEs, which are ~1e-3 apart): the paper
    # uses 5000 for SD1.5 (the reference code's beta_dpo). Larger: the policy stays closer to the reference
    beta: float = 5000.0
    # "labels": a good and a bad image of one prompt (majority of labelers); "preferences": the pairs that
    # pairwise feedback decided (`t2ialign label pairs`, or an imported public set; ties left out)
    pairs: str = "labels"
    # pairs kept per prompt, a seeded draw from its good x bad pairs (0: all; a prompt with many images
    # otherwise dominates the data quadratically)
    max_pairs_per_prompt: int = 0
    train: DPOTrainConfig = field(default_factory=DPOTrainConfig)

    def __post_init__(self):
        if not self.beta > 0:
            raise ConfigError(f"dpo.beta must be > 0, got {self.beta}")
        if self.pairs not in DPO_PAIR_SOURCES:
            raise ConfigError(f"dpo.pairs must be one of {', '.join(DPO_PAIR_SOURCES)}, got {self.pairs!r}")
        if self.max_pairs_per_prompt < 0:
            raise ConfigError(f"dpo.max_pairs_per_prompt must be >= 0, got {self.max_pairs_per_prompt}")
        default = DPOTrainConfig()
        for name in DPO_UNUSED_TRAIN_FIELDS:
            if getattr(self.train, name) != getattr(default, name):
                raise ConfigError(
                    f"dpo.train.{name} is a setting of finetune's Eq. 4, which DPO does not use "
                    f"(DPO's own KL strength is dpo.beta): leave it out of [dpo.train]"
                )
