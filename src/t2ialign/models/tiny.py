"""Tiny, randomly initialised Stable Diffusion pipelines and CLIP models built from config.

They have the real architectures and file formats (diffusers' ``get_dummy_components()`` idea), load with
stock ``from_pretrained``, and run in milliseconds: for tests, and for trying a stage's plumbing on a
"real model" path without any download.
"""

from __future__ import annotations

from pathlib import Path

import torch

from t2ialign.models.load import assemble_pipeline
from t2ialign.models.tokenizer import MAX_LENGTH, build_clip_tokenizer


def _text_config(tokenizer) -> dict:
    """A one-layer, 32-wide CLIP text tower over the tokenizer's vocabulary."""
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=MAX_LENGTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_tiny_pipeline(path: str | Path, seed: int = 0, image_size: int = 32) -> Path:
    """Save a tiny StableDiffusionPipeline (VAE factor 2, latent 4 x image_size/2) to ``path``."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = build_clip_tokenizer()
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(**_text_config(tokenizer)))
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=image_size,
    )
    unet = UNet2DConditionModel(
        sample_size=image_size // 2,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    scheduler = DDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False
    )
    pipe = assemble_pipeline(vae, text_encoder, tokenizer, unet, scheduler)
    pipe.save_pretrained(path, safe_serialization=True)
    return Path(path)


def build_tiny_clip(path: str | Path, seed: int = 0, image_size: int = 32) -> Path:
    """Save a tiny CLIPModel with its CLIPProcessor (the grammar's tokenizer) to ``path``."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tokenizer = build_clip_tokenizer()
    torch.manual_seed(seed)
    model = CLIPModel(
        CLIPConfig(
            text_config=_text_config(tokenizer),
            vision_config=dict(
                image_size=image_size,
                patch_size=8,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=1,
                num_attention_heads=2,
            ),
            projection_dim=16,
        )
    )
    model.save_pretrained(path)
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
        ),
        tokenizer=tokenizer,
    )
    processor.save_pretrained(path)
    return Path(path)
