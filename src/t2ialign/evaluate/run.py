"""``t2ialign evaluate``: the paper's Sec. 4.2 on this run, for several models side by side.

Evaluation prompts (``evaluation_prompts``): 60 seen and 60 unseen, as in the paper, drawn by the same
grammar, balanced over the four categories, and chosen from the prompt set alone (seeded), so they are
known before any feedback is collected; the feedback stages leave them out (``feedback_prompts``), and
``evaluate`` refuses a run whose feedback used one. "Unseen" is split in two halves: unseen prompts of
seen objects, and prompts of objects the feedback never shows.

Each model gets ``images_per_prompt`` images per prompt (20 at the paper's scale: 2,400 judged images per
model) with the same seeds (role "eval"), so the models compare like with like. Rejection sampling keeps
the paper's 1 in 4 by reward: the best ``images_per_prompt`` of ``images_per_prompt x best_of / keep``
base candidates (best 20 of 80), whose first ones are the base model's own images. That is the paper's
rule at the paper's cost per kept image (4 candidates) for any number of images per prompt (repeated sets
of best 4 of 16 would need a multiple of 4; the demo judges 9). It selects a little harder than best 4 of
16, as the top quarter of a larger pool is nearer the reward's true top quarter: on a normal reward the
kept images' mean is 1.20 standard deviations above the candidates' for 4 of 16, 1.24 for 9 of 36 and
1.26 for 20 of 80, so the measured gain slightly favours rejection sampling. Fig. 3 keeps the paper's
sets exactly: 4 images per prompt, a model's first 4 seeds, and the best 4 of the first 16 candidates
(``images.json``'s "sets"; the same candidates, scored once).

Measured per model: alignment by the world judge per group and category with Wilson 95% intervals, the
mean reward, the CLIP score (cosine of CLIP embeddings, as the paper's baseline), and fidelity (FD on CLIP
features against renders of the same prompts; Inception FID when weights are given). For every model but
base, its paired difference from base (metrics.json's ``evaluate.paired``; the bootstrap is
``t2ialign.evaluate.paired``): on the same prompts and seeds, per group and category, per attribute and
for the reward, each with a 95% interval from a bootstrap over prompts. It needs a model named "base"
among those evaluated; without one the paired sections are empty and ``format_report`` says why.

Under ``torchrun`` every process runs the same evaluation: each generates its share of every model's
images (``generate``, ``rejection_sample``), and rank 0 alone judges, scores and writes the report, which
every process returns.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
import time
from pathlib import Path

from t2ialign.config import EvaluateConfig, GenerateConfig, to_dict
from t2ialign.core import dist
from t2ialign.core.fsutil import atomic_write
from t2ialign.evaluate.alignment import summarize
from t2ialign.evaluate.paired import pair_by_slot, paired_cells
from t2ialign.label.oracle import judge_stored
from t2ialign.store import Store
from t2ialign.world import vocab
from t2ialign.world.prompts import CATEGORIES

GROUPS = {"seen": "seen", "unseen_prompt": "unseen_prompt", "unseen_object": "unseen_object"}
PAIRED_REFERENCE = "base"  # evaluate.paired compares every other model with the model of this name


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


def split_guidance(spec: str) -> tuple[str, float | None]:
    """'finetuned:full@3' -> ('finetuned:full', 3.0); a spec without a trailing @G -> (spec, None)."""
    at = re.fullmatch(r"(.+)@([0-9]+(?:\.[0-9]*)?)", spec)
    return (at[1], float(at[2])) if at else (spec, None)


def parse_models(spec: str, run_dir: Path) -> dict[str, dict]:
    """'base,finetuned,rejection' -> {name: {"kind", "path", "guidance_scale"}}. Also finetuned:NAME
    (RUN/finetune/NAME), dpo:NAME (RUN/dpo/NAME), rl:NAME (RUN/rl/NAME), loop:NAME:K (round K of
    RUN/loop/NAME), rejection:finetuned[:NAME] (best-of on a fine-tuned model), and LABEL=PATH (any local
    SD pipeline). Any of them with a trailing @G (finetuned:full@3) is sampled at guidance scale G instead
    of ``[evaluate.generate] guidance_scale`` (None: that one), under its full name."""
    out: dict[str, dict] = {}
    for full in (s.strip() for s in spec.split(",")):
        if not full:
            continue
        item, guidance = split_guidance(full)
        if guidance is not None and guidance < 1.0:
            raise ValueError(f"model {full!r}: the guidance scale after @ must be >= 1 (1 switches it off)")
        kind = "pipeline"
        name = full
        if "=" in item:
            name, path = item.split("=", 1)
            name += full[len(item) :]  # LABEL@G: the label keeps its scale
        elif item == "base":
            path = None
        elif item.startswith("finetuned"):
            ft = item.split(":", 1)[1] if ":" in item else "default"
            path = str(run_dir / "finetune" / ft / "pipeline")
        elif item.split(":", 1)[0] in ("dpo", "rl") and ":" in item:
            stage, stage_name = item.split(":", 1)
            path = str(run_dir / stage / stage_name / "pipeline")
        elif item.startswith("loop:") and item.count(":") == 2:
            _, loop_name, k = item.split(":")
            path = str(run_dir / "loop" / loop_name / f"round_{k}" / "finetune" / "pipeline")
        elif item.startswith("rejection"):
            kind = "rejection"
            inner = item.split(":", 1)[1] if ":" in item else "base"
            path = parse_models(inner, run_dir)[inner]["path"]
        else:
            raise ValueError(
                f"unknown model {item!r}: use base, finetuned[:NAME], dpo:NAME, rl:NAME, loop:NAME:K, "
                "rejection[:MODEL] or LABEL=PATH"
            )
        if name in out:
            raise ValueError(f"model {name!r} is named twice")
        if path is not None and not (Path(path) / "model_index.json").is_file():
            raise FileNotFoundError(f"model {name!r}: no diffusers pipeline at {path}")
        out[name] = {"kind": kind, "path": path, "guidance_scale": guidance}
    if not out:
        raise ValueError("no models to evaluate")
    return out


def _images_of(store: Store, model: dict, prompts: list[str], cfg: EvaluateConfig, reward, progress: bool):
    """(images, sets, model id, revision) of one model: ``images`` {prompt: {slot: image row}}, its
    images_per_prompt judged images (slot k: seed index k, or the k-th kept image of rejection sampling);
    ``sets`` {prompt: [sha256]}, its Fig. 3 set of ``keep`` images (the first ``keep`` seeds, or the best
    ``keep`` of the first ``best_of`` candidates: the paper's rejection sampling)."""
    from t2ialign.generate.images import generate, image_seed, stored_images
    from t2ialign.models.load import load_pipeline
    from t2ialign.sample.rejection import SampleConfig, load_selection, rejection_sample

    pipe, model_id, revision = load_pipeline(model["path"])
    generate_cfg = cfg.generate
    if model.get("guidance_scale") is not None:  # MODEL@G
        generate_cfg = dataclasses.replace(generate_cfg, guidance_scale=model["guidance_scale"])
    if model["kind"] == "rejection":

        def best(best_of: int, keep: int) -> dict[str, list[str]]:
            sc = SampleConfig(best_of=best_of, keep=keep, generate=generate_cfg)
            summary = rejection_sample(store, prompts, sc, reward, pipe, (model_id, revision), progress)
            selection = load_selection(store.run_dir / summary["file"])
            return {e["prompt"]: [k["sha256"] for k in e["kept"]] for e in selection["prompts"]}

        # the evaluated selection first: it generates every candidate, the paper's set reuses the first ones
        kept = best(cfg.rejection_candidates, cfg.images_per_prompt)
        sets = best(cfg.best_of, cfg.keep) if cfg.rejection_candidates != cfg.best_of else kept
        wanted = {p: dict(enumerate(kept[p])) for p in prompts}
    else:
        gen = GenerateConfig(
            **(
                to_dict(generate_cfg)
                | {"images_per_prompt": cfg.images_per_prompt, "role": "eval", "model": model["path"]}
            )
        )
        made = generate(gen, store, prompts, pipe=pipe, model_info=(model_id, revision), progress=progress)
        seeds = {
            p: [image_seed(gen.seed, "eval", p, k) for k in range(cfg.images_per_prompt)] for p in prompts
        }
        by = {
            (r["prompt"], r["seed"]): r["sha256"]
            for r in stored_images(store, model_id, revision, made["sampler"], role="eval")
        }
        # a seed whose image is missing (byte-identical to one stored before) leaves its slot empty
        wanted = {p: {k: by[(p, s)] for k, s in enumerate(seeds[p]) if (p, s) in by} for p in prompts}
        sets = {p: [wanted[p][k] for k in range(cfg.keep) if k in wanted[p]] for p in prompts}
    rows_by_key = {r["sha256"]: r for r in store.list_images(role="eval")}
    images = {p: {k: rows_by_key[sha] for k, sha in wanted[p].items()} for p in prompts}
    return images, sets, model_id, revision


def _rounded(stat: dict) -> dict:
    """A paired_bootstrap result with delta and ci95 rounded like the rest of metrics.json."""
    out = dict(stat)
    if out["delta"] is not None:
        out["delta"] = round(out["delta"], 4)
    if out["ci95"] is not None:
        out["ci95"] = [round(x, 4) for x in out["ci95"]]
    return out


def paired_report(
    by_slot: dict[str, dict[str, dict[int, dict]]],
    rewards: dict[str, dict[str, dict[int, float]]],
    cell_of: dict[str, tuple[str, str]],
    cfg: EvaluateConfig,
    reference: str = PAIRED_REFERENCE,
) -> dict:
    """``{"paired", "paired_attribute", "paired_reward"}``: each model's difference from ``reference``
    (base unless told), paired by prompt and slot, with 95% bootstrap intervals over prompts
    (``evaluate.paired.paired_bootstrap``).

    ``by_slot[model][prompt][slot]`` is the judged image (``judge_stored``'s dict), ``rewards`` the same
    for r_phi. paired: {model: {group: {category: stat}}} of alignment (judge says good); paired_attribute:
    {model: {group: {attribute: stat}}} of the judge's reading of each attribute, over the prompts that
    name it; paired_reward: {model: {group: stat}} of the reward. Groups and categories include "all".
    Empty when no model is named ``reference``."""
    out: dict[str, dict] = {"paired": {}, "paired_attribute": {}, "paired_reward": {}}
    if reference not in by_slot:
        return out
    n, seed = cfg.bootstrap_resamples, cfg.bootstrap_seed

    def values(model: str, f) -> dict[str, dict[int, float]]:
        return {p: {k: f(j) for k, j in slots.items()} for p, slots in by_slot[model].items()}

    base = by_slot[reference]
    for name in by_slot:
        if name == reference:
            continue
        pairs = pair_by_slot(values(reference, _aligned), values(name, _aligned))
        out["paired"][name] = {
            g: {c: _rounded(s) for c, s in cells.items()}
            for g, cells in paired_cells(pairs, cell_of, list(GROUPS), CATEGORIES, n, seed).items()
        }
        per_attr: dict[str, dict] = {}
        for a in vocab.ATTRIBUTES:
            # a list in base's order, not a set: the bootstrap's draws follow the prompts' order
            named = [p for p, slots in base.items() if any(a in j["attribute_hits"] for j in slots.values())]
            hits = [
                {p: {k: float(j["attribute_hits"][a]) for k, j in by_slot[m][p].items()} for p in named}
                for m in (reference, name)
            ]
            for g, cells in paired_cells(pair_by_slot(*hits), cell_of, list(GROUPS), (), n, seed).items():
                per_attr.setdefault(g, {})[a] = _rounded(cells["all"])
        out["paired_attribute"][name] = per_attr
        cells = paired_cells(
            pair_by_slot(rewards[reference], rewards[name]), cell_of, list(GROUPS), (), n, seed
        )
        out["paired_reward"][name] = {g: _rounded(c["all"]) for g, c in cells.items()}
    return out


def _aligned(judged: dict) -> float:
    return 1.0 if judged["verdict"] == "good" else 0.0  # a skip counts as not aligned, as in summarize


def _alignment(judged: list[dict]) -> dict:
    """``summarize`` per group and category, with "all" over groups and over categories."""
    alignment = {
        g: {c: summarize([j for j in judged if j["group"] == g and j["category"] == c]) for c in CATEGORIES}
        | {"all": summarize([j for j in judged if j["group"] == g])}
        for g in GROUPS
    }
    alignment["all"] = {c: summarize([j for j in judged if j["category"] == c]) for c in CATEGORIES} | {
        "all": summarize(judged)
    }
    return alignment


def _score(
    store: Store, rows: list[dict], judge, emb, reward, group_of: dict, cfg: EvaluateConfig, progress: bool
):
    """The judge's verdicts (with each image's group), r_phi's rewards, and the per-model figures: CLIP
    score, FD_CLIP (and FID with Inception weights), mean reward per group."""
    from t2ialign.evaluate.fidelity import fidelity_report
    from t2ialign.finetune.data import world_layout

    judged = judge_stored(store, rows, judge)
    for j in judged:
        j["group"] = group_of[j["prompt"]]
    shas, texts = [r["sha256"] for r in rows], [r["prompt"] for r in rows]
    emb.ensure(shas, sorted(set(texts)), progress)
    x, z = emb.images.get(shas), emb.texts.get(texts)
    rewards = reward.score_store(store, shas, texts, progress).double()  # the scorer's own CLIP
    clip_scores = (x.double() * z.double()).sum(-1)
    pixels = [(r["prompt"], store.image_array(r["sha256"])) for r in rows]
    fidelity = fidelity_report(
        pixels,
        reward.clip,
        reward.processor,
        store.run_dir / "fidelity",
        inception_path=cfg.inception,
        layout=world_layout(cfg.generate.model),  # renders placed as the base's pre-training data were
    )
    by_group = {g: round(float(rewards[[group_of[t] == g for t in texts]].mean()), 4) for g in GROUPS}
    return judged, rewards, {"clip_score": clip_scores, "fidelity": fidelity, "by_group": by_group}


def _model_entry(model, model_id, revision, cfg, judged, rewards, scores) -> dict:
    """One model's entry in ``evaluate.models`` (its "seconds" are added by the caller)."""
    return {
        "kind": model["kind"],
        "path": model["path"],
        "guidance_scale": model.get("guidance_scale") or cfg.generate.guidance_scale,
        "model_id": model_id,
        "model_revision": revision,
        "n_images": len(judged),
        "images_per_prompt": cfg.images_per_prompt,
        "alignment": _alignment(judged),
        "mean_reward": round(float(rewards.mean()), 4),
        "mean_reward_by_group": scores["by_group"],
        "clip_score": round(float(scores["clip_score"].mean()), 4),
        "fd_clip": round(scores["fidelity"]["fd_clip"], 5),
        "fid_inception": scores["fidelity"]["fid_inception"],
    }


def evaluate_models(
    store: Store,
    models: dict[str, dict],
    cfg: EvaluateConfig,
    progress: bool = True,
    judge=None,
    record: bool = True,
    also_against: tuple[str, ...] = (),
) -> dict:
    """Generate, judge and score every model on the evaluation prompts; returns the report, also written
    to metrics.json (``evaluate``) and RUN/evaluate/images.json (the images of each model and prompt)
    unless ``record`` is False (``t2ialign loop`` keeps each round's report in its own folder).

    With a model named "base": ``paired`` {model: {group: {category: {"delta", "ci95", "n_prompts",
    "n_images"}}}}, the model's aligned share minus base's on the same prompts and slots (seed indices;
    for rejection sampling, kept images) with a 95% bootstrap interval over prompts, group and category
    including "all"; ``paired_attribute`` {model: {group: {attribute: ...}}} the same for the judge's
    reading of count, color, shape and background over the prompts that name it; ``paired_reward``
    {model: {group: ...}} for r_phi's reward.

    ``also_against``: other models to pair every model against too, on the same judged images (a fine-tune
    against its control): ``paired_vs`` {reference: {"paired", ...}}, for base and each of them."""
    from t2ialign.models.embed import Embeddings
    from t2ialign.reward.model import RewardModel
    from t2ialign.world.judge import Judge

    if unknown := [r for r in also_against if r not in models]:
        raise ValueError(f"also_against names {unknown}, which are not among the models {list(models)}")
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
    category_of = {r["text"]: r["category"] for r in store.list_prompts()}
    cell_of = {p: (group_of[p], category_of[p]) for p in prompts}
    grids: dict[str, dict[str, list[str]]] = {}
    fig3_sets: dict[str, dict[str, list[str]]] = {}
    by_slot: dict[str, dict[str, dict[int, dict]]] = {}
    reward_by_slot: dict[str, dict[str, dict[int, float]]] = {}
    for name, model in models.items():
        t0 = time.time()
        # every process makes its share of the images; rank 0 alone judges and scores them
        images, sets, model_id, revision = _images_of(store, model, prompts, cfg, reward, progress)
        if not dist.is_main():
            continue
        slots = [(p, k) for p in prompts for k in images[p]]
        rows = [images[p][k] for p, k in slots]
        judged, rewards, scores = _score(store, rows, judge, emb, reward, group_of, cfg, progress)
        by_slot[name], reward_by_slot[name] = {p: {} for p in prompts}, {p: {} for p in prompts}
        for (p, k), j, rw in zip(slots, judged, rewards.tolist(), strict=True):
            by_slot[name][p][k], reward_by_slot[name][p][k] = j, rw
        report["models"][name] = _model_entry(model, model_id, revision, cfg, judged, rewards, scores) | {
            "seconds": round(time.time() - t0, 1)
        }
        if model["kind"] == "rejection":
            report["models"][name] |= {
                "selection": f"best {cfg.images_per_prompt} of {cfg.rejection_candidates} by reward",
                "fig3_selection": f"best {cfg.keep} of {cfg.best_of} by reward",
            }
        grids[name] = {p: [r["sha256"] for r in images[p].values()] for p in prompts}
        fig3_sets[name] = sets
    if dist.is_main():
        report["paired_reference"] = PAIRED_REFERENCE if PAIRED_REFERENCE in models else None
        refs = (PAIRED_REFERENCE, *also_against)
        paired = {r: paired_report(by_slot, reward_by_slot, cell_of, cfg, reference=r) for r in refs}
        report |= paired[PAIRED_REFERENCE] | ({"paired_vs": paired} if also_against else {})
        if record:
            # "images": every judged image in slot order; "sets": the sets of `keep` that Fig. 3 shows
            listing = {"prompts": groups, "images": grids, "sets": fig3_sets, "keep": cfg.keep}
            _record(store, report, listing)
    return dist.broadcast(report)  # every process returns rank 0's report, once it is written


def _record(store: Store, report: dict, listing: dict) -> None:
    """Write RUN/evaluate/images.json and metrics.json's ``evaluate`` section."""
    out = store.run_dir / "evaluate"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "images.json", json.dumps(listing, indent=1).encode())
    store.update_metrics(evaluate=report)


def format_report(report: dict) -> str:
    """One line per model and group: alignment per category with 95% intervals, reward, CLIP score, FD;
    then the paired difference from base per group and category."""
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
        paired = report.get("paired", {}).get(name)
        if paired:
            lines.append(
                "  paired - base, points [95% interval by a bootstrap over prompts] (prompts/image pairs):"
            )
            for g in [*GROUPS, "all"]:
                cells = [
                    f"{c} {_delta_text(paired[g][c])}"
                    for c in [*CATEGORIES, "all"]
                    if paired[g][c]["n_prompts"]
                ]
                lines.append(f"  {g:14s} " + "  ".join(cells))
    for ref, vs in report.get("paired_vs", {}).items():
        if ref == PAIRED_REFERENCE:
            continue
        for name, paired in vs["paired"].items():
            if name == ref:
                continue
            lines.append(f"{name} paired - {ref}, points [95% interval by a bootstrap over prompts]:")
            for g in [*GROUPS, "all"]:
                cells = [
                    f"{c} {_delta_text(paired[g][c])}"
                    for c in [*CATEGORIES, "all"]
                    if paired[g][c]["n_prompts"]
                ]
                lines.append(f"  {g:14s} " + "  ".join(cells))
    if report.get("models") and not report.get("paired_reference"):
        lines.append(
            f"no paired differences: they compare every model with the model named {PAIRED_REFERENCE!r}, "
            f"which was not evaluated (add {PAIRED_REFERENCE} to --models)"
        )
    return "\n".join(lines)


def _delta_text(s: dict) -> str:
    """'+12.3 [+4.1, +20.0] (15/300)': a paired difference in points with its interval and sizes."""
    if s["delta"] is None:
        return "—"
    ci = f" [{100 * s['ci95'][0]:+.1f}, {100 * s['ci95'][1]:+.1f}]" if s["ci95"] else " [no interval]"
    return f"{100 * s['delta']:+.1f}{ci} ({s['n_prompts']}/{s['n_images']})"
