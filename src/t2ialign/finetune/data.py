"""The fine-tuning data of Eq. 4, encoded once: D_model (generated images with their weights) and D_pre.

The VAE and the text encoder are frozen during fine-tuning (paper Sec. 4.1), so each image's VAE posterior
(mean and std of the diagonal Gaussian) and each prompt's text-encoder states are computed once and cached
as safetensors under ``RUN/finetune/cache``. A training step then only draws ``mean + std * eps`` and runs
the UNet: the same latents a loop that calls ``vae.encode(...).latent_dist.sample()`` every step draws,
without paying for the encoder each time.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from t2ialign.config import FinetuneConfig
from t2ialign.core.fingerprint import module_fingerprint
from t2ialign.core.fsutil import atomic_write
from t2ialign.finetune.losses import clamp_rewards
from t2ialign.store import Store


@dataclass
class LatentSet:
    """N examples: VAE posteriors (N, C, h, w), a text-embedding row per example, and a weight each."""

    keys: list[str]  # image sha256 (D_model) or a D_pre item id
    mean: torch.Tensor  # (N, C, h, w) float32 posterior means, before the VAE scaling factor
    std: torch.Tensor  # (N, C, h, w) float32 posterior standard deviations
    text_ids: torch.Tensor  # (N,) long: row of text_emb
    text_emb: torch.Tensor  # (T, L, H) the frozen text encoder's last hidden states per distinct text
    texts: list[str]  # (T,)
    weights: torch.Tensor  # (N,) float32: r_phi(x, z) or the label (D_model), 1 (D_pre)

    def __len__(self) -> int:
        return len(self.keys)


def pipeline_resolution(pipe) -> int:
    """The pixel size the pipeline's UNet was made for (SD v1.5: 64 * 8 = 512)."""
    return int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)


@torch.no_grad()
def encode_images(vae, images: list[np.ndarray], batch_size: int = 64, desc: str = "encode", progress=False):
    """(H, W, 3) uint8 images -> posterior (mean, std), each (N, C, h, w) float32."""
    means, stds = [], []
    for i in tqdm(range(0, len(images), batch_size), desc=desc, disable=not progress):
        x = torch.from_numpy(np.stack(images[i : i + batch_size])).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        dist = vae.encode(x.to(vae.device, vae.dtype)).latent_dist
        # contiguous: the VAE may hand back channels-last views, and the UNet's kernels (so its rounding)
        # follow the input's memory format; a cached set must give the same numbers as a fresh one
        means.append(dist.mean.float().cpu().contiguous())
        stds.append(dist.std.float().cpu().contiguous())
    return torch.cat(means).contiguous(), torch.cat(stds).contiguous()


@torch.no_grad()
def encode_texts(pipe, texts: list[str], batch_size: int = 256) -> torch.Tensor:
    """(T, L, H): the text encoder's states exactly as the pipeline conditions on them when sampling."""
    out = []
    for i in range(0, len(texts), batch_size):
        emb, _ = pipe.encode_prompt(texts[i : i + batch_size], pipe.device, 1, False)
        out.append(emb.float().cpu())
    return torch.cat(out)


def _cached_set(cache_dir: Path, what: str, identity: dict, build) -> LatentSet:
    """Load the LatentSet named by ``identity`` from the cache, or build and store it (atomically)."""
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]
    path = cache_dir / f"{what}-{key}.safetensors"
    if path.is_file():
        t = load_file(str(path))
        meta = json.loads(path.with_suffix(".json").read_text())
        return LatentSet(
            meta["keys"], t["mean"], t["std"], t["text_ids"], t["text_emb"], meta["texts"], t["weights"]
        )
    s = build()
    cache_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(
        path.with_suffix(".json"),
        json.dumps({"identity": identity, "keys": s.keys, "texts": s.texts}).encode(),
    )
    tmp = path.with_suffix(".tmp")
    tensors = {
        "mean": s.mean,
        "std": s.std,
        "text_ids": s.text_ids,
        "text_emb": s.text_emb,
        "weights": s.weights,
    }
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    tmp.replace(path)  # the tensors appear only when complete; the JSON beside them is written first
    return s


def _load_rgb(store: Store, sha256: str, size: int) -> np.ndarray:
    im = store.open_image(sha256)
    if im.size != (size, size):
        raise ValueError(
            f"image {sha256}.png is {im.size[0]}x{im.size[1]}, but the model works at {size}x{size}: "
            "D_model must be images this model generated"
        )
    return np.asarray(im)


def model_examples(
    store: Store, cfg: FinetuneConfig, reward_model=None, progress: bool = False, images=None
) -> list[dict]:
    """D_model = D_human (+ D_unlabel): images of the feedback (seen) prompts with their weight.

    weights = "reward": r_phi(x, z) of every image, labeled or not, computed once (the paper);
    weights = "labels": the mean good/bad label of labeled D_human images (skips ignored);
    weights = "uniform": 1 for every image (a control: fine-tuning on the model's own samples, no reward);
    weights = "none": 0 for every image (a control: only the D_pre term trains, at the same compute).
    top_k_per_prompt = k > 0 then keeps each prompt's k images of highest weight, min_weight those of at
    least that weight; prompt_categories keeps only prompts of those categories. ``images`` (a collection of sha256s, or None for all) keeps only those images: one
    round of ``t2ialign loop``.
    """
    from t2ialign.reward.data import labeled_images

    seen = {
        p["text"]
        for p in store.list_prompts(split="seen")
        if not cfg.prompt_categories or p["category"] in cfg.prompt_categories
    }
    keep = None if images is None else set(images)

    def kept(r) -> bool:
        return r["prompt"] in seen and (keep is None or r["sha256"] in keep)

    if cfg.weights == "labels":
        items = [
            {"sha256": r["sha256"], "prompt": r["prompt"], "weight": float(r["y"])}
            for r in labeled_images(store, "human")
            if kept(r)
        ]
    else:
        roles = ("human", "unlabeled") if cfg.use_unlabeled else ("human",)
        rows = [r for role in roles for r in store.list_images(role=role) if kept(r)]
    if cfg.weights in ("uniform", "none"):
        w = 1.0 if cfg.weights == "uniform" else 0.0
        items = [{"sha256": r["sha256"], "prompt": r["prompt"], "weight": w} for r in rows]
    elif cfg.weights == "reward":
        if reward_model is None:
            raise ValueError("weights = 'reward' needs a trained reward model")
        if (reward_model.meta.get("config") or {}).get("objective") == "bradley_terry":
            raise ValueError(
                "weights = 'reward' needs a reward of P(good) (objective mse, Eq. 1): a Bradley-Terry reward "
                "only ranks images, so its values are no weights; use it for rejection sampling, or train "
                "DPO on the pairs themselves (`t2ialign dpo RUN --pairs preferences`)"
            )
        shas, prompts = [r["sha256"] for r in rows], [r["prompt"] for r in rows]
        rewards = reward_model.score_store(store, shas, prompts, progress)
        rewards = clamp_rewards(torch.as_tensor(rewards, dtype=torch.float32), *cfg.reward_range)
        items = [
            {"sha256": r["sha256"], "prompt": r["prompt"], "weight": float(w)}
            for r, w in zip(rows, rewards.tolist(), strict=True)
        ]
    if cfg.top_k_per_prompt:
        items = top_k_per_prompt(items, cfg.top_k_per_prompt)
    items = [r for r in items if r["weight"] >= cfg.min_weight]
    items.sort(key=lambda r: r["sha256"])
    if not items:
        raise ValueError(
            "D_model is empty: generate images of seen prompts (role human"
            + (", unlabeled" if cfg.use_unlabeled and cfg.weights != "labels" else "")
            + ")"
            + (" and label them" if cfg.weights == "labels" else "")
            + " before fine-tuning"
        )
    return items


def top_k_per_prompt(items: list[dict], k: int) -> list[dict]:
    """Each prompt's k items of highest weight (ties broken by sha256, so the choice is reproducible)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    by_prompt: dict[str, list[dict]] = {}
    for r in items:
        by_prompt.setdefault(r["prompt"], []).append(r)
    return [
        r
        for group in by_prompt.values()
        for r in sorted(group, key=lambda r: (-r["weight"], r["sha256"]))[:k]
    ]


def images_digest(shas) -> str:
    """Which images a D_model held, in 16 hex digits (order-free): the fine-tune's report records it, so a
    run reused by name can be told apart from one trained on other images."""
    return hashlib.sha256("\n".join(sorted(shas)).encode()).hexdigest()[:16]


def build_model_set(store: Store, pipe, items: list[dict], progress: bool = False) -> LatentSet:
    """Encode D_model once (cached by VAE, text encoder, images, prompts and weights)."""
    size = pipeline_resolution(pipe)
    texts = sorted({r["prompt"] for r in items})
    identity = {
        "vae": module_fingerprint(pipe.vae),
        "text_encoder": module_fingerprint(pipe.text_encoder),
        "items": hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest(),
    }

    def build() -> LatentSet:
        images = [_load_rgb(store, r["sha256"], size) for r in items]
        mean, std = encode_images(pipe.vae, images, desc="encode D_model", progress=progress)
        row = {t: i for i, t in enumerate(texts)}
        return LatentSet(
            keys=[r["sha256"] for r in items],
            mean=mean,
            std=std,
            text_ids=torch.tensor([row[r["prompt"]] for r in items]),
            text_emb=encode_texts(pipe, texts),
            texts=texts,
            weights=torch.tensor([r["weight"] for r in items], dtype=torch.float32),
        )

    return _cached_set(store.run_dir / "finetune" / "cache", "d_model", identity, build)


def pretrain_pairs(
    source: str, n: int, size: int, seed: int, layout: str = "random", captions: dict | None = None
) -> list[tuple[str, np.ndarray, str]]:
    """D_pre as (key, image, caption): the world's renders (placed by ``layout``, captioned with
    ``captions``, ``PretrainDataset``'s caption_rates and count_error_rate; the defaults when None), or a
    local image-caption folder / Parquet file."""
    if source == "world":
        from t2ialign.world.dataset import PretrainDataset

        ds = PretrainDataset(n, seed=seed, size=size, layout=layout, **(captions or {}))
        out = []
        for i in range(n):
            item = ds[i]
            image = (
                ((item["pixel_values"].permute(1, 2, 0) + 1.0) * 127.5).round().clamp(0, 255).byte().numpy()
            )
            key = f"world:{seed}:{size}:{i}" if layout == "random" else f"world:{layout}:{seed}:{size}:{i}"
            out.append((key, image, item["caption"]))
        return out
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"pretrain_data {source!r}: no such file or folder (use 'world' for renders)")
    if path.is_dir():
        captions = path / "captions.jsonl"
        if not captions.is_file():
            raise ValueError(f"{path} has no captions.jsonl ({{'file': ..., 'text': ...}} per line)")
        rows = [json.loads(line) for line in captions.read_text().splitlines() if line.strip()]
        pairs = [(r["file"], (path / r["file"]).read_bytes(), r["text"]) for r in rows]
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path, columns=["image", "text"]).to_pylist()
        pairs = [
            (
                f"{path.name}:{i}",
                r["image"]["bytes"] if isinstance(r["image"], dict) else r["image"],
                r["text"],
            )
            for i, r in enumerate(table)
        ]
    else:
        raise ValueError(f"pretrain_data {source!r} must be 'world', a folder or a .parquet file")
    if not pairs:
        raise ValueError(f"pretrain_data {source!r} holds no examples")
    pairs = pairs[:n]
    return [
        (key, _square(Image.open(io.BytesIO(data)).convert("RGB"), size), text) for key, data, text in pairs
    ]


def _square(im: Image.Image, size: int) -> np.ndarray:
    """Resize the short side to ``size`` and centre-crop (what SD's training scripts do)."""
    w, h = im.size
    s = size / min(w, h)
    im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
    left, top = (im.size[0] - size) // 2, (im.size[1] - size) // 2
    return np.asarray(im.crop((left, top, left + size, top + size)))


def build_pretrain_set(store: Store, pipe, cfg: FinetuneConfig, progress: bool = False) -> LatentSet:
    """Encode D_pre once (cached by VAE, text encoder and source). The world's renders are placed and
    captioned as the base model's own pre-training data were (its ``t2ialign.json``): D_pre is the base's
    pre-training distribution, as in the paper."""
    size = pipeline_resolution(pipe)
    identity = {
        "vae": module_fingerprint(pipe.vae),
        "text_encoder": module_fingerprint(pipe.text_encoder),
        "source": cfg.pretrain_data,
        "source_stamp": _stamp(cfg.pretrain_data),
        "n": cfg.pretrain_images,
        "size": size,
        "seed": cfg.seed,
    }
    layout, captions = "random", None
    if cfg.pretrain_data == "world":
        data = world_data(cfg.pretrained_model_name_or_path)
        layout, captions = data.get("layout", "random"), _captions_of(data)
    if layout != "random":  # absent: random, so the caches made before layouts existed stay valid
        identity["layout"] = layout
    if captions is not None and captions != _default_captions():  # absent: the defaults, as before
        identity["captions"] = captions

    def build() -> LatentSet:
        pairs = pretrain_pairs(cfg.pretrain_data, cfg.pretrain_images, size, cfg.seed, layout, captions)
        mean, std = encode_images(pipe.vae, [p[1] for p in pairs], desc="encode D_pre", progress=progress)
        texts = sorted({p[2] for p in pairs})
        row = {t: i for i, t in enumerate(texts)}
        return LatentSet(
            keys=[p[0] for p in pairs],
            mean=mean,
            std=std,
            text_ids=torch.tensor([row[p[2]] for p in pairs]),
            text_emb=encode_texts(pipe, texts),
            texts=texts,
            weights=torch.ones(len(pairs)),
        )

    return _cached_set(store.run_dir / "finetune" / "cache", "d_pre", identity, build)


def world_data(model: str | None, _depth: int = 0) -> dict:
    """The ``[pretrain.data]`` section that the world pipeline ``model`` was pre-trained on: its layout and
    caption rates, from ``pretrain_config.data`` in its ``t2ialign.json``. A pipeline fine-tuned here
    (``t2ialign_finetune.json``, ``_dpo``, ``_rl``) has the data of the model it was tuned from (the
    stamp's absolute ``source_folder``; stamps made before it existed name the source as the config gave
    it, relative to the run's cwd). Empty when neither says (a model from elsewhere)."""
    from t2ialign.models.load import resolve_sd_path

    folder = resolve_sd_path(model)[0]
    meta = folder / "t2ialign.json"
    if meta.is_file():
        return json.loads(meta.read_text()).get("pretrain_config", {}).get("data", {})
    for stage in ("finetune", "dpo", "rl"):
        path = folder / f"t2ialign_{stage}.json"
        stamp = json.loads(path.read_text()) if path.is_file() else {}
        source = stamp.get("source_folder") or stamp.get("config", {}).get("pretrained_model_name_or_path")
        if source is not None and Path(source).is_dir() and _depth < 20:
            return world_data(source, _depth + 1)
    return {}


def world_layout(model: str | None) -> str:
    """How the world pipeline ``model`` was pre-trained to place its shapes (:func:`world_data`); "random"
    when it does not say (worlds v1-v6, a model from elsewhere)."""
    return world_data(model).get("layout", "random")


def _captions_of(data: dict) -> dict:
    """The caption rates and count error rate of a world's ``[pretrain.data]`` (:func:`world_data`), the
    arguments of ``PretrainDataset``; the web-like defaults where it states none (v4 and older weighed
    caption templates instead)."""
    return {k: data.get(k, v) for k, v in _default_captions().items()}


def _default_captions() -> dict:
    from t2ialign.world.dataset import DEFAULT_CAPTION_RATES, DEFAULT_COUNT_ERROR_RATE

    return {"caption_rates": dict(DEFAULT_CAPTION_RATES), "count_error_rate": DEFAULT_COUNT_ERROR_RATE}


def _stamp(source: str) -> list | None:
    """Size and mtime of a file source (or a folder's captions.jsonl): a changed source is re-encoded."""
    if source == "world":
        return None
    p = Path(source)
    p = p / "captions.jsonl" if p.is_dir() else p
    st = p.stat()
    return [st.st_size, st.st_mtime_ns]
