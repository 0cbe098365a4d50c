"""Paired differences from the base model with a bootstrap over prompts (``evaluate.paired`` in metrics.json).

The paper compares models on the same 120 prompts (Sec. 4.2): here every model also gets the same seeds, so
two models' alignment differs less by chance than two independent samples would. The paired difference
of a model from base is the share of the model's images judged aligned minus the base's, over the same
(prompt, seed) slots; its 95% interval comes from a percentile bootstrap that resamples *prompts* with
replacement and keeps, for each drawn prompt, the model's and the base's images together. Prompts are the
unit because images of one prompt share its difficulty: resampling images would count 20 images of one
hard prompt as 20 independent draws and give too narrow an interval.

When cells of several categories (or groups) are pooled, prompts are drawn within each stratum (one per
group and category), as many as it has, so every resample keeps the evaluation's mix of categories.

This module is pure (numpy only); ``evaluate.run.evaluate_models`` feeds it the judge's verdicts.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np

N_RESAMPLES = 4000  # bootstrap resamples; the 2.5% and 97.5% quantiles move by < 0.3 points between seeds
LEVEL = 0.95


def paired_bootstrap(
    base: Sequence[Sequence[float]],
    model: Sequence[Sequence[float]],
    strata: Sequence[Hashable] | None = None,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> dict:
    """Paired difference model - base, with a percentile bootstrap 95% interval over prompts.

    ``base[i]`` and ``model[i]`` are the per-image values of prompt i over the same slots (seeds), equal in
    length: aligned indicators (0 / 1, the judge's "good") for alignment, or rewards. ``strata[i]`` (e.g.
    "seen:count") is the stratum of prompt i; resampling draws within each stratum as many prompts as it
    holds. Prompts with no images are left out.

    The statistic is the pooled difference sum_ik (model_ik - base_ik) / sum_i n_i: with the same number
    of images per prompt, the difference of the two models' aligned shares, in fractions (0.05 = 5
    points). Returns ``{"delta", "ci95": [lo, hi], "n_prompts", "n_images"}`` (n_images: image pairs);
    delta and ci95 are None when no prompt has images, ci95 also when fewer than 2 prompts do (one prompt
    has no spread to resample). Same inputs and seed, same result.
    """
    if len(base) != len(model):
        raise ValueError(f"base has {len(base)} prompts and model {len(model)}: give both the same prompts")
    if strata is None:
        strata = [None] * len(base)
    if len(strata) != len(base):
        raise ValueError(f"{len(strata)} strata for {len(base)} prompts")
    if not isinstance(n_resamples, int) or isinstance(n_resamples, bool) or n_resamples < 1:
        raise ValueError(f"n_resamples must be an integer >= 1, got {n_resamples!r}")
    diff_sums, sizes, labels = [], [], []
    for i, (b, m) in enumerate(zip(base, model, strict=True)):
        b, m = np.asarray(b, dtype=np.float64), np.asarray(m, dtype=np.float64)
        if b.ndim != 1 or b.shape != m.shape:
            raise ValueError(
                f"prompt {i}: base has {b.size} images and model {m.size}; pair them by seed first "
                "(the same slots for both)"
            )
        if not (np.isfinite(b).all() and np.isfinite(m).all()):
            raise ValueError(f"prompt {i}: values must be finite")
        if b.size:
            diff_sums.append(float((m - b).sum()))
            sizes.append(b.size)
            labels.append(strata[i])
    n_prompts, n_images = len(sizes), int(sum(sizes))
    if n_prompts == 0:
        return {"delta": None, "ci95": None, "n_prompts": 0, "n_images": 0}
    d, n = np.array(diff_sums), np.array(sizes, dtype=np.float64)
    delta = float(d.sum() / n.sum())
    if n_prompts < 2:
        return {"delta": delta, "ci95": None, "n_prompts": n_prompts, "n_images": n_images}
    rng = np.random.default_rng(seed)
    tot_d, tot_n = np.zeros(n_resamples), np.zeros(n_resamples)
    order = {}
    for label in labels:  # strata in order of first appearance: the draws do not depend on hashing
        order.setdefault(label, len(order))
    for label in order:
        idx = np.flatnonzero([lab == label for lab in labels])
        draw = idx[rng.integers(0, idx.size, size=(n_resamples, idx.size))]  # (B, prompts of the stratum)
        tot_d += d[draw].sum(axis=1)
        tot_n += n[draw].sum(axis=1)
    stats = tot_d / tot_n  # (B,)
    alpha = (1 - LEVEL) / 2
    lo, hi = np.quantile(stats, [alpha, 1 - alpha])  # sums of 0 / 1 are exact: a constant shift gives [d, d]
    return {"delta": delta, "ci95": [float(lo), float(hi)], "n_prompts": n_prompts, "n_images": n_images}


def pair_by_slot(
    base: Mapping[str, Mapping[int, float]], model: Mapping[str, Mapping[int, float]]
) -> dict[str, tuple[list[float], list[float]]]:
    """{prompt: (base's values, model's values)} over the slots both models have, in slot order.

    A slot is an image's place among its prompt's images: seed index k for a sampled model, the k-th
    kept image for rejection sampling. A slot one model lacks (a degenerate model can make byte-identical
    images, which the store keeps once) drops out of that prompt's pairs; a prompt the model lacks
    entirely has no pairs (and drops out of the bootstrap)."""
    out = {}
    for prompt, b in base.items():
        m = model.get(prompt, {})
        slots = sorted(b.keys() & m.keys())
        out[prompt] = ([b[k] for k in slots], [m[k] for k in slots])
    return out


def paired_cells(
    pairs: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    cell_of: Mapping[str, tuple[str, str]],
    groups: Sequence[str],
    categories: Sequence[str],
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> dict[str, dict[str, dict]]:
    """``{group: {category: paired_bootstrap(...)}}`` for every group and category given and their "all"
    (the pooled cells resample within (group, category) strata). ``cell_of[prompt]`` = (group, category);
    prompts of ``pairs`` outside the given groups or categories count only in the "all" cells."""
    out: dict[str, dict[str, dict]] = {}
    for g in [*groups, "all"]:
        out[g] = {}
        for c in [*categories, "all"]:
            chosen = [
                p for p in pairs if (g == "all" or cell_of[p][0] == g) and (c == "all" or cell_of[p][1] == c)
            ]
            out[g][c] = paired_bootstrap(
                [pairs[p][0] for p in chosen],
                [pairs[p][1] for p in chosen],
                [cell_of[p] for p in chosen],
                n_resamples,
                seed,
            )
    return out
