"""``t2ialign dpo``: Diffusion-DPO (Wallace et al. 2023) on the finetune stage's training core.

One optimizer step s reads a global batch of G = train_batch_size x gradient_accumulation_steps x
num_processes pairs from a seeded stream of epoch permutations of the pairs; its posterior samples (one
per image), diffusion noise and timesteps (one per pair, shared by the pair's two images, as the paper
and the reference code do) come from a generator seeded by (seed, s). Every process computes the same
global batch and takes its slice, so a resumed run equals the uninterrupted one (``finetune.train``).

The reference model is the base UNet, frozen: with LoRA it is the same UNet with its adapters switched
off (one UNet in memory, and its forward skips the adapters), with the full UNet a frozen copy made
before training starts. It adds one forward pass, without gradient, per image.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json

import numpy as np
import torch

from t2ialign.config import DPOConfig, to_dict
from t2ialign.core.seeds import stable_seed
from t2ialign.dpo.data import PairSet, build_pair_set, pairs_from_labels, pairs_from_preferences
from t2ialign.dpo.losses import diffusion_dpo_loss
from t2ialign.finetune.losses import denoising_target, per_sample_mse
from t2ialign.finetune.train import (
    Session,
    Steps,
    batch_indices,
    finish_training,
    open_session,
    start_training,
    train_loop,
)
from t2ialign.store import Store


def dpo(
    cfg: DPOConfig,
    store: Store,
    name: str = "dpo",
    resume_from_checkpoint: str | None = None,
    progress: bool = True,
) -> dict:
    """Train the UNet of ``cfg.train.pretrained_model_name_or_path`` by Diffusion-DPO on the run's
    preference pairs; returns the training report.

    Writes RUN/dpo/NAME/: checkpoints/, batches.jsonl (the pair ids of every step), pipeline/ (stock
    ``StableDiffusionPipeline.from_pretrained`` loads it), lora/ when training LoRA, report.json, and the
    report into metrics.json under "dpo". A folder with checkpoints is only continued with
    ``resume_from_checkpoint`` ("latest" or a checkpoint folder).
    """
    tc, config = cfg.train, to_dict(cfg)
    pairs = _pairs(cfg, store)  # every process, before any expensive work: a clear error on all of them
    # the pairs are part of what a checkpoint continues: new labels mean another run, not a resume
    ident = config | {"pairs_sha256": _digest(pairs)}
    session = open_session(
        tc, store.run_dir / "dpo" / name, ident, resume_from_checkpoint, defaults=to_dict(DPOConfig())
    )
    data = _Data(cfg, store, session, pairs, progress and session.is_main)
    # the frozen reference is taken before training (or a checkpoint) changes the UNet
    frozen = None if tc.lora_rank > 0 else _frozen_copy(session.pipe.unet, session.accelerator.device)
    state, unet, optimizer, start = start_training(session, tc, config, "dpo_config.json")
    reference = _Reference(frozen, unet, session.accelerator)
    losses, stats, seconds = train_loop(
        tc,
        f"dpo {name}",
        (state, unet, optimizer, session.accelerator),
        start,
        progress,
        steps=Steps(
            batches=lambda step: _step_batches(cfg, data, step),
            loss=lambda batches, u, k, device: _micro_loss(cfg, data, batches, u, reference, k, device),
            record=lambda step, batches: {"step": step, "pairs": batches["pairs"].tolist()},
        ),
    )
    report = _report(cfg, name, session, data, start, losses, stats, seconds)
    if not losses:
        report["final_loss"] = session.checkpoint[1].get("loss") if session.checkpoint is not None else None
    where = dict(stage="dpo", name=name, config=config, stamp_name="t2ialign_dpo.json")
    finish_training(session, tc, state, unet, report, store, **where)
    return report


# dpo.pairs -> the function that reads the run's preference pairs (a list of PreferencePair); a reader of
# pairwise feedback joins here under a new DPO_PAIR_SOURCES name
PAIR_READERS = {
    "labels": lambda cfg, store: pairs_from_labels(store, cfg.max_pairs_per_prompt, cfg.train.seed),
    "preferences": lambda cfg, store: pairs_from_preferences(store, cfg.max_pairs_per_prompt, cfg.train.seed),
}
# what each source needs, for the error when it yields no pair
PAIR_NEEDS = {
    "labels": "for some seen prompt, one image that most labelers called good and one they called bad "
    "(role human; skips and ties do not count). Generate images of seen prompts and label them first "
    "(`t2ialign label ...`)",
    "preferences": "answered pairs of seen or imported prompts that the raters decided (not ties): "
    "`t2ialign label pairs create` and the app's /pairs page, `label pairs simulate`, or `label import`",
}


def _pairs(cfg: DPOConfig, store: Store):
    pairs = PAIR_READERS[cfg.pairs](cfg, store)
    if not pairs:
        raise ValueError(
            f"no preference pairs in {store.run_dir}: DPO (pairs = {cfg.pairs}) needs {PAIR_NEEDS[cfg.pairs]}"
        )
    return pairs


def _digest(pairs) -> str:
    text = json.dumps([[p.prompt, p.winner_sha256, p.loser_sha256] for p in pairs])
    return hashlib.sha256(text.encode()).hexdigest()


class _Data:
    """The pairs' latents (encoded once by the main process; the others read its cache), the noise
    scheduler and the global batch of pairs."""

    def __init__(self, cfg: DPOConfig, store: Store, session: Session, pairs, progress: bool):
        from diffusers import DDPMScheduler

        with session.accelerator.main_process_first():
            self.set: PairSet = build_pair_set(store, session.pipe, pairs, progress)
        self.scaling = float(session.pipe.vae.config.scaling_factor)
        self.scheduler = DDPMScheduler.from_config(session.pipe.scheduler.config)
        tc = cfg.train
        self.g_pairs = (
            tc.train_batch_size * tc.gradient_accumulation_steps * session.accelerator.num_processes
        )


def _frozen_copy(unet, device):
    """The reference UNet for full fine-tuning: a copy of the base, in eval mode, without gradients."""
    ref = copy.deepcopy(unet).to(device).eval()
    ref.requires_grad_(False)
    return ref


class _Reference:
    """The frozen reference's prediction: the frozen copy, or (LoRA) the policy with its adapters off."""

    def __init__(self, frozen, unet, accelerator):
        self.frozen, self.unet, self.accelerator = frozen, unet, accelerator

    @torch.no_grad()
    def __call__(self, noisy, t, cond):
        with self.accelerator.autocast(), self._base() as model:
            return model(noisy, t, encoder_hidden_states=cond).sample

    @contextlib.contextmanager
    def _base(self):
        if self.frozen is not None:
            yield self.frozen
            return
        unet = self.accelerator.unwrap_model(self.unet)
        unet.disable_adapters()  # the base weights alone: the model before any training
        try:
            yield unet
        finally:
            unet.enable_adapters()  # (peft also restores requires_grad on the adapters)


def _step_batches(cfg: DPOConfig, data: _Data, step: int) -> dict:
    """Step ``step``'s global batch of pairs: pair indices (G,), posterior noise of winners and losers and
    the pairs' shared diffusion noise (each (G, C, h, w)), shared timesteps (G,); drawn from (seed, step)."""
    T = data.scheduler.config.num_train_timesteps
    g = data.g_pairs
    gen = torch.Generator().manual_seed(stable_seed("dpo-noise", cfg.train.seed, step))
    shape = (g, *data.set.images.mean.shape[1:])
    return {
        "pairs": batch_indices(len(data.set), g, step, cfg.train.seed, "pairs"),
        "eps_w": torch.randn(shape, generator=gen),
        "eps_l": torch.randn(shape, generator=gen),
        "noise": torch.randn(shape, generator=gen),
        "t": torch.randint(0, T, (g,), generator=gen),
    }


def _micro_inputs(data: _Data, batches: dict, k: int, per: int):
    """Pairs [k * per, (k + 1) * per) of the global batch as one UNet batch of 2B: the B winners, then the
    B losers, at the same noise and timestep pair by pair. Returns noisy latents, timesteps, text states
    and targets (each with 2B rows)."""
    s, sl = data.set.images, slice(k * per, (k + 1) * per)
    i = torch.from_numpy(batches["pairs"][sl])
    w, lo = data.set.winner[i], data.set.loser[i]
    x0_w = s.mean[w] + s.std[w] * batches["eps_w"][sl]  # (B, C, h, w): posterior samples
    x0_l = s.mean[lo] + s.std[lo] * batches["eps_l"][sl]
    x0 = torch.cat([x0_w, x0_l]) * data.scaling  # (2B, C, h, w)
    noise, t = batches["noise"][sl].repeat(2, 1, 1, 1), batches["t"][sl].repeat(2)
    noisy = data.scheduler.add_noise(x0, noise, t)
    target = denoising_target(data.scheduler, x0, noise, t)
    cond = s.text_emb[s.text_ids[w]].repeat(2, 1, 1)  # (2B, L, H): a pair's images share their prompt
    return noisy, t, cond, target


def _micro_loss(cfg: DPOConfig, data: _Data, batches: dict, unet, reference, k: int, device):
    """The DPO loss on this process's slice k of the step's pairs: the reference's forward (no gradient)
    and the policy's, each one UNet call on the 2B images."""
    per = cfg.train.train_batch_size
    noisy, t, cond, target = (x.to(device) for x in _micro_inputs(data, batches, k, per))
    ref_mse = per_sample_mse(reference(noisy, t, cond), target)  # (2B,)
    mse = per_sample_mse(unet(noisy, t, encoder_hidden_states=cond).sample, target)  # (2B,)
    loss, stats = diffusion_dpo_loss(mse[:per], mse[per:], ref_mse[:per], ref_mse[per:], cfg.beta)
    return loss, {key: float(v) for key, v in stats.items()}


def _report(cfg: DPOConfig, name, session: Session, data: _Data, start, losses, stats, seconds) -> dict:
    """report.json: what was trained, on how many pairs, how fast (images: both of each pair), to what."""
    tc, steps_run = cfg.train, cfg.train.max_train_steps - start

    def recent(key):
        return round(float(np.mean([s[key] for s in stats[-20:]])), 5) if stats else None

    return {
        "name": name,
        "base_model": session.model_id,
        "base_revision": session.revision,
        "beta": cfg.beta,
        "pairs": cfg.pairs,
        "max_pairs_per_prompt": cfg.max_pairs_per_prompt,
        "n_pairs": len(data.set),
        "n_images": len(data.set.images),
        "n_prompts": len({p.prompt for p in data.set.pairs}),
        "lora_rank": tc.lora_rank,
        "learning_rate": tc.learning_rate,
        "use_ema": tc.use_ema,
        "steps": tc.max_train_steps,
        "steps_this_call": steps_run,
        "num_processes": session.accelerator.num_processes,
        "global_batch": {"pairs": data.g_pairs, "images": 2 * data.g_pairs},
        "seconds": round(seconds, 2),
        "images_per_second": round(steps_run * 2 * data.g_pairs / seconds, 1) if steps_run else None,
        "final_loss": round(float(np.mean(losses[-20:])), 5) if losses else None,
        "implicit_accuracy": recent("implicit_accuracy"),  # last 20 steps' share of pairs ranked right
        "reward_margin": recent("reward_margin"),
        "model_mse": recent("model_mse"),
        "ref_mse": recent("ref_mse"),
    }
