"""``t2ialign finetune``: the UNet trained on Eq. 4 with accelerate (paper Sec. 3.3, Table 2).

One optimizer step s reads a global batch of G = train_batch_size x gradient_accumulation_steps x
num_processes examples of D_model (and as many of D_pre, scaled by pretrain_batch_size) from a seeded
stream of epoch permutations, and the noise, posterior samples and timesteps of that global batch come
from a generator seeded by (seed, s). Every process computes the same global batch and takes its own
slice, so one process with gradient accumulation and several processes without it see the same examples
and the same noise, and a resumed run repeats nothing and skips nothing: it equals the uninterrupted run.

Launch with several processes: ``torchrun --nproc_per_node 2 -m t2ialign finetune RUN`` (CPU, gloo), or
``accelerate launch -m t2ialign finetune RUN`` on GPUs.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from t2ialign import __version__
from t2ialign.config import FinetuneConfig, to_dict
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
    model_examples,
)
from t2ialign.finetune.losses import denoising_target, eq4_loss, lr_at, per_sample_mse
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


def draw_noise(data: LatentSet, global_batch: int, num_train_timesteps: int, gen: torch.Generator):
    """The global batch's posterior noise, diffusion noise (each (G, C, h, w)) and timesteps (G,)."""
    shape = (global_batch, *data.mean.shape[1:])
    eps = torch.randn(shape, generator=gen)
    noise = torch.randn(shape, generator=gen)
    t = torch.randint(0, num_train_timesteps, (global_batch,), generator=gen)
    return eps, noise, t


def _identity(cfg: FinetuneConfig, num_processes: int, base_revision: str) -> dict:
    d = {k: v for k, v in to_dict(cfg).items() if k not in RESUMABLE_CHANGES}
    return d | {"num_processes": num_processes, "base_revision": base_revision}


def _truncate_log(path: Path, before_step: int) -> None:
    """Keep the batch log's lines of steps < before_step (a crashed run may have logged steps after its
    last checkpoint; the resumed run logs them again)."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] < before_step]
    atomic_write(path, "".join(ln + "\n" for ln in keep).encode())


def finetune(
    cfg: FinetuneConfig,
    store: Store,
    name: str = "default",
    resume_from_checkpoint: str | None = None,
    progress: bool = True,
) -> dict:
    """Fine-tune the UNet of ``cfg.pretrained_model_name_or_path`` on Eq. 4; returns the training report.

    Writes RUN/finetune/NAME/: checkpoints/, batches.jsonl (the example ids of every step), the resulting
    pipeline/ (stock ``StableDiffusionPipeline.from_pretrained`` loads it), lora/ when training LoRA, and
    report.json. A folder with checkpoints is only continued with ``resume_from_checkpoint``.
    """
    from accelerate import Accelerator

    from t2ialign.models.load import load_pipeline

    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        cpu=not torch.cuda.is_available(),
    )
    out = store.run_dir / "finetune" / name
    resume = _resume_point(out / "checkpoints", resume_from_checkpoint, accelerator)
    pipe, model_id, revision = load_pipeline(cfg.pretrained_model_name_or_path)
    identity = _identity(cfg, accelerator.num_processes, revision)
    # refuse a mismatched checkpoint before any expensive work
    checkpoint = load_checkpoint(resume, expect_config=identity) if resume is not None else None
    data = _Data(cfg, store, pipe, accelerator, progress and accelerator.is_main_process)
    state = _train_state(pipe.unet, cfg, identity, out / "checkpoints")
    start = 0
    if checkpoint is not None:
        start = state.restore(*checkpoint)
        accelerator.print(f"resumed from {resume} at step {start}")
    unet, optimizer = accelerator.prepare(state.module, state.optimizer)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "finetune_config.json").write_text(json.dumps(to_dict(cfg), indent=1) + "\n")
        _truncate_log(out / "batches.jsonl", start)
    losses, rewards_seen, seconds = _train(
        cfg, name, data, state, unet, optimizer, accelerator, start, progress
    )
    report = _report(cfg, name, model_id, revision, data, accelerator, start, losses, rewards_seen, seconds)
    if not losses:
        report["final_loss"] = checkpoint[1].get("loss") if checkpoint is not None else None
    if accelerator.is_main_process:
        unet = accelerator.unwrap_model(unet)
        state.finish()
        _save_outputs(pipe, unet, cfg, out, report)
        (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
        store.update_metrics(finetune={**store.read_metrics().get("finetune", {}), name: report})
    accelerator.wait_for_everyone()
    accelerator.end_training()
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

    def __init__(self, cfg: FinetuneConfig, store: Store, pipe, accelerator, progress: bool):
        from diffusers import DDPMScheduler

        from t2ialign.reward.model import RewardModel

        self.reward_path = Path(cfg.reward) if cfg.reward else store.run_dir / "reward"
        with accelerator.main_process_first():
            self.reward_model = RewardModel.load(self.reward_path) if cfg.weights == "reward" else None
            items = model_examples(store, cfg, self.reward_model, progress)
            self.model = build_model_set(store, pipe, items, progress)
            self.pre = build_pretrain_set(store, pipe, cfg, progress) if cfg.beta > 0 else None
        self.scaling = float(pipe.vae.config.scaling_factor)
        self.scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        world, accum = accelerator.num_processes, cfg.gradient_accumulation_steps
        self.g_model = cfg.train_batch_size * accum * world
        self.g_pre = cfg.pretrain_batch_size * accum * world
        # (1, L, H): the text encoder's states for "", what classifier-free guidance conditions on
        dropout = self.pre is not None and cfg.pretrain_cfg_dropout > 0
        self.null_emb = encode_texts(pipe, [""]) if dropout else None


def _train_state(unet, cfg: FinetuneConfig, identity: dict, ckpt_root: Path) -> TrainState:
    """The trainable UNet (all of it, or LoRA adapters), its AdamW and optional EMA, checkpointed."""
    from diffusers.training_utils import EMAModel

    unet.train()
    if cfg.lora_rank > 0:
        from peft import LoraConfig

        unet.requires_grad_(False)
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
        config=identity,
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
        "model": batch_indices(len(data.model), data.g_model, step, cfg.seed, "model"),
        "model_noise": draw_noise(data.model, data.g_model, T, gen),
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
    return eq4_loss(per_sample[:b], w.to(device), pre, cfg.beta)[0]


def _train(
    cfg: FinetuneConfig,
    name: str,
    data: _Data,
    state: TrainState,
    unet,
    optimizer,
    accelerator,
    start: int,
    progress: bool,
):
    """The step loop from ``start``: every process computes the same global batch and takes its slice;
    gradient accumulation over micro-steps; a checkpoint every ``checkpointing_steps`` and at the end."""
    world, rank, accum = accelerator.num_processes, accelerator.process_index, cfg.gradient_accumulation_steps
    log_path = state.root.parent / "batches.jsonl"
    losses, rewards_seen, t0 = [], [], time.time()
    bar = tqdm(
        range(start, cfg.max_train_steps),
        desc=f"finetune {name}",
        initial=start,
        total=cfg.max_train_steps,
        disable=not (progress and accelerator.is_main_process),
    )
    for step in bar:
        set_lr(state.optimizer, lr_at(step, cfg.learning_rate, cfg.lr_warmup_steps))
        batches = _step_batches(cfg, data, step)
        step_loss = 0.0
        for m in range(accum):
            with accelerator.accumulate(unet):
                loss = _micro_loss(cfg, data, batches, unet, m * world + rank, accelerator.device)
                check_finite(loss, f"finetune {name}", step, gather=accelerator.gather)
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(state.params, cfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step_loss += loss.item() / accum
        if state.ema is not None:
            state.ema.step(state.params)
        losses.append(step_loss)
        rewards_seen.append(float(data.model.weights[torch.from_numpy(batches["model"])].mean()))
        if accelerator.is_main_process:
            pre = batches["pre"].tolist() if data.pre is not None else []
            with open(log_path, "a") as f:
                f.write(json.dumps({"step": step, "model": batches["model"].tolist(), "pre": pre}) + "\n")
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", reward=f"{np.mean(rewards_seen[-20:]):.3f}")
        if (step + 1) % cfg.checkpointing_steps == 0 or step + 1 == cfg.max_train_steps:
            if accelerator.is_main_process:
                state.save(step + 1, float(np.mean(losses[-20:])))
            accelerator.wait_for_everyone()
    bar.close()
    return losses, rewards_seen, time.time() - t0


def _report(
    cfg: FinetuneConfig,
    name,
    model_id,
    revision,
    data: _Data,
    accelerator,
    start,
    losses,
    rewards_seen,
    seconds,
) -> dict:
    """report.json: what was trained, on how much, how fast, to what loss."""
    steps_run = cfg.max_train_steps - start
    n_pre = len(data.pre) if data.pre is not None else 0
    g_pre = data.g_pre if data.pre is not None else 0
    return {
        "name": name,
        "base_model": model_id,
        "base_revision": revision,
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
        "n_pretrain": n_pre,
        "mean_weight": round(float(data.model.weights.mean()), 4),
        "steps": cfg.max_train_steps,
        "steps_this_call": steps_run,
        "num_processes": accelerator.num_processes,
        "global_batch": {"model": data.g_model, "pretrain": g_pre},
        "seconds": round(seconds, 2),
        "images_per_second": round(steps_run * (data.g_model + g_pre) / seconds, 1) if steps_run else None,
        "final_loss": round(float(np.mean(losses[-20:])), 5) if losses else None,
    }


def _save_outputs(pipe, unet, cfg: FinetuneConfig, out: Path, report: dict) -> None:
    """The fine-tuned pipeline (and LoRA weights) next to the config and seed that made them."""
    from diffusers import StableDiffusionPipeline

    from t2ialign.models.load import resolve_sd_path, strip_local_paths

    stamp = {"t2ialign_version": __version__, "config": to_dict(cfg), "seed": cfg.seed, "report": report}
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
        (lora_tmp / "t2ialign_finetune.json").write_text(json.dumps(stamp, indent=1) + "\n")
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
    (tmp / "t2ialign_finetune.json").write_text(json.dumps(stamp, indent=1) + "\n")
    publish_dir(tmp, out / "pipeline")
