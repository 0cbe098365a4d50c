"""The report's comparison of methods (issue 17, part 5): every evaluated model on the same evaluation.

One row per model of ``evaluate.models`` other than base: the method that made it, its paired difference
from base (``evaluate.paired``: the same prompts and seeds, a bootstrap interval over prompts) for count on
each group and for all categories, its FD_CLIP and mean reward, the labels its training used, and its wall
time. The method, labels and time are read from the record of the stage that made the model, found by the
model's folder: RUN/finetune/NAME (the paper's method and its ablations), RUN/loop/NAME/round_K (K rounds),
RUN/dpo/NAME (Diffusion-DPO), RUN/rl/NAME (online RL); rejection sampling is a model of kind "rejection".

"Labels" counts labeled images (binary feedback) or answered pairs (pairwise feedback), the unit each
method consumes; a reward-weighted method counts the images its reward model was trained on.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

COLUMNS = (("seen", "count"), ("unseen_prompt", "count"), ("unseen_object", "count"), ("all", "all"))


def _sub(path: str | None, run_dir: Path) -> tuple[str, ...] | None:
    """The parts of ``path`` below ``run_dir`` (None when it is elsewhere or missing)."""
    if not path:
        return None
    try:
        # absolute, not resolved: a model folder may be a link to weights elsewhere
        return Path(os.path.abspath(path)).relative_to(os.path.abspath(run_dir)).parts
    except ValueError:
        return None


def _reward_labels(metrics: dict) -> Any:
    return (metrics.get("reward_train") or {}).get("n_train")


def _finetune_record(metrics: dict, name: str) -> dict:
    rep = (metrics.get("finetune") or {}).get(name) or {}
    weights = rep.get("weights")
    labels = {"reward": _reward_labels(metrics), "labels": rep.get("n_model")}.get(weights, 0)
    method = {
        "reward": "paper: reward-weighted fine-tuning, 1 round",
        "labels": "fine-tuning weighted by the labels",
        "uniform": "control: fine-tuning, no reward",
        "none": "control: D_pre alone",
    }.get(weights, "fine-tuning")
    return {"method": f"{method} ({name})", "labels": labels, "seconds": rep.get("seconds")}


def _loop_record(metrics: dict, name: str, round_dir: str) -> dict:
    k = int(round_dir.split("_", 1)[1]) if round_dir.startswith("round_") else None
    rounds = [
        r for r in ((metrics.get("loop") or {}).get(name) or {}).get("rounds") or [] if isinstance(r, dict)
    ]
    upto = [r for r in rounds if k is not None and isinstance(r.get("round"), int) and 1 <= r["round"] <= k]
    mine = upto[-1] if upto and upto[-1].get("round") == k else {}
    walls = [r.get("wall_s") for r in upto]
    seconds = sum(walls) if walls and all(isinstance(w, int | float) for w in walls) else None
    return {
        "method": f"paper's method, {k} rounds (loop {name})",
        "labels": mine.get("labels_total"),
        "seconds": seconds,
    }


def _dpo_record(metrics: dict, name: str) -> dict:
    rep = (metrics.get("dpo") or {}).get(name) or {}
    source = "binary labels" if rep.get("pairs") == "labels" else "pairwise feedback"
    # from labels: the labeled images its pairs are made of; from pairwise feedback: the pairs answered
    labels = rep.get("n_images") if rep.get("pairs") == "labels" else rep.get("n_pairs")
    return {
        "method": f"Diffusion-DPO from {source} ({name})",
        "labels": labels,
        "seconds": rep.get("seconds"),
    }


def _rl_record(metrics: dict, name: str) -> dict:
    rep = (metrics.get("rl") or {}).get(name) or {}
    kl = _kl_of(rep)
    method = "online RL (DDPO" + (f", KL {kl:g})" if kl else ", no KL)")
    return {"method": f"{method} ({name})", "labels": rep.get("labels_used"), "seconds": rep.get("wall_s")}


def _kl_of(rep: dict) -> float | None:
    kl = rep.get("kl_weight")
    return kl if isinstance(kl, int | float) else None


def method_record(metrics: dict, name: str, model: dict, run_dir: Path) -> dict:
    """{"method", "labels", "seconds"} of an evaluated model, from the record of the stage that made it."""
    if model.get("kind") == "rejection":
        ev_cfg = (metrics.get("evaluate") or {}).get("config") or {}
        what = f"best {ev_cfg.get('images_per_prompt', '?')} of {ev_cfg.get('rejection_candidates', '?')}"
        return {
            "method": f"rejection sampling, {what} by reward",
            "labels": _reward_labels(metrics),
            "seconds": model.get("seconds"),
        }
    parts = _sub(model.get("path"), run_dir) or ()
    if len(parts) >= 2 and parts[0] == "finetune":
        return _finetune_record(metrics, parts[1])
    if len(parts) >= 3 and parts[0] == "loop":
        return _loop_record(metrics, parts[1], parts[2])
    if len(parts) >= 2 and parts[0] == "dpo":
        return _dpo_record(metrics, parts[1])
    if len(parts) >= 2 and parts[0] == "rl":
        return _rl_record(metrics, parts[1])
    return {"method": "a pipeline from outside this run", "labels": None, "seconds": None}


def comparison_rows(metrics: dict, run_dir: Path, cell, num) -> list[list[Any]]:
    """The table's rows; ``cell(stat)`` formats a paired difference, ``num(x, fmt)`` a number."""
    ev = metrics.get("evaluate") or {}
    models, paired = ev.get("models") or {}, ev.get("paired") or {}
    rows = []
    for name, m in models.items():
        if name == "base" or not isinstance(m, dict):
            continue
        rec = method_record(metrics, name, m, run_dir)
        deltas = [cell(((paired.get(name) or {}).get(g) or {}).get(c)) for g, c in COLUMNS]
        rows.append(
            [rec["method"], name, *deltas, num(m.get("fd_clip"), ".4g"), num(m.get("mean_reward"), ".3f")]
            + [num(rec["labels"], "d"), num(rec["seconds"], ".0f")]
        )
    return rows


HEADER = [
    "method",
    "model",
    "count, seen",
    "count, unseen prompts",
    "count, unseen objects",
    "all categories, all prompts",
    "FD_CLIP ↓",
    "mean reward",
    "labels",
    "wall s",
]
