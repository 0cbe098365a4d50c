"""``t2ialign rl``: DDPO with PPO clipping (Black et al. 2023) on the finetune stage's training core.

One RL step s (an "epoch" in ddpo-pytorch's words) draws prompts_per_epoch prompts (seeded by (seed, s)),
samples images_per_prompt images of each with the current policy (DDIM, eta > 0, CFG; each sample's
noise seeded by (seed, s, its index)), rewards them, turns rewards into per-prompt normalized
advantages, and takes num_inner_epochs passes of PPO updates over a seeded subset of every trajectory's
steps. Every process computes the same global list of prompts and samples its slice; rewards are
gathered so every process holds the same advantages and the same stat tracker.

A checkpoint (every checkpointing_steps RL steps, at the end, and when the guard stops the run) holds the
weights, AdamW, EMA, the stat tracker's buffers, the reward and guard curves and the step: a resumed run
samples, rewards and updates exactly as the uninterrupted one (bit for bit on CPU). ddpo-pytorch and TRL's
DDPOTrainer lost the tracker on resume (and read the save counter as the epoch).

The guard (``rl.guard``) scores a fixed probe set before training and every guard.every steps; all
processes compute it (the same weights give the same numbers) so they agree on a stop without a message.
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import torch
from tqdm.auto import tqdm

from t2ialign.config import RLConfig, to_dict
from t2ialign.core.seeds import stable_seed
from t2ialign.core.training import check_finite, set_lr
from t2ialign.finetune.data import encode_texts
from t2ialign.finetune.losses import lr_at
from t2ialign.finetune.train import finish_training, open_session, start_training
from t2ialign.rl.guard import MEASURES, Probe, guard_alerts, probe_set
from t2ialign.rl.losses import gaussian_kl, ppo_clipped_loss, rl_loss
from t2ialign.rl.rewards import Reward, load_reward
from t2ialign.rl.sampling import (
    ddim_transition,
    decode,
    guided_output,
    make_chain,
    noise_generators,
    sample,
    step_log_prob,
)
from t2ialign.rl.stats import PerPromptStatTracker
from t2ialign.store import Store


def rl(
    cfg: RLConfig,
    store: Store,
    name: str = "rl",
    resume_from_checkpoint: str | None = None,
    progress: bool = True,
) -> dict:
    """Train the UNet of ``cfg.train.pretrained_model_name_or_path`` by DDPO on ``cfg.reward``; returns
    the report, also written to RUN/rl/NAME/report.json and metrics.json's "rl" under NAME.

    Writes RUN/rl/NAME/: checkpoints/, batches.jsonl (each step's prompts and rewards), guard.png,
    pipeline/ (stock ``StableDiffusionPipeline.from_pretrained`` loads it), lora/ when training LoRA.
    """
    tc, config = cfg.train, to_dict(cfg)
    pool = _prompt_pool(cfg, store)  # clear errors before any expensive work
    reward = load_reward(cfg.reward, store.run_dir, cfg.reward_path)
    session = open_session(tc, store.run_dir / "rl" / name, config, resume_from_checkpoint)
    acc = session.accelerator
    policy = _Policy(cfg, session)
    frozen = _frozen(session.pipe.unet, acc.device) if cfg.kl_weight > 0 and tc.lora_rank == 0 else None
    probe = _make_probe(cfg, policy, reward, pool) if cfg.guard.every else None  # the base's probe images
    state, unet, optimizer, start = start_training(session, tc, config, "rl_config.json")
    run = _Run.restore(cfg, session.checkpoint)
    base = _Base(frozen, unet, acc) if cfg.kl_weight > 0 else None
    if probe is not None and not run.guard["step"]:
        run.add_guard(0, probe.measure(policy.probe_images(unet, probe.prompts)), cfg)
    bar = tqdm(range(start, tc.max_train_steps), desc=f"rl {name}", initial=start, total=tc.max_train_steps,
               disable=not (progress and session.is_main))  # fmt: skip
    steps_run = 0
    for step in [] if run.stopped_by_guard else bar:
        t0 = time.time()
        set_lr(state.optimizer, lr_at(step, tc.learning_rate, tc.lr_warmup_steps))
        prompts = epoch_prompts(cfg, pool, step)
        batch = policy.sample_slice(unet, prompts, step)
        rewards = acc.gather(reward(batch.images, batch.prompts).to(acc.device)).cpu().double()  # (G,)
        adv = np.clip(run.tracker.update(prompts, rewards.numpy()), -cfg.adv_clip_max, cfg.adv_clip_max)
        stats = _ppo_epoch(cfg, policy, (state, unet, optimizer, acc), base, batch, adv[batch.rows], step)
        run.record(step, prompts, rewards.tolist(), stats, time.time() - t0, session)
        steps_run += 1
        stop = False
        if probe is not None and (step + 1) % cfg.guard.every == 0:
            alerts = run.add_guard(step + 1, probe.measure(policy.probe_images(unet, probe.prompts)), cfg)
            for line in alerts:
                acc.print(f"[rl {name}] guard at step {step + 1}: {line}")
            stop = bool(alerts) and cfg.guard.action == "stop"
            run.stopped_by_guard = stop
        bar.set_postfix(reward=f"{float(rewards.mean()):.4f}", loss=f"{stats['loss']:.4g}")
        if stop or (step + 1) % tc.checkpointing_steps == 0 or step + 1 == tc.max_train_steps:
            if session.is_main:
                state.save(step + 1, stats["loss"], extra=run.to_json())
            acc.wait_for_everyone()
        if stop:
            break
    bar.close()
    report = _report(cfg, name, session, reward, run, start, steps_run, config)
    if session.is_main:
        _write_guard_png(run, session.out)
    where = dict(stage="rl", name=name, config=config, stamp_name="t2ialign_rl.json")
    finish_training(session, tc, state, unet, report, store, **where)
    return report


def _prompt_pool(cfg: RLConfig, store: Store) -> list[str]:
    pool = [p["text"] for p in store.list_prompts(split=cfg.prompt_split)]
    if not pool:
        raise ValueError(
            f"no {cfg.prompt_split} prompts in {store.run_dir}: add prompts first (`t2ialign prompts RUN`)"
        )
    return pool


def epoch_prompts(cfg: RLConfig, pool: list[str], step: int) -> list[str]:
    """The global batch's prompts of step ``step`` (G = prompts_per_epoch x images_per_prompt, grouped by
    prompt): a seeded draw without replacement (with replacement when the pool is smaller)."""
    s = cfg.sample
    rng = np.random.default_rng(stable_seed("rl-prompts", cfg.train.seed, step))
    chosen = rng.choice(len(pool), size=s.prompts_per_epoch, replace=len(pool) < s.prompts_per_epoch)
    return [pool[int(i)] for i in chosen for _ in range(s.images_per_prompt)]


@dataclass
class _Batch:
    """This process's slice of a step's samples."""

    rows: slice  # its rows of the global batch
    prompts: list[str]  # (n,)
    images: list  # n (H, W, 3) uint8 arrays
    latents: torch.Tensor  # (n, S + 1, C, h, w), CPU
    log_probs: torch.Tensor  # (n, S): the sampling policy's log-probability of each transition, CPU
    cond: torch.Tensor  # (n, L, H) text states


class _Policy:
    """The sampler around the (trained) UNet: schedule, text states, latent shape, VAE."""

    def __init__(self, cfg: RLConfig, session):
        self.cfg, self.acc, self.pipe = cfg, session.accelerator, session.pipe
        self.pipe.to(self.acc.device)  # the UNet, the VAE and the text encoder
        self.chain = make_chain(self.pipe.scheduler.config, cfg.sample.num_inference_steps, cfg.sample.eta)
        self.null = encode_texts(self.pipe, [""])  # (1, L, H): the unconditional branch of CFG
        unet = self.pipe.unet.config
        self.latent_shape = (unet.in_channels, unet.sample_size, unet.sample_size)

    def texts(self, prompts: list[str]) -> torch.Tensor:
        distinct = list(dict.fromkeys(prompts))
        emb = encode_texts(self.pipe, distinct)
        return emb[[distinct.index(p) for p in prompts]]  # (n, L, H)

    def run(self, unet, prompts: list[str], gens: list) -> tuple[torch.Tensor, torch.Tensor, list]:
        """Latents (n, S + 1, ...), log-probs (n, S) and images of ``prompts``, in sampler batches."""
        s, dev = self.cfg.sample, self.acc.device
        cond = self.texts(prompts)
        lat, lps, images = [], [], []
        for i in range(0, len(prompts), s.batch_size):
            c = cond[i : i + s.batch_size].to(dev)
            null = self.null.to(dev).expand_as(c)
            with self.acc.autocast():
                x, lp = sample(unet, self.chain, c, null, gens[i : i + s.batch_size], self.latent_shape,
                               s.eta, s.guidance_scale)  # fmt: skip
            lat.append(x.float().cpu())
            lps.append(lp.float().cpu())
            images += decode(self.pipe.vae, x[:, -1].to(self.pipe.vae.dtype))
        return torch.cat(lat), torch.cat(lps), images

    def sample_slice(self, unet, prompts: list[str], step: int) -> _Batch:
        world, rank = self.acc.num_processes, self.acc.process_index
        if len(prompts) % (world * self.cfg.train.train_batch_size):
            raise ValueError(
                f"rl: the {len(prompts)} samples of a step do not split into {world} processes x "
                f"batches of train_batch_size {self.cfg.train.train_batch_size}"
            )
        per = len(prompts) // world
        rows = slice(rank * per, (rank + 1) * per)
        mine = prompts[rows]
        gens = noise_generators(self.cfg.train.seed, step, list(range(rows.start, rows.stop)))
        latents, log_probs, images = self.run(unet, mine, gens)
        return _Batch(rows, mine, images, latents, log_probs, self.texts(mine))

    def probe_images(self, unet, prompts: list[str]) -> list:
        """The probe set's images under ``unet`` (noise seeded by the probe index alone)."""
        gens = noise_generators(self.cfg.train.seed, -1, list(range(len(prompts))))
        return self.run(unet, prompts, gens)[2]


def _make_probe(cfg: RLConfig, policy: _Policy, reward: Reward, pool: list[str]) -> Probe:
    g = cfg.guard
    prompts = probe_set(pool, g.n_prompts, g.seeds, cfg.train.seed)
    alignment = g.alignment
    if alignment == "auto":  # the judge reads the shapes world; a real model's prompts need CLIP score
        alignment = "judge" if cfg.train.pretrained_model_name_or_path is None else "clip"
    base_images = policy.probe_images(policy.pipe.unet, prompts)  # before training touches the UNet
    return Probe(prompts, reward, alignment, g.clip, base_images)


def _frozen(unet, device):
    """The base UNet for the KL penalty of full fine-tuning: a frozen copy, taken before training."""
    ref = copy.deepcopy(unet).to(device).eval()
    return ref.requires_grad_(False)


class _Base:
    """The base model's UNet output, without gradient, called like a UNet: the frozen copy, or (LoRA) the
    policy with its adapters off."""

    def __init__(self, frozen, unet, accelerator):
        self.frozen, self.unet, self.acc = frozen, unet, accelerator

    @torch.no_grad()
    def __call__(self, x, t, encoder_hidden_states):
        if self.frozen is not None:
            return self.frozen(x, t, encoder_hidden_states=encoder_hidden_states)
        unet = self.acc.unwrap_model(self.unet)
        unet.disable_adapters()  # the base weights alone
        try:
            return SimpleNamespace(sample=unet(x, t, encoder_hidden_states=encoder_hidden_states).sample)
        finally:
            unet.enable_adapters()


def _ppo_epoch(cfg: RLConfig, policy: _Policy, model: tuple, base, batch: _Batch, adv, step: int) -> dict:
    """num_inner_epochs passes over this process's samples: minibatches of train_batch_size
    trajectories, each trained on a seeded subset of its steps, one optimizer step per
    gradient_accumulation_steps minibatches. Returns the step's mean loss and PPO stats."""
    state, unet, optimizer, acc = model
    tc, n, S = cfg.train, len(batch.prompts), batch.log_probs.shape[1]
    n_train = max(1, round(S * cfg.timestep_fraction))
    per, accum = tc.train_batch_size, tc.gradient_accumulation_steps
    if (n // per) % accum:
        raise ValueError(
            f"rl: {n // per} minibatches per process is no multiple of {accum} accumulation steps"
        )
    adv = torch.as_tensor(adv, dtype=torch.float32)
    sums: dict[str, float] = {}
    for inner in range(cfg.num_inner_epochs):
        gen = torch.Generator().manual_seed(stable_seed("rl-train", tc.seed, step, inner, acc.process_index))
        perm = torch.randperm(n, generator=gen)
        t_idx = torch.stack([torch.randperm(S, generator=gen)[:n_train] for _ in range(n)])  # (n, n_train)
        for b in range(n // per):
            rows = perm[b * per : (b + 1) * per]
            last_micro = (b + 1) % accum == 0
            for j in range(n_train):
                sync = last_micro and j == n_train - 1
                with contextlib.nullcontext() if sync else acc.no_sync(unet):
                    loss, st = _transition_loss(cfg, policy, unet, base, batch, adv, rows, t_idx[rows, j])
                    check_finite(loss, "rl", step, gather=acc.gather)
                    acc.backward(loss / (n_train * accum))
                for k, v in {"loss": loss.item(), **st}.items():
                    sums[k] = sums.get(k, 0.0) + v
            if last_micro:
                if tc.max_grad_norm > 0:
                    acc.clip_grad_norm_(state.params, tc.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if state.ema is not None:
                    state.ema.step(state.params)
    count = cfg.num_inner_epochs * (n // per) * n_train
    return {k: v / count for k, v in sums.items()}


def _transition_loss(cfg: RLConfig, policy: _Policy, unet, base, batch: _Batch, adv, rows, idx):
    """The PPO (+ KL) loss of the transitions at steps ``idx`` (B,) of trajectories ``rows`` (B,)."""
    dev, s = policy.acc.device, cfg.sample
    x_t = batch.latents[rows, idx].to(dev)  # (B, C, h, w)
    x_prev = batch.latents[rows, idx + 1].to(dev)
    cond = batch.cond[rows].to(dev)
    null = policy.null.to(dev).expand_as(cond)
    with policy.acc.autocast():
        lp, mean, std = step_log_prob(
            unet, policy.chain, x_t, x_prev, idx, cond, null, s.eta, s.guidance_scale
        )
        ppo, stats = ppo_clipped_loss(
            lp, batch.log_probs[rows, idx].to(dev), adv[rows].to(dev), cfg.clip_range
        )
        kl = None
        if base is not None:
            t, a_t, a_prev = policy.chain.at(idx, dev)
            out = guided_output(base, x_t, t, cond, null, s.guidance_scale).to(x_t.dtype)
            base_mean, _ = ddim_transition(x_t, out, a_t, a_prev, s.eta, policy.chain.prediction_type)
            kl = gaussian_kl(mean, base_mean, std)
            stats["kl"] = kl.mean().detach()
    return rl_loss(ppo, kl, cfg.kl_weight), {k: float(v) for k, v in stats.items()}


@dataclass
class _Run:
    """What the run has measured, part of every checkpoint: the stat tracker, each step's reward, the
    guard's curves and alerts, the training seconds."""

    tracker: PerPromptStatTracker
    reward_curve: list = field(default_factory=list)  # each RL step's mean reward over its G samples
    guard: dict = field(default_factory=lambda: {"step": [], "reward": [], **{m: [] for m in MEASURES}})
    alerts: list = field(default_factory=list)  # [{"step", "message"}]
    stopped_by_guard: bool = False
    wall_s: float = 0.0

    @classmethod
    def restore(cls, cfg: RLConfig, checkpoint) -> _Run:
        extra = checkpoint[1].get("extra") if checkpoint is not None else None
        if extra is None:
            return cls(PerPromptStatTracker(cfg.buffer_size, cfg.min_count))
        return cls(PerPromptStatTracker.from_json(extra["tracker"]), extra["reward_curve"], extra["guard"],
                   extra["alerts"], extra["stopped_by_guard"], extra["wall_s"])  # fmt: skip

    def to_json(self) -> dict:
        return {
            "tracker": self.tracker.to_json(),
            "reward_curve": self.reward_curve,
            "guard": self.guard,
            "alerts": self.alerts,
            "stopped_by_guard": self.stopped_by_guard,
            "wall_s": self.wall_s,
        }

    def record(self, step: int, prompts, rewards: list[float], stats: dict, seconds: float, session) -> None:
        self.reward_curve.append(float(np.mean(rewards)))
        self.wall_s += seconds
        if session.is_main:
            line = {"step": step, "prompts": prompts, "rewards": rewards, "loss": stats["loss"]}
            with open(session.out / "batches.jsonl", "a") as f:
                f.write(json.dumps(line) + "\n")

    def add_guard(self, step: int, values: dict, cfg: RLConfig) -> list[str]:
        """Add an evaluation; returns the rule's alerts for it."""
        self.guard["step"].append(step)
        for k, v in values.items():
            self.guard[k].append(v)
        g = cfg.guard
        tol = {"alignment": g.tol_alignment, "fd_clip": g.tol_fd_clip, "saturation": g.tol_saturation,
               "diversity": g.tol_diversity}  # fmt: skip
        alerts = guard_alerts(self.guard, g.window, tol)
        self.alerts += [{"step": step, "message": a} for a in alerts]
        return alerts


def _report(cfg: RLConfig, name, session, reward: Reward, run: _Run, start, steps_run, config) -> dict:
    """report.json and metrics.json's rl.NAME: the comparison table reads labels_used, wall_s, steps."""
    s = cfg.sample
    g = s.prompts_per_epoch * s.images_per_prompt
    steps = len(run.reward_curve)
    return {
        "name": name,
        "method": "ddpo+kl" if cfg.kl_weight > 0 else "ddpo",
        "base_model": session.model_id,
        "base_revision": session.revision,
        "reward": cfg.reward,
        "reward_model": reward.source,
        "labels_used": reward.labels_used,
        "kl_weight": cfg.kl_weight,
        "lora_rank": cfg.train.lora_rank,
        "steps": steps,
        "max_train_steps": cfg.train.max_train_steps,
        "steps_this_call": steps_run,
        "num_processes": session.accelerator.num_processes,
        "images_per_step": g,
        "images_sampled": g * steps,
        "wall_s": round(run.wall_s, 2),
        "reward_curve": [round(r, 6) for r in run.reward_curve],
        "final_reward": round(float(np.mean(run.reward_curve[-5:])), 6) if run.reward_curve else None,
        "guard": run.guard,
        "alerts": run.alerts,
        "stopped_by_guard": run.stopped_by_guard,
        "config": config,
    }


def _write_guard_png(run: _Run, out) -> None:
    from t2ialign.core.figures import rl_guard, write_png

    fig = rl_guard(run.guard, run.reward_curve)
    if fig is not None:
        write_png(fig, out / "guard.png")
