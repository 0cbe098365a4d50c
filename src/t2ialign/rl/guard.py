"""The guard against reward hacking: independent measures of a fixed probe set, and the rule that warns
(or stops the run) when the reward rises while one of them gets worse.

The probe set is ``n_prompts`` prompts x ``seeds`` seeds, fixed for the whole run (a seeded draw from the
training prompts, the sampler's noise seeded by the probe index). At each evaluation:

- ``reward``: its mean reward (the signal being optimized);
- ``alignment``: the world judge's mean P(match) or, for real models, the mean CLIP score;
- ``fd_clip``: FD between its CLIP image embeddings and the base model's probe images';
- ``saturation``: mean HSV saturation of its pixels (reward hacking often saturates colours);
- ``diversity``: mean pairwise CLIP cosine distance between the images of one prompt (mode collapse).

The rule (``guard_alerts``): at evaluation k >= window, when reward[k] > reward[k - window], each measure
that got worse over the same window by more than its tolerance is an alert. Worse means: alignment or
diversity lower, FD_CLIP higher, saturation further from the base model's (|sat[k] - sat[0]| higher).
"""

from __future__ import annotations

import numpy as np
import torch

from t2ialign.core.seeds import stable_seed

MEASURES = ("alignment", "fd_clip", "saturation", "diversity")
# +1: a higher value is worse; -1: a lower value is worse
WORSE_WHEN = {"alignment": -1, "fd_clip": +1, "saturation": +1, "diversity": -1}


def guard_alerts(curves: dict[str, list[float]], window: int, tolerances: dict[str, float]) -> list[str]:
    """The alerts of the latest evaluation: one line per measure that got worse by more than its
    tolerance over the last ``window`` evaluations while the reward rose; [] otherwise. ``curves`` maps
    "reward" and the MEASURES to their values at each evaluation so far (index 0: before training)."""
    reward = curves["reward"]
    k = len(reward) - 1
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if k < window or not reward[k] > reward[k - window]:
        return []
    alerts = []
    for m in MEASURES:
        values = curves.get(m)
        if not values or len(values) != len(reward):
            continue
        if m == "saturation":  # drift from the base model's (evaluation 0), in either direction
            values = [abs(v - values[0]) for v in values]
        worse = WORSE_WHEN[m] * (values[k] - values[k - window])
        if worse > tolerances[m]:
            alerts.append(
                f"reward rose {reward[k - window]:.4g} -> {reward[k]:.4g} while {m} got worse "
                f"{values[k - window]:.4g} -> {values[k]:.4g} (tolerance {tolerances[m]:g}) "
                f"over the last {window} evaluations"
            )
    return alerts


def fd(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N, D) each, N >= 2 (the FID formula,
    ||mu_a - mu_b||^2 + Tr(S_a) + Tr(S_b) - 2 Tr((S_a S_b)^{1/2}), float64). The same number as
    evaluate.fidelity's FD_CLIP, which this layer may not import; Tr((S_a S_b)^{1/2}) as the sum of the
    square roots of the eigenvalues of B^T S_b B with S_a = B B^T (real even when S_a is singular)."""
    a, b = features_a.double().numpy(), features_b.double().numpy()
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    w, v = np.linalg.eigh(s_a)
    half = v * np.sqrt(np.clip(w, 0.0, None))  # (D, D): B with S_a = B B^T
    m = half.T @ s_b @ half
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0.0, None)).sum()
    diff = mu_a - mu_b
    return max(float(diff @ diff + np.trace(s_a) + np.trace(s_b) - 2.0 * tr_sqrt), 0.0)


def probe_set(prompts: list[str], n_prompts: int, seeds: int, seed: int) -> list[str]:
    """The probe prompts, each repeated ``seeds`` times (n_prompts x seeds texts, prompt-major): a seeded
    draw of min(n_prompts, len(prompts)) of the training prompts."""
    rng = np.random.default_rng(stable_seed("rl-probe-prompts", seed))
    chosen = sorted(rng.choice(len(prompts), size=min(n_prompts, len(prompts)), replace=False).tolist())
    return [prompts[i] for i in chosen for _ in range(seeds)]


def saturation(images: list) -> float:
    """Mean HSV saturation (max - min) / max of every pixel of (H, W, 3) uint8 images (0 where max is 0)."""
    x = np.stack([np.asarray(im, dtype=np.float64) / 255.0 for im in images])
    hi, lo = x.max(-1), x.min(-1)
    return float(np.where(hi > 0, (hi - lo) / np.maximum(hi, 1e-12), 0.0).mean())


def diversity(embeddings: torch.Tensor, prompts: list[str]) -> float:
    """Mean over prompts of the mean pairwise cosine distance 1 - <e_i, e_j> between the L2-normalized
    embeddings (N, D) of one prompt's images (prompts with one image are left out)."""
    emb = embeddings.double()
    per_prompt = []
    for p in dict.fromkeys(prompts):
        e = emb[[i for i, q in enumerate(prompts) if q == p]]
        n = len(e)
        if n < 2:
            continue
        sims = e @ e.T
        per_prompt.append(float((n * n - sims.sum()) / (n * (n - 1))))  # the diagonal's 1s give 0 distance
    if not per_prompt:
        raise ValueError("diversity needs a prompt with at least 2 images")
    return float(np.mean(per_prompt))


class Probe:
    """The probe set and the scorers of the independent measures; ``measure(images)`` scores one set of
    probe images. ``base`` (the base model's probe images) fixes FD_CLIP's reference."""

    def __init__(self, prompts: list[str], reward, alignment: str, clip_path: str | None, base_images: list):
        from t2ialign.models.load import load_clip

        self.prompts, self.reward, self.alignment = prompts, reward, alignment
        self.clip, self.processor, _ = load_clip(clip_path)
        self.judge = None
        if alignment == "judge":
            from t2ialign.world.judge import Judge

            self.judge = Judge.load()
        self.base_features = self._features(base_images)

    def _features(self, images: list) -> torch.Tensor:
        from t2ialign.models.embed import embed_images

        return embed_images(self.clip, self.processor, list(images))  # (N, D), L2-normalized

    def measure(self, images: list) -> dict[str, float]:
        from t2ialign.models.embed import embed_texts

        feats = self._features(images)
        if self.judge is not None:
            align = float(np.mean([v.p_match for v in self.judge.judge(images, self.prompts)]))
        else:
            texts = embed_texts(self.clip, self.processor, self.prompts)
            align = float((feats * texts).sum(-1).mean())
        return {
            "reward": float(self.reward(images, self.prompts).mean()),
            "alignment": align,
            "fd_clip": fd(feats, self.base_features),
            "saturation": saturation(images),
            "diversity": diversity(feats, self.prompts),
        }
