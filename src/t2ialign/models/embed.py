"""CLIP embeddings of images and texts, computed once in batches and cached as safetensors.

The reward model reads frozen CLIP embeddings (paper Sec. 3.2, footnote 4), so every stage after
labeling reuses one cache per CLIP: ``RUN/embeddings/<clip key>/{images,texts}.safetensors``, each a
(N, D) float tensor with a JSON list of keys (image sha256 or text) beside it.

The cache has one writer. Under ``torchrun`` only rank 0 may add to it (``EmbeddingCache.add`` refuses
elsewhere, rather than let two processes rewrite one file); ``Embeddings.ensure_shared`` has every process
embed its share of the missing images into a shard file of its own, which rank 0 merges.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch.nn import functional as F
from tqdm.auto import tqdm

from t2ialign.core import dist
from t2ialign.core.fingerprint import module_fingerprint
from t2ialign.core.fsutil import atomic_write
from t2ialign.store import Store

EMBED_CHUNK = 1024  # images read, embedded and added to the cache at a time


def clip_features(out) -> torch.Tensor:
    """The projected embedding from ``get_image_features`` / ``get_text_features``: transformers 5 returns
    a ModelOutput (its ``pooler_output``), 4.x a tensor."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def clip_fingerprint(model) -> str:
    """Identifies a CLIP by its architecture and weights: embeddings of two CLIPs never mix."""
    return module_fingerprint(model)


def _fast_pixels(processor, images: list) -> torch.Tensor | None:
    """Pixel values without the processor's per-image PIL pipeline, when that pipeline would only rescale
    and normalize: RGB images already at the CLIP's crop size (the world's 64x64 images). Else None."""
    ip = getattr(processor, "image_processor", processor)
    crop = getattr(ip, "crop_size", None)
    try:
        h, w = (crop["height"], crop["width"]) if crop is not None else (None, None)
    except (KeyError, TypeError):
        return None
    arrays = [np.asarray(im.convert("RGB") if isinstance(im, Image.Image) else im) for im in images]
    if h is None or any(a.shape != (h, w, 3) or a.dtype != np.uint8 for a in arrays):
        return None
    if not (getattr(ip, "do_rescale", False) and getattr(ip, "do_normalize", False)):
        return None
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() * float(
        ip.rescale_factor
    )  # (B, 3, H, W)
    mean = torch.tensor(ip.image_mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(ip.image_std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - mean) / std


def pixel_values(processor, images: list) -> torch.Tensor:
    """(B, 3, H, W) CLIP input of PIL images or (H, W, 3) uint8 arrays, as the processor makes it."""
    pixels = _fast_pixels(processor, images)
    if pixels is None:  # other sizes: the processor resizes and crops as the CLIP expects
        pil = [im if isinstance(im, Image.Image) else Image.fromarray(np.asarray(im)) for im in images]
        pixels = processor(images=pil, return_tensors="pt")["pixel_values"]
    return pixels


@torch.no_grad()
def embed_images(model, processor, images: list, batch_size: int = 256) -> torch.Tensor:
    """(N, D) L2-normalized image embeddings; images are PIL images or (H, W, 3) uint8 arrays."""
    out = []
    for i in range(0, len(images), batch_size):
        pixels = pixel_values(processor, images[i : i + batch_size])
        feats = clip_features(model.get_image_features(pixel_values=pixels))
        out.append(F.normalize(feats.float(), dim=-1))
    return torch.cat(out) if out else torch.empty(0, model.config.projection_dim)


@torch.no_grad()
def embed_texts(model, processor, texts: list[str], batch_size: int = 1024) -> torch.Tensor:
    """(N, D) L2-normalized text embeddings."""
    out = []
    for i in range(0, len(texts), batch_size):
        enc = processor(text=texts[i : i + batch_size], return_tensors="pt", padding=True, truncation=True)
        feats = clip_features(
            model.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        )
        out.append(F.normalize(feats.float(), dim=-1))
    return torch.cat(out) if out else torch.empty(0, model.config.projection_dim)


class EmbeddingCache:
    """A key -> embedding table on disk for one CLIP (images by sha256, texts by text)."""

    def __init__(self, root: str | Path, fingerprint: str, kind: str):
        if kind not in ("images", "texts"):
            raise ValueError(f"kind must be images or texts, got {kind!r}")
        self.dir = Path(root) / fingerprint
        self.tensor_path, self.keys_path = self.dir / f"{kind}.safetensors", self.dir / f"{kind}.json"
        self.keys: list[str] = []
        self.table = torch.empty(0)
        if self.tensor_path.is_file() and self.keys_path.is_file():
            self.keys = json.loads(self.keys_path.read_text())
            self.table = load_file(str(self.tensor_path))["embeddings"]
            if len(self.table) < len(self.keys):
                raise ValueError(
                    f"embedding cache {self.dir} is corrupt ({len(self.keys)} keys, {len(self.table)} rows)"
                )
            self.table = self.table[: len(self.keys)]  # rows past the keys: a crash between the two writes
        self.index = {k: i for i, k in enumerate(self.keys)}

    def missing(self, keys: list[str]) -> list[str]:
        return [k for k in dict.fromkeys(keys) if k not in self.index]

    def add(self, keys: list[str], embeddings: torch.Tensor) -> None:
        """Append new rows and rewrite the cache (tensor first, keys last: keys never name absent rows)."""
        if len(keys) != len(embeddings):
            raise ValueError(f"{len(keys)} keys but {len(embeddings)} embeddings")
        if not keys:
            return
        if not dist.is_main():
            raise RuntimeError(
                f"process {dist.rank()} of {dist.world_size()} tried to write the embedding cache {self.dir}: "
                "only rank 0 writes it (use Embeddings.ensure_shared under torchrun)"
            )
        self.table = (
            embeddings.float() if not len(self.table) else torch.cat([self.table, embeddings.float()])
        )
        for k in keys:
            self.index[k] = len(self.keys)
            self.keys.append(k)
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.tensor_path.with_suffix(".tmp")
        save_file({"embeddings": self.table.contiguous()}, str(tmp))
        tmp.replace(self.tensor_path)
        atomic_write(self.keys_path, json.dumps(self.keys).encode())

    def get(self, keys: list[str]) -> torch.Tensor:
        missing = self.missing(keys)
        if missing:
            raise KeyError(
                f"{len(missing)} keys are not embedded yet (e.g. {missing[0]!r}); run `t2ialign reward embed`"
            )
        return self.table[[self.index[k] for k in keys]]


class Embeddings:
    """Image and text embeddings of one CLIP for one run, computed on demand and cached on disk."""

    def __init__(self, store: Store, clip, processor):
        self.store, self.clip, self.processor = store, clip, processor
        self.root, self.fingerprint = store.run_dir / "embeddings", clip_fingerprint(clip)
        self._open()

    def _open(self) -> None:
        self.images = EmbeddingCache(self.root, self.fingerprint, "images")
        self.texts = EmbeddingCache(self.root, self.fingerprint, "texts")

    def ensure(self, shas: list[str], texts: list[str], progress: bool = False) -> None:
        missing = self.images.missing(shas)
        for i in tqdm(range(0, len(missing), EMBED_CHUNK), desc="embed images", disable=not progress):
            chunk = missing[i : i + EMBED_CHUNK]
            pil = [self.store.open_image(s) for s in chunk]
            self.images.add(chunk, embed_images(self.clip, self.processor, pil))
        missing = self.texts.missing(texts)
        if missing:
            self.texts.add(missing, embed_texts(self.clip, self.processor, missing))

    def ensure_shared(self, shas: list[str], texts: list[str], progress: bool = False) -> None:
        """``ensure`` of the images in sha256 order, split over the processes of a torchrun job
        (collective: every process calls it with the same keys); just ``ensure`` in one process.

        Each process embeds every world_size-th chunk of the missing images, in the chunks ``ensure``
        would use (so each embedding has the bits one process gives it), into
        ``<cache>/shards/images.rank<R>.safetensors``; after a barrier rank 0 adds them to the cache in
        ``ensure``'s order, embeds the missing texts (few, and cheap) and removes the shards; after a
        second barrier every process reads the merged cache.
        """
        # In sha256 order: the chunks, and so each embedding's bits, then depend on which images are
        # missing, not on the order of their rows (several processes insert rows interleaved).
        shas = sorted(set(shas))
        if dist.world_size() == 1:
            return self.ensure(shas, texts, progress)
        missing = self.images.missing(shas)
        dist.check_same(missing, "the images to embed")
        chunks = dist.shard(missing, EMBED_CHUNK)  # the chunks of ``ensure``, every world_size-th one
        shard_dir = self.images.dir / "shards"
        shard_dir.mkdir(parents=True, exist_ok=True)
        _save_shard(
            shard_dir / f"images.rank{dist.rank()}",
            [k for chunk in chunks for k in chunk],
            self._embed_chunks(chunks, progress),
        )
        dist.barrier()  # every shard is written
        if dist.is_main():
            rows: dict[str, torch.Tensor] = {}
            for r in range(dist.world_size()):
                rows.update(_load_shard(shard_dir / f"images.rank{r}"))
            if set(rows) != set(missing):
                raise RuntimeError(f"the shards in {shard_dir} do not hold exactly the missing images")
            if missing:
                self.images.add(missing, torch.stack([rows[k] for k in missing]))
            self.ensure([], texts, progress)
            for f in shard_dir.glob("images.rank*"):
                f.unlink()
        dist.barrier()  # the cache is whole
        self._open()

    def _embed_chunks(self, chunks: list[list[str]], progress: bool) -> torch.Tensor:
        """Embeddings of stored images, one ``embed_images`` call per chunk, as ``ensure`` makes them."""
        out = [
            embed_images(self.clip, self.processor, [self.store.open_image(s) for s in chunk])
            for chunk in tqdm(chunks, desc="embed images", disable=not progress)
        ]
        return torch.cat(out) if out else torch.empty(0, self.clip.config.projection_dim)


def _save_shard(stem: Path, keys: list[str], embeddings: torch.Tensor) -> None:
    """One process's embeddings (tensor first, keys last, as the cache does)."""
    save_file({"embeddings": embeddings.float().contiguous()}, f"{stem}.safetensors")
    atomic_write(Path(f"{stem}.json"), json.dumps(keys).encode())


def _load_shard(stem: Path) -> dict[str, torch.Tensor]:
    keys = json.loads(Path(f"{stem}.json").read_text())
    table = load_file(f"{stem}.safetensors")["embeddings"]
    if len(table) != len(keys):
        raise RuntimeError(f"embedding shard {stem} has {len(keys)} keys but {len(table)} rows")
    return dict(zip(keys, table, strict=True))
