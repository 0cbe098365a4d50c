"""DDIM sampling with eta > 0 as a policy: every denoising step is a Gaussian transition whose
log-probability the PPO loss needs (DDPO, Black et al. 2023, Sec. 4.2).

One DDIM step (Song et al. 2021, Eq. 12) from x_t at alpha-bar a_t to the previous timestep at a_prev:

    x0_hat = the model's clean-sample prediction, eps_hat its noise prediction
    std    = eta * sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
    mean   = sqrt(a_prev) * x0_hat + sqrt(1 - a_prev - std^2) * eps_hat
    x_prev ~ N(mean, std^2 I)

As ddpo-pytorch (``ddim_with_logprob.py``) the log-probability is the mean over latent dimensions of the
Gaussian log-density, one number per sample. The pure functions below are tested by hand; ``sample``
runs the whole chain with classifier-free guidance as StableDiffusionPipeline does it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from t2ialign.core.seeds import stable_seed

PREDICTION_TYPES = ("epsilon", "v_prediction")


def predictions(x_t: torch.Tensor, model_output: torch.Tensor, alpha_t: torch.Tensor, prediction_type: str):
    """(x0_hat, eps_hat) from the UNet's output at x_t (each (B, C, h, w); alpha_t broadcastable)."""
    if prediction_type == "epsilon":
        eps = model_output
        return (x_t - (1 - alpha_t).sqrt() * eps) / alpha_t.sqrt(), eps
    if prediction_type == "v_prediction":
        x0 = alpha_t.sqrt() * x_t - (1 - alpha_t).sqrt() * model_output
        return x0, alpha_t.sqrt() * model_output + (1 - alpha_t).sqrt() * x_t
    raise ValueError(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, got {prediction_type!r}")


def ddim_std(alpha_t: torch.Tensor, alpha_prev: torch.Tensor, eta: float) -> torch.Tensor:
    """The step's standard deviation, eta times DDPM's posterior one."""
    variance = (1 - alpha_prev) / (1 - alpha_t) * (1 - alpha_t / alpha_prev)
    return eta * variance.clamp(min=0).sqrt()


def ddim_transition(x_t, model_output, alpha_t, alpha_prev, eta: float, prediction_type: str = "epsilon"):
    """(mean, std) of the Gaussian of x_prev given x_t: mean (B, C, h, w), std broadcastable to it."""
    x0, eps = predictions(x_t, model_output, alpha_t, prediction_type)
    std = ddim_std(alpha_t, alpha_prev, eta)
    mean = alpha_prev.sqrt() * x0 + (1 - alpha_prev - std**2).clamp(min=0).sqrt() * eps
    return mean, std


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(B,) the mean over non-batch dimensions of log N(x; mean, std^2), per sample."""
    std = torch.as_tensor(std, dtype=mean.dtype, device=mean.device).expand_as(mean)
    lp = -((x.detach() - mean) ** 2) / (2 * std**2) - std.log() - 0.5 * math.log(2 * math.pi)
    return lp.flatten(1).mean(1)


@dataclass
class Chain:
    """The sampler's schedule: timesteps (S,) and, per step i, alpha-bar at t_i and at the next one."""

    timesteps: torch.Tensor  # (S,) long, descending
    alpha_t: torch.Tensor  # (S,)
    alpha_prev: torch.Tensor  # (S,)
    prediction_type: str

    def at(self, idx: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Timesteps (B,) and alphas (B, 1, 1, 1) of the steps ``idx`` (B,)."""
        shape = (-1, 1, 1, 1)
        return (
            self.timesteps[idx].to(device),
            self.alpha_t[idx].view(shape).to(device),
            self.alpha_prev[idx].view(shape).to(device),
        )


def make_chain(scheduler_config, num_inference_steps: int, eta: float) -> Chain:
    """The DDIM schedule of a pipeline's scheduler config (its spacing, betas and prediction type).
    The final step lands on alpha-bar of timestep 0, as SD's own DDIM config (set_alpha_to_one = False),
    so that every step has std > 0 and a log-probability."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(scheduler_config, set_alpha_to_one=False)
    if sched.config.clip_sample or sched.config.thresholding:
        raise ValueError("rl sampling needs a scheduler without clip_sample and thresholding (as SD's)")
    sched.set_timesteps(num_inference_steps)
    ts = sched.timesteps.long()
    ac = sched.alphas_cumprod.double()
    prev = torch.cat([ts[1:], torch.tensor([-1])])
    alpha_prev = torch.where(prev >= 0, ac[prev.clamp(min=0)], torch.tensor(float(sched.final_alpha_cumprod)))
    chain = Chain(ts, ac[ts].float(), alpha_prev.float(), sched.config.prediction_type)
    if not bool((ddim_std(chain.alpha_t, chain.alpha_prev, eta) > 0).all()):
        raise ValueError(f"a step of this {num_inference_steps}-step schedule has std 0: no log-probability")
    return chain


def guided_output(unet, x, t, cond, null, guidance_scale: float) -> torch.Tensor:
    """The UNet's output with classifier-free guidance, one call on the 2B batch (as the pipeline):
    uncond + g * (cond - uncond). x (B, C, h, w), t (B,), cond and null (B, L, H)."""
    if guidance_scale <= 1.0:
        return unet(x, t, encoder_hidden_states=cond).sample
    out = unet(torch.cat([x, x]), torch.cat([t, t]), encoder_hidden_states=torch.cat([null, cond])).sample
    uncond, text = out.chunk(2)
    return uncond + guidance_scale * (text - uncond)


def noise_generators(seed: int, step: int, indices: list[int]) -> list[torch.Generator]:
    """One CPU generator per sample, seeded by (seed, step, the sample's index in the global batch): a
    sample's noise does not depend on the batch it is drawn in, nor on the process."""
    return [torch.Generator().manual_seed(stable_seed("rl-sample", seed, step, i)) for i in indices]


def draw(gens: list[torch.Generator], shape: tuple) -> torch.Tensor:
    """(B, *shape): one standard normal draw per generator."""
    return torch.stack([torch.randn(shape, generator=g) for g in gens])


@torch.no_grad()
def sample(unet, chain: Chain, cond, null, gens, latent_shape: tuple, eta: float, guidance_scale: float):
    """Run the chain from noise for B samples (one generator each). Returns latents (B, S + 1, C, h, w)
    (x_T first, the final x_0 last) and the log-probability (B, S) of each transition under ``unet``."""
    device = cond.device
    x = draw(gens, latent_shape).to(device)
    latents, log_probs = [x], []
    for i in range(len(chain.timesteps)):
        idx = torch.full((len(x),), i, dtype=torch.long)
        t, a_t, a_prev = chain.at(idx, device)
        out = guided_output(unet, x, t, cond, null, guidance_scale).to(x.dtype)
        mean, std = ddim_transition(x, out, a_t, a_prev, eta, chain.prediction_type)
        x = mean + std * draw(gens, latent_shape).to(device)
        latents.append(x)
        log_probs.append(gaussian_log_prob(x, mean, std))
    return torch.stack(latents, 1), torch.stack(log_probs, 1)


def step_log_prob(unet, chain: Chain, x_t, x_prev, idx, cond, null, eta: float, guidance_scale: float):
    """The log-probability (B,) of the recorded transitions x_t -> x_prev at steps ``idx`` (B,) under
    ``unet`` (with gradient), and the transitions' (mean, std) for the KL penalty."""
    t, a_t, a_prev = chain.at(idx, x_t.device)
    out = guided_output(unet, x_t, t, cond, null, guidance_scale).to(x_t.dtype)
    mean, std = ddim_transition(x_t, out, a_t, a_prev, eta, chain.prediction_type)
    return gaussian_log_prob(x_prev, mean, std), mean, std


@torch.no_grad()
def decode(vae, latents: torch.Tensor):
    """(B, H, W, 3) uint8 numpy images from final latents (B, C, h, w), as the pipeline's output_type np."""
    images = vae.decode(latents / vae.config.scaling_factor).sample
    images = (images.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    return [(im * 255.0).round().astype("uint8") for im in images]
