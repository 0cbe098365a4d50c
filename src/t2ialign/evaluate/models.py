"""``t2ialign evaluate``: the paper's Sec. 4.2 on this run, for several models side by side.

Evaluation prompts (``evaluation_prompts``): 60 seen and 60 unseen, as in the paper, drawn by the same
grammar, balanced over the four categories, and chosen from the prompt set alone (seeded), so they are
known before any feedback is collected; the feedback stages leave them out (``feedback_prompts``), and
``evaluate`` refuses a run whose feedback used one. "Unseen" is split in two halves: unseen prompts of
seen objects, and prompts of objects the feedback never shows.

Each model gets ``images_per_prompt`` images per prompt with the same seeds (role "eval"), so the grids
of base and fine-tuned models compare like with like; "rejection" keeps the best ``images_per_prompt`` of
``best_of`` base candidates by reward (whose first ``images_per_prompt`` are the base model's own images).
Measured per model: alignment by the world judge per group and category with Wilson 95% intervals, the
mean reward, the CLIP score (cosine of CLIP embeddings, as the paper's baseline), and fidelity (FD on CLIP
features against renders of the same prompts; Inception FID when weights are given).
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ..config import EvaluateConfig, GenerateConfig, to_dict
from ..fsutil import atomic_write
from ..store import Store
from ..world.prompts import CATEGORIES
from .alignment import judge_stored, summarize

GROUPS = {"seen": "seen", "unseen_prompt": "unseen_prompt", "unseen_object": "unseen_object"}


def balanced_sample(rows: list[dict], n: int, seed: str) -> list[str]:
    """n prompt texts spread evenly over the categories (seeded); a category that runs out (the unseen
    prompt split has few count prompts) leaves its share to the others."""
    by_cat = {c: sorted(r["text"] for r in rows if r["category"] == c) for c in CATEGORIES}
    for c in CATEGORIES:
        random.Random(f"{seed}:{c}").shuffle(by_cat[c])
    out: list[str] = []
    while len(out) < n and any(by_cat.values()):  # round robin over the categories
        for c in CATEGORIES:
            if by_cat[c] and len(out) < n:
                out.append(by_cat[c].pop())
    return out


def evaluation_prompts(
    store: Store, n_seen: int = 60, n_unseen: int = 60, seed: int = 0
) -> dict[str, list[str]]:
    """{group: prompt texts}: a function of the prompt set and the seed only."""
    rows = store.list_prompts()
    if not rows:
        raise ValueError(f"no prompts in {store.run_dir}; run `t2ialign prompts` first")
    return {
        "seen": balanced_sample([r for r in rows if r["split"] == "seen"], n_seen, f"eval:{seed}:seen"),
        "unseen_prompt": balanced_sample(
            [r for r in rows if r["split"] == "unseen_prompt"], n_unseen // 2, f"eval:{seed}:unseen_prompt"
        ),
        "unseen_object": balanced_sample(
            [r for r in rows if r["split"] == "unseen_object"],
            n_unseen - n_unseen // 2,
            f"eval:{seed}:unseen_object",
        ),
    }


def feedback_prompts(
    store: Store, n_seen: int = 60, n_unseen: int = 60, seed: int = 0, split: str = "seen"
) -> list[dict]:
    """The prompts of ``split`` open to feedback: all of them but the evaluation prompts. (Labeled images
    of unseen prompts serve the reward's evaluation, Fig. 4; they are never trained on.)"""
    held = {p for ps in evaluation_prompts(store, n_seen, n_unseen, seed).values() for p in ps}
    return [r for r in store.list_prompts(split=split) if r["text"] not in held]


def check_disjoint(store: Store, prompts: dict[str, list[str]]) -> None:
    """ValueError if any evaluation prompt has feedback images (roles human / unlabeled) in the run."""
    used = {r["prompt"] for role in ("human", "unlabeled") for r in store.list_images(role=role)}
    clash = sorted(used & {p for ps in prompts.values() for p in ps})
    if clash:
        raise ValueError(
            f"{len(clash)} evaluation prompts were used for feedback (e.g. {clash[0]!r}): results on them would "
            "not measure generalisation; generate feedback with `feedback_prompts` (the CLI does) or change "
            "evaluate.seed"
        )


def parse_models(spec: str, run_dir: Path) -> dict[str, dict]:
    """'base,finetuned,rejection' -> {name: {"kind", "path"}}. Also finetuned:NAME (RUN/finetune/NAME),
    rejection:finetuned[:NAME] (best-of on a fine-tuned model), and LABEL=PATH (any local SD pipeline)."""
    out: dict[str, dict] = {}
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        kind = "pipeline"
        name = item
        if "=" in item:
            name, path = item.split("=", 1)
        elif item == "base":
            path = None
        elif item.startswith("finetuned"):
            ft = item.split(":", 1)[1] if ":" in item else "default"
            path = str(run_dir / "finetune" / ft / "pipeline")
        elif item.startswith("rejection"):
            kind = "rejection"
            inner = item.split(":", 1)[1] if ":" in item else "base"
            path = parse_models(inner, run_dir)[inner]["path"]
        else:
            raise ValueError(
                f"unknown model {item!r}: use base, finetuned[:NAME], rejection[:MODEL] or LABEL=PATH"
            )
        if name in out:
            raise ValueError(f"model {name!r} is named twice")
        if path is not None and not (Path(path) / "model_index.json").is_file():
            raise FileNotFoundError(f"model {name!r}: no diffusers pipeline at {path}")
        out[name] = {"kind": kind, "path": path}
    if not out:
        raise ValueError("no models to evaluate")
    return out


def _images_of(store: Store, model: dict, prompts: list[str], cfg: EvaluateConfig, reward, progress: bool):
    """{prompt: [image rows]} of one model: its images_per_prompt eval images, or the best by reward."""
    from ..generate import generate
    from ..models.load import load_pipeline
    from ..sample import SampleConfig, load_selection, rejection_sample

    pipe, model_id, revision = load_pipeline(model["path"])
    rows_by_key = {}
    if model["kind"] == "rejection":
        sc = SampleConfig(best_of=cfg.best_of, keep=cfg.images_per_prompt, generate=cfg.generate)
        summary = rejection_sample(store, prompts, sc, reward, pipe, (model_id, revision), progress)
        selection = load_selection(store.run_dir / summary["file"])
        wanted = {e["prompt"]: [k["sha256"] for k in e["kept"]] for e in selection["prompts"]}
    else:
        gen = GenerateConfig(
            **(
                to_dict(cfg.generate)
                | {"images_per_prompt": cfg.images_per_prompt, "role": "eval", "model": model["path"]}
            )
        )
        generate(gen, store, prompts, pipe=pipe, model_info=(model_id, revision), progress=progress)
        from ..generate import image_seed

        seeds = {
            p: [image_seed(gen.seed, "eval", p, k) for k in range(cfg.images_per_prompt)] for p in prompts
        }
        by = {
            (r["prompt"], r["seed"]): r["sha256"]
            for r in store.list_images(model_id=model_id, role="eval")
            if r["model_revision"] == revision
        }
        wanted = {p: [by[(p, s)] for s in seeds[p] if (p, s) in by] for p in prompts}
    for r in store.list_images(role="eval"):
        rows_by_key[r["sha256"]] = r
    images = {p: [rows_by_key[s] for s in wanted[p]] for p in prompts}
    return images, model_id, revision


def evaluate_models(
    store: Store, models: dict[str, dict], cfg: EvaluateConfig, progress: bool = True, judge=None
) -> dict:
    """Generate, judge and score every model on the evaluation prompts; returns the report, also written
    to metrics.json (``evaluate``) and RUN/evaluate/images.json (the images of each model and prompt)."""
    from ..reward.model import RewardModel
    from ..reward.train import Embeddings
    from ..world.judge import Judge
    from .fidelity import fidelity_report

    groups = evaluation_prompts(store, cfg.n_seen, cfg.n_unseen, cfg.seed)
    check_disjoint(store, groups)
    group_of = {p: g for g, ps in groups.items() for p in ps}
    prompts = [p for ps in groups.values() for p in ps]
    judge = judge or Judge.load()
    reward_path = Path(cfg.reward) if cfg.reward else store.run_dir / "reward"
    reward = RewardModel.load(reward_path)
    emb = Embeddings(store, reward.clip, reward.processor)
    report = {
        "config": to_dict(cfg),
        "prompts": groups,
        "reward_model": str(reward_path),
        "models": {},
    }
    grids: dict[str, dict[str, list[str]]] = {}
    for name, model in models.items():
        t0 = time.time()
        images, model_id, revision = _images_of(store, model, prompts, cfg, reward, progress)
        rows = [r for p in prompts for r in images[p]]
        judged = judge_stored(store, rows, judge)
        for j in judged:
            j["group"] = group_of[j["prompt"]]
        alignment = {
            g: {
                c: summarize([j for j in judged if j["group"] == g and j["category"] == c])
                for c in CATEGORIES
            }
            | {"all": summarize([j for j in judged if j["group"] == g])}
            for g in GROUPS
        }
        alignment["all"] = {c: summarize([j for j in judged if j["category"] == c]) for c in CATEGORIES} | {
            "all": summarize(judged)
        }
        shas, texts = [r["sha256"] for r in rows], [r["prompt"] for r in rows]
        emb.ensure(shas, sorted(set(texts)), progress)
        x, z = emb.images.get(shas), emb.texts.get(texts)
        rewards = reward.score_embeddings(x, z).double()
        clip_scores = (x.double() * z.double()).sum(-1)
        pixels = [
            (r["prompt"], np.asarray(Image.open(store.image_path(r["sha256"])).convert("RGB"))) for r in rows
        ]
        fidelity = fidelity_report(
            pixels, reward.clip, reward.processor, store.run_dir / "fidelity", inception_path=cfg.inception
        )
        report["models"][name] = {
            "kind": model["kind"],
            "path": model["path"],
            "model_id": model_id,
            "model_revision": revision,
            "n_images": len(rows),
            "alignment": alignment,
            "mean_reward": round(float(rewards.mean()), 4),
            "mean_reward_by_group": {
                g: round(float(rewards[[group_of[t] == g for t in texts]].mean()), 4) for g in GROUPS
            },
            "clip_score": round(float(clip_scores.mean()), 4),
            "fd_clip": round(fidelity["fd_clip"], 5),
            "fid_inception": fidelity["fid_inception"],
            "seconds": round(time.time() - t0, 1),
        }
        grids[name] = {p: [r["sha256"] for r in images[p]] for p in prompts}
    out = store.run_dir / "evaluate"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "images.json", json.dumps({"prompts": groups, "images": grids}, indent=1).encode())
    store.update_metrics(evaluate=report)
    return report


def format_report(report: dict) -> str:
    """One line per model and group: alignment per category with 95% intervals, reward, CLIP score, FD."""
    lines = []
    for name, m in report["models"].items():
        lines.append(
            f"{name}: mean reward {m['mean_reward']:.3f}, CLIP score {m['clip_score']:.3f}, FD_CLIP {m['fd_clip']:.4f}"
            + (f", FID {m['fid_inception']:.2f}" if m["fid_inception"] is not None else "")
        )
        for g in [*GROUPS, "all"]:
            cells = []
            for c in [*CATEGORIES, "all"]:
                s = m["alignment"][g][c]
                if s["n"]:
                    cells.append(f"{c} {s['alignment']:.0%} [{s['ci95'][0]:.0%}-{s['ci95'][1]:.0%}]")
            lines.append(f"  {g:14s} " + "  ".join(cells))
    return "\n".join(lines)
