"""DDPO's PPO-clipped policy loss (Black et al. 2023, Eq. 4 with PPO's clip) and DPOK's KL penalty (Fan et
al. 2023, Eq. 8's per-step bound): pure functions on tensors, tested against hand-computed numbers.

For one denoising step of one trajectory with advantage A and the ratio r = p_theta / p_old of the
recorded transition's probability under the current policy and the policy that sampled it,

    loss = max(-A * r, -A * clip(r, 1 - eps, 1 + eps))

averaged over the batch (ddpo-pytorch's ``train.py``). At r = 1 it is -A, and its gradient is -A * grad r:
the REINFORCE gradient of the advantage; outside [1 - eps, 1 + eps] in the direction A pushes, it is
constant and has no gradient.
"""

from __future__ import annotations

import torch


def ppo_clipped_loss(
    log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, clip_range: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean PPO loss over B transitions (each input (B,)). Returns the loss and detached stats:
    ``clipfrac`` (share of ratios outside [1 - eps, 1 + eps]) and ``approx_kl`` (mean of
    (log r)^2 / 2, ddpo-pytorch's estimate of the policy's move since sampling)."""
    shapes = {tuple(x.shape) for x in (log_prob, old_log_prob, advantages)}
    if len(shapes) != 1 or log_prob.dim() != 1:
        raise ValueError(f"log_prob, old_log_prob and advantages must all be (B,), got {sorted(shapes)}")
    if not clip_range > 0:
        raise ValueError(f"clip_range must be > 0, got {clip_range}")
    log_ratio = log_prob - old_log_prob.detach()
    ratio = log_ratio.exp()
    adv = advantages.detach()
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()
    stats = {
        "clipfrac": ((ratio - 1.0).abs() > clip_range).float().mean().detach(),
        "approx_kl": (0.5 * log_ratio**2).mean().detach(),
    }
    return loss, stats


def gaussian_kl(mean_policy: torch.Tensor, mean_base: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(B,) KL(N(mean_policy, std^2) || N(mean_base, std^2)) per latent dimension, averaged over the
    dimensions as the log-probabilities are: ||mean_policy - mean_base||^2 / (2 std^2) / D.

    For a DDIM step the two means differ only through the model's noise prediction, so this is DPOK's
    ||eps_theta - eps_base||^2 scaled by the step's coefficient and variance. The base mean is detached."""
    std = torch.as_tensor(std, dtype=mean_policy.dtype, device=mean_policy.device).expand_as(mean_policy)
    return ((mean_policy - mean_base.detach()) ** 2 / (2 * std**2)).flatten(1).mean(1)


def rl_loss(ppo: torch.Tensor, kl: torch.Tensor | None, kl_weight: float) -> torch.Tensor:
    """The step's objective: the PPO loss plus kl_weight times the mean KL to the base (None: no KL)."""
    if kl is None or kl_weight == 0:
        return ppo
    return ppo + kl_weight * kl.mean()
