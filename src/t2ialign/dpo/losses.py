"""The Diffusion-DPO loss (Wallace et al. 2023, Eq. 14 in its per-sample form): pure functions on tensors,
tested against hand-computed numbers.

For a pair (winner w, loser l) of one prompt noised with the same noise to the same timestep, let e be a
model's per-sample denoising MSE. The policy's preference margin over the frozen reference is

    inside = -beta / 2 * ((e_w - e_l) - (ref_e_w - ref_e_l))

and the loss is -log sigmoid(inside): it falls when the policy lowers the winner's error (relative to
the reference) more than the loser's. The reference code (SalesforceAIResearch/DiffusionDPO, train.py)
writes the same with ``scale_term = -0.5 * beta_dpo``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def diffusion_dpo_loss(
    model_w: torch.Tensor,
    model_l: torch.Tensor,
    ref_w: torch.Tensor,
    ref_l: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean DPO loss over P pairs from the per-sample MSEs (each (P,)) of the policy and the reference on
    winners and losers. Returns the loss and detached stats:

    - ``implicit_accuracy``: share of pairs whose margin is > 0 (the policy prefers the winner more than
      the reference does);
    - ``reward_margin``: mean margin ``inside`` (the implicit reward of the winner minus the loser's);
    - ``model_mse`` / ``ref_mse``: mean denoising MSE of the policy / the reference over both images.
    """
    shapes = {tuple(x.shape) for x in (model_w, model_l, ref_w, ref_l)}
    if len(shapes) != 1 or model_w.dim() != 1:
        raise ValueError(f"the four per-sample losses must all be (P,), got shapes {sorted(shapes)}")
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    ref_w, ref_l = ref_w.detach(), ref_l.detach()  # the reference is frozen: no gradient reaches it
    inside = -0.5 * beta * ((model_w - model_l) - (ref_w - ref_l))  # (P,)
    loss = -F.logsigmoid(inside).mean()
    stats = {
        "implicit_accuracy": (inside > 0).float().mean().detach(),
        "reward_margin": inside.mean().detach(),
        "model_mse": 0.5 * (model_w.mean() + model_l.mean()).detach(),
        "ref_mse": 0.5 * (ref_w.mean() + ref_l.mean()),
    }
    return loss, stats
