"""Loading text-to-image pipelines and CLIP models from local paths, the shipped world models by default.

Real checkpoints (Stable Diffusion 1.x / 2.x, any transformers CLIP) load by their local folder through
the same functions. Nothing is fetched from a hub: a path that is missing or not of the right kind is a
clear error.
"""

from __future__ import annotations

import json
from pathlib import Path

from t2ialign.core.fingerprint import folder_fingerprint
from t2ialign.core.fsutil import atomic_write

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "world" / "weights"
WORLD_SD = WEIGHTS_DIR / "sd"
WORLD_CLIP = WEIGHTS_DIR / "clip"
WORLD_SD_ID = "t2ialign/world-sd"
WORLD_CLIP_ID = "t2ialign/world-clip"

# diffusers pipeline classes whose components are a Stable Diffusion 1.x / 2.x text-to-image model
SD_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline")


def _missing_world(what: str, path: Path) -> FileNotFoundError:
    return FileNotFoundError(
        f"the world's {what} is not at {path}: this install ships without it; train it with "
        f"`t2ialign pretrain --out DIR` and pass DIR/{'pipeline' if what == 'Stable Diffusion' else 'clip'}"
    )


def resolve_sd_path(path: str | Path | None) -> tuple[Path, str]:
    """(folder, model id) of a Stable Diffusion pipeline; checks it is one before anything loads."""
    if path is None:
        if not (WORLD_SD / "model_index.json").is_file():
            raise _missing_world("Stable Diffusion", WORLD_SD)
        return WORLD_SD, WORLD_SD_ID
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(
            f"no model at {p} (models load from local folders only; nothing is downloaded)"
        )
    index = p / "model_index.json"
    if not index.is_file():
        raise ValueError(f"{p} is not a diffusers pipeline folder (no model_index.json)")
    try:
        meta = json.loads(index.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{index} is not valid JSON: {e}") from e
    cls = meta.get("_class_name")
    missing = [c for c in ("unet", "vae", "text_encoder", "tokenizer", "scheduler") if c not in meta]
    if cls not in SD_PIPELINES or missing:
        raise ValueError(
            f"{p} is a {cls or 'pipeline of unknown class'}, not a Stable Diffusion 1.x/2.x pipeline"
            + (f" (no {', '.join(missing)})" if missing else "")
        )
    return p, str(p.resolve())


def strip_local_paths(pipeline_dir: Path) -> None:
    """Drop ``_name_or_path`` (the folder a component was loaded from on this machine) from every
    component config of a pipeline folder: a saved pipeline names no path of the machine that made it, and
    the same weights saved from two folders get the same ``revision``."""
    for path in sorted(Path(pipeline_dir).glob("*/config.json")):
        config = json.loads(path.read_text())
        if config.pop("_name_or_path", None) is not None:
            atomic_write(path, (json.dumps(config, indent=2, sort_keys=True) + "\n").encode())


def revision(folder: Path) -> str:
    """A short content hash of a pipeline's UNet weights and config: which exact model made an image."""
    return folder_fingerprint(folder / "unet")


def sampling_device(name: str = "auto"):
    """The torch device of ``generate.device``: "auto" is this process's GPU (cuda:LOCAL_RANK under torchrun
    or accelerate launch) when CUDA is there, else the CPU."""
    import torch

    from t2ialign.core import dist

    return dist.device() if name == "auto" else torch.device(name)


def load_pipeline(path: str | Path | None = None):
    """(pipeline, model_id, revision): a diffusers StableDiffusionPipeline from a local folder."""
    from diffusers import StableDiffusionPipeline

    folder, model_id = resolve_sd_path(path)
    pipe = StableDiffusionPipeline.from_pretrained(
        folder, safety_checker=None, requires_safety_checker=False, local_files_only=True
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe, model_id, revision(folder)


def resolve_clip_path(path: str | Path | None) -> tuple[Path, str]:
    if path is None:
        if not (WORLD_CLIP / "config.json").is_file():
            raise _missing_world("CLIP", WORLD_CLIP)
        return WORLD_CLIP, WORLD_CLIP_ID
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no CLIP model at {p} (models load from local folders only)")
    cfg = p / "config.json"
    if not cfg.is_file():
        raise ValueError(f"{p} is not a transformers model folder (no config.json)")
    model_type = json.loads(cfg.read_text()).get("model_type")
    if model_type != "clip":
        raise ValueError(f"{p} holds a {model_type!r} model, not a CLIP model")
    return p, str(p.resolve())


def load_clip(path: str | Path | None = None):
    """(CLIPModel, CLIPProcessor, model_id) from a local folder (the world CLIP by default)."""
    from transformers import CLIPModel, CLIPProcessor

    folder, model_id = resolve_clip_path(path)
    model = CLIPModel.from_pretrained(folder, local_files_only=True).eval()
    processor = CLIPProcessor.from_pretrained(folder, local_files_only=True)
    return model, processor, model_id


def assemble_pipeline(vae, text_encoder, tokenizer, unet, scheduler):
    """A stock ``StableDiffusionPipeline`` of these parts, with no safety checker or feature extractor
    (what the shapes world and the tests' tiny models ship)."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
