"""Online RL ([rl])."""

from __future__ import annotations

from dataclasses import dataclass, field

from t2ialign.config.dpo import DPO_UNUSED_TRAIN_FIELDS
from t2ialign.config.finetune import FinetuneConfig
from t2ialign.core.config import ConfigError, at_least_one

GUARD_ACTIONS = ("warn", "stop")
GUARD_ALIGNMENT = ("auto", "judge", "clip")


@dataclass
class RLSampleConfig:
    """[rl.sample]: how each epoch's images are drawn from the current policy (DDIM with eta > 0)."""

    num_inference_steps: int = 20  # DDIM steps; ddpo-pytorch: 50 (SD1.5); the world model needs fewer
    eta: float = 1.0  # DDIM noise, > 0 so each step is a Gaussian policy (ddpo-pytorch: 1.0, DDPM-like)
    guidance_scale: float = 5.0  # classifier-free guidance in sampling and in training (ddpo-pytorch: 5.0)
    prompts_per_epoch: int = 8  # distinct prompts drawn per epoch (seeded by (seed, step))
    images_per_prompt: int = 4  # images of each prompt per epoch, the group its advantage compares within
    batch_size: int = 8  # images per sampler call, per process (memory only: not what is computed)

    def __post_init__(self):
        at_least_one(self, "rl.sample", "num_inference_steps", "prompts_per_epoch", "images_per_prompt")
        at_least_one(self, "rl.sample", "batch_size")
        if not 0.0 < self.eta <= 1.0:
            raise ConfigError(
                f"rl.sample.eta must be in (0, 1] (eta = 0 has no log-probability), got {self.eta}"
            )
        if self.guidance_scale < 1.0:
            raise ConfigError(
                f"rl.sample.guidance_scale must be >= 1 (1: no guidance), got {self.guidance_scale}"
            )


@dataclass
class RLGuardConfig:
    """[rl.guard]: the guard against reward hacking, measured on a fixed probe set (prompts x seeds).

    Every ``every`` steps (and before the first) the probe images are scored: mean reward, alignment
    (the world judge's P(match) or the CLIP score), FD_CLIP to the base model's probe images, mean
    saturation and within-prompt diversity. The rule: over the last ``window`` evaluations the reward rose
    while an independent measure got worse by more than its tolerance (docs/rl.md)."""

    every: int = 10  # RL steps between two probe evaluations (0: no guard)
    n_prompts: int = 16  # probe prompts, a seeded draw from the training prompts
    seeds: int = 2  # probe images per prompt (diversity needs >= 2)
    window: int = 2  # evaluations back that the rule compares with (>= 1)
    action: str = "warn"  # "warn": log and go on; "stop": checkpoint and end the run
    # "judge": the world judge's mean P(match); "clip": mean CLIP score (cosine of image and prompt, for real
    # models); "auto": the judge for the shipped world model, CLIP otherwise
    alignment: str = "auto"
    clip: str | None = None  # the CLIP of CLIP score, FD_CLIP and diversity; None = the world CLIP
    # how much worse each measure may get over the window while the reward rises (absolute units):
    tol_alignment: float = 0.02  # alignment (P(match) or cosine) lower by more than this
    tol_fd_clip: float = 0.05  # FD_CLIP to the base probe images higher by more than this
    tol_saturation: float = 0.05  # |mean saturation - base's| (HSV S in [0, 1]) higher by more than this
    tol_diversity: float = 0.02  # mean pairwise CLIP cosine distance within a prompt lower by more than this

    def __post_init__(self):
        at_least_one(self, "rl.guard", "n_prompts", "window")
        if self.every < 0:
            raise ConfigError(f"rl.guard.every must be >= 0 (0: no guard), got {self.every}")
        if self.seeds < 2:
            raise ConfigError(
                f"rl.guard.seeds must be >= 2 (diversity compares images of a prompt), got {self.seeds}"
            )
        if self.action not in GUARD_ACTIONS:
            raise ConfigError(
                f"rl.guard.action must be one of {', '.join(GUARD_ACTIONS)}, got {self.action!r}"
            )
        if self.alignment not in GUARD_ALIGNMENT:
            raise ConfigError(
                f"rl.guard.alignment must be one of {', '.join(GUARD_ALIGNMENT)}, got {self.alignment!r}"
            )
        for name in ("tol_alignment", "tol_fd_clip", "tol_saturation", "tol_diversity"):
            if getattr(self, name) < 0:
                raise ConfigError(f"rl.guard.{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class RLTrainConfig(FinetuneConfig):
    """[rl.train]: finetune's training settings with DDPO's defaults (a FinetuneConfig, so the shared
    training functions take it). max_train_steps counts RL steps (epochs: one round of sampling, then
    num_inner_epochs passes of PPO updates over it); checkpointing_steps counts RL steps too."""

    train_batch_size: int = 4  # sampled trajectories per process per optimizer step (ddpo-pytorch: 1 per GPU)
    max_train_steps: int = 100  # RL steps (ddpo-pytorch's num_epochs: 100)
    learning_rate: float = 3e-4  # ddpo-pytorch's (LoRA)
    lr_warmup_steps: int = 0  # ddpo-pytorch has none
    adam_weight_decay: float = 1e-4  # ddpo-pytorch's
    use_ema: bool = False  # ddpo-pytorch has none
    lora_rank: int = 4  # LoRA by default (ddpo-pytorch: use_lora, rank 4); 0: the whole UNet
    checkpointing_steps: int = 20  # ddpo-pytorch's save_freq


@dataclass
class RLConfig:
    """DDPO with PPO clipping (``t2ialign rl``; Black et al. 2023), beyond the paper: the UNet as a policy
    over the sampler's denoising steps, trained to raise a reward of its own samples, with an optional
    DPOK-style KL penalty to the base model (Fan et al. 2023) and a guard against reward hacking."""

    # "learned": the reward model at reward_path (RUN/reward by default, `t2ialign reward train`);
    # "judge": the world judge's P(match), an oracle reward in the shapes world;
    # "python:module:function": a user callable reward(images, prompts) -> tensor (N,)
    reward: str = "learned"
    reward_path: str | None = None  # reward model folder for "learned"; None = RUN/reward
    prompt_split: str = "seen"  # the store's prompts the policy trains on (the paper's feedback prompts)
    clip_range: float = 1e-4  # PPO's clip of the ratio to [1 - c, 1 + c] (ddpo-pytorch's clip_range)
    adv_clip_max: float = 5.0  # advantages clipped to [-a, a] (ddpo-pytorch's)
    timestep_fraction: float = 1.0  # share of each trajectory's steps trained on, a seeded subset
    num_inner_epochs: int = 1  # passes of PPO updates over one epoch's samples (ddpo-pytorch's)
    # DPOK's KL to the base model: weight times the per-step KL of the policy's Gaussian to the base's
    # (same std: ||mean_policy - mean_base||^2 / (2 std^2), mean over latent dims); 0: none (plain DDPO)
    kl_weight: float = 0.0
    # per-prompt advantage normalization (ddpo-pytorch's per_prompt_stat_tracking): each prompt's last
    # buffer_size rewards; below min_count of them the epoch's global mean and std are used
    buffer_size: int = 16
    min_count: int = 16
    sample: RLSampleConfig = field(default_factory=RLSampleConfig)
    guard: RLGuardConfig = field(default_factory=RLGuardConfig)
    train: RLTrainConfig = field(default_factory=RLTrainConfig)

    def __post_init__(self):
        if not (self.reward in ("learned", "judge") or self.reward.startswith("python:")):
            raise ConfigError(
                f"rl.reward must be 'learned', 'judge' or 'python:module:function', got {self.reward!r}"
            )
        if self.prompt_split not in ("seen", "unseen", "imported"):
            raise ConfigError(f"rl.prompt_split must be seen, unseen or imported, got {self.prompt_split!r}")
        if not self.clip_range > 0 or not self.adv_clip_max > 0:
            raise ConfigError("rl.clip_range and rl.adv_clip_max must be > 0")
        if not 0.0 < self.timestep_fraction <= 1.0:
            raise ConfigError(f"rl.timestep_fraction must be in (0, 1], got {self.timestep_fraction}")
        if self.kl_weight < 0:
            raise ConfigError(f"rl.kl_weight must be >= 0, got {self.kl_weight}")
        at_least_one(self, "rl", "num_inner_epochs", "buffer_size", "min_count")
        default = RLTrainConfig()
        for name in DPO_UNUSED_TRAIN_FIELDS:
            if getattr(self.train, name) != getattr(default, name):
                raise ConfigError(
                    f"rl.train.{name} is a setting of finetune's Eq. 4, which DDPO does not use"
                )
        n = self.sample.prompts_per_epoch * self.sample.images_per_prompt
        if n % self.train.train_batch_size:
            raise ConfigError(
                f"rl: the {n} images of an epoch (prompts_per_epoch x images_per_prompt) must be a multiple "
                f"of rl.train.train_batch_size ({self.train.train_batch_size})"
            )
