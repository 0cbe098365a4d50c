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
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel

    from t2ialign.models.load import load_pipeline
    from t2ialign.reward.model import RewardModel

    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        cpu=not torch.cuda.is_available(),
    )
    out = store.run_dir / "finetune" / name
    ckpt_root = out / "checkpoints"
    if resume_from_checkpoint is None and latest_checkpoint(ckpt_root) is not None:
        raise CheckpointError(
            f"{out} already holds checkpoints: pass resume_from_checkpoint='latest' (--resume_from_checkpoint "
            "latest) to continue them, or choose another name"
        )
    resume = resolve_resume(ckpt_root, resume_from_checkpoint)
    if resume_from_checkpoint == "latest" and resume is None:
        accelerator.print(f"no checkpoint under {ckpt_root} yet: starting at step 0")

    pipe, model_id, revision = load_pipeline(cfg.pretrained_model_name_or_path)
    identity = _identity(cfg, accelerator.num_processes, revision)
    state: dict = {}
    if resume is not None:  # refuse a mismatched checkpoint before any expensive work
        ckpt_tensors, state = load_checkpoint(resume, expect_config=identity)

    # --- data, encoded once by the main process (the others read its cache) ---
    reward_path = Path(cfg.reward) if cfg.reward else store.run_dir / "reward"
    with accelerator.main_process_first():
        reward_model = RewardModel.load(reward_path) if cfg.weights == "reward" else None
        items = model_examples(store, cfg, reward_model, progress and accelerator.is_main_process)
        d_model = build_model_set(store, pipe, items, progress and accelerator.is_main_process)
        d_pre = (
            build_pretrain_set(store, pipe, cfg, progress and accelerator.is_main_process)
            if cfg.beta > 0
            else None
        )
    scaling = float(pipe.vae.config.scaling_factor)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    T = noise_scheduler.config.num_train_timesteps

    # --- the trainable UNet: all of it, or LoRA adapters ---
    unet = pipe.unet
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
    raw_optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.adam_weight_decay)
    ema = EMAModel(params, decay=cfg.ema_decay) if cfg.use_ema else None
    train_state = TrainState(
        unet,
        raw_optimizer,
        ema,
        config=identity,
        root=ckpt_root,
        keep=cfg.checkpoints_total_limit,
        trainable_only=True,
    )
    start = 0
    if resume is not None:
        start = train_state.restore(ckpt_tensors, state)
        accelerator.print(f"resumed from {resume} at step {start}")
    unet, optimizer = accelerator.prepare(unet, raw_optimizer)

    world, rank, accum = accelerator.num_processes, accelerator.process_index, cfg.gradient_accumulation_steps
    g_model = cfg.train_batch_size * accum * world
    g_pre = cfg.pretrain_batch_size * accum * world
    log_path = out / "batches.jsonl"
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "finetune_config.json").write_text(json.dumps(to_dict(cfg), indent=1) + "\n")
        _truncate_log(log_path, start)

    def micro(data: LatentSet, idx, eps, noise, t, m: int, per: int):
        """This process's slice of micro-step m: noisy latents, conditioning, target, weights."""
        sl = slice((m * world + rank) * per, (m * world + rank + 1) * per)
        i = torch.from_numpy(idx[sl])
        x0 = (data.mean[i] + data.std[i] * eps[sl]) * scaling  # (B, C, h, w): a posterior sample
        noisy = noise_scheduler.add_noise(x0, noise[sl], t[sl])
        target = denoising_target(noise_scheduler, x0, noise[sl], t[sl])
        return noisy, t[sl], data.text_emb[data.text_ids[i]], target, data.weights[i]

    device = accelerator.device
    # (1, L, H): the text encoder's states for "", what classifier-free guidance conditions on
    null_emb = encode_texts(pipe, [""]) if d_pre is not None and cfg.pretrain_cfg_dropout > 0 else None
    losses, rewards_seen, t0 = [], [], time.time()
    bar = tqdm(
        range(start, cfg.max_train_steps),
        desc=f"finetune {name}",
        initial=start,
        total=cfg.max_train_steps,
        disable=not (progress and accelerator.is_main_process),
    )
    for step in bar:
        set_lr(raw_optimizer, lr_at(step, cfg.learning_rate, cfg.lr_warmup_steps))
        gen = torch.Generator().manual_seed(stable_seed("finetune-noise", cfg.seed, step))
        idx_m = batch_indices(len(d_model), g_model, step, cfg.seed, "model")
        noise_m = draw_noise(d_model, g_model, T, gen)
        if d_pre is not None:
            idx_p = batch_indices(len(d_pre), g_pre, step, cfg.seed, "pre")
            noise_p = draw_noise(d_pre, g_pre, T, gen)
            drop_p = (
                torch.rand(g_pre, generator=gen) < cfg.pretrain_cfg_dropout if null_emb is not None else None
            )
        step_loss = 0.0
        for m in range(accum):
            with accelerator.accumulate(unet):
                noisy, t, cond, target, w = micro(d_model, idx_m, *noise_m, m, cfg.train_batch_size)
                b = len(w)
                if d_pre is not None:  # one UNet call on both batches: one forward instead of two
                    p_noisy, p_t, p_cond, p_target, _ = micro(
                        d_pre, idx_p, *noise_p, m, cfg.pretrain_batch_size
                    )
                    if drop_p is not None:  # the empty prompt, as the pipeline's unconditional branch sees it
                        k = (m * world + rank) * cfg.pretrain_batch_size
                        drop = drop_p[k : k + cfg.pretrain_batch_size, None, None]
                        p_cond = torch.where(drop, null_emb, p_cond)
                    noisy, t = torch.cat([noisy, p_noisy]), torch.cat([t, p_t])
                    cond, target = torch.cat([cond, p_cond]), torch.cat([target, p_target])
                pred = unet(noisy.to(device), t.to(device), encoder_hidden_states=cond.to(device)).sample
                per_sample = per_sample_mse(pred, target.to(device))  # (B [+ B_pre],)
                loss, parts = eq4_loss(
                    per_sample[:b], w.to(device), per_sample[b:] if d_pre is not None else None, cfg.beta
                )
                check_finite(loss, f"finetune {name}", step, gather=accelerator.gather)
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step_loss += loss.item() / accum
        if ema is not None:
            ema.step(params)
        losses.append(step_loss)
        rewards_seen.append(float(d_model.weights[torch.from_numpy(idx_m)].mean()))
        if accelerator.is_main_process:
            with open(log_path, "a") as f:
                f.write(
                    json.dumps(
                        {
                            "step": step,
                            "model": idx_m.tolist(),
                            "pre": idx_p.tolist() if d_pre is not None else [],
                        }
                    )
                )
                f.write("\n")
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", reward=f"{np.mean(rewards_seen[-20:]):.3f}")
        if (step + 1) % cfg.checkpointing_steps == 0 or step + 1 == cfg.max_train_steps:
            if accelerator.is_main_process:
                train_state.save(step + 1, float(np.mean(losses[-20:])))
            accelerator.wait_for_everyone()
    bar.close()
    seconds = time.time() - t0
    steps_run = cfg.max_train_steps - start

    report = {
        "name": name,
        "base_model": model_id,
        "base_revision": revision,
        "reward_model": str(reward_path) if reward_model is not None else None,
        "weights": cfg.weights,
        "use_unlabeled": cfg.use_unlabeled,
        "top_k_per_prompt": cfg.top_k_per_prompt,
        "beta": cfg.beta,
        "pretrain_data": cfg.pretrain_data,
        "pretrain_cfg_dropout": cfg.pretrain_cfg_dropout,
        "learning_rate": cfg.learning_rate,
        "use_ema": cfg.use_ema,
        "n_model": len(d_model),
        "n_pretrain": len(d_pre) if d_pre is not None else 0,
        "mean_weight": round(float(d_model.weights.mean()), 4),
        "steps": cfg.max_train_steps,
        "steps_this_call": steps_run,
        "num_processes": world,
        "global_batch": {"model": g_model, "pretrain": g_pre if d_pre is not None else 0},
        "seconds": round(seconds, 2),
        "images_per_second": round(steps_run * (g_model + (g_pre if d_pre is not None else 0)) / seconds, 1)
        if steps_run
        else None,
        "final_loss": round(float(np.mean(losses[-20:])), 5) if losses else state.get("loss"),
    }
    if accelerator.is_main_process:
        unet = accelerator.unwrap_model(unet)
        train_state.finish()
        _save_outputs(pipe, unet, cfg, out, report)
        (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
        store.update_metrics(finetune={**store.read_metrics().get("finetune", {}), name: report})
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return report


def _save_outputs(pipe, unet, cfg: FinetuneConfig, out: Path, report: dict) -> None:
    """The fine-tuned pipeline (and LoRA weights) next to the config and seed that made them."""
    from diffusers import StableDiffusionPipeline

    from t2ialign.models.load import resolve_sd_path

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
    (tmp / "t2ialign_finetune.json").write_text(json.dumps(stamp, indent=1) + "\n")
    publish_dir(tmp, out / "pipeline")
