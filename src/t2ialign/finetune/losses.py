"""Eq. 4 in its diffusion form (paper Sec. 3.3): reward-weighted denoising MSE on D_model plus beta times
the unweighted denoising MSE on D_pre. Pure functions on tensors, tested against hand-computed numbers.

The negative log-likelihood -log p(x | z) of a diffusion model is bounded by a weighted sum of denoising
errors; like the paper (citing Ho et al.'s simplified objective) we use the plain per-sample MSE as its
stand-in, so -r log p becomes r * ||target - prediction||^2.
"""

from __future__ import annotations

import torch

from t2ialign.core.training import lr_factor


def denoising_target(noise_scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor):
    """What the UNet is trained to predict: the noise (epsilon) or the velocity (v-prediction)."""
    kind = noise_scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return noise_scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unsupported prediction_type {kind!r} (epsilon or v_prediction)")


def per_sample_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W), (B, C, H, W) -> (B,): each sample's mean squared error, in float32."""
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ")
    return (prediction.float() - target.float()).pow(2).flatten(1).mean(1)


def reward_weighted_loss(per_sample: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """First term of Eq. 4: mean_i w_i * l_i over a batch of D_model. (B,), (B,) -> scalar."""
    if per_sample.shape != weights.shape or per_sample.dim() != 1:
        raise ValueError(
            f"losses {tuple(per_sample.shape)} and weights {tuple(weights.shape)} must both be (B,)"
        )
    return (weights.to(per_sample.dtype) * per_sample).mean()


def eq4_loss(
    model_losses: torch.Tensor,
    weights: torch.Tensor,
    pretrain_losses: torch.Tensor | None,
    beta: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Eq. 4: mean(w * l_model) + beta * mean(l_pre). Returns the loss and its two terms (detached)."""
    weighted = reward_weighted_loss(model_losses, weights)
    if beta == 0 or pretrain_losses is None:
        if beta != 0:
            raise ValueError("beta > 0 needs a batch of D_pre")
        return weighted, {"model": weighted.detach(), "pretrain": torch.zeros(())}
    pre = pretrain_losses.mean()
    return weighted + beta * pre, {"model": weighted.detach(), "pretrain": pre.detach()}


def clamp_rewards(rewards: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Rewards as weights: finite, clamped into [low, high]; a non-finite reward is an error."""
    if not bool(torch.isfinite(rewards).all()):
        raise ValueError("rewards contain NaN or Inf: the reward model or its embeddings are broken")
    return rewards.clamp(low, high)


def lr_at(step: int, learning_rate: float, warmup_steps: int) -> float:
    """Linear warm-up over ``warmup_steps`` optimizer steps, then constant (diffusers' constant_with_warmup):
    ``core.training.lr_factor``'s "constant" schedule. A pure function of the step: resuming needs no
    scheduler state, and every process agrees."""
    return learning_rate * lr_factor(step, warmup_steps, 0, "constant")


def timestep_weights(
    num_timesteps: int, strategy: str, multiplier: float, portion: float, begin: int, end: int
) -> torch.Tensor | None:
    """The odds of each training timestep under diffusers' timestep bias (train_text_to_image_sdxl.py):
    "later" / "earlier" multiply the last / first ``portion`` of the timesteps by ``multiplier``, "range"
    the timesteps in [begin, end); normalised to sum to 1. "none" is None: uniform draws."""
    if strategy == "none":
        return None
    if multiplier <= 0:
        raise ValueError(f"the timestep bias multiplier must be > 0, got {multiplier}")
    n = max(1, int(portion * num_timesteps))
    chosen = {
        "later": slice(num_timesteps - n, num_timesteps),
        "earlier": slice(0, n),
        "range": slice(begin, min(end, num_timesteps)),
    }.get(strategy)
    if chosen is None:
        raise ValueError(f"unknown timestep bias strategy {strategy!r}")
    if begin >= num_timesteps and strategy == "range":
        raise ValueError(f"timestep bias range [{begin}, {end}) lies outside the {num_timesteps} timesteps")
    w = torch.ones(num_timesteps, dtype=torch.float64)
    w[chosen] *= multiplier
    return w / w.sum()
