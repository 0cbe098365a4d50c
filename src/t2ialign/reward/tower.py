"""Beyond the paper's frozen embedding: a reward that also fine-tunes the CLIP image tower on the labels.

The paper's r_phi is an MLP on frozen CLIP embeddings (Sec. 3.2). A frozen embedding can only score what it
holds, and a CLIP trained on web-like captions holds little about counts (the world CLIP's linear probe:
``benchmarks/reward_probes.py``). ImageReward (Xu et al. 2023) fine-tunes its BLIP on the preferences,
PickScore (Kirstain et al. 2023) the whole CLIP; here the last ``layers`` transformer layers of the CLIP's
image tower, its final layer norm and its projection are trained together with the MLP on the same loss
(Eq. 3), and the text tower stays frozen, so the prompts' cached embeddings stay valid.

The tuned tower is saved beside the MLP as ``image_tower.safetensors`` (only the tensors that changed);
``RewardModel.load`` puts them into a copy of the CLIP named in config.json, so the reward still refuses any
other CLIP, and it scores with the tuned copy while CLIP score and FD_CLIP keep the original.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F

from t2ialign.models.embed import clip_features, pixel_values

TOWER_FILE = "image_tower.safetensors"
_TOWER_PREFIXES = ("vision_model.", "visual_projection.")


def tunable_copy(clip, layers: int):
    """A copy of ``clip`` whose last ``layers`` image-tower layers (-1: the whole tower), final layer norm
    and projection require gradients; all else is frozen. The original is left untouched."""
    n_layers = len(clip.vision_model.encoder.layers)
    if layers == 0 or layers < -1 or layers > n_layers:
        raise ValueError(f"image_tower.layers must be -1 (all) or 1..{n_layers} for this CLIP, got {layers}")
    tuned = copy.deepcopy(clip)
    tuned.requires_grad_(False)
    if layers == -1:
        tuned.vision_model.requires_grad_(True)
    else:
        for layer in tuned.vision_model.encoder.layers[n_layers - layers :]:
            layer.requires_grad_(True)
        tuned.vision_model.post_layernorm.requires_grad_(True)
    tuned.visual_projection.requires_grad_(True)
    return tuned


def image_embeddings(clip, processor, images: list) -> torch.Tensor:
    """(B, D) L2-normalized image embeddings with gradients (``models.embed.embed_images`` has none)."""
    feats = clip_features(clip.get_image_features(pixel_values=pixel_values(processor, images)))
    return F.normalize(feats.float(), dim=-1)


def tower_state(clip) -> dict[str, torch.Tensor]:
    """The image tower's tensors (vision model and projection), to save beside the MLP."""
    return {k: v.detach().contiguous() for k, v in clip.state_dict().items() if k.startswith(_TOWER_PREFIXES)}


def with_tower(clip, tensors: dict[str, torch.Tensor]):
    """A frozen, eval-mode copy of ``clip`` holding the saved image-tower tensors."""
    unknown = [k for k in tensors if not k.startswith(_TOWER_PREFIXES)]
    if unknown:
        raise ValueError(f"{TOWER_FILE} holds tensors outside the image tower, e.g. {unknown[0]!r}")
    tuned = copy.deepcopy(clip)
    missing = [k for k in tower_state(clip) if k not in tensors]
    if missing:
        raise ValueError(
            f"{TOWER_FILE} lacks {len(missing)} image-tower tensors of this CLIP, e.g. {missing[0]!r}"
        )
    tuned.load_state_dict(tensors, strict=False)
    return tuned.requires_grad_(False).eval()


class TowerEmbedder(nn.Module):
    """Training-time image embeddings through the tunable copy: ``embed(shas)`` reads the images from the
    store each step (only B images in memory, whatever the data set's size)."""

    def __init__(self, clip, processor, store, layers: int):
        super().__init__()
        self.clip = tunable_copy(clip, layers)
        self.processor, self.store = processor, store

    def embed(self, shas: list[str]) -> torch.Tensor:
        return image_embeddings(self.clip, self.processor, [self.store.image_array(s) for s in shas])
