"""The feedback dataset D_human (paper Sec. 3.1-3.2): labeled images with their prompts and targets."""

from __future__ import annotations

import random
from collections import defaultdict

from sqlalchemy import select

from t2ialign.reward.losses import labels_to_targets
from t2ialign.store import Store
from t2ialign.store.schema import ImageRow, LabelerRow, LabelRow, PromptRow


def labeled_images(store: Store, role: str = "human") -> list[dict]:
    """Images of ``role`` with at least one good/bad label: sha256, prompt, split, category, labels, y.

    y is the mean of the good (1) / bad (0) labels, skips ignored (``losses.labels_to_targets``); images
    with only skips are left out, as the paper leaves skipped queries out of training (footnote 3). Labels
    of labelers excluded with ``t2ialign label exclude`` are left out too (their rows stay in the store).
    """
    q = (
        select(ImageRow.sha256, PromptRow.text, PromptRow.split, PromptRow.category, LabelRow.value)
        .join(PromptRow, ImageRow.prompt_id == PromptRow.id)
        .join(LabelRow, LabelRow.image_id == ImageRow.id)
        .join(LabelerRow, LabelRow.labeler_id == LabelerRow.id)
        .where(ImageRow.role == role, LabelerRow.excluded.is_(False))
        .order_by(ImageRow.id, LabelRow.id)
    )
    rows: dict[str, dict] = {}
    with store.session() as s:
        for sha, text, split, category, value in s.execute(q):
            r = rows.setdefault(
                sha, {"sha256": sha, "prompt": text, "split": split, "category": category, "labels": []}
            )
            r["labels"].append(value)
    out = [r for r in rows.values() if any(v != "skip" for v in r["labels"])]
    if out:
        for r, y in zip(out, labels_to_targets([r["labels"] for r in out]).tolist(), strict=True):
            r["y"] = y
    return out


def split_train_val(items: list[dict], val_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Held-out images of seen prompts: a seeded share of each seen prompt's images goes to validation
    (23k / 4.5k in the paper). Images of unseen prompts and unseen objects are never trained on."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    seen = sorted((r for r in items if r["split"] == "seen"), key=lambda r: r["sha256"])
    order = list(range(len(seen)))
    random.Random(f"val:{seed}").shuffle(order)
    n_val = round(val_fraction * len(seen))
    val_idx = set(order[:n_val])
    return [r for i, r in enumerate(seen) if i not in val_idx], [
        r for i, r in enumerate(seen) if i in val_idx
    ]


def halve_per_prompt(items: list[dict], seed: int) -> list[dict]:
    """Half of each prompt's images, seeded: the paper's smaller-dataset ablation (Fig. 4b)."""
    by_prompt = defaultdict(list)
    for r in sorted(items, key=lambda r: r["sha256"]):
        by_prompt[r["prompt"]].append(r)
    out = []
    for prompt, rs in sorted(by_prompt.items()):
        random.Random(f"half:{seed}:{prompt}").shuffle(rs)
        out += rs[: max(1, len(rs) // 2)]
    return out


def preference_pairs(items: list[dict]) -> list[tuple[dict, dict]]:
    """Pairs of images of one prompt that labelers judged differently: (preferred, other), y_a > y_b
    (the evaluation of the paper's Fig. 4)."""
    by_prompt = defaultdict(list)
    for r in items:
        by_prompt[r["prompt"]].append(r)
    pairs = []
    for rs in by_prompt.values():
        rs = sorted(rs, key=lambda r: r["sha256"])
        for i, a in enumerate(rs):
            for b in rs[i + 1 :]:
                if a["y"] != b["y"]:
                    pairs.append((a, b) if a["y"] > b["y"] else (b, a))
    return pairs
