"""Reward-weighted fine-tuning ([finetune])."""

from __future__ import annotations

from dataclasses import dataclass

from t2ialign.config._common import _check_precision
from t2ialign.core.config import ConfigError, at_least_one
from t2ialign.world.prompts import CATEGORIES

FINETUNE_WEIGHTS = ("reward", "labels", "uniform", "none")
TIMESTEP_BIAS = ("none", "later", "earlier", "range")
# The learning rate that ``learning_rate = None`` stands for: on a shapes-world pipeline, the perfect-feedback
# bound's (at 1e-5 the world's UNet barely moves in a fine-tuning budget; 3e-4 costs three times the
# fidelity for no more count alignment, docs/world.md "Guidance 3 and 4, paired"); on any other model,
# diffusers' example's
WORLD_LEARNING_RATE = 1e-4
SD_LEARNING_RATE = 1e-5


@dataclass
class FinetuneConfig:
    """Stage 5, reward-weighted fine-tuning of the UNet (``t2ialign finetune``; paper Eq. 4, Sec. 3.3).

    Loss = mean over D_model of w(x, z) * ||target - unet(x_t, t, z)||^2 + beta * the same, unweighted, over
    D_pre. The text encoder and the VAE stay frozen, so their outputs are computed once and cached.
    """

    # a local diffusers Stable Diffusion folder; None = the shipped world model
    pretrained_model_name_or_path: str | None = None
    reward: str | None = None  # reward model folder (``t2ialign reward train``); None = RUN/reward
    # "reward": w = r_phi(x, z) for every image of D_model, labeled or not (the paper);
    # "labels": w = the mean human label (good 1, bad 0), so only labeled images of D_human take part;
    # "uniform": w = 1 for every image of D_model, a reward-free control (what the reward itself adds);
    # "none": w = 0, so only the D_pre term trains: the same compute spent on D_pre alone (a control of
    # what feedback adds beyond more pre-training; needs beta > 0)
    weights: str = "reward"
    use_unlabeled: bool = True  # D_model = D_human + D_unlabel (False: D_human only, Table 2 column 2)
    # beyond the paper: k > 0 keeps only each prompt's k images of highest weight in D_model (with the
    # reward, the best k of the prompt's n images: rejection sampling distilled into the UNet); 0 keeps all
    top_k_per_prompt: int = 0
    # beyond the paper: keep only D_model images of weight >= min_weight (0.5 with labels as weights: the
    # images most labelers called good). With AdamW the objective is the same up to the pre-training term's
    # share, but every D_model slot of a batch then carries signal (0 keeps all)
    min_weight: float = 0.0
    # beyond the paper: keep only D_model images of prompts in these categories (count, color, background,
    # combination), e.g. ["count", "combination"] for the count-bearing prompts; empty keeps every category
    prompt_categories: tuple[str, ...] = ()
    # beyond the paper: draw D_model's batches so that every prompt comes up equally often, however many of
    # its images D_model keeps (each image with odds 1 / its prompt's kept images, drawn with replacement
    # from a generator seeded by (seed, step)). With good images only, the prompts the model draws worst
    # keep fewest images and would otherwise be trained on least. False: every image once per epoch
    balance_prompts: bool = False
    # rewards are clamped into this range: a negative weight would turn likelihood maximisation into an
    # unbounded loss ascent (the paper's r_phi is trained towards labels in {0, 1})
    reward_range: tuple[float, ...] = (0.0, 1.0)
    beta: float = 1.0  # weight of the pre-training loss on D_pre (Eq. 4); 0 switches D_pre off
    # beyond the paper: diffusers' timestep bias (train_text_to_image_sdxl.py, --timestep_bias_*) on the
    # D_model term. "later" multiplies the odds of the last timestep_bias_portion of the timesteps (the
    # noisiest, where the layout and so the count is settled) by timestep_bias_multiplier, "earlier" of the
    # first, "range" of [timestep_bias_begin, timestep_bias_end); "none" draws them uniformly (the paper).
    # D_pre's timesteps stay uniform, so the pre-training term keeps every noise level in place
    timestep_bias_strategy: str = "none"
    timestep_bias_multiplier: float = 1.0
    timestep_bias_portion: float = 0.25
    timestep_bias_begin: int = 0
    timestep_bias_end: int = 1000
    # D_pre: "world" = renders of the shapes world's pre-training captions; else a local folder with
    # images and captions.jsonl ({"file": ..., "text": ...} per line) or a Parquet file (image, text)
    pretrain_data: str = "world"
    pretrain_images: int = 4_000  # D_pre examples encoded once (the paper: a 625k LAION subset)
    # share of D_pre examples trained with the empty prompt, as in pre-training: keeps the unconditional
    # prediction that classifier-free guidance subtracts on D_pre (0: every D_pre example keeps its caption)
    pretrain_cfg_dropout: float = 0.0
    train_batch_size: int = 32  # D_model images per process per micro-step
    pretrain_batch_size: int = 32  # D_pre images per process per micro-step (only when beta > 0)
    gradient_accumulation_steps: int = 1  # micro-steps per optimizer step
    max_train_steps: int = 400  # optimizer steps
    # AdamW; linear warm-up, then constant. None: WORLD_LEARNING_RATE for a shapes-world pipeline (chosen by
    # the perfect-feedback bound on world v7, docs/world.md), SD_LEARNING_RATE for any other model: 1e-5
    # with EMA is diffusers' full-UNet fine-tuning example (train_text_to_image.py, its README)
    learning_rate: float | None = None
    lr_warmup_steps: int = 20
    adam_weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"  # "no", "bf16" (CPU or GPU autocast) or "fp16" (GPU only)
    use_ema: bool = True  # keep an exponential moving average of the trained weights and ship it
    ema_decay: float = 0.999
    lora_rank: int = 0  # 0: the whole UNet is trained; r > 0: LoRA adapters of rank r (peft) only
    lora_alpha: float | None = None  # LoRA scale numerator; None = lora_rank (scale 1)
    checkpointing_steps: int = 100  # a checkpoint every N optimizer steps (and at the end)
    checkpoints_total_limit: int = 2  # keep the newest N
    seed: int = 0  # batches, noise and timesteps of step s derive from (seed, s) alone

    def __post_init__(self):
        self.reward_range = tuple(float(x) for x in self.reward_range)
        self.prompt_categories = tuple(self.prompt_categories)
        bad = sorted(set(self.prompt_categories) - set(CATEGORIES))
        if bad:
            raise ConfigError(
                f"finetune.prompt_categories: unknown {', '.join(map(repr, bad))} "
                f"(categories: {', '.join(CATEGORIES)})"
            )
        if self.weights not in FINETUNE_WEIGHTS:
            raise ConfigError(
                f"finetune.weights must be one of {', '.join(FINETUNE_WEIGHTS)}, got {self.weights!r}"
            )
        if self.weights == "labels" and self.use_unlabeled:
            raise ConfigError(
                "finetune.weights = 'labels' has no weight for unlabeled images: set use_unlabeled = false"
            )
        if not 0.0 <= self.min_weight <= 1.0 or (self.min_weight > 0 and self.weights == "none"):
            raise ConfigError(
                f"finetune.min_weight must be in [0, 1] (and 0 with weights = 'none'), got {self.min_weight}"
            )
        if self.top_k_per_prompt < 0:
            raise ConfigError(f"finetune.top_k_per_prompt must be >= 0, got {self.top_k_per_prompt}")
        if self.top_k_per_prompt and self.weights in ("uniform", "none"):
            raise ConfigError(
                f"finetune.top_k_per_prompt ranks images by their weight: with weights = '{self.weights}' "
                "every image ties; use weights = 'reward' or 'labels'"
            )
        if self.weights == "none" and self.beta <= 0:
            raise ConfigError("finetune.weights = 'none' trains on D_pre alone: it needs beta > 0")
        if len(self.reward_range) != 2 or self.reward_range[0] >= self.reward_range[1]:
            raise ConfigError(
                f"finetune.reward_range must be [low, high] with low < high, got {self.reward_range}"
            )
        if self.beta < 0:
            raise ConfigError(f"finetune.beta must be >= 0, got {self.beta}")
        if not 0.0 <= self.pretrain_cfg_dropout < 1.0:
            raise ConfigError(
                f"finetune.pretrain_cfg_dropout must be in [0, 1), got {self.pretrain_cfg_dropout}"
            )
        if self.timestep_bias_strategy not in TIMESTEP_BIAS:
            raise ConfigError(
                f"finetune.timestep_bias_strategy must be one of {', '.join(TIMESTEP_BIAS)}, "
                f"got {self.timestep_bias_strategy!r}"
            )
        if self.timestep_bias_multiplier <= 0 or not 0.0 < self.timestep_bias_portion <= 1.0:
            raise ConfigError(
                "finetune.timestep_bias_multiplier must be > 0 and timestep_bias_portion in (0, 1], got "
                f"{self.timestep_bias_multiplier} and {self.timestep_bias_portion}"
            )
        if not 0 <= self.timestep_bias_begin < self.timestep_bias_end:
            raise ConfigError(
                "finetune.timestep_bias_begin and timestep_bias_end must satisfy 0 <= begin < end, got "
                f"{self.timestep_bias_begin} and {self.timestep_bias_end}"
            )
        _check_precision("finetune", self.mixed_precision)
        at_least_one(
            self,
            "finetune",
            "pretrain_images",
            "train_batch_size",
            "pretrain_batch_size",
            "gradient_accumulation_steps",
            "max_train_steps",
            "checkpointing_steps",
            "checkpoints_total_limit",
        )
        if (
            (self.learning_rate is not None and self.learning_rate <= 0)
            or self.lr_warmup_steps < 0
            or self.lora_rank < 0
        ):
            raise ConfigError("finetune.learning_rate must be > 0, lr_warmup_steps and lora_rank >= 0")
        if not 0.0 < self.ema_decay < 1.0:
            raise ConfigError(f"finetune.ema_decay must be in (0, 1), got {self.ema_decay}")
