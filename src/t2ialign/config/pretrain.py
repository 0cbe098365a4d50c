"""The world's pre-training ([pretrain]): its data, CLIP, VAE and UNet."""

from __future__ import annotations

from dataclasses import dataclass, field

from t2ialign.core.config import ConfigError
from t2ialign.world.dataset import DEFAULT_CAPTION_RATES, DEFAULT_COUNT_ERROR_RATE, check_caption_rates
from t2ialign.world.render import LAYOUTS


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
    # How the renders place their shapes (world.render.LAYOUTS): "random" anywhere (worlds v1-v6), "grid"
    # in the cells of a 3x3 grid, "dice" as the die face of the count (docs/world.md, "Which world draws
    # counts precisely").
    layout: str = "random"

    def __post_init__(self):
        if self.n_images < 1 or self.size < 32 or self.size % 4:
            raise ConfigError("pretrain.data needs n_images >= 1 and a size >= 32 divisible by 4")
        if self.layout not in LAYOUTS:
            raise ConfigError(f"pretrain.data.layout {self.layout!r}: known layouts are {', '.join(LAYOUTS)}")
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
