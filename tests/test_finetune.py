"""Stage 5, reward-weighted fine-tuning (Eq. 4): the loss by hand, the data, and the reliability rules
(SIGKILL + resume equals an uninterrupted run bitwise, crash while checkpointing, refusals, no NaN in a
checkpoint, 2 processes == 1 process with the same global batch), on tiny models built from config."""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from t2ialign.config import ConfigError, FinetuneConfig, GenerateConfig, RewardConfig
from t2ialign.core.checkpoint import CheckpointError, latest_checkpoint, list_checkpoints
from t2ialign.finetune import data as ft_data
from t2ialign.finetune import train as ft_train
from t2ialign.finetune.losses import (
    clamp_rewards,
    denoising_target,
    eq4_loss,
    lr_at,
    per_sample_mse,
    reward_weighted_loss,
    timestep_weights,
)
from t2ialign.finetune.train import batch_indices, finetune
from t2ialign.generate.images import generate
from t2ialign.label.service import submit_label
from t2ialign.models.load import load_clip, revision
from t2ialign.reward.model import RewardModel
from t2ialign.reward.train import train_reward
from t2ialign.store import Store
from t2ialign.world.prompts import build_prompt_set

SRC = str(Path(__file__).resolve().parents[1] / "src")


# --- the loss, by hand ---------------------------------------------------------------------------------


def test_eq4_terms_by_hand():
    pred = torch.tensor([[1.0, 3.0], [0.0, 0.0]]).view(2, 2, 1, 1)
    target = torch.tensor([[0.0, 1.0], [2.0, 0.0]]).view(2, 2, 1, 1)
    per = per_sample_mse(pred, target)  # [(1 + 4) / 2, (4 + 0) / 2]
    assert per.tolist() == [2.5, 2.0]
    w = torch.tensor([1.0, 0.25])
    assert reward_weighted_loss(per, w).item() == pytest.approx((2.5 * 1 + 2.0 * 0.25) / 2)
    loss, parts = eq4_loss(per, w, torch.tensor([1.0, 3.0]), beta=0.5)
    assert loss.item() == pytest.approx(1.5 + 0.5 * 2.0)
    assert parts["model"].item() == pytest.approx(1.5) and parts["pretrain"].item() == pytest.approx(2.0)
    alone, _ = eq4_loss(per, w, None, beta=0.0)
    assert alone.item() == pytest.approx(1.5)
    with pytest.raises(ValueError, match="D_pre"):
        eq4_loss(per, w, None, beta=1.0)
    with pytest.raises(ValueError):
        per_sample_mse(pred, target[:1])


def test_targets_rewards_and_learning_rate():
    from diffusers import DDPMScheduler

    x0, noise, t = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2), torch.tensor([0, 500, 999])
    eps = DDPMScheduler(prediction_type="epsilon")
    assert torch.equal(denoising_target(eps, x0, noise, t), noise)
    v = DDPMScheduler(prediction_type="v_prediction")
    a = v.alphas_cumprod[t].view(-1, 1, 1, 1)
    assert torch.allclose(
        denoising_target(v, x0, noise, t), a.sqrt() * noise - (1 - a).sqrt() * x0, atol=1e-6
    )
    assert clamp_rewards(torch.tensor([-0.5, 0.3, 1.7]), 0.0, 1.0).tolist() == pytest.approx([0.0, 0.3, 1.0])
    with pytest.raises(ValueError, match="NaN"):
        clamp_rewards(torch.tensor([0.1, float("nan")]), 0.0, 1.0)
    assert [lr_at(s, 1.0, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_at(0, 0.1, 0) == 0.1


def test_timestep_bias_by_hand():
    assert timestep_weights(10, "none", 5.0, 0.3, 0, 10) is None  # uniform: the paper's draws
    later = timestep_weights(10, "later", 3.0, 0.2, 0, 10)  # the last 2 of 10 count 3 times
    assert later.tolist() == pytest.approx([1 / 14] * 8 + [3 / 14] * 2)
    earlier = timestep_weights(10, "earlier", 0.5, 0.5, 0, 10)
    assert earlier.tolist() == pytest.approx([0.5 / 7.5] * 5 + [1 / 7.5] * 5)
    ranged = timestep_weights(10, "range", 4.0, 0.25, 3, 5)
    assert ranged.tolist() == pytest.approx([1 / 16] * 3 + [4 / 16] * 2 + [1 / 16] * 5)
    with pytest.raises(ValueError, match="outside"):
        timestep_weights(10, "range", 2.0, 0.25, 10, 20)
    # drawn with those odds: a range favoured a million times holds (nearly) every draw
    data = ft_data.LatentSet(["a"], torch.zeros(1, 4, 2, 2), torch.ones(1, 4, 2, 2), None, None, [], None)
    odds = timestep_weights(1000, "range", 1e6, 0.25, 900, 1000)
    _, _, t = ft_train.draw_noise(data, 4096, 1000, torch.Generator().manual_seed(0), odds)
    assert (t >= 900).float().mean() > 0.99 and t.max() < 1000
    _, _, uniform = ft_train.draw_noise(data, 4096, 1000, torch.Generator().manual_seed(0))
    assert 0.05 < (uniform >= 900).float().mean() < 0.15
    with pytest.raises(ConfigError, match="timestep_bias_strategy"):
        FinetuneConfig(timestep_bias_strategy="late")
    with pytest.raises(ConfigError, match="timestep_bias_multiplier"):
        FinetuneConfig(timestep_bias_strategy="later", timestep_bias_multiplier=0)
    with pytest.raises(ConfigError, match="begin < end"):
        FinetuneConfig(timestep_bias_begin=500, timestep_bias_end=500)


def test_batches_cover_every_example_once_per_epoch():
    n, g = 10, 4
    ids = np.concatenate([batch_indices(n, g, s, seed=0, stream="model") for s in range(5)])  # 2 epochs
    assert sorted(ids[:10]) == list(range(10)) and sorted(ids[10:]) == list(range(10))
    assert not np.array_equal(ids[:10], ids[10:])  # a new permutation each epoch
    assert np.array_equal(batch_indices(n, g, 3, 0, "model"), ids[12:16])  # any step alone, same ids


def test_balanced_batches_draw_every_prompt_equally_often():
    from types import SimpleNamespace

    text_ids = torch.tensor([0, 0, 0, 0, 0, 0, 1, 2, 2])  # prompt 0 kept 6 images, 1 kept 1, 2 kept 2
    odds = ft_train.prompt_balanced_odds(text_ids)
    assert odds.tolist() == pytest.approx([1 / 18] * 6 + [1 / 3] + [1 / 6] * 2)
    mean, std = torch.zeros(9, 4, 2, 2), torch.ones(9, 4, 2, 2)
    model = ft_data.LatentSet([str(i) for i in range(9)], mean, std, text_ids, None, ["a", "b", "c"], None)
    data = SimpleNamespace(
        model=model,
        model_odds=odds,
        g_model=64,
        t_weights=None,
        pre=None,
        scheduler=SimpleNamespace(config=SimpleNamespace(num_train_timesteps=1000)),
    )
    cfg = FinetuneConfig(balance_prompts=True)
    drawn = np.concatenate([ft_train._step_batches(cfg, data, s)["model"] for s in range(200)])
    share = np.bincount(text_ids.numpy()[drawn], minlength=3) / len(drawn)
    assert share == pytest.approx([1 / 3] * 3, abs=0.02)  # per image: 6 to 1 against prompt 1's one image
    assert np.array_equal(ft_train._step_batches(cfg, data, 7)["model"], drawn[7 * 64 : 8 * 64])  # by step
    data.model_odds = None  # off: every image once per epoch, so prompt 0 takes two thirds
    unbalanced = np.concatenate([ft_train._step_batches(cfg, data, s)["model"] for s in range(9)])
    assert np.bincount(unbalanced).tolist() == [64] * 9


def test_config_is_validated():
    with pytest.raises(ConfigError, match="use_unlabeled"):
        FinetuneConfig(weights="labels")
    with pytest.raises(ConfigError, match="reward_range"):
        FinetuneConfig(reward_range=(1.0, 0.0))
    with pytest.raises(ConfigError, match="beta"):
        FinetuneConfig(beta=-1)
    with pytest.raises(ConfigError, match="ties"):
        FinetuneConfig(weights="uniform", top_k_per_prompt=4)
    with pytest.raises(ConfigError, match="D_pre alone"):
        FinetuneConfig(weights="none", beta=0)
    with pytest.raises(ConfigError, match="top_k_per_prompt"):
        FinetuneConfig(top_k_per_prompt=-1)
    with pytest.raises(ConfigError, match="min_weight"):
        FinetuneConfig(min_weight=1.5)
    with pytest.raises(ConfigError, match="min_weight"):
        FinetuneConfig(weights="none", min_weight=0.5)


def test_top_k_per_prompt_keeps_each_prompts_best():
    items = [
        {"sha256": "c", "prompt": "p", "weight": 0.2},
        {"sha256": "a", "prompt": "p", "weight": 0.9},
        {"sha256": "d", "prompt": "p", "weight": 0.5},
        {"sha256": "b", "prompt": "p", "weight": 0.5},
        {"sha256": "e", "prompt": "q", "weight": 0.1},
    ]
    # p: 0.9 (a), then the 0.5 tie broken by sha256 (b before d); q has one image, kept
    assert [r["sha256"] for r in ft_data.top_k_per_prompt(items, 2)] == ["a", "b", "e"]
    assert [r["sha256"] for r in ft_data.top_k_per_prompt(items, 10)] == ["a", "b", "d", "c", "e"]
    with pytest.raises(ValueError, match="k must be"):
        ft_data.top_k_per_prompt(items, 0)


# --- a small run: tiny SD + tiny CLIP, labeled images, a reward model ------------------------------------


@pytest.fixture(scope="module")
def ft_run(tmp_path_factory, tiny_pipeline_path, tiny_clip_path):
    root = tmp_path_factory.mktemp("ft")
    with Store.open(root / "run") as store:
        prompts = build_prompt_set()
        store.add_prompts(prompts)
        chosen = [p.text for p in prompts if p.split == "seen"][::400][:4]
        gen = dict(model=str(tiny_pipeline_path), mixed_precision="no")
        generate(GenerateConfig(images_per_prompt=4, role="human", **gen), store, chosen, progress=False)
        generate(GenerateConfig(images_per_prompt=2, role="unlabeled", **gen), store, chosen, progress=False)
        a = store.add_labeler("a")
        for i, r in enumerate(store.list_images(role="human")):
            submit_label(store, a, r["id"], "good" if i % 2 else "bad")
        clip, proc, cid = load_clip(tiny_clip_path)
        model, _ = train_reward(
            store,
            RewardConfig(epochs=2, clip=str(tiny_clip_path)),
            clip,
            proc,
            cid,
            str(tiny_clip_path),
            False,
        )
        model.save(store.run_dir / "reward")
    return root / "run"


def small(tiny_pipeline_path, **kw) -> FinetuneConfig:
    base = dict(
        pretrained_model_name_or_path=str(tiny_pipeline_path),
        train_batch_size=4,
        pretrain_batch_size=4,
        pretrain_images=12,
        max_train_steps=6,
        checkpointing_steps=2,
        learning_rate=1e-3,
        lr_warmup_steps=2,
        use_ema=False,
    )
    return FinetuneConfig(**(base | kw))


def unet_weights(run: Path, name: str) -> dict:
    return load_file(
        str(run / "finetune" / name / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors")
    )


def test_finetune_changes_the_unet_and_ships_a_stock_pipeline(ft_run, tiny_pipeline_path):
    from diffusers import StableDiffusionPipeline

    with Store.open(ft_run) as store:
        report = finetune(small(tiny_pipeline_path), store, name="plain", progress=False)
        finetune(small(tiny_pipeline_path), store, name="plain-again", progress=False)
        metrics = store.read_metrics()["finetune"]
    assert report["n_model"] == 24 and report["n_pretrain"] == 12  # 16 human + 8 unlabeled
    assert 0.0 <= report["mean_weight"] <= 1.0 and metrics["plain"]["steps"] == 6
    assert (report["learning_rate"], report["use_ema"], report["pretrain_data"]) == (1e-3, False, "world")
    before = load_file(str(tiny_pipeline_path / "unet" / "diffusion_pytorch_model.safetensors"))
    after = unet_weights(ft_run, "plain")
    assert any(not torch.equal(before[k], after[k]) for k in before)  # parameters changed
    same = unet_weights(ft_run, "plain-again")
    assert all(torch.equal(after[k], same[k]) for k in after)  # same seed, same weights
    logs = [(ft_run / "finetune" / n / "batches.jsonl").read_text() for n in ("plain", "plain-again")]
    assert logs[0] == logs[1] and len(logs[0].splitlines()) == 6
    out = ft_run / "finetune" / "plain" / "pipeline"
    stamp = json.loads((out / "t2ialign_finetune.json").read_text())
    assert stamp["seed"] == 0 and stamp["config"]["max_train_steps"] == 6
    assert stamp["source_folder"] == str(Path(tiny_pipeline_path).resolve())  # the base, whatever the cwd
    # the same weights made in two run folders are the same model revision: no config names a local path
    assert not any("_name_or_path" in json.loads(f.read_text()) for f in out.glob("*/config.json"))
    assert revision(out) == revision(ft_run / "finetune" / "plain-again" / "pipeline")
    pipe = StableDiffusionPipeline.from_pretrained(out, local_files_only=True)
    image = pipe("Two red circles", num_inference_steps=2, output_type="np").images[0]
    assert image.shape == (32, 32, 3) and np.isfinite(image).all()


def test_latents_and_text_states_are_cached(ft_run, tiny_pipeline_path, monkeypatch):
    from t2ialign.models.load import load_pipeline

    cfg = small(tiny_pipeline_path)
    pipe, _, _ = load_pipeline(cfg.pretrained_model_name_or_path)
    with Store.open(ft_run) as store:
        items = ft_data.model_examples(store, cfg, RewardModel.load(store.run_dir / "reward"))
        first = ft_data.build_model_set(store, pipe, items)
        calls = []
        monkeypatch.setattr(ft_data, "encode_images", lambda *a, **k: calls.append(1))
        second = ft_data.build_model_set(store, pipe, items)
        assert not calls and torch.equal(first.mean, second.mean) and second.keys == first.keys
        # the cache holds what the VAE gives for the stored image
        from PIL import Image

        img = np.asarray(Image.open(store.image_path(first.keys[0])).convert("RGB"))
        x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 127.5 - 1
        with torch.no_grad():
            assert torch.allclose(pipe.vae.encode(x).latent_dist.mean, first.mean[:1], atol=1e-5)
        changed = [dict(items[0], weight=0.123), *items[1:]]  # other weights: another cache entry
        monkeypatch.setattr(
            ft_data, "encode_images", lambda *a, **k: calls.append(1) or (first.mean, first.std)
        )
        ft_data.build_model_set(store, pipe, changed)
        assert calls == [1]


def test_label_weights_use_only_labeled_human_images(ft_run, tiny_pipeline_path):
    cfg = small(tiny_pipeline_path, weights="labels", use_unlabeled=False)
    with Store.open(ft_run) as store:
        items = ft_data.model_examples(store, cfg)
    assert len(items) == 16 and sorted({r["weight"] for r in items}) == [0.0, 1.0]


def test_uniform_weights_take_every_image_without_a_reward(ft_run, tiny_pipeline_path):
    """The reward-free control: D_model as the reward would see it (labeled and unlabeled), all weights 1."""
    with Store.open(ft_run) as store:
        rewarded = ft_data.model_examples(
            store, small(tiny_pipeline_path), RewardModel.load(ft_run / "reward")
        )
        uniform = ft_data.model_examples(store, small(tiny_pipeline_path, weights="uniform"))
        human = ft_data.model_examples(
            store, small(tiny_pipeline_path, weights="uniform", use_unlabeled=False)
        )
    assert [r["sha256"] for r in uniform] == [r["sha256"] for r in rewarded]
    assert {r["weight"] for r in uniform} == {1.0} and len({r["weight"] for r in rewarded}) > 1
    assert 0 < len(human) < len(uniform)


def test_no_weights_train_d_pre_alone(ft_run, tiny_pipeline_path):
    """The D_pre-alone control: D_model's images weigh 0, so its term adds nothing to the loss."""
    with Store.open(ft_run) as store:
        items = ft_data.model_examples(store, small(tiny_pipeline_path, weights="none"))
        report = finetune(small(tiny_pipeline_path, weights="none", max_train_steps=2), store, name="dpre")
    assert items and {r["weight"] for r in items} == {0.0}
    assert report["mean_weight"] == 0.0 and report["n_pretrain"] == 12


def test_top_k_per_prompt_keeps_the_highest_rewards_of_d_model(ft_run, tiny_pipeline_path):
    with Store.open(ft_run) as store:
        reward = RewardModel.load(ft_run / "reward")
        every = ft_data.model_examples(store, small(tiny_pipeline_path), reward)
        best = ft_data.model_examples(store, small(tiny_pipeline_path, top_k_per_prompt=2), reward)
    prompts = {r["prompt"] for r in every}
    assert len(best) == sum(min(2, sum(r["prompt"] == p for r in every)) for p in prompts) < len(every)
    for p in prompts:
        ws = sorted((r["weight"] for r in every if r["prompt"] == p), reverse=True)
        assert sorted((r["weight"] for r in best if r["prompt"] == p), reverse=True) == ws[:2]


def test_min_weight_keeps_only_the_images_labeled_good(ft_run, tiny_pipeline_path):
    with Store.open(ft_run) as store:
        every = ft_data.model_examples(
            store, small(tiny_pipeline_path, weights="labels", use_unlabeled=False)
        )
        good = ft_data.model_examples(
            store, small(tiny_pipeline_path, weights="labels", use_unlabeled=False, min_weight=0.5)
        )
    assert {r["weight"] for r in every} > {r["weight"] for r in good}, "the run holds bad and good images"
    assert good == [r for r in every if r["weight"] >= 0.5] and good


def test_prompt_categories_keep_only_those_prompts_images(ft_run, tiny_pipeline_path):
    with Store.open(ft_run) as store:
        category = {p["text"]: p["category"] for p in store.list_prompts()}
        every = ft_data.model_examples(store, small(tiny_pipeline_path), RewardModel.load(ft_run / "reward"))
        held = sorted({category[r["prompt"]] for r in every})
        assert len(held) >= 2, f"the run's feedback prompts span one category only: {held}"
        some = ft_data.model_examples(
            store,
            small(tiny_pipeline_path, prompt_categories=held[:1]),
            RewardModel.load(ft_run / "reward"),
        )
    expected = [r for r in every if category[r["prompt"]] == held[0]]
    assert [(r["sha256"], r["prompt"]) for r in some] == [
        (r["sha256"], r["prompt"]) for r in expected
    ] and some
    # the reward scores the images in batches, and another set of images makes other batches: the weights
    # agree to float rounding (a CPU with AVX512 kernels differs in the 8th digit), not bit for bit
    assert [r["weight"] for r in some] == pytest.approx([r["weight"] for r in expected], rel=1e-5)
    with pytest.raises(ConfigError, match="prompt_categories: unknown 'counts'"):
        FinetuneConfig(prompt_categories=["counts"])


def test_balance_prompts_draws_a_prompts_lone_image_as_often_as_anothers_six(ft_run, tiny_pipeline_path):
    with Store.open(ft_run) as store:
        rows = store.list_images(role="human") + store.list_images(role="unlabeled")
        many, lone = sorted({r["prompt"] for r in rows})[:2]
        kept = sorted(r["sha256"] for r in rows if r["prompt"] == many)
        one = next(r["sha256"] for r in rows if r["prompt"] == lone)
        cfg = small(tiny_pipeline_path, balance_prompts=True, max_train_steps=8, beta=0.0)
        report = finetune(cfg, store, name="balanced", progress=False, images=[*kept, one])
    assert (report["n_model"], report["n_model_prompts"], report["balance_prompts"]) == (7, 2, True)
    at = sorted([*kept, one]).index(one)  # D_model is ordered by sha256
    lines = (ft_run / "finetune" / "balanced" / "batches.jsonl").read_text().splitlines()
    drawn = [i for line in lines for i in json.loads(line)["model"]]
    assert len(drawn) == 32 and 10 <= drawn.count(at) <= 22  # half the draws, where 1 in 7 is unbalanced


def test_resume_refuses_what_it_cannot_continue(ft_run, tiny_pipeline_path):
    cfg = small(tiny_pipeline_path, max_train_steps=2)
    with Store.open(ft_run) as store:
        finetune(cfg, store, name="refuse", progress=False)
        with pytest.raises(CheckpointError, match="already holds checkpoints"):
            finetune(cfg, store, name="refuse", progress=False)
        with pytest.raises(CheckpointError, match="another config"):
            finetune(
                small(tiny_pipeline_path, learning_rate=5e-4),
                store,
                name="refuse",
                resume_from_checkpoint="latest",
            )
        with pytest.raises(CheckpointError, match="no checkpoint at"):
            finetune(cfg, store, name="refuse", resume_from_checkpoint=str(ft_run / "nowhere"))
        # more steps with the same config continue the run
        report = finetune(
            small(tiny_pipeline_path, max_train_steps=4),
            store,
            name="refuse",
            resume_from_checkpoint="latest",
            progress=False,
        )
    assert report["steps_this_call"] == 2


def test_crash_while_checkpointing_keeps_the_previous_one(ft_run, tiny_pipeline_path, monkeypatch):
    import t2ialign.core.checkpoint as ck

    real = ck.save_file

    def dies_at_step_4(tensors, path):
        if "00000004" in path:
            Path(path).write_bytes(b"half a checkpoint")
            raise KeyboardInterrupt("power cut")
        return real(tensors, path)

    monkeypatch.setattr(ck, "save_file", dies_at_step_4)
    with Store.open(ft_run) as store:
        with pytest.raises(KeyboardInterrupt):
            finetune(small(tiny_pipeline_path), store, name="crash", progress=False)
        root = ft_run / "finetune" / "crash" / "checkpoints"
        assert latest_checkpoint(root).name == "checkpoint-00000002"
        monkeypatch.setattr(ck, "save_file", real)
        finetune(
            small(tiny_pipeline_path), store, name="crash", resume_from_checkpoint="latest", progress=False
        )
        assert [p.name for p in list_checkpoints(root)] == ["checkpoint-00000004", "checkpoint-00000006"]


def test_non_finite_loss_never_reaches_a_checkpoint(ft_run, tiny_pipeline_path, monkeypatch):
    real, calls = ft_train.eq4_loss, []

    def nan_at_step_3(*a, **k):
        calls.append(1)
        loss, parts = real(*a, **k)
        return (loss * float("nan"), parts) if len(calls) == 4 else (loss, parts)

    monkeypatch.setattr(ft_train, "eq4_loss", nan_at_step_3)
    with Store.open(ft_run) as store, pytest.raises(FloatingPointError, match="step 3"):
        finetune(small(tiny_pipeline_path, checkpointing_steps=1), store, name="nan", progress=False)
    root = ft_run / "finetune" / "nan" / "checkpoints"
    assert latest_checkpoint(root).name == "checkpoint-00000003"
    tensors = load_file(str(latest_checkpoint(root) / "tensors.safetensors"))
    assert all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())


def test_lora_trains_adapters_that_stock_diffusers_loads(ft_run, tiny_pipeline_path):
    from diffusers import StableDiffusionPipeline

    with Store.open(ft_run) as store:
        finetune(
            small(tiny_pipeline_path, lora_rank=2, max_train_steps=4), store, name="lora", progress=False
        )
    out = ft_run / "finetune" / "lora"
    assert (out / "lora" / "pytorch_lora_weights.safetensors").is_file()
    pipe = StableDiffusionPipeline.from_pretrained(tiny_pipeline_path, local_files_only=True)
    pipe.load_lora_weights(out / "lora")  # the documented one-line load
    g = torch.Generator().manual_seed(0)
    with_lora = pipe("A red circle", num_inference_steps=2, generator=g, output_type="np").images[0]
    merged = StableDiffusionPipeline.from_pretrained(out / "pipeline", local_files_only=True)
    g = torch.Generator().manual_seed(0)
    fused = merged("A red circle", num_inference_steps=2, generator=g, output_type="np").images[0]
    assert np.allclose(with_lora, fused, atol=1e-3)
    base = load_file(str(tiny_pipeline_path / "unet" / "diffusion_pytorch_model.safetensors"))
    assert any(not torch.equal(base[k], v) for k, v in unet_weights(ft_run, "lora").items())


def test_pretrain_data_from_a_folder_and_a_parquet_file(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    folder = tmp_path / "pre"
    folder.mkdir()
    rows = []
    for i in range(3):
        Image.new("RGB", (48, 40), (80 * i, 0, 0)).save(folder / f"{i}.png")
        rows.append(json.dumps({"file": f"{i}.png", "text": f"caption {i}"}))
    (folder / "captions.jsonl").write_text("\n".join(rows))
    pairs = ft_data.pretrain_pairs(str(folder), 2, 32, 0)
    assert [p[2] for p in pairs] == ["caption 0", "caption 1"] and pairs[1][1].shape == (32, 32, 3)
    pq.write_table(
        pa.table({"image": [(folder / "2.png").read_bytes()], "text": ["from parquet"]}),
        tmp_path / "d.parquet",
    )
    ((key, image, text),) = ft_data.pretrain_pairs(str(tmp_path / "d.parquet"), 10, 32, 0)
    assert text == "from parquet" and image[0, 0, 0] == 160
    with pytest.raises(FileNotFoundError):
        ft_data.pretrain_pairs(str(tmp_path / "missing"), 1, 32, 0)
    with pytest.raises(ValueError, match="captions.jsonl"):
        ft_data.pretrain_pairs(str(tmp_path), 1, 32, 0)


def test_cli_flags_override_the_config():
    from t2ialign.finetune.cli import _config, add_command

    parser = argparse.ArgumentParser()
    add_command(parser.add_subparsers())
    flags = ["--pretrain_data", "renders", "--pretrain_images", "7", "--top_k_per_prompt", "3"]
    flags += ["--balance_prompts"]
    cfg = _config(parser.parse_args(["finetune", "RUN", *flags, "--no-use_ema", "--no-unlabeled"]))
    assert (cfg.pretrain_data, cfg.pretrain_images, cfg.top_k_per_prompt) == ("renders", 7, 3)
    assert cfg.balance_prompts is True
    assert cfg.use_ema is False and cfg.use_unlabeled is False
    default = _config(parser.parse_args(["finetune", "RUN"]))
    assert default == FinetuneConfig()


# --- separate processes: SIGKILL + resume, and 2 processes vs 1 -------------------------------------------


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=SRC, HF_HUB_OFFLINE="1")


def _cli(run, name, cfg_path, *extra):
    return [
        sys.executable,
        "-m",
        "t2ialign",
        "finetune",
        str(run),
        "--name",
        name,
        "--config",
        str(cfg_path),
        *extra,
    ]


def _write_cfg(path: Path, tiny_pipeline_path, **kw) -> Path:
    cfg = (
        dict(
            pretrained_model_name_or_path=str(tiny_pipeline_path),
            train_batch_size=4,
            pretrain_batch_size=4,
            pretrain_images=12,
            max_train_steps=12,
            checkpointing_steps=3,
            learning_rate=1e-3,
        )
        | kw
    )
    lines = ["[finetune]"] + [f"{k} = {json.dumps(v)}" for k, v in cfg.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def _kill_when(cmd, ready, timeout=120):
    """Start cmd, SIGKILL it as soon as ready() is true; the run must not have finished by then."""
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None, (
            f"the run ended before the kill point: {proc.stderr.read().decode()[-2000:]}"
        )
        assert time.time() < deadline
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


def test_sigkill_three_times_then_resume_equals_an_uninterrupted_run(ft_run, tiny_pipeline_path, tmp_path):
    cfg = _write_cfg(tmp_path / "ft.toml", tiny_pipeline_path)
    subprocess.run(_cli(ft_run, "straight", cfg), env=_env(), check=True, capture_output=True)
    out = ft_run / "finetune" / "killed"
    log = out / "batches.jsonl"

    def logged(n):
        return lambda: log.exists() and len(log.read_text().splitlines()) >= n

    def checkpoint_at(step):
        return lambda: (out / "checkpoints" / f"checkpoint-{step:08d}" / "manifest.json").exists()

    resume = ("--resume_from_checkpoint", "latest")
    _kill_when(_cli(ft_run, "killed", cfg), logged(2))  # before the first checkpoint
    _kill_when(_cli(ft_run, "killed", cfg, *resume), checkpoint_at(6))  # right after a checkpoint
    _kill_when(_cli(ft_run, "killed", cfg, *resume), logged(11))  # between checkpoints, near the end
    subprocess.run(_cli(ft_run, "killed", cfg, *resume), env=_env(), check=True, capture_output=True)

    a, b = unet_weights(ft_run, "straight"), unet_weights(ft_run, "killed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bitwise
    steps = [json.loads(ln) for ln in log.read_text().splitlines()]
    assert [s["step"] for s in steps] == list(range(12))  # nothing repeated or skipped
    assert log.read_text() == (ft_run / "finetune" / "straight" / "batches.jsonl").read_text()


def test_two_processes_match_one_with_the_same_global_batch(ft_run, tiny_pipeline_path, tmp_path):
    one = _write_cfg(
        tmp_path / "one.toml",
        tiny_pipeline_path,
        train_batch_size=2,
        pretrain_batch_size=2,
        gradient_accumulation_steps=2,
        max_train_steps=4,
    )
    two = _write_cfg(
        tmp_path / "two.toml",
        tiny_pipeline_path,
        train_batch_size=2,
        pretrain_batch_size=2,
        gradient_accumulation_steps=1,
        max_train_steps=4,
    )
    subprocess.run(_cli(ft_run, "one-proc", one), env=_env(), check=True, capture_output=True)
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29517",
    ]
    r = subprocess.run(
        [*torchrun, "-m", "t2ialign", "finetune", str(ft_run), "--name", "two-proc", "--config", str(two)],
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((ft_run / "finetune" / "two-proc" / "report.json").read_text())
    assert report["num_processes"] == 2 and report["global_batch"]["model"] == 4
    a, b = unet_weights(ft_run, "one-proc"), unet_weights(ft_run, "two-proc")
    base = load_file(str(tiny_pipeline_path / "unet" / "diffusion_pytorch_model.safetensors"))
    moved = max((a[k] - base[k]).abs().max().item() for k in a)
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    assert moved > 1e-4 and diff < 1e-5 * max(1.0, moved * 100)
    logs = [(ft_run / "finetune" / n / "batches.jsonl").read_text() for n in ("one-proc", "two-proc")]
    assert logs[0] == logs[1]


def test_table2_configs_match_the_ablation_table():
    from t2ialign.config import load_config, to_dict
    from t2ialign.finetune import TABLE2

    root = Path(__file__).resolve().parents[1] / "configs" / "table2"
    found = {p.stem: load_config(p).finetune for p in sorted(root.glob("*.toml"))}
    assert set(found) == set(TABLE2)
    default = to_dict(FinetuneConfig())
    for name, cfg in found.items():
        changed = {k: v for k, v in to_dict(cfg).items() if v != default[k]}
        assert {k: v for k, v in TABLE2[name].items() if v != default[k]} == changed


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_pretrain_cfg_dropout_trains_d_pre_on_the_empty_prompt(
    ft_run, tiny_pipeline_path, monkeypatch, dropout
):
    """A share of D_pre's rows (none of D_model's) is conditioned on the pipeline's embedding of ""."""
    from diffusers import UNet2DConditionModel

    seen = []
    forward = UNet2DConditionModel.forward

    def spy(self, sample, timestep, encoder_hidden_states, *a, **k):
        seen.append(encoder_hidden_states.detach().clone())
        return forward(self, sample, timestep, encoder_hidden_states, *a, **k)

    monkeypatch.setattr(UNet2DConditionModel, "forward", spy)
    cfg = small(tiny_pipeline_path, pretrain_cfg_dropout=dropout, pretrain_batch_size=16, max_train_steps=4)
    with Store.open(ft_run) as store:
        finetune(cfg, store, name=f"cfg-dropout-{dropout}", progress=False)
    from t2ialign.models.load import load_pipeline

    null = ft_data.encode_texts(load_pipeline(str(tiny_pipeline_path))[0], [""])[0]
    is_null = torch.stack([(h - null).abs().amax((1, 2)) < 1e-6 for h in seen])  # (steps, 4 + 16)
    assert not is_null[:, :4].any()  # D_model keeps its prompts
    share = is_null[:, 4:].float().mean().item()
    assert share == 0.0 if dropout == 0 else 0.3 < share < 0.7  # 64 draws at p = 0.5


def test_ema_weights_are_shipped_and_resumed(ft_run, tiny_pipeline_path):
    with Store.open(ft_run) as store:
        finetune(small(tiny_pipeline_path, max_train_steps=4), store, name="no-ema", progress=False)
        finetune(
            small(tiny_pipeline_path, max_train_steps=4, use_ema=True, ema_decay=0.5),
            store,
            name="ema",
            progress=False,
        )
        finetune(
            small(tiny_pipeline_path, max_train_steps=2, use_ema=True, ema_decay=0.5),
            store,
            name="ema-2",
            progress=False,
        )
        finetune(
            small(tiny_pipeline_path, max_train_steps=4, use_ema=True, ema_decay=0.5),
            store,
            name="ema-2",
            resume_from_checkpoint="latest",
            progress=False,
        )
    plain, ema, resumed = (unet_weights(ft_run, n) for n in ("no-ema", "ema", "ema-2"))
    assert any(not torch.equal(plain[k], ema[k]) for k in plain)  # the average, not the last weights
    assert all(torch.equal(ema[k], resumed[k]) for k in ema)  # the EMA state survives a resume


def test_world_d_pre_is_drawn_as_the_bases_own_pre_training_data(tmp_path, tiny_pipeline_path):
    """``--pretrain_data world`` renders D_pre in the base's layout and with its caption rates (its
    ``t2ialign.json``): a world whose data seldom name a count gets a D_pre that seldom names one."""
    import shutil

    from t2ialign.models.load import load_pipeline
    from t2ialign.world import vocab

    base = tmp_path / "base"
    shutil.copytree(tiny_pipeline_path, base)
    data = {"layout": "dice", "caption_rates": {"count": 0.0, "color": 1.0, "background": 0.0}}
    (base / "t2ialign.json").write_text(json.dumps({"pretrain_config": {"data": data}}))
    pipe, _, _ = load_pipeline(str(base))
    cfg = FinetuneConfig(pretrained_model_name_or_path=str(base), pretrain_images=40)
    with Store.open(tmp_path / "run") as store:
        d_pre = ft_data.build_pretrain_set(store, pipe, cfg)
        plain = FinetuneConfig(pretrained_model_name_or_path=str(tiny_pipeline_path), pretrain_images=40)
        default = ft_data.build_pretrain_set(store, pipe, plain)  # no t2ialign.json: the default rates
    assert all(k.startswith("world:dice:") for k in d_pre.keys)
    counts, colors = set(vocab.COUNT_WORDS.values()), set(vocab.COLORS)

    def says(text: str) -> tuple[bool, bool, bool]:  # (a count, a color, a background)
        words = set(text.lower().split())
        return bool(words & counts), bool(words & colors), any(p in text for p in vocab.BACKGROUNDS.values())

    assert all(says(t) == (False, True, False) for t in d_pre.texts), d_pre.texts
    # the same 40 scenes with the default web-like rates name a count and a background now and then
    assert any(says(t)[0] for t in default.texts) and any(says(t)[2] for t in default.texts)


def test_the_learning_rate_left_unset_follows_the_model(tmp_path, tiny_pipeline_path):
    """``learning_rate = None``: the bound's rate on a shapes-world pipeline (its own ``t2ialign.json``, or
    the stamp of the world pipeline it was fine-tuned from), diffusers' example's on any other model; a rate
    that is set stays."""
    import shutil

    from t2ialign.config import SD_LEARNING_RATE, WORLD_LEARNING_RATE
    from t2ialign.finetune.train import resolve_defaults

    assert (WORLD_LEARNING_RATE, SD_LEARNING_RATE) == (1e-4, 1e-5)
    world = tmp_path / "world"
    shutil.copytree(tiny_pipeline_path, world)
    (world / "t2ialign.json").write_text(json.dumps({"pretrain_config": {"data": {"layout": "dice"}}}))
    tuned = tmp_path / "tuned"
    shutil.copytree(tiny_pipeline_path, tuned)
    (tuned / "t2ialign_finetune.json").write_text(json.dumps({"source_folder": str(world)}))

    def lr(model, **kw):
        return resolve_defaults(FinetuneConfig(pretrained_model_name_or_path=model, **kw)).learning_rate

    assert FinetuneConfig().learning_rate is None
    assert lr(None) == lr(str(world)) == lr(str(tuned)) == WORLD_LEARNING_RATE  # None: the shipped world
    assert lr(str(tiny_pipeline_path)) == SD_LEARNING_RATE
    assert lr(str(tiny_pipeline_path), learning_rate=3e-4) == lr(str(world), learning_rate=3e-4) == 3e-4
