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
from t2ialign.models.embed import Embeddings, clip_fingerprint, embed_images, embed_texts
from t2ialign.reward.tower import TOWER_FILE, tower_state, with_tower


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
    """A trained reward MLP with the identity of its CLIP; ``score`` embeds and scores in batches.

    ``clip`` is the CLIP named in config.json, unchanged: CLIP score and FD_CLIP read it. ``scorer_clip``
    is the one whose image embeddings the MLP reads: the same CLIP, or, for a reward that tuned the image
    tower (``reward/tower.py``), a copy of it holding the tuned tower.
    """

    def __init__(self, mlp: RewardMLP, meta: dict, clip=None, processor=None, scorer_clip=None):
        self.mlp = mlp.eval()
        self.meta = meta
        self.clip, self.processor = clip, processor
        self.scorer_clip = scorer_clip if scorer_clip is not None else clip
        self._embeddings = None

    @property
    def tuned_tower(self) -> bool:
        return self.scorer_clip is not self.clip

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.contiguous() for k, v in self.mlp.state_dict().items()}, str(path / "model.safetensors")
        )
        if self.tuned_tower:
            save_file(tower_state(self.scorer_clip), str(path / TOWER_FILE))
        meta = {**self.meta, "tuned_image_tower": TOWER_FILE if self.tuned_tower else None}
        (path / "config.json").write_text(
            json.dumps({**meta, "t2ialign_version": __version__}, indent=2) + "\n"
        )

    def trained_modules(self) -> nn.Module:
        """What training changed: the MLP, and the tuned image tower (for digests of the reward)."""
        if not self.tuned_tower:
            return self.mlp
        return nn.ModuleDict({"mlp": self.mlp, "tower": self.scorer_clip.vision_model})

    def embeddings(self, store):
        """The run's cache of the scorer CLIP's embeddings (``models.embed.Embeddings``), made once."""
        if self._embeddings is None or self._embeddings.store is not store:
            self._embeddings = Embeddings(store, self.scorer_clip, self.processor)
        return self._embeddings

    @torch.no_grad()
    def score_store(self, store, shas: list[str], prompts: list[str], progress: bool = False) -> torch.Tensor:
        """Rewards (N,) of stored images (by sha256) with their prompts, through the run's embedding cache."""
        emb = self.embeddings(store)
        emb.ensure(shas, sorted(set(prompts)), progress)
        if not shas:
            return torch.empty(0)
        return self.score_embeddings(emb.images.get(shas), emb.texts.get(prompts))

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
        scorer = None
        if tower_file := meta.get("tuned_image_tower"):
            if not (path / tower_file).is_file():
                raise FileNotFoundError(f"{path} names a tuned image tower, {tower_file}, that is missing")
            scorer = with_tower(clip, load_file(str(path / tower_file)))
        return cls(mlp, meta, clip, processor, scorer_clip=scorer)

    @torch.no_grad()
    def score(self, prompts: list[str], images: list, batch_size: int = 256) -> torch.Tensor:
        """Rewards (N,) for N (prompt, image) pairs; images are PIL images or (H, W, 3) uint8 arrays."""
        if len(prompts) != len(images):
            raise ValueError(f"{len(prompts)} prompts but {len(images)} images")
        if self.clip is None:
            raise ValueError("this RewardModel has no CLIP attached; load it with RewardModel.load")
        img = embed_images(self.scorer_clip, self.processor, images, batch_size)
        txt = embed_texts(self.scorer_clip, self.processor, list(prompts))
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
