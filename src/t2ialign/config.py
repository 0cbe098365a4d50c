"""Configuration: one dataclass per stage, validated on load, unknown keys are errors.

Every artifact is saved with its resolved config (``to_dict``) and seed, so that it can be remade.
Files may be TOML or JSON; a stage reads the table of its own name ("prompts", "judge", ...).
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from t2ialign.core.config import ConfigError, at_least_one, from_dict, to_dict  # noqa: F401 (to_dict: importable from here)
from t2ialign.world import vocab
from t2ialign.world.dataset import DEFAULT_CAPTION_RATES, DEFAULT_COUNT_ERROR_RATE, check_caption_rates
from t2ialign.world.judge import JudgeTrainConfig


def _check_precision(table: str, mixed_precision: str, auto: bool = False) -> None:
    allowed = ("auto", "no", "bf16", "fp16") if auto else ("no", "bf16", "fp16")
    if mixed_precision not in allowed:
        raise ConfigError(
            f"{table}.mixed_precision must be {', '.join(allowed[:-1])} or {allowed[-1]}, got {mixed_precision!r}"
        )


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


@dataclass
class PretrainDataConfig:
    """The rendered pool that the world's base models learn from (D_pre, rendered once, cached)."""

    n_images: int = 100_000  # distinct renders (uint8 64x64x3: 1.2 GB in memory while training)
    size: int = 64  # image side in pixels; the VAE maps it to a (4, size/4, size/4) latent
    seed: int = 0
    # Web-like captions (world.dataset.web_caption): the share of captions that name each attribute
    # besides the object, drawn independently. The count is named seldom, as on the web, so that the base
    # model's count errors come from its data and feedback has something to add (docs/world.md).
    caption_rates: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_CAPTION_RATES))
    count_error_rate: float = DEFAULT_COUNT_ERROR_RATE  # share of named counts that are off by one
    # One caption per pool image, fixed, as an alt-text is: the count information in D_pre is then
    # bounded by the pool, and more steps cannot make up for it. False draws a fresh caption every time
    # an image is used (world v4).
    fixed_captions: bool = True

    def __post_init__(self):
        if self.n_images < 1 or self.size < 32 or self.size % 4:
            raise ConfigError("pretrain.data needs n_images >= 1 and a size >= 32 divisible by 4")
        try:
            check_caption_rates(self.caption_rates, self.count_error_rate)
        except ValueError as e:
            raise ConfigError(f"pretrain.data: {e}") from None


@dataclass
class ClipPretrainConfig:
    """The world CLIP (a transformers CLIPModel), trained contrastively on the pool."""

    text_hidden: int = 128  # width of the text tower; also the UNet's cross_attention_dim
    text_layers: int = 3
    vision_hidden: int = 128
    vision_layers: int = 4
    heads: int = 4
    patch_size: int = 8  # 64x64 images -> 64 patches
    projection_dim: int = 128  # the embedding the reward model reads
    steps: int = 4_000  # v1 had 2,000: zero-shot shape accuracy only 30%
    batch_size: int = 128
    lr: float = 1e-3  # AdamW peak; linear warm-up over warmup_steps, cosine to 0
    warmup_steps: int = 200
    weight_decay: float = 0.05
    zero_shot_n: int = 500  # renders for the zero-shot accuracy reported when the stage ends


@dataclass
class VaePretrainConfig:
    """The world VAE (a diffusers AutoencoderKL, factor 4: 64x64x3 -> 4x16x16)."""

    # One downsampling between consecutive entries. v1 (16, 32, 64) for 2,000 steps shifted colors and blurred
    # star points in its reconstructions (L1 14.6/255 on full renders): wider and longer since.
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    latent_channels: int = 4
    steps: int = 5_000
    batch_size: int = 32
    crop: int = 32  # trained on random crops (fully convolutional): 4x cheaper than whole images
    lr: float = 1e-3
    warmup_steps: int = 100
    kl_weight: float = 1e-6  # as small as in SD's VAE: the latent is nearly deterministic


@dataclass
class UnetPretrainConfig:
    """The world UNet (a diffusers UNet2DConditionModel on the VAE's latent), with the CLIP text tower."""

    # Widths per level (16x16, 8x8, 4x4 on the default latent). Which levels have (self- and cross-)
    # attention: at 8x8 and 4x4 only, 1.9x faster training and sampling than with 16x16 too (make bench).
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    cross_attention: tuple[bool, ...] = (False, True, True)
    layers_per_block: int = 2
    # attention heads per level (diffusers keeps SD-1's name, attention_head_dim, for the head count)
    attention_head_dim: tuple[int, ...] = (8, 8, 8)
    # the shipped v4 UNet: 18,000 steps (v2 8,000, v3 12,000; shape accuracy 32-45% -> 63-69% -> 78-90%)
    steps: int = 18_000
    batch_size: int = 64
    lr: float = 1e-3  # AdamW peak, after a linear warm-up
    warmup_steps: int = 500
    # "cosine" decays the learning rate to 0 at `steps`, so the end of the learning curve shows whether more
    # pre-training would help; "constant" (world v4) lets a finished UNet be trained further by raising
    # `steps` and rerunning (its identity is then its config without the steps).
    lr_schedule: str = "cosine"
    snapshot_steps: int = 2_000  # the EMA UNet saved every N steps (unet_snapshots/), for the learning curve
    cfg_dropout: float = 0.1  # share of empty captions, for classifier-free guidance
    # "epsilon" (SD v1) or "v_prediction"; a zero terminal SNR needs v_prediction. The shipped world model
    # v1 used epsilon without it, and its backgrounds followed the noise seed more than the prompt.
    prediction_type: str = "v_prediction"
    zero_terminal_snr: bool = True
    ema_decay: float = 0.999  # the shipped UNet is the exponential moving average

    def __post_init__(self):
        self.block_out_channels, self.cross_attention = (
            tuple(self.block_out_channels),
            tuple(self.cross_attention),
        )
        self.attention_head_dim = tuple(self.attention_head_dim)
        if len(self.cross_attention) != len(self.block_out_channels) or not any(self.cross_attention):
            raise ConfigError("pretrain.unet.cross_attention needs one flag per level, at least one true")
        if len(self.attention_head_dim) != len(self.block_out_channels) or min(self.attention_head_dim) < 1:
            raise ConfigError("pretrain.unet.attention_head_dim needs one head count >= 1 per level")
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ConfigError(
                f"pretrain.unet.prediction_type must be epsilon or v_prediction, got {self.prediction_type!r}"
            )
        if self.zero_terminal_snr and self.prediction_type != "v_prediction":
            raise ConfigError("pretrain.unet.zero_terminal_snr needs prediction_type = v_prediction")
        if self.lr_schedule not in ("cosine", "constant"):
            raise ConfigError(
                f"pretrain.unet.lr_schedule must be cosine or constant, got {self.lr_schedule!r}"
            )
        if self.snapshot_steps < 0:
            raise ConfigError(f"pretrain.unet.snapshot_steps must be >= 0, got {self.snapshot_steps}")


@dataclass
class PretrainConfig:
    """``t2ialign pretrain``: the world's CLIP and Stable Diffusion, resumable stage by stage."""

    data: PretrainDataConfig = field(default_factory=PretrainDataConfig)
    clip: ClipPretrainConfig = field(default_factory=ClipPretrainConfig)
    vae: VaePretrainConfig = field(default_factory=VaePretrainConfig)
    unet: UnetPretrainConfig = field(default_factory=UnetPretrainConfig)
    checkpointing_steps: int = 500  # a checkpoint every N optimizer steps of each stage
    checkpoints_total_limit: int = 2  # keep the newest N
    seed: int = 0


SCHEDULERS = ("default", "dpm++", "ddim", "euler", "euler_a", "pndm")


@dataclass
class GenerateConfig:
    """Stage 2, sampling images into the run (``t2ialign generate``)."""

    # pretrained_model_name_or_path: a local diffusers Stable Diffusion folder; None = the shipped world model
    model: str | None = None
    images_per_prompt: int = 10  # the paper generates up to 60 per prompt; 27k images from 2,700 prompts
    num_inference_steps: int = 20
    guidance_scale: float = 5.0  # classifier-free guidance; 1.0 switches it off (half the UNet work)
    scheduler: str = "default"  # the pipeline's own (DPM-Solver++ for the world model), or one of SCHEDULERS
    batch_size: int = 64  # images per pipeline call, across prompts
    # "auto": bf16 autocast where the device computes bf16 natively (a GPU; a CPU with AVX512_BF16 or AMX),
    # fp16 on a GPU without bf16, else none. On a CPU without native bf16 (AVX2 only) bf16 is emulated and
    # sampling ran 20x slower than fp32 (docs/throughput.md). Or "no", "bf16", "fp16" (fp16: CUDA only).
    mixed_precision: str = "auto"
    height: int | None = None  # None: the model's native size
    width: int | None = None
    seed: int = 0  # image seeds derive from (seed, prompt, index): same seed, same image
    role: str = "human"  # human (D_human, to be labeled), unlabeled (D_unlabel) or eval
    # where the pipeline samples: "auto" = this process's GPU (cuda:LOCAL_RANK under torchrun or
    # accelerate launch) when CUDA is there, else the CPU; or a torch device such as "cpu", "cuda:1", "mps"
    device: str = "auto"

    def __post_init__(self):
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):
            raise ConfigError(f"generate.device must be auto, cpu, mps, cuda or cuda:N, got {self.device!r}")
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(
                f"generate.scheduler must be one of {', '.join(SCHEDULERS)}, got {self.scheduler!r}"
            )
        _check_precision("generate", self.mixed_precision, auto=True)
        if self.role not in ("human", "unlabeled", "eval"):
            raise ConfigError(f"generate.role must be human, unlabeled or eval, got {self.role!r}")
        at_least_one(self, "generate", "images_per_prompt", "num_inference_steps", "batch_size")
        if self.guidance_scale < 1.0:
            raise ConfigError(f"generate.guidance_scale must be >= 1, got {self.guidance_scale}")


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


FINETUNE_WEIGHTS = ("reward", "labels", "uniform", "none")


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
    # rewards are clamped into this range: a negative weight would turn likelihood maximisation into an
    # unbounded loss ascent (the paper's r_phi is trained towards labels in {0, 1})
    reward_range: tuple[float, ...] = (0.0, 1.0)
    beta: float = 1.0  # weight of the pre-training loss on D_pre (Eq. 4); 0 switches D_pre off
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
    # AdamW; linear warm-up, then constant. 1e-5 with EMA is diffusers' full-UNet fine-tuning example
    # (train_text_to_image.py); at paper scale it beat 1e-4 without EMA on alignment, reward and FD (README)
    learning_rate: float = 1e-5
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
        if self.learning_rate <= 0 or self.lr_warmup_steps < 0 or self.lora_rank < 0:
            raise ConfigError("finetune.learning_rate must be > 0, lr_warmup_steps and lora_rank >= 0")
        if not 0.0 < self.ema_decay < 1.0:
            raise ConfigError(f"finetune.ema_decay must be in (0, 1), got {self.ema_decay}")


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


@dataclass
class Config:
    """The whole run's config: one table per stage, read by that stage's command (``t2ialign generate``
    reads [generate]). Rejection sampling has no table: ``t2ialign sample`` takes its sampler from
    [generate] and its n and k from flags (sample.rejection.SampleConfig)."""

    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    judge: JudgeTrainConfig = field(default_factory=JudgeTrainConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)


def load_config(path: str | Path | None = None, cls=Config):
    """Read a TOML or JSON file into ``cls`` (defaults when path is None)."""
    if path is None:
        return cls()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot parse config file {path}: {e}") from e
    return from_dict(cls, data)
