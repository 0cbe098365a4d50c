"""``t2ialign pretrain``: the shapes world's own CLIP and Stable Diffusion, trained on D_pre.

Stages, each resumable from its newest checkpoint (same config required) and skipped once its output
is complete:

1. tokenizer  a CLIP BPE built from the grammar (``models.tokenizer``)
2. data       the pool: ``data.n_images`` renders, cached as uint8 (``data/images.npy``)
3. clip       a transformers ``CLIPModel`` trained contrastively on (render, web-like caption)
4. vae        a diffusers ``AutoencoderKL``, factor 4 (64x64x3 -> 4x16x16), trained on crops
5. latents    the pool encoded once (posterior means, fp16) and every caption's text embedding
6. unet       a diffusers ``UNet2DConditionModel`` (epsilon prediction, EMA) on the cached latents
7. assemble   ``pipeline/`` (a stock ``StableDiffusionPipeline``) and ``clip/`` (``CLIPModel`` +
              ``CLIPProcessor``), both ``save_pretrained`` safetensors

Every step's data and noise come from a generator seeded by (stage, seed, step), so a resumed stage
computes exactly what an uninterrupted one would.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from t2ialign import __version__
from t2ialign.config import PretrainConfig, PretrainDataConfig, to_dict
from t2ialign.core.checkpoint import (
    CheckpointError,
)
from t2ialign.core.fsutil import atomic_write, publish_dir
from t2ialign.core.seeds import stable_seed
from t2ialign.core.training import TrainState, fit
from t2ialign.models.embed import clip_features
from t2ialign.models.load import assemble_pipeline, strip_local_paths
from t2ialign.models.tokenizer import MAX_LENGTH, build_clip_tokenizer, grammar_corpus
from t2ialign.world import vocab
from t2ialign.world.dataset import caption_for, web_caption
from t2ialign.world.prompts import PromptSpec
from t2ialign.world.render import render

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's normalization, kept for familiarity
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _done(path: Path, config: dict | None = None) -> bool:
    """Whether a stage's output is complete; with ``config``, refuses one made with another config."""
    if not (path / "DONE").is_file():
        return False
    if config is not None and json.loads((path / "DONE").read_text()).get("config") != config:
        raise CheckpointError(
            f"{path} was made with another config; use another --out, or delete {path} to redo it"
        )
    return True


def _mark_done(path: Path, info: dict) -> None:
    atomic_write(path / "DONE", (json.dumps(info, indent=1) + "\n").encode())


# --- the pool --------------------------------------------------------------------------------------------


class Pool:
    """The rendered images (N, H, W, 3) uint8 and their full scenes, with seeded web-like captions."""

    def __init__(self, root: Path, data: PretrainDataConfig):
        self.images = np.load(root / "images.npy", mmap_mode="r")
        self.scenes = [PromptSpec(*row) for row in json.loads((root / "scenes.json").read_text())]
        self.data = data
        self._fixed: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self.scenes)

    def caption(self, i: int, rng: np.random.Generator) -> str:
        """Image i's caption: its own fixed one (seeded by the pool seed and i), or a fresh draw from rng."""
        d = self.data
        if not d.fixed_captions:
            return web_caption(self.scenes[i], rng, d.caption_rates, d.count_error_rate)
        if i not in self._fixed:
            own = np.random.default_rng(stable_seed("pool-caption", d.seed, i))
            self._fixed[i] = web_caption(self.scenes[i], own, d.caption_rates, d.count_error_rate)
        return self._fixed[i]

    def batch(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(indices, images (n, H, W, 3) uint8, captions) drawn with rng."""
        idx = np.sort(rng.integers(len(self), size=n))
        captions = [self.caption(int(i), rng) for i in idx]
        return idx, np.asarray(self.images[idx]), captions


def build_pool(cfg: PretrainConfig, root: Path, progress: bool) -> None:
    """Render the pool once (uniform scenes over every shape, unseen objects included)."""
    want = {"n_images": cfg.data.n_images, "size": cfg.data.size, "seed": cfg.data.seed}
    if cfg.data.layout != "random":  # absent: random, as in every pool made before layouts existed
        want["layout"] = cfg.data.layout
    if _done(root):
        have = json.loads((root / "DONE").read_text())
        if have != want:
            raise ValueError(f"{root} holds another pool ({have}); use another --out or delete it")
        return
    root.mkdir(parents=True, exist_ok=True)
    n, s = cfg.data.n_images, cfg.data.size
    images = np.lib.format.open_memmap(root / "images.npy", mode="w+", dtype=np.uint8, shape=(n, s, s, 3))
    scenes = []
    for i in tqdm(range(n), desc="render pool", disable=not progress):
        rng = np.random.default_rng(stable_seed("pool", cfg.data.seed, i))
        scene = PromptSpec(
            shape=vocab.values("shape")[rng.integers(len(vocab.SHAPES))],
            count=int(rng.integers(vocab.MIN_COUNT, vocab.MAX_COUNT + 1)),
            color=vocab.values("color")[rng.integers(len(vocab.COLORS))],
            background=vocab.values("background")[rng.integers(len(vocab.BACKGROUNDS))],
        )
        seed = stable_seed("pool-image", cfg.data.seed, i)
        images[i] = render(scene, seed=seed, size=s, layout=cfg.data.layout).image
        scenes.append([scene.shape, scene.count, scene.color, scene.background])
    images.flush()
    del images
    atomic_write(root / "scenes.json", json.dumps(scenes).encode())
    _mark_done(root, want)


# --- a resumable training loop ---------------------------------------------------------------------------


def train_loop(
    name: str,
    module: nn.Module,
    loss_fn: Callable[[int], torch.Tensor],
    *,
    steps: int,
    lr: float,
    warmup: int,
    weight_decay: float,
    root: Path,
    config: dict,
    checkpointing_steps: int,
    keep: int,
    ema_decay: float | None = None,
    schedule: str = "cosine",
    progress: bool = True,
    snapshot: Callable[[int], None] | None = None,
    snapshot_steps: int = 0,
) -> tuple[nn.Module, list[float]]:
    """AdamW with warm-up + cosine, gradient clipping at 1, optional EMA, checkpoints every N steps
    (``core.training.fit``).

    ``loss_fn(step)`` must draw its data and noise from the step alone. Resumes from the newest checkpoint
    under ``root`` (refusing one made with another config). Every ``snapshot_steps`` steps,
    ``snapshot(step)`` is called with the module holding its EMA weights (for a learning curve), then
    training goes on with the raw ones. Returns the module (its EMA weights if EMA is on) and the loss
    history of this call.
    """
    from diffusers.training_utils import EMAModel

    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    ema = EMAModel(params, decay=ema_decay, use_ema_warmup=True, power=0.75) if ema_decay else None
    state = TrainState(module, opt, ema, config=config, root=root, keep=keep)
    losses = fit(
        state,
        loss_fn,
        name=name,
        steps=steps,
        lr=lr,
        warmup=warmup,
        schedule=schedule,
        start=state.resume_latest(name),
        checkpointing_steps=checkpointing_steps,
        snapshot=snapshot,
        snapshot_steps=snapshot_steps,
        progress=progress,
    )
    return state.finish(), losses


# --- CLIP ------------------------------------------------------------------------------------------------


def make_clip(cfg: PretrainConfig, tokenizer):
    from transformers import CLIPConfig, CLIPModel

    c = cfg.clip
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": c.text_hidden,
            "intermediate_size": 4 * c.text_hidden,
            "num_hidden_layers": c.text_layers,
            "num_attention_heads": c.heads,
            "max_position_embeddings": MAX_LENGTH,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            "projection_dim": c.projection_dim,
        },
        vision_config={
            "image_size": cfg.data.size,
            "patch_size": c.patch_size,
            "hidden_size": c.vision_hidden,
            "intermediate_size": 4 * c.vision_hidden,
            "num_hidden_layers": c.vision_layers,
            "num_attention_heads": c.heads,
            "projection_dim": c.projection_dim,
        },
        projection_dim=c.projection_dim,
    )
    torch.manual_seed(cfg.seed)
    return CLIPModel(config)


def clip_pixels(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) normalized as CLIPImageProcessor does."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def soft_clip_loss(logits_per_image: torch.Tensor, captions: list[str]) -> torch.Tensor:
    """Symmetric contrastive loss whose targets share mass among identical captions in the batch.

    A batch of web-like captions repeats itself ("circle" for many different circles); plain CLIP would
    push those apart as negatives. logits_per_image: (B, B), image i vs caption j.
    """
    ids = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    key = torch.tensor([ids[c] for c in captions])
    same = (key[:, None] == key[None, :]).float()
    targets = same / same.sum(dim=1, keepdim=True)
    loss_i = -(targets * F.log_softmax(logits_per_image, dim=1)).sum(dim=1).mean()
    loss_t = -(targets * F.log_softmax(logits_per_image.t(), dim=1)).sum(dim=1).mean()
    return 0.5 * (loss_i + loss_t)


class _Tokens:
    """Tokenization cache: the grammar has a few thousand distinct captions."""

    def __init__(self, tokenizer):
        self.tokenizer, self.cache = tokenizer, {}

    def __call__(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        missing = [c for c in dict.fromkeys(captions) if c not in self.cache]
        if missing:
            enc = self.tokenizer(
                missing, padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="pt"
            )
            for i, c in enumerate(missing):
                self.cache[c] = (enc.input_ids[i], enc.attention_mask[i])
        return torch.stack([self.cache[c][0] for c in captions]), torch.stack(
            [self.cache[c][1] for c in captions]
        )


def clip_zero_shot(model, tokenizer, n: int = 500, seed: int = 0, layout: str = "random") -> dict[str, float]:
    """Zero-shot accuracy per attribute on fresh renders in the world's layout: the image against one
    caption per value of the attribute ("Two circles" vs "Three circles" ..., "A red colored circle" vs
    ..., the plain object name for shapes), other named attributes true."""
    tokens = _Tokens(tokenizer)
    rng = np.random.default_rng(stable_seed("clip-zero-shot", seed))
    hits = {k: 0 for k in vocab.ATTRIBUTES}
    model.eval()
    with torch.no_grad():
        for i in range(n):
            scene = PromptSpec(
                shape=vocab.values("shape")[rng.integers(len(vocab.SHAPES))],
                count=int(rng.integers(1, 6)),
                color=vocab.values("color")[rng.integers(len(vocab.COLORS))],
                background=vocab.values("background")[rng.integers(len(vocab.BACKGROUNDS))],
            )
            image = render(scene, seed=stable_seed("clip-zero-shot-image", seed, i), layout=layout).image
            img_emb = F.normalize(
                clip_features(model.get_image_features(pixel_values=clip_pixels(image[None]))), dim=-1
            )
            for kind in vocab.ATTRIBUTES:
                values = vocab.values(kind)
                if kind == "shape":
                    texts = [caption_for(PromptSpec(v, count=scene.count), "plain") for v in values]
                else:
                    texts = [PromptSpec(scene.shape, **{kind: v}).text() for v in values]
                ids, mask = tokens(texts)
                txt = F.normalize(
                    clip_features(model.get_text_features(input_ids=ids, attention_mask=mask)), dim=-1
                )
                hits[kind] += int(values[int((img_emb @ txt.t()).argmax())] == getattr(scene, kind))
    return {k: round(v / n, 4) for k, v in hits.items()}


# --- VAE and UNet ----------------------------------------------------------------------------------------


def make_vae(cfg: PretrainConfig):
    from diffusers import AutoencoderKL

    n = len(cfg.vae.block_out_channels)
    torch.manual_seed(cfg.seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=cfg.vae.block_out_channels,
        layers_per_block=1,
        latent_channels=cfg.vae.latent_channels,
        norm_num_groups=min(cfg.vae.block_out_channels[0], 16),
        sample_size=cfg.data.size,
        mid_block_add_attention=False,  # fully convolutional: trains on crops, decodes whole images
    )


def make_unet(cfg: PretrainConfig, latent_size: int):
    from diffusers import UNet2DConditionModel

    u = cfg.unet
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in u.cross_attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(u.cross_attention))
    torch.manual_seed(cfg.seed)
    return UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=cfg.vae.latent_channels,
        out_channels=cfg.vae.latent_channels,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=u.block_out_channels,
        layers_per_block=u.layers_per_block,
        attention_head_dim=u.attention_head_dim,
        cross_attention_dim=cfg.clip.text_hidden,
        norm_num_groups=min(u.block_out_channels[0], 32),
    )


def noise_scheduler(prediction_type: str = "epsilon", zero_terminal_snr: bool = False):
    """Stable Diffusion's training schedule (scaled-linear betas, 1,000 steps).

    With ``zero_terminal_snr`` the betas are rescaled so that the last step is pure noise (Lin et al. 2024,
    "Common Diffusion Noise Schedules and Sample Steps are Flawed"), with v-prediction and trailing timesteps
    as that paper prescribes. On a 16x16 latent, SD's own schedule leaves enough of the image's mean at the
    last step (sqrt(alpha_bar_T) = 0.068 against noise whose mean over 256 positions has std 0.0625) that a
    model learns to read the background from the noise instead of from the prompt.
    """
    from diffusers import DDPMScheduler

    if zero_terminal_snr and prediction_type != "v_prediction":
        raise ValueError("a zero terminal SNR needs v_prediction (epsilon is undefined at pure noise)")
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type=prediction_type,
        rescale_betas_zero_snr=zero_terminal_snr,
        timestep_spacing="trailing" if zero_terminal_snr else "leading",
        clip_sample=False,
        steps_offset=1,
    )


@torch.no_grad()
def encode_pool(vae, pool: Pool, out: Path, config: dict, progress: bool, batch: int = 256) -> float:
    """Posterior means of the whole pool -> ``out/latents.npy`` (fp16); returns the scaling factor
    1 / std(latents), as Stable Diffusion's VAE carries (0.18215 for SD v1)."""
    if _done(out, config):
        return json.loads((out / "DONE").read_text())["scaling_factor"]
    out.mkdir(parents=True, exist_ok=True)
    n, s = len(pool), pool.images.shape[1] // 4
    lat = np.lib.format.open_memmap(
        out / "latents.npy", mode="w+", dtype=np.float16, shape=(n, vae.config.latent_channels, s, s)
    )
    vae.eval()
    for i in tqdm(range(0, n, batch), desc="encode pool", disable=not progress):
        x = torch.from_numpy(np.asarray(pool.images[i : i + batch])).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        lat[i : i + batch] = vae.encode(x).latent_dist.mean.numpy().astype(np.float16)
    lat.flush()
    std = float(np.asarray(lat[: min(n, 20_000)], np.float32).std())
    del lat
    _mark_done(out, {"config": config, "scaling_factor": 1.0 / std})
    return 1.0 / std


@torch.no_grad()
def embed_captions(text_encoder, tokenizer, captions: list[str]) -> torch.Tensor:
    """The frozen text encoder's last hidden states for each caption: (n, MAX_LENGTH, hidden)."""
    tokens = _Tokens(tokenizer)
    out = []
    for i in range(0, len(captions), 512):
        ids, _ = tokens(captions[i : i + 512])
        # Stable Diffusion conditions on the full padded sequence, without an attention mask.
        out.append(text_encoder(input_ids=ids).last_hidden_state)
    return torch.cat(out)


def save_pipeline(final: Path, vae, text_encoder, tokenizer, unet, sched, full: dict) -> None:
    """A stock ``StableDiffusionPipeline`` of these parts (DPM-Solver++ on the training schedule), saved to
    a temporary folder, then renamed into place; ``t2ialign.json`` records the config that made it."""
    from diffusers import DPMSolverMultistepScheduler

    pipe = assemble_pipeline(
        vae, text_encoder, tokenizer, unet, DPMSolverMultistepScheduler.from_config(sched.config)
    )
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    pipe.save_pretrained(tmp, safe_serialization=True)
    strip_local_paths(tmp)
    atomic_write(
        tmp / "t2ialign.json",
        (json.dumps({"t2ialign_version": __version__, "pretrain_config": full}, indent=1) + "\n").encode(),
    )
    publish_dir(tmp, final)


# --- the whole pretraining -------------------------------------------------------------------------------


def adopt_vae(source: Path, final: Path, identity: dict) -> None:
    """Take the VAE of a pipeline this command made (``source``, with its ``t2ialign.json``) as this run's
    finished VAE stage, when it was trained under the same VAE settings, pool and seed: the VAE depends on
    images only, so a new world whose captions change need not train it again."""
    meta = source / "t2ialign.json"
    if not meta.is_file() or not (source / "vae" / "config.json").is_file():
        raise CheckpointError(
            f"{source} is not a pipeline made by `t2ialign pretrain` (no t2ialign.json or vae/)"
        )
    theirs = json.loads(meta.read_text())["pretrain_config"]
    theirs_id = _vae_identity(theirs)
    if theirs_id != identity:
        diff = sorted(k for k in identity.keys() | theirs_id.keys() if identity.get(k) != theirs_id.get(k))
        raise CheckpointError(
            f"the VAE of {source} was trained under other settings ({', '.join(diff)} differ)"
        )
    scaling = json.loads((source / "vae" / "config.json").read_text())["scaling_factor"]
    _adopt_copy(
        source / "vae", final, {"config": identity, "scaling_factor": scaling, "adopted_from": str(source)}
    )


def _adopt_copy(source: Path, final: Path, done: dict, ignore=None) -> None:
    """Copy ``source`` into the stage folder ``final`` through a temporary folder, marked done with ``done``."""
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(source, tmp, ignore=ignore)
    _mark_done(tmp, done)
    publish_dir(tmp, final)


def adopt_text_clip(source: Path | None, final: Path, text_hidden: int) -> dict:
    """Take a CLIP made by this command (``source``, a ``clip`` stage folder or a shipped CLIP with its
    ``t2ialign.json`` or ``DONE``, and its tokenizer) as the source of the pipeline's text encoder and
    tokenizer, copied into ``final``. Its text width must be ``text_hidden`` (the UNet's cross-attention
    width). Once adopted it is kept (``source`` None resumes it; another source is refused). Returns its
    provenance ({"config", "adopted_from"}), which the UNet stage depends on. The reward's CLIP (the
    ``clip`` stage) and its tokenizer are not changed by it."""
    from transformers import CLIPConfig

    if _done(final):
        provenance = json.loads((final / "DONE").read_text())["provenance"]
        if source is not None and str(source) != provenance["adopted_from"]:
            raise CheckpointError(
                f"{final} already holds the text encoder of {provenance['adopted_from']}, not {source}; "
                "use another --out, or delete it to adopt another"
            )
        return provenance
    if source is None:
        raise ValueError("no text encoder to adopt")
    meta = next((source / n for n in ("DONE", "t2ialign.json") if (source / n).is_file()), None)
    if meta is None or not (source / "config.json").is_file() or not (source / "tokenizer.json").is_file():
        raise CheckpointError(
            f"{source} is not a CLIP made by `t2ialign pretrain` (no DONE / t2ialign.json, or no tokenizer)"
        )
    width = CLIPConfig.from_pretrained(source).text_config.hidden_size
    if width != text_hidden:
        raise CheckpointError(
            f"the text tower of {source} is {width} wide; this run's UNet reads {text_hidden}"
        )
    provenance = {"config": json.loads(meta.read_text())["config"], "adopted_from": str(source)}
    _adopt_copy(source, final, {"provenance": provenance}, shutil.ignore_patterns("DONE", "t2ialign.json"))
    return provenance


def _vae_identity(full: dict) -> dict:
    """What the VAE stage depends on: its own settings, the pool's images (not their captions) and the seed.
    Not the layout either: the VAE learns from 32x32 crops (``vae.crop``, a quarter of the image), not from how
    the shapes are arranged across the image, so a VAE of one layout serves another (``--vae-from``)."""
    return full["vae"] | {
        "data": {k: full["data"][k] for k in ("n_images", "size", "seed")},
        "seed": full["seed"],
    }


class _Run:
    """One pretraining run: its config (as a dataclass and as JSON), output folder and progress flag."""

    def __init__(self, cfg: PretrainConfig, out: Path, progress: bool):
        self.cfg, self.out, self.progress = cfg, out, progress
        self.full = to_dict(cfg)
        full = self.full
        if full["data"]["layout"] == "random":
            # worlds v1-v6 were made before layouts existed: their configs, without the key, stay theirs
            del full["data"]["layout"]
        # what each stage depends on: a finished stage is reused only under the same settings
        self.ids = {
            # zero_shot_n only sizes the report, not the model
            "clip": {k: v for k, v in full["clip"].items() if k != "zero_shot_n"}
            | {"data": full["data"], "seed": cfg.seed},
            # the VAE sees images only: captions are not part of what it depends on
            "vae": _vae_identity(full),
        }
        # the latents are the pool's images through the VAE: they depend on the layout too
        self.ids["latents"] = self.ids["vae"] | {k: v for k, v in full["data"].items() if k == "layout"}
        self.ids["unet"] = full["unet"] | {"clip": self.ids["clip"], "vae": self.ids["vae"]}

    def write_config(self) -> None:
        """``pretrain_config.json``: the run's whole config (with an adopted text encoder's provenance)."""
        atomic_write(self.out / "pretrain_config.json", (json.dumps(self.full, indent=1) + "\n").encode())

    def train(self, name: str, module: nn.Module, loss_fn, stage, config: dict, **kw) -> None:
        """``train_loop`` on one stage's settings (steps, lr, warm-up) and the run's checkpointing."""
        train_loop(
            name,
            module,
            loss_fn,
            steps=stage.steps,
            lr=stage.lr,
            warmup=stage.warmup_steps,
            weight_decay=kw.pop("weight_decay", 0.0),
            root=self.out / "checkpoints" / name,
            config=config,
            checkpointing_steps=self.cfg.checkpointing_steps,
            keep=self.cfg.checkpoints_total_limit,
            progress=self.progress,
            **kw,
        )


def pretrain(
    cfg: PretrainConfig,
    out: str | Path,
    progress: bool = True,
    until: str | None = None,
    vae_from: str | Path | None = None,
    text_encoder_from: str | Path | None = None,
) -> dict:
    """Run (or resume) every stage into ``out``, or those up to ``until`` ("clip" or "vae", the latter with
    the pool's latents); returns the measured figures. ``vae_from``: a pipeline made by this function
    under the same VAE settings, whose VAE is taken instead of training one (see ``adopt_vae``).
    ``text_encoder_from``: a CLIP made by this function whose text tower becomes the pipeline's text
    encoder instead of the ``clip`` stage's (``adopt_text_clip``): a text encoder that knows words the
    UNet's captions seldom use, as Stable Diffusion's CLIP text tower knows far more text than LAION's
    captions pair with images; the ``clip`` stage stays the reward's CLIP."""
    if until not in (None, "clip", "vae"):
        raise ValueError(f"until must be 'clip' or 'vae', got {until!r}")
    from transformers import CLIPTokenizer

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    run = _Run(cfg, out, progress)
    run.write_config()
    t0 = time.time()

    # 1-2. tokenizer and pool
    if not (out / "tokenizer" / "tokenizer_config.json").is_file():
        build_clip_tokenizer().save_pretrained(out / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(out / "tokenizer")
    build_pool(cfg, out / "data", progress)
    pool = Pool(out / "data", cfg.data)

    clip = _clip_stage(run, tokenizer, pool)  # 3
    report: dict = {"clip_zero_shot": json.loads((out / "clip" / "DONE").read_text())["zero_shot"]}
    if until == "clip":
        return report
    vae = _vae_stage(run, pool, vae_from)  # 4, with the pool's latents
    if until == "vae":
        return report
    # 5. text encoder = the CLIP text tower, frozen (of the adopted CLIP when one is given)
    text_clip = clip
    if text_encoder_from is not None or (out / "text_clip" / "DONE").is_file():  # once adopted, kept
        source = None if text_encoder_from is None else Path(text_encoder_from)
        provenance = adopt_text_clip(source, out / "text_clip", cfg.clip.text_hidden)
        run.full["text_encoder"] = provenance
        run.ids["unet"] = run.ids["unet"] | {"clip": {"text_encoder": provenance["config"]}}
        run.write_config()
        text_clip = type(clip).from_pretrained(out / "text_clip")
        tokenizer = CLIPTokenizer.from_pretrained(out / "text_clip")  # the text encoder's own
    text_encoder = clip_text_encoder(text_clip)
    unet, sched = _unet_stage(run, pool, vae, text_encoder, tokenizer)  # 6
    # 7. assemble a stock StableDiffusionPipeline
    save_pipeline(out / "pipeline", vae, text_encoder, tokenizer, unet, sched, run.full)
    report["seconds"] = round(time.time() - t0, 1)
    return report


def clip_text_encoder(clip):
    """The text tower of a trained ``CLIPModel`` as a frozen ``CLIPTextModel`` (the pipeline's encoder)."""
    from transformers import CLIPTextModel

    text_encoder = CLIPTextModel(clip.config.text_config)
    # transformers 5 flattens CLIPTextModel (no .text_model); 4.x nests it
    getattr(text_encoder, "text_model", text_encoder).load_state_dict(clip.text_model.state_dict())
    return text_encoder.eval().requires_grad_(False)


def _clip_stage(run: _Run, tokenizer, pool: Pool):
    """3. CLIP, trained contrastively on (render, web-like caption), with its processor and zero-shot report."""
    from transformers import CLIPImageProcessor, CLIPProcessor

    cfg, out = run.cfg, run.out
    clip = make_clip(cfg, tokenizer)
    if _done(out / "clip", run.ids["clip"]):
        return type(clip).from_pretrained(out / "clip")
    tokens = _Tokens(tokenizer)

    def clip_loss(step: int) -> torch.Tensor:
        rng = np.random.default_rng(stable_seed("clip", cfg.seed, step))
        _, images, captions = pool.batch(rng, cfg.clip.batch_size)
        ids, mask = tokens(captions)
        logits = clip(input_ids=ids, attention_mask=mask, pixel_values=clip_pixels(images)).logits_per_image
        return soft_clip_loss(logits, captions)

    config = run.full["clip"] | {"data": run.full["data"], "seed": cfg.seed}
    run.train("clip", clip, clip_loss, cfg.clip, config, weight_decay=cfg.clip.weight_decay)
    tmp = out / "clip.tmp"
    clip.save_pretrained(tmp)
    image_processor = CLIPImageProcessor(
        do_resize=True,
        size={"shortest_edge": cfg.data.size},
        do_center_crop=True,
        crop_size={"height": cfg.data.size, "width": cfg.data.size},
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    )
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(tmp)
    zero_shot = clip_zero_shot(clip, tokenizer, n=cfg.clip.zero_shot_n, layout=cfg.data.layout)
    _mark_done(tmp, {"config": run.ids["clip"], "zero_shot": zero_shot})
    publish_dir(tmp, out / "clip")
    return clip


def _vae_stage(run: _Run, pool: Pool, vae_from: str | Path | None):
    """4. The VAE (trained on crops, or adopted from ``vae_from``), then the pool encoded once."""
    cfg, out, v = run.cfg, run.out, run.cfg.vae
    vae = make_vae(cfg)
    if vae_from is not None and not _done(out / "vae", run.ids["vae"]):
        adopt_vae(Path(vae_from), out / "vae", run.ids["vae"])
    if _done(out / "vae", run.ids["vae"]):
        vae = type(vae).from_pretrained(out / "vae")
    else:

        def vae_loss(step: int) -> torch.Tensor:
            rng = np.random.default_rng(stable_seed("vae", cfg.seed, step))
            _, images, _ = pool.batch(rng, v.batch_size)
            y0, x0 = rng.integers(0, cfg.data.size - v.crop + 1, size=2)
            crop = torch.from_numpy(images[:, y0 : y0 + v.crop, x0 : x0 + v.crop]).permute(0, 3, 1, 2)
            x = crop.float() / 127.5 - 1.0
            posterior = vae.encode(x).latent_dist
            g = torch.Generator().manual_seed(stable_seed("vae-noise", cfg.seed, step))
            recon = vae.decode(posterior.sample(generator=g)).sample
            return F.l1_loss(recon, x) + v.kl_weight * posterior.kl().mean()

        run.train("vae", vae, vae_loss, v, run.ids["vae"])
        scaling = encode_pool(vae, pool, out / "latents", run.ids["latents"], run.progress)
        vae.register_to_config(scaling_factor=scaling)
        tmp = out / "vae.tmp"
        vae.save_pretrained(tmp)
        _mark_done(tmp, {"config": run.ids["vae"], "scaling_factor": scaling})
        publish_dir(tmp, out / "vae")
    encode_pool(vae, pool, out / "latents", run.ids["latents"], run.progress)
    return vae


def _unet_identity(run: _Run) -> dict:
    """The UNet stage's identity. With a constant learning rate a finished UNet can be trained further by
    raising unet.steps and rerunning: its identity is then its config without the steps (a cosine
    schedule depends on them). snapshot_steps only says how often to save the EMA weights."""
    extendable = run.cfg.unet.lr_schedule == "constant"
    return {
        k: v for k, v in run.ids["unet"].items() if k != "snapshot_steps" and (k != "steps" or not extendable)
    }


def _unet_stage(run: _Run, pool: Pool, vae, text_encoder, tokenizer):
    """6. The UNet on the cached latents and every caption's text embedding (computed once), with EMA
    snapshots as whole pipelines for the learning curve."""
    cfg, out, u = run.cfg, run.out, run.cfg.unet
    latents = np.load(out / "latents" / "latents.npy", mmap_mode="r")
    scaling = vae.config.scaling_factor
    captions = ["", *grammar_corpus()]
    caption_index = {c: i for i, c in enumerate(captions)}
    caption_emb = embed_captions(text_encoder, tokenizer, captions)  # (n_captions, MAX_LENGTH, hidden)
    unet = make_unet(cfg, latents.shape[-1])
    sched = noise_scheduler(u.prediction_type, u.zero_terminal_snr)
    unet_id = _unet_identity(run)
    done = _done(out / "unet", unet_id)
    if done and json.loads((out / "unet" / "DONE").read_text()).get("steps", 0) >= u.steps:
        return type(unet).from_pretrained(out / "unet"), sched

    def unet_loss(step: int) -> torch.Tensor:
        rng = np.random.default_rng(stable_seed("unet", cfg.seed, step))
        idx, _, caps = pool.batch(rng, u.batch_size)
        drop = rng.random(u.batch_size) < u.cfg_dropout
        cond = caption_emb[[0 if d else caption_index[c.lower()] for c, d in zip(caps, drop, strict=True)]]
        x0 = torch.from_numpy(np.asarray(latents[idx], np.float32)) * scaling  # (B, 4, 16, 16)
        g = torch.Generator().manual_seed(stable_seed("unet-noise", cfg.seed, step))
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, sched.config.num_train_timesteps, (u.batch_size,), generator=g)
        pred = unet(sched.add_noise(x0, noise, t), t, encoder_hidden_states=cond).sample
        target = noise if u.prediction_type == "epsilon" else sched.get_velocity(x0, noise, t)
        return F.mse_loss(pred, target)

    def snapshot(step: int) -> None:
        save_pipeline(
            out / "snapshots" / f"step_{step:06d}", vae, text_encoder, tokenizer, unet, sched, run.full
        )

    run.train(
        "unet",
        unet,
        unet_loss,
        u,
        unet_id,
        ema_decay=u.ema_decay,
        schedule=u.lr_schedule,
        snapshot=snapshot,
        snapshot_steps=u.snapshot_steps,
    )
    tmp = out / "unet.tmp"
    unet.save_pretrained(tmp)
    _mark_done(tmp, {"config": unet_id, "steps": u.steps})
    publish_dir(tmp, out / "unet")
    return unet, sched
