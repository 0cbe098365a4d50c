"""The reward-learning losses of the paper (Sec. 3.2), as small pure functions.

Shapes: B images in a batch, N prompts per image in the prompt-classification task (the original and its
N - 1 perturbations).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def labels_to_targets(labels: list[list[str]]) -> torch.Tensor:
    """y per image: the mean of its good (1) / bad (0) labels, skips ignored (paper footnote 3).

    Why the mean: for MSE, one example per label gives sum_l (y_l - r)^2 = n (ybar - r)^2 + const, so
    training on the mean is the same objective up to a per-image weight n (the number of non-skip labels)
    and a constant; with k labels per image the weights are equal, and the mean is k times cheaper.
    Raises ValueError for a label outside good/bad/skip or an image with no good/bad label.
    """
    out = []
    for i, labs in enumerate(labels):
        bad_values = [v for v in labs if v not in ("good", "bad", "skip")]
        if bad_values:
            raise ValueError(f"image {i}: labels must be good, bad or skip, got {bad_values[0]!r}")
        votes = [1.0 if v == "good" else 0.0 for v in labs if v != "skip"]
        if not votes:
            raise ValueError(f"image {i} has no good or bad label (only skips): it cannot be a target")
        out.append(sum(votes) / len(votes))
    return torch.tensor(out, dtype=torch.float32)


def mse_loss(rewards: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Eq. 1: E[(y - r_phi(x, z))^2]. rewards, targets: (B,); targets in [0, 1]."""
    if rewards.shape != targets.shape:
        raise ValueError(f"rewards {tuple(rewards.shape)} and targets {tuple(targets.shape)} differ in shape")
    if targets.numel() and (float(targets.min()) < 0.0 or float(targets.max()) > 1.0):
        raise ValueError("targets must lie in [0, 1] (1 = good, 0 = bad)")
    return F.mse_loss(rewards, targets)


def prompt_classification_loss(
    rewards: torch.Tensor, original: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Eq. 2: cross-entropy of P(i | x, {z_j}) = softmax_j(r_phi(x, z_j) / T) against the original's index.

    rewards: (B, N) rewards of each image with its N candidate prompts; original: (B,) index of the
    original prompt among them (i' in the paper).
    """
    if temperature <= 0:
        raise ValueError(f"the temperature T must be > 0, got {temperature}")
    if rewards.ndim != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be (B, N) with N >= 2 prompts per image, got {tuple(rewards.shape)}")
    return F.cross_entropy(rewards / temperature, original)


def reward_loss(mse: torch.Tensor, pc: torch.Tensor | None, pc_weight: float) -> torch.Tensor:
    """Eq. 3: L_reward = L_MSE + lambda * L_pc (lambda = pc_weight; the PC term is skipped at lambda 0)."""
    if pc_weight < 0:
        raise ValueError(f"lambda must be >= 0, got {pc_weight}")
    if pc is None or pc_weight == 0:
        return mse
    return mse + pc_weight * pc


def bradley_terry_loss(r_a: torch.Tensor, r_b: torch.Tensor, p_a: torch.Tensor) -> torch.Tensor:
    """Beyond the paper: the Bradley-Terry loss of pairwise feedback (as PickScore and ImageReward train).

    P(a preferred over b) = sigmoid(r_a - r_b); the loss is its cross-entropy against p_a (B,), the raters'
    share preferring a (1: a, 0: b, 0.5: a tie, as PickScore counts ties). r_a, r_b: (B,) rewards.
    """
    if not (r_a.shape == r_b.shape == p_a.shape) or r_a.ndim != 1:
        raise ValueError(
            f"r_a, r_b and p_a must be (B,) alike, got {tuple(r_a.shape)}, {tuple(r_b.shape)}, {tuple(p_a.shape)}"
        )
    if p_a.numel() and (float(p_a.min()) < 0.0 or float(p_a.max()) > 1.0):
        raise ValueError("p_a must lie in [0, 1] (1 = a preferred, 0 = b, 0.5 = tie)")
    return F.binary_cross_entropy_with_logits(r_a - r_b, p_a)
