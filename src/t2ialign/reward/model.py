"""The reward model r_phi(x, z): an MLP on frozen CLIP embeddings of the image x and the prompt z
(paper Sec. 3.2 and footnote 4; the paper used CLIP ViT-L/14, here any local transformers CLIP).

``RewardModel.load(path).score(prompts, images)`` is the interface ImageReward's users know. Weights are
safetensors; config.json names the CLIP (id and weight fingerprint) the model was trained on, and loading it
with another CLIP is an error, since the embedding spaces of two CLIPs have nothing in common.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from t2ialign import __version__
from t2ialign.models.embed import clip_fingerprint, embed_images, embed_texts


class RewardMLP(nn.Module):
    """(image embedding, text embedding) -> scalar reward. Input features: [x, z, x * z] (B, 3D)."""

    def __init__(self, dim: int, hidden: tuple[int, ...] = (512, 256), dropout: float = 0.1):
        super().__init__()
        layers, d = [], 3 * dim
        for h in hidden:
            layers += [nn.Linear(d, h), nn.GELU(), nn.Dropout(dropout)]
            d = h
        layers.append(nn.Linear(d, 1))
        self.net = nn.Sequential(*layers)
        self.dim = dim

    def forward(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        # image_emb, text_emb: (B, D) -> (B,)
        if image_emb.shape != text_emb.shape or image_emb.shape[-1] != self.dim:
            raise ValueError(
                f"embeddings must both be (B, {self.dim}), got {tuple(image_emb.shape)} and {tuple(text_emb.shape)}"
            )
        return self.net(torch.cat([image_emb, text_emb, image_emb * text_emb], dim=-1)).squeeze(-1)


class RewardModel:
    """A trained reward MLP with the identity of its CLIP; ``score`` embeds and scores in batches."""

    def __init__(self, mlp: RewardMLP, meta: dict, clip=None, processor=None):
        self.mlp = mlp.eval()
        self.meta = meta
        self.clip, self.processor = clip, processor

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.contiguous() for k, v in self.mlp.state_dict().items()}, str(path / "model.safetensors")
        )
        (path / "config.json").write_text(
            json.dumps({**self.meta, "t2ialign_version": __version__}, indent=2) + "\n"
        )

    @classmethod
    def load(cls, path: str | Path, clip_path: str | Path | None = None) -> RewardModel:
        """Load weights and the CLIP they were trained on (``clip_path`` overrides where it is found;
        it must still be the same CLIP)."""
        from t2ialign.models.load import load_clip

        path = Path(path)
        if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
            raise FileNotFoundError(f"no reward model at {path} (needs config.json and model.safetensors)")
        meta = json.loads((path / "config.json").read_text())
        mlp = RewardMLP(meta["dim"], tuple(meta["hidden"]), meta.get("dropout", 0.0))
        mlp.load_state_dict(load_file(str(path / "model.safetensors")))
        clip_ref = clip_path if clip_path is not None else meta["clip"]["path"]
        clip, processor, _ = load_clip(clip_ref)
        check_same_clip(meta, clip)
        return cls(mlp, meta, clip, processor)

    @torch.no_grad()
    def score(self, prompts: list[str], images: list, batch_size: int = 256) -> torch.Tensor:
        """Rewards (N,) for N (prompt, image) pairs; images are PIL images or (H, W, 3) uint8 arrays."""
        if len(prompts) != len(images):
            raise ValueError(f"{len(prompts)} prompts but {len(images)} images")
        if self.clip is None:
            raise ValueError("this RewardModel has no CLIP attached; load it with RewardModel.load")
        img = embed_images(self.clip, self.processor, images, batch_size)
        txt = embed_texts(self.clip, self.processor, list(prompts))
        return self.score_embeddings(img, txt)

    @torch.no_grad()
    def score_embeddings(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        return self.mlp(image_emb, text_emb)


def check_same_clip(meta: dict, clip) -> None:
    """ValueError unless ``clip`` is the CLIP the reward model was trained on."""
    want, have = meta["clip"]["fingerprint"], clip_fingerprint(clip)
    if want != have:
        raise ValueError(
            f"this reward model was trained on CLIP {meta['clip']['model_id']} (fingerprint {want}); "
            f"the CLIP given has fingerprint {have}: embeddings of different CLIPs are not comparable"
        )
