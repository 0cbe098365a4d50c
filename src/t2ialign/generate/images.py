"""Stage 2: sample K images per prompt from a Stable Diffusion pipeline into the run store.

Batches run across prompts (``batch_size`` images per pipeline call, text embeddings computed once per
distinct prompt), optionally under bf16 autocast. Each image has its own seed, derived from (config seed,
role, prompt, index), and its own torch generator, so the same seed gives the same image whatever else is
in the batch's prompts. A rerun skips every (prompt, seed) the store already holds for that model.

Under ``torchrun`` / ``accelerate launch`` every process runs ``generate`` with the same arguments: each
samples every world_size-th batch of the same to-do list (``t2ialign.core.dist.shard``) into the same
store, so N processes write exactly the images, seeds and rows of one (each image is made in the same
batch as by one process). ``generate`` is then collective: a process that calls it alone waits for the
others.
"""

from __future__ import annotations

import contextlib
import io
import random
import time
import warnings

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from t2ialign.config import GenerateConfig, to_dict
from t2ialign.core import dist
from t2ialign.core.seeds import stable_seed
from t2ialign.store import Store

SCHEDULER_CLASSES = {
    "dpm++": "DPMSolverMultistepScheduler",
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "pndm": "PNDMScheduler",
}


def image_seed(seed: int, role: str, prompt: str, index: int) -> int:
    """The seed of the index-th image of a prompt (63-bit, stable across processes)."""
    return stable_seed("image", seed, role, prompt, index)


def set_scheduler(pipe, name: str) -> None:
    if name == "default":
        return
    import diffusers

    cls = getattr(diffusers, SCHEDULER_CLASSES[name])
    pipe.scheduler = cls.from_config(pipe.scheduler.config)


def native_bf16(device: torch.device) -> bool:
    """Whether the device computes bf16 natively. A CPU without AVX512_BF16 or AMX (an AVX2-only one)
    emulates it: there oneDNN refuses bf16 convolutions and torch falls back to its slow im2col path."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):  # a build without oneDNN
            return False
    return False


def resolve_precision(mixed_precision: str, device: torch.device) -> str:
    """The autocast a sampler runs under: "auto" resolved for this device, an explicit choice kept
    (with a warning when it is bf16 on a CPU that emulates it)."""
    if mixed_precision == "auto":
        if native_bf16(device):
            return "bf16"
        return "fp16" if device.type == "cuda" else "no"
    if mixed_precision == "bf16" and device.type == "cpu" and not native_bf16(device):
        warnings.warn(
            "generate.mixed_precision = bf16 on a CPU without native bf16 (no AVX512_BF16 or AMX): sampling "
            "runs many times slower than in fp32; use auto or no",
            stacklevel=2,
        )
    return mixed_precision


def autocast(pipe, mixed_precision: str):
    mixed_precision = resolve_precision(mixed_precision, pipe.device)
    if mixed_precision == "no":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if mixed_precision == "bf16" else torch.float16
    return torch.autocast(pipe.device.type, dtype=dtype)


def compile_unet(pipe, backend: str) -> None:
    """``torch.compile`` the pipeline's UNet in place with ``backend`` ("no": leave it), once: a UNet
    already compiled is kept as it is, whatever backend it was compiled with."""
    if backend != "no" and getattr(pipe.unet, "_compiled_call_impl", None) is None:
        pipe.unet.compile(backend=backend)


@torch.no_grad()
def sample_images(pipe, prompts: list[str], seeds: list[int], cfg: GenerateConfig) -> list[np.ndarray]:
    """One (H, W, 3) uint8 image per (prompt, seed), in one pipeline call."""
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    distinct = list(dict.fromkeys(prompts))
    cfg_on = cfg.guidance_scale > 1.0
    emb, neg = pipe.encode_prompt(distinct, pipe.device, 1, cfg_on, negative_prompt=[""] * len(distinct))
    rows = [distinct.index(p) for p in prompts]
    generators = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
    compile_unet(pipe, cfg.compile)
    with autocast(pipe, cfg.mixed_precision):
        out = pipe(
            prompt_embeds=emb[rows],
            negative_prompt_embeds=neg[rows] if cfg_on else None,
            num_inference_steps=cfg.num_inference_steps,
            guidance_scale=cfg.guidance_scale,
            generator=generators,
            height=cfg.height,
            width=cfg.width,
            output_type="np",
        )
    return [np.round(np.clip(im, 0.0, 1.0) * 255.0).astype(np.uint8) for im in out.images]


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def select_prompts(rows: list[dict], max_prompts: int | None, seed: int) -> list[dict]:
    """All rows, or a seeded sample of ``max_prompts`` of them (in their stored order)."""
    if max_prompts is None or max_prompts >= len(rows):
        return rows
    if max_prompts < 1:
        raise ValueError(f"max_prompts must be >= 1, got {max_prompts}")
    keep = set(random.Random(f"select:{seed}").sample(range(len(rows)), max_prompts))
    return [r for i, r in enumerate(rows) if i in keep]


def _records(store: Store, batch: list[tuple[str, int]], images, shas: set[str], common: dict) -> list[dict]:
    """Store each image's PNG and return the rows of the new ones; an image byte-identical to one already
    recorded (a degenerate model) is skipped, keeping one."""
    records = []
    for (prompt, seed), image in zip(batch, images, strict=True):
        sha = store.put_image_bytes(png_bytes(image))
        if sha in shas:
            continue
        shas.add(sha)
        records.append(
            dict(
                sha256=sha,
                prompt_text=prompt,
                seed=seed,
                width=image.shape[1],
                height=image.shape[0],
                **common,
            )
        )
    return records


def _add_new(store: Store, records: list[dict]) -> list[dict]:
    """Record a batch in one transaction (a crash loses at most this batch); the records written.

    With several processes, another one may have just recorded an image byte-identical to one of these
    (a degenerate model): then those are dropped, keeping one, as one process does, and the rest written.
    """
    try:
        store.add_images(records)
        return records
    except ValueError:
        if dist.world_size() == 1:
            raise
        recorded = {r["sha256"] for r in store.list_images()}
        fresh = [r for r in records if r["sha256"] not in recorded]
        if len(fresh) == len(records):
            raise  # another error than a duplicate
        store.add_images(fresh)
        return fresh


# the generate settings that decide what an image is; the rest (precision, compile, batch size, device)
# decide only how it was computed, so an image stored under other values of those is still this image
IMAGE_SETTINGS = ("num_inference_steps", "guidance_scale", "scheduler", "height", "width")


def sampler_identity(sampler: dict) -> tuple:
    """What of a stored image's sampler record decides the image: the pipeline and scheduler classes and
    ``IMAGE_SETTINGS`` (numbers as floats, so 5 and 5.0 agree)."""
    made = sampler.get("generate_config", {})
    values = tuple(made.get(k) for k in IMAGE_SETTINGS)
    values = tuple(float(v) if isinstance(v, int | float) and not isinstance(v, bool) else v for v in values)
    return (sampler.get("pipeline"), sampler.get("scheduler"), *values)


def stored_images(
    store: Store, model_id: str, model_revision: str, sampler: dict, role: str | None = None
) -> list[dict]:
    """The stored images of this model revision made with ``sampler``'s settings (``generate``'s returned
    ``sampler``): another revision's images, or the same model's at another guidance scale, step count,
    scheduler or size, are other images, never reused or mixed in as these."""
    kwargs = {"model_id": model_id} | ({} if role is None else {"role": role})
    return _made_with(store.list_images(**kwargs), model_revision, sampler)


def images_made(store: Store, made: dict, cfg: GenerateConfig, prompts: list[str]) -> list[str]:
    """The sha256s of the images that ``generate(cfg, store, prompts)`` made or found stored, given what it
    returned (``made``): this model revision and sampler, these prompts and seeds, ``cfg.role``."""
    want = {(p, image_seed(cfg.seed, cfg.role, p, i)) for p in prompts for i in range(cfg.images_per_prompt)}
    rows = stored_images(store, made["model_id"], made["model_revision"], made["sampler"], role=cfg.role)
    return sorted(r["sha256"] for r in rows if (r["prompt"], r["seed"]) in want)


def _made_with(rows: list[dict], model_revision: str, sampler: dict) -> list[dict]:
    """The image rows of this model revision made with ``sampler``'s settings."""
    want = sampler_identity(sampler)
    return [
        r for r in rows if r["model_revision"] == model_revision and sampler_identity(r["sampler"]) == want
    ]


def _todo(
    cfg: GenerateConfig, store: Store, prompts: list[str], model_id: str, model_revision: str, sampler: dict
) -> tuple[list[tuple[str, int]], set[str]]:
    """The (prompt, seed) pairs not yet stored for this model revision and sampler, in prompt then
    seed-index order, and the sha256 of every image of the model already stored."""
    stored = store.list_images(model_id=model_id)  # read once: this sampler's images and every sha256
    have = {(r["prompt"], r["seed"]) for r in _made_with(stored, model_revision, sampler)}
    todo = [
        (p, s)
        for p in prompts
        for s in (image_seed(cfg.seed, cfg.role, p, k) for k in range(cfg.images_per_prompt))
        if (p, s) not in have
    ]
    return todo, {r["sha256"] for r in stored}


def _sampler_record(pipe, cfg: GenerateConfig) -> dict:
    """What each image records of how it was sampled."""
    return {
        "pipeline": type(pipe).__name__,
        "scheduler": type(pipe.scheduler).__name__,
        "generate_config": {
            # not what the image is: its model, role and seed are recorded beside; batch size and device
            # are how it was computed
            k: v
            for k, v in to_dict(cfg).items()
            if k not in ("model", "role", "seed", "batch_size", "device")
        }
        # what the images were computed in, not the word "auto": it differs between machines
        | {"mixed_precision": resolve_precision(cfg.mixed_precision, pipe.device)},
    }


def generate(
    cfg: GenerateConfig,
    store: Store,
    prompts: list[str],
    pipe=None,
    model_info: tuple[str, str] | None = None,
    progress: bool = True,
) -> dict:
    """Generate ``cfg.images_per_prompt`` images for each prompt text (already in the store).

    ``pipe`` and ``model_info`` (model id, revision) may be passed in by a caller that already loaded the
    pipeline; otherwise ``cfg.model`` is loaded. Returns counts and throughput; with several processes,
    of all of them together (each returns the same counts).
    """
    from t2ialign.models.load import load_pipeline, sampling_device

    if pipe is None:
        pipe, model_id, model_revision = load_pipeline(cfg.model)
    else:
        model_id, model_revision = model_info
    pipe.to(sampling_device(cfg.device))  # each process its own GPU, when there are GPUs
    set_scheduler(pipe, cfg.scheduler)
    known = {r["text"] for r in store.list_prompts()}
    unknown = [p for p in prompts if p not in known]
    if unknown:
        raise ValueError(
            f"{len(unknown)} prompts are not in the run (e.g. {unknown[0]!r}); run `t2ialign prompts` first"
        )
    sampler = _sampler_record(pipe, cfg)
    todo, shas = _todo(cfg, store, prompts, model_id, model_revision, sampler)
    # Every process must split the same list; the gather inside check_same also holds each one until all
    # have read the store, so none sees another's new images and computes a different list.
    dist.check_same(todo, "the images to generate")
    made = duplicates = 0
    t0 = time.time()
    common = dict(model_id=model_id, model_revision=model_revision, sampler=sampler, role=cfg.role)
    mine = dist.shard(todo, cfg.batch_size)  # this process's batches (all of them when it is alone)
    bar = tqdm(
        total=sum(map(len, mine)),
        desc=f"generate ({cfg.role})",
        unit="img",
        disable=not progress or not dist.is_main(),
    )
    for batch in mine:
        images = sample_images(pipe, [p for p, _ in batch], [s for _, s in batch], cfg)
        records = _add_new(store, _records(store, batch, images, shas, common))
        made += len(records)
        duplicates += len(batch) - len(records)
        bar.update(len(batch))
    bar.close()
    if dist.world_size() > 1:
        dist.barrier()  # every process's images are in the store: count them all
        now = {(r["prompt"], r["seed"]) for r in stored_images(store, model_id, model_revision, sampler)}
        made = sum(1 for key in todo if key in now)
        duplicates = len(todo) - made
    seconds = time.time() - t0
    return {
        "model_id": model_id,
        "model_revision": model_revision,
        "sampler": sampler,
        "requested": len(prompts) * cfg.images_per_prompt,
        "already_stored": len(prompts) * cfg.images_per_prompt - len(todo),
        "generated": made,
        "duplicates_skipped": duplicates,
        "seconds": round(seconds, 2),
        "images_per_second": round(len(todo) / seconds, 2) if todo else None,
    }
