"""``t2ialign finetune``: the UNet trained on Eq. 4 with accelerate (paper Sec. 3.3, Table 2).

One optimizer step s reads a global batch of G = train_batch_size x gradient_accumulation_steps x
num_processes examples of D_model (and as many of D_pre, scaled by pretrain_batch_size) from a seeded
stream of epoch permutations, and the noise, posterior samples and timesteps of that global batch come
from a generator seeded by (seed, s). Every process computes the same global batch and takes its own
slice, so one process with gradient accumulation and several processes without it see the same examples
and the same noise, and a resumed run repeats nothing and skips nothing: it equals the uninterrupted run.

Launch with several processes: ``torchrun --nproc_per_node 2 -m t2ialign finetune RUN`` (CPU, gloo), or
``accelerate launch -m t2ialign finetune RUN`` on GPUs.

The session pieces (``open_session``, ``start_training``, ``train_loop`` with a stage's ``Steps``,
``finish_training``) are the UNet trainers' shared core: ``dpo`` stands on them with its own data and loss.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from t2ialign import __version__
from t2ialign.config import SD_LEARNING_RATE, WORLD_LEARNING_RATE, FinetuneConfig, to_dict
from t2ialign.core.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    resolve_resume,
)
from t2ialign.core.fsutil import atomic_write, publish_dir
from t2ialign.core.seeds import stable_seed
from t2ialign.core.training import TrainState, check_finite, set_lr
from t2ialign.finetune.data import (
    LatentSet,
    build_model_set,
    build_pretrain_set,
    encode_texts,
    images_digest,
    model_examples,
    world_data,
)
from t2ialign.finetune.losses import denoising_target, eq4_loss, lr_at, per_sample_mse, timestep_weights
from t2ialign.store import Store

LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]  # the attention projections, as diffusers' LoRA scripts
# Settings that do not change what a step computes: a run may be resumed with other values.
RESUMABLE_CHANGES = ("checkpointing_steps", "checkpoints_total_limit", "max_train_steps")


def batch_indices(n: int, global_batch: int, step: int, seed: int, stream: str) -> np.ndarray:
    """Indices of step ``step``'s global batch: positions [step * G, (step + 1) * G) of the concatenation
    of seeded permutations of range(n), one per epoch. Every example once per epoch, in any process."""
    pos = np.arange(step * global_batch, (step + 1) * global_batch)
    epochs = pos // n
    out = np.empty(global_batch, dtype=np.int64)
    for e in np.unique(epochs):
        perm = np.random.default_rng(stable_seed("finetune-order", stream, seed, int(e))).permutation(n)
        sel = epochs == e
        out[sel] = perm[pos[sel] % n]
    return out


def prompt_balanced_odds(text_ids: torch.Tensor) -> np.ndarray:
    """Each example's odds of being drawn so that every prompt (a distinct ``text_ids`` value) comes up
    equally often: 1 / (the prompt's examples), normalised to sum to 1."""
    ids = text_ids.numpy()
    counts = np.bincount(ids)
    odds = 1.0 / counts[ids]
    return odds / odds.sum()


def balanced_indices(odds: np.ndarray, global_batch: int, step: int, seed: int, stream: str) -> np.ndarray:
    """Indices of step ``step``'s global batch drawn with replacement with ``odds``, from a generator seeded
    by (seed, step) alone: the same batch in any process and after any resume."""
    rng = np.random.default_rng(stable_seed("finetune-balanced", stream, seed, step))
    return rng.choice(len(odds), size=global_batch, replace=True, p=odds)


def draw_noise(
    data: LatentSet,
    global_batch: int,
    num_train_timesteps: int,
    gen: torch.Generator,
    t_weights: torch.Tensor | None = None,
):
    """The global batch's posterior noise, diffusion noise (each (G, C, h, w)) and timesteps (G,): uniform,
    or drawn with the odds ``t_weights`` (``losses.timestep_weights``)."""
    shape = (global_batch, *data.mean.shape[1:])
    eps = torch.randn(shape, generator=gen)
    noise = torch.randn(shape, generator=gen)
    if t_weights is None:
        t = torch.randint(0, num_train_timesteps, (global_batch,), generator=gen)
    else:
        t = torch.multinomial(t_weights, global_batch, replacement=True, generator=gen)
    return eps, noise, t


def identity(config: dict, num_processes: int, base_revision: str) -> dict:
    """What a checkpoint must match to be continued: the stage's config (a dict, possibly nested) without
    the settings that do not change what a step computes, plus the process count and the base weights."""

    def strip(d: dict) -> dict:
        return {k: strip(v) if isinstance(v, dict) else v for k, v in d.items() if k not in RESUMABLE_CHANGES}

    return strip(config) | {"num_processes": num_processes, "base_revision": base_revision}


def _truncate_log(path: Path, before_step: int) -> None:
    """Keep the batch log's lines of steps < before_step (a crashed run may have logged steps after its
    last checkpoint; the resumed run logs them again)."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] < before_step]
    atomic_write(path, "".join(ln + "\n" for ln in keep).encode())


# --- the training session: what finetune and dpo share ----------------------------------------------------


@dataclass
class Session:
    """One training call of a UNet stage (finetune, dpo): accelerate, the base pipeline, the output folder,
    the checkpoint identity and the checkpoint to continue (loaded and checked before any expensive work)."""

    accelerator: Any
    out: Path  # RUN/<stage>/<name>
    pipe: Any  # the base StableDiffusionPipeline; its UNet becomes the trained one
    model_id: str
    revision: str
    identity: dict
    checkpoint: tuple | None  # (tensors, state) of load_checkpoint, or None for a fresh start
    resume: Path | None

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process


def open_session(
    cfg: FinetuneConfig,
    out: Path,
    config: dict,
    resume_from_checkpoint: str | None,
    defaults: dict | None = None,
) -> Session:
    """Accelerate (mixed precision, gradient accumulation of ``cfg``), the base pipeline, and the checkpoint
    of ``out`` to continue. ``config`` is the stage's whole config as a dict: its identity; ``defaults`` the
    stage's default config as a dict, so a checkpoint made before a setting existed continues where that
    setting is left at its default."""
    from accelerate import Accelerator

    from t2ialign.models.load import load_pipeline

    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        cpu=not torch.cuda.is_available(),
    )
    resume = _resume_point(out / "checkpoints", resume_from_checkpoint, accelerator)
    pipe, model_id, revision = load_pipeline(cfg.pretrained_model_name_or_path)
    ident = identity(config, accelerator.num_processes, revision)
    # refuse a mismatched checkpoint before any expensive work
    known = None if defaults is None else identity(defaults, accelerator.num_processes, revision)
    checkpoint = load_checkpoint(resume, expect_config=ident, defaults=known) if resume is not None else None
    return Session(accelerator, out, pipe, model_id, revision, ident, checkpoint, resume)


def start_training(session: Session, cfg: FinetuneConfig, config: dict, config_name: str):
    """The trainable UNet (restored from the checkpoint, if any) prepared by accelerate, and the output
    folder readied: the config as ``config_name`` and the batch log cut back to the starting step.
    Returns (state, prepared unet, prepared optimizer, starting step)."""
    state = train_state(session.pipe.unet, cfg, session.identity, session.out / "checkpoints")
    start = 0
    if session.checkpoint is not None:
        start = state.restore(*session.checkpoint)
        session.accelerator.print(f"resumed from {session.resume} at step {start}")
    unet, optimizer = session.accelerator.prepare(state.module, state.optimizer)
    if session.is_main:
        session.out.mkdir(parents=True, exist_ok=True)
        (session.out / config_name).write_text(json.dumps(config, indent=1) + "\n")
        _truncate_log(session.out / "batches.jsonl", start)
    return state, unet, optimizer, start


def finish_training(
    session: Session, cfg: FinetuneConfig, state: TrainState, unet, report: dict, store: Store, **where
) -> None:
    """Ship the trained UNet (its EMA, when on): the pipeline and LoRA folders, report.json and the
    store's metrics.json section ``where["stage"]`` under ``where["name"]``; the stamp beside the weights
    holds ``where["config"]`` and is named ``where["stamp_name"]``."""
    stage, name = where["stage"], where["name"]
    if session.is_main:
        unet = session.accelerator.unwrap_model(unet)
        state.finish()
        save_outputs(session.pipe, unet, cfg, session.out, report, where["config"], where["stamp_name"])
        (session.out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
        store.update_metrics(**{stage: {**store.read_metrics().get(stage, {}), name: report}})
    session.accelerator.wait_for_everyone()
    session.accelerator.end_training()


def resolve_defaults(cfg: FinetuneConfig) -> FinetuneConfig:
    """``cfg`` with the settings left to the model filled in: ``learning_rate = None`` is
    WORLD_LEARNING_RATE on a shapes-world pipeline (one whose pre-training data t2ialign knows,
    ``world_data``; the shipped world or one fine-tuned from it) and SD_LEARNING_RATE on any other."""
    if cfg.learning_rate is not None:
        return cfg
    world = bool(world_data(cfg.pretrained_model_name_or_path))
    return dataclasses.replace(cfg, learning_rate=WORLD_LEARNING_RATE if world else SD_LEARNING_RATE)


def finetune(
    cfg: FinetuneConfig,
    store: Store,
    name: str = "default",
    resume_from_checkpoint: str | None = None,
    progress: bool = True,
    out: Path | None = None,
    images: Collection[str] | None = None,
) -> dict:
    """Fine-tune the UNet of ``cfg.pretrained_model_name_or_path`` on Eq. 4; returns the training report.

    Writes RUN/finetune/NAME/ (or ``out``): checkpoints/, batches.jsonl (the example ids of every step), the
    resulting pipeline/ (stock ``StableDiffusionPipeline.from_pretrained`` loads it), lora/ when training
    LoRA, and report.json. A folder with checkpoints is only continued with ``resume_from_checkpoint``.
    ``images`` (sha256s) keeps only those images in D_model: one round of ``t2ialign loop``.
    """
    cfg = resolve_defaults(cfg)
    config = to_dict(cfg)
    out = store.run_dir / "finetune" / name if out is None else out
    session = open_session(cfg, out, config, resume_from_checkpoint, defaults=to_dict(FinetuneConfig()))
    accelerator = session.accelerator
    data = _Data(cfg, store, session.pipe, accelerator, progress and session.is_main, images)
    state, unet, optimizer, start = start_training(session, cfg, config, "finetune_config.json")
    losses, _, seconds = train_loop(
        cfg,
        f"finetune {name}",
        (state, unet, optimizer, accelerator),
        start,
        progress,
        steps=Steps(
            batches=lambda step: _step_batches(cfg, data, step),
            loss=lambda batches, u, k, device: _micro_loss(cfg, data, batches, u, k, device),
            record=_log_record,
        ),
    )
    report = _report(cfg, name, session, data, start, losses, seconds)
    if not losses:
        report["final_loss"] = session.checkpoint[1].get("loss") if session.checkpoint is not None else None
    finish_training(
        session,
        cfg,
        state,
        unet,
        report,
        store,
        stage="finetune",
        name=name,
        config=config,
        stamp_name="t2ialign_finetune.json",
    )
    return report


def _resume_point(ckpt_root: Path, resume_from_checkpoint: str | None, accelerator) -> Path | None:
    """The checkpoint to continue, or None; a folder with checkpoints is continued only when asked."""
    if resume_from_checkpoint is None and latest_checkpoint(ckpt_root) is not None:
        raise CheckpointError(
            f"{ckpt_root.parent} already holds checkpoints: pass resume_from_checkpoint='latest' "
            "(--resume_from_checkpoint latest) to continue them, or choose another name"
        )
    resume = resolve_resume(ckpt_root, resume_from_checkpoint)
    if resume_from_checkpoint == "latest" and resume is None:
        accelerator.print(f"no checkpoint under {ckpt_root} yet: starting at step 0")
    return resume


class _Data:
    """D_model (weighted by the reward or the labels) and D_pre, encoded once by the main process (the
    others read its cache), with the noise scheduler and the global batch sizes."""

    def __init__(self, cfg: FinetuneConfig, store: Store, pipe, accelerator, progress: bool, images=None):
        from diffusers import DDPMScheduler

        from t2ialign.reward.model import RewardModel

        self.reward_path = Path(cfg.reward) if cfg.reward else store.run_dir / "reward"
        with accelerator.main_process_first():
            self.reward_model = RewardModel.load(self.reward_path) if cfg.weights == "reward" else None
            items = model_examples(store, cfg, self.reward_model, progress, images)
            self.model = build_model_set(store, pipe, items, progress)
            self.pre = build_pretrain_set(store, pipe, cfg, progress) if cfg.beta > 0 else None
        self.scaling = float(pipe.vae.config.scaling_factor)
        self.scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        # D_model's draw odds when every prompt comes up equally often; None: each image once per epoch
        self.model_odds = prompt_balanced_odds(self.model.text_ids) if cfg.balance_prompts else None
        self.t_weights = timestep_weights(  # D_model's timestep odds; None: uniform
            int(self.scheduler.config.num_train_timesteps),
            cfg.timestep_bias_strategy,
            cfg.timestep_bias_multiplier,
            cfg.timestep_bias_portion,
            cfg.timestep_bias_begin,
            cfg.timestep_bias_end,
        )
        world, accum = accelerator.num_processes, cfg.gradient_accumulation_steps
        self.g_model = cfg.train_batch_size * accum * world
        self.g_pre = cfg.pretrain_batch_size * accum * world
        # (1, L, H): the text encoder's states for "", what classifier-free guidance conditions on
        dropout = self.pre is not None and cfg.pretrain_cfg_dropout > 0
        self.null_emb = encode_texts(pipe, [""]) if dropout else None


def train_state(unet, cfg: FinetuneConfig, ident: dict, ckpt_root: Path) -> TrainState:
    """The trainable UNet (all of it, or LoRA adapters), its AdamW and optional EMA, checkpointed."""
    from diffusers.training_utils import EMAModel

    unet.train()
    if cfg.lora_rank > 0:
        from peft import LoraConfig

        unet.requires_grad_(False)
        # the adapters' Gaussian init draws from torch's global generator: seed it from the config (and
        # leave the caller's generator as it was), so the same seed makes the same LoRA run
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(stable_seed("finetune-lora-init", cfg.seed))
            unet.add_adapter(
                LoraConfig(
                    r=cfg.lora_rank,
                    lora_alpha=cfg.lora_alpha or cfg.lora_rank,
                    init_lora_weights="gaussian",
                    target_modules=LORA_TARGETS,
                )
            )
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.adam_weight_decay)
    ema = EMAModel(params, decay=cfg.ema_decay) if cfg.use_ema else None
    return TrainState(
        unet,
        optimizer,
        ema,
        config=ident,
        root=ckpt_root,
        keep=cfg.checkpoints_total_limit,
        trainable_only=True,
    )


def _step_batches(cfg: FinetuneConfig, data: _Data, step: int) -> dict:
    """Step ``step``'s global batches: example indices, posterior noise, diffusion noise and timesteps of
    D_model and D_pre, and D_pre's caption dropout, all drawn from a generator seeded by (seed, step)."""
    T = data.scheduler.config.num_train_timesteps
    gen = torch.Generator().manual_seed(stable_seed("finetune-noise", cfg.seed, step))
    out = {
        "model": (
            batch_indices(len(data.model), data.g_model, step, cfg.seed, "model")
            if data.model_odds is None
            else balanced_indices(data.model_odds, data.g_model, step, cfg.seed, "model")
        ),
        "model_noise": draw_noise(data.model, data.g_model, T, gen, data.t_weights),
    }
    if data.pre is not None:
        out["pre"] = batch_indices(len(data.pre), data.g_pre, step, cfg.seed, "pre")
        out["pre_noise"] = draw_noise(data.pre, data.g_pre, T, gen)
        out["drop"] = (
            torch.rand(data.g_pre, generator=gen) < cfg.pretrain_cfg_dropout
            if data.null_emb is not None
            else None
        )
    return out


def _micro(data: _Data, s: LatentSet, idx, eps, noise, t, k: int, per: int):
    """Examples [k * per, (k + 1) * per) of a global batch: noisy latents, timesteps, conditioning,
    target and weights."""
    sl = slice(k * per, (k + 1) * per)
    i = torch.from_numpy(idx[sl])
    x0 = (s.mean[i] + s.std[i] * eps[sl]) * data.scaling  # (B, C, h, w): a posterior sample
    noisy = data.scheduler.add_noise(x0, noise[sl], t[sl])
    target = denoising_target(data.scheduler, x0, noise[sl], t[sl])
    return noisy, t[sl], s.text_emb[s.text_ids[i]], target, s.weights[i]


def _micro_loss(cfg: FinetuneConfig, data: _Data, batches: dict, unet, k: int, device):
    """Eq. 4 on this process's slice k (micro-step m, rank r: k = m * world + r) of the step's batches,
    with one UNet call on the D_model and D_pre examples together (one forward instead of two)."""
    noisy, t, cond, target, w = _micro(
        data, data.model, batches["model"], *batches["model_noise"], k, cfg.train_batch_size
    )
    b = len(w)
    if data.pre is not None:
        per = cfg.pretrain_batch_size
        p_noisy, p_t, p_cond, p_target, _ = _micro(
            data, data.pre, batches["pre"], *batches["pre_noise"], k, per
        )
        if batches["drop"] is not None:  # the empty prompt, as the pipeline's unconditional branch sees it
            p_cond = torch.where(batches["drop"][k * per : (k + 1) * per, None, None], data.null_emb, p_cond)
        noisy, t = torch.cat([noisy, p_noisy]), torch.cat([t, p_t])
        cond, target = torch.cat([cond, p_cond]), torch.cat([target, p_target])
    pred = unet(noisy.to(device), t.to(device), encoder_hidden_states=cond.to(device)).sample
    per_sample = per_sample_mse(pred, target.to(device))  # (B [+ B_pre],)
    pre = per_sample[b:] if data.pre is not None else None
    loss = eq4_loss(per_sample[:b], w.to(device), pre, cfg.beta)[0]
    return loss, {"reward": float(w.mean())}


def _log_record(step: int, batches: dict) -> dict:
    """The batch log's line of a step: the example ids of D_model and D_pre it trained on."""
    pre = batches["pre"].tolist() if "pre" in batches else []
    return {"step": step, "model": batches["model"].tolist(), "pre": pre}


@dataclass
class Steps:
    """What a stage computes in the shared step loop, as functions of the step alone (exact resume)."""

    batches: Callable[[int], dict]  # step -> its global batch: example ids, noise, timesteps
    # (batches, unet, k, device) -> (scalar loss, {stat: float}) of slice k of the global batch
    loss: Callable[..., tuple[torch.Tensor, dict]]
    record: Callable[[int, dict], dict]  # (step, batches) -> the step's line of batches.jsonl


def train_loop(cfg: FinetuneConfig, name: str, model: tuple, start: int, progress: bool, *, steps: Steps):
    """The step loop from ``start``: every process computes the same global batch and takes its slice;
    gradient accumulation over micro-steps; a checkpoint every ``checkpointing_steps`` and at the end.
    ``model`` is (state, prepared unet, prepared optimizer, accelerator). Returns the steps' losses (this
    process's), their stats (means over micro-steps and processes) and the loop's seconds."""
    state, unet, optimizer, accelerator = model
    world, rank, accum = accelerator.num_processes, accelerator.process_index, cfg.gradient_accumulation_steps
    log_path = state.root.parent / "batches.jsonl"
    losses, stats, t0 = [], [], time.time()
    bar = tqdm(
        range(start, cfg.max_train_steps),
        desc=name,
        initial=start,
        total=cfg.max_train_steps,
        disable=not (progress and accelerator.is_main_process),
    )
    for step in bar:
        set_lr(state.optimizer, lr_at(step, cfg.learning_rate, cfg.lr_warmup_steps))
        batches = steps.batches(step)
        step_loss, step_stats = 0.0, {}
        for m in range(accum):
            with accelerator.accumulate(unet):
                loss, micro = steps.loss(batches, unet, m * world + rank, accelerator.device)
                check_finite(loss, name, step, gather=accelerator.gather)
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(state.params, cfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step_loss += loss.item() / accum
                step_stats = {k: step_stats.get(k, 0.0) + v / accum for k, v in micro.items()}
        if state.ema is not None:
            state.ema.step(state.params)
        losses.append(step_loss)
        stats.append(_mean_over_processes(step_stats, accelerator))
        if accelerator.is_main_process:
            with open(log_path, "a") as f:
                f.write(json.dumps(steps.record(step, batches)) + "\n")
            recent = {k: f"{np.mean([s[k] for s in stats[-20:]]):.3f}" for k in stats[-1]}
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", **recent)
        if (step + 1) % cfg.checkpointing_steps == 0 or step + 1 == cfg.max_train_steps:
            if accelerator.is_main_process:
                state.save(step + 1, float(np.mean(losses[-20:])))
            accelerator.wait_for_everyone()
    bar.close()
    return losses, stats, time.time() - t0


def _mean_over_processes(stats: dict[str, float], accelerator) -> dict[str, float]:
    """Each stat's mean over the processes (each holds its slice's), in one gather."""
    if not stats or accelerator.num_processes == 1:
        return stats
    values = torch.tensor(list(stats.values()), dtype=torch.float64, device=accelerator.device)
    means = accelerator.gather(values).view(accelerator.num_processes, -1).mean(0).tolist()
    return dict(zip(stats, means, strict=True))


def _report(cfg: FinetuneConfig, name, session: Session, data: _Data, start, losses, seconds) -> dict:
    """report.json: what was trained, on how much, how fast, to what loss."""
    steps_run = cfg.max_train_steps - start
    n_pre = len(data.pre) if data.pre is not None else 0
    g_pre = data.g_pre if data.pre is not None else 0
    return {
        "name": name,
        "base_model": session.model_id,
        "base_revision": session.revision,
        "reward_model": str(data.reward_path) if data.reward_model is not None else None,
        "weights": cfg.weights,
        "use_unlabeled": cfg.use_unlabeled,
        "top_k_per_prompt": cfg.top_k_per_prompt,
        "beta": cfg.beta,
        "pretrain_data": cfg.pretrain_data,
        "pretrain_cfg_dropout": cfg.pretrain_cfg_dropout,
        "learning_rate": cfg.learning_rate,
        "use_ema": cfg.use_ema,
        "n_model": len(data.model),
        "n_model_prompts": len(data.model.texts),
        "d_model_images": images_digest(data.model.keys),
        "balance_prompts": cfg.balance_prompts,
        "n_pretrain": n_pre,
        "mean_weight": round(float(data.model.weights.mean()), 4),
        "steps": cfg.max_train_steps,
        "steps_this_call": steps_run,
        "num_processes": session.accelerator.num_processes,
        "global_batch": {"model": data.g_model, "pretrain": g_pre},
        "seconds": round(seconds, 2),
        "images_per_second": round(steps_run * (data.g_model + g_pre) / seconds, 1) if steps_run else None,
        "final_loss": round(float(np.mean(losses[-20:])), 5) if losses else None,
    }


def save_outputs(
    pipe, unet, cfg: FinetuneConfig, out: Path, report: dict, config: dict, stamp_name: str
) -> None:
    """The trained pipeline (and LoRA weights) next to the config (``config``, the stage's whole config)
    and seed that made them, in a stamp file ``stamp_name`` inside each folder."""
    from diffusers import StableDiffusionPipeline

    from t2ialign.models.load import resolve_sd_path, strip_local_paths

    stamp = {"t2ialign_version": __version__, "config": config, "seed": cfg.seed, "report": report}
    # the base's folder as an absolute path: a relative one in the config was relative to the cwd of the run
    stamp["source_folder"] = str(resolve_sd_path(cfg.pretrained_model_name_or_path)[0].resolve())
    tmp = out / "pipeline.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    if cfg.lora_rank > 0:
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        lora_tmp = out / "lora.tmp"
        shutil.rmtree(lora_tmp, ignore_errors=True)
        StableDiffusionPipeline.save_lora_weights(
            lora_tmp,
            unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)),
            safe_serialization=True,
        )
        (lora_tmp / stamp_name).write_text(json.dumps(stamp, indent=1) + "\n")
        publish_dir(lora_tmp, out / "lora")
        # The merged pipeline, made through the documented one-line load on a fresh copy of the base.
        base, _ = resolve_sd_path(cfg.pretrained_model_name_or_path)
        merged = StableDiffusionPipeline.from_pretrained(
            base, safety_checker=None, requires_safety_checker=False, local_files_only=True
        )
        merged.load_lora_weights(out / "lora")
        merged.fuse_lora()
        merged.unload_lora_weights()
        merged.save_pretrained(tmp, safe_serialization=True)
    else:
        pipe.unet = unet.eval()
        pipe.save_pretrained(tmp, safe_serialization=True)
    strip_local_paths(tmp)
    (tmp / stamp_name).write_text(json.dumps(stamp, indent=1) + "\n")
    publish_dir(tmp, out / "pipeline")
