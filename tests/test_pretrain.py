"""Pretraining of the world's base models: the tokenizer, the losses, exact resume, a tiny end-to-end run."""

import json
import shutil

import numpy as np
import pytest
import torch
from transformers import CLIPTokenizer

from t2ialign.cli import main
from t2ialign.core.checkpoint import CheckpointError
from t2ialign.core.training import lr_factor
from t2ialign.models.tokenizer import MAX_LENGTH, build_clip_tokenizer, grammar_corpus
from t2ialign.pretrain.train import soft_clip_loss, train_loop


def test_tokenizer_keeps_grammar_words_whole_and_round_trips(tmp_path):
    tok = build_clip_tokenizer()
    ids = tok("Five purple triangles under the sea").input_ids
    assert tok.convert_ids_to_tokens(ids) == [
        "<|startoftext|>",
        "five</w>",
        "purple</w>",
        "triangles</w>",
        "under</w>",
        "the</w>",
        "sea</w>",
        "<|endoftext|>",
    ]
    assert max(len(tok(c).input_ids) for c in grammar_corpus()) <= MAX_LENGTH
    assert len(tok("a zebra").input_ids) > 3, "unknown words fall back to bytes"
    tok.save_pretrained(tmp_path)
    again = CLIPTokenizer.from_pretrained(tmp_path)
    assert again("Two red circles").input_ids == tok("Two red circles").input_ids


def test_the_same_corpus_builds_the_same_tokenizer():
    # the BPE trainer orders its end-of-word characters by hash, differently on each call: ids are canonical
    first = build_clip_tokenizer().get_vocab()
    assert all(build_clip_tokenizer().get_vocab() == first for _ in range(3))


def test_lr_schedule():
    assert lr_factor(0, 10, 100) == pytest.approx(0.1)
    assert lr_factor(9, 10, 100) == pytest.approx(1.0)
    assert lr_factor(10, 10, 100) == pytest.approx(1.0)
    assert lr_factor(55, 10, 100) == pytest.approx(0.5)
    assert lr_factor(100, 10, 100) == pytest.approx(0.0)


def test_soft_clip_loss_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    expected = -torch.log_softmax(torch.tensor([2.0, 0.0]), 0)[0]
    assert soft_clip_loss(logits, ["a", "b"]).item() == pytest.approx(expected.item())
    # identical captions share the target mass: uniform logits are then optimal
    uniform = torch.zeros(2, 2)
    assert soft_clip_loss(uniform, ["a", "a"]).item() == pytest.approx(np.log(2))


def _run(tmp_path, crash_at=None, steps=6):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))

    def loss_fn(step):
        if step == crash_at:
            raise KeyboardInterrupt("simulated kill")
        g = torch.Generator().manual_seed(step)
        x = torch.randn(16, 3, generator=g)
        return (net(x).squeeze(1) - x.sum(1)).pow(2).mean()

    kw = dict(
        steps=steps,
        lr=0.05,
        warmup=2,
        weight_decay=0.0,
        root=tmp_path,
        config={"k": 1},
        checkpointing_steps=2,
        keep=2,
        ema_decay=0.9,
        progress=False,
    )
    return train_loop("t", net, loss_fn, **kw)[0]


def test_resumed_training_equals_uninterrupted(tmp_path):
    straight = _run(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "b", crash_at=3)  # killed after the checkpoint at step 2
    resumed = _run(tmp_path / "b")
    for p, q in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q)


def test_resume_refuses_another_config(tmp_path):
    _run(tmp_path)
    net = torch.nn.Linear(3, 1)
    with pytest.raises(CheckpointError, match="another config"):
        train_loop(
            "t",
            net,
            lambda s: net(torch.ones(1, 3)).sum(),
            steps=8,
            lr=0.1,
            warmup=1,
            weight_decay=0.0,
            root=tmp_path,
            config={"k": 2},
            checkpointing_steps=2,
            keep=2,
            progress=False,
        )


def test_non_finite_loss_stops_before_a_checkpoint(tmp_path):
    net = torch.nn.Linear(3, 1)
    with pytest.raises(FloatingPointError, match="non-finite"):
        train_loop(
            "t",
            net,
            lambda s: net(torch.ones(1, 3)).sum() * float("nan"),
            steps=4,
            lr=0.1,
            warmup=1,
            weight_decay=0.0,
            root=tmp_path,
            config={},
            checkpointing_steps=1,
            keep=2,
            progress=False,
        )
    assert not list(tmp_path.glob("checkpoint-*"))


TINY = """
[pretrain]
checkpointing_steps = 2
[pretrain.data]
n_images = 48
[pretrain.clip]
steps = 2
batch_size = 8
text_hidden = 32
vision_hidden = 32
text_layers = 1
vision_layers = 1
projection_dim = 16
warmup_steps = 1
zero_shot_n = 10
[pretrain.vae]
steps = 2
batch_size = 4
block_out_channels = [8, 16, 16]
warmup_steps = 1
[pretrain.unet]
steps = 3
batch_size = 4
block_out_channels = [16, 32, 32]
layers_per_block = 1
warmup_steps = 1
lr_schedule = "constant"
snapshot_steps = 2
"""


def test_tiny_pretrain_end_to_end_makes_stock_loadable_models(tmp_path, capsys):
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPModel, CLIPProcessor

    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY)
    out = tmp_path / "pre"
    # --until vae: CLIP, VAE and the pool's latents only; the full run then reuses them
    assert main(["pretrain", "--out", str(out), "--config", str(cfg), "--until", "vae"]) == 0
    assert (out / "vae" / "DONE").is_file() and (out / "latents" / "DONE").is_file()
    assert not (out / "unet").exists() and not (out / "pipeline").exists()
    capsys.readouterr()
    assert main(["pretrain", "--out", str(out), "--config", str(cfg)]) == 0
    report = json.loads(capsys.readouterr().out.split("\npipeline:")[0])
    assert set(report["clip_zero_shot"]) == {"count", "color", "shape", "background"}
    pipe = StableDiffusionPipeline.from_pretrained(out / "pipeline", local_files_only=True)
    for config in (out / "pipeline").glob("*/config.json"):  # no path of this machine is shipped
        assert "_name_or_path" not in json.loads(config.read_text()), config
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size == 32
    assert pipe.vae.config.scaling_factor != 1.0
    images = pipe(
        "Two red circles", num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)
    ).images
    assert images.shape == (1, 64, 64, 3)
    clip = CLIPModel.from_pretrained(out / "clip")
    CLIPProcessor.from_pretrained(out / "clip")
    assert clip.config.projection_dim == 16
    # the learning curve's snapshot of step 2: a whole pipeline of the EMA UNet at that step
    assert sorted(p.name for p in (out / "snapshots").iterdir()) == ["step_000002"]
    snap = StableDiffusionPipeline.from_pretrained(out / "snapshots" / "step_000002", local_files_only=True)
    assert not torch.equal(snap.unet.conv_out.weight, pipe.unet.conv_out.weight)
    # a rerun finds every stage done; more UNet steps continue from its last checkpoint
    assert main(["pretrain", "--out", str(out), "--config", str(cfg)]) == 0
    cfg.write_text(TINY.replace("[pretrain.unet]\nsteps = 3", "[pretrain.unet]\nsteps = 4"))
    assert main(["pretrain", "--out", str(out), "--config", str(cfg)]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert json.loads((out / "unet" / "DONE").read_text())["steps"] == 4
    # how often snapshots are saved is not part of what the UNet is: no refusal, nothing redone
    four = TINY.replace("[pretrain.unet]\nsteps = 3", "[pretrain.unet]\nsteps = 4")
    cfg.write_text(four.replace("snapshot_steps = 2", "snapshot_steps = 3"))
    assert main(["pretrain", "--out", str(out), "--config", str(cfg)]) == 0
    # with a cosine schedule the steps are part of the UNet's identity: no silent extension
    cfg.write_text(TINY.replace('lr_schedule = "constant"', 'lr_schedule = "cosine"'))
    capsys.readouterr()
    assert main(["pretrain", "--out", str(out), "--config", str(cfg)]) == 2
    assert "another config" in capsys.readouterr().err
    # another config for a done stage is refused, not silently redone
    cfg.write_text(TINY.replace("[pretrain.clip]\nsteps = 2", "[pretrain.clip]\nsteps = 3"))
    capsys.readouterr()
    assert main(["pretrain", "--out", str(out), "--config", str(cfg)]) == 2
    assert "another config" in capsys.readouterr().err
    # a world with other captions takes the finished VAE (same VAE settings, pool and seed) instead of
    # training one; a VAE made under other settings is refused
    cfg.write_text(TINY.replace("[pretrain.data]", "[pretrain.data]\ncount_error_rate = 0.5"))
    other = tmp_path / "other"
    args = ["pretrain", "--out", str(other), "--config", str(cfg), "--until", "vae"]
    assert main([*args, "--vae-from", str(out / "pipeline")]) == 0
    assert not (other / "checkpoints" / "vae").exists()
    assert "adopted_from" in json.loads((other / "vae" / "DONE").read_text())
    for name in ("config.json", "diffusion_pytorch_model.safetensors"):
        assert (other / "vae" / name).read_bytes() == (out / "pipeline" / "vae" / name).read_bytes()
    cfg.write_text(TINY.replace("[pretrain.vae]\nsteps = 2", "[pretrain.vae]\nsteps = 3"))
    capsys.readouterr()
    assert main([*args[:2], str(tmp_path / "third"), *args[3:], "--vae-from", str(out / "pipeline")]) == 2
    assert "steps differ" in capsys.readouterr().err


def test_a_world_of_another_layout_renders_its_pool_so_and_its_fine_tunes_follow(
    tmp_path, capsys, monkeypatch
):
    """``[pretrain.data] layout``: the pool and CLIP's zero-shot renders are drawn in it, its pool and
    latents say so, and a model fine-tuned from the world finds it again (``finetune.data.world_layout``)
    for its own D_pre."""
    import t2ialign.pretrain.train as train
    from t2ialign.core.seeds import stable_seed
    from t2ialign.finetune.data import world_layout
    from t2ialign.world.prompts import PromptSpec
    from t2ialign.world.render import render

    layouts = []
    monkeypatch.setattr(train, "render", lambda *a, **k: layouts.append(k.get("layout")) or render(*a, **k))
    cfg = tmp_path / "dice.toml"
    cfg.write_text(TINY.replace("[pretrain.data]", '[pretrain.data]\nlayout = "dice"'))
    out = tmp_path / "dice"
    assert main(["pretrain", "--out", str(out), "--config", str(cfg)]) == 0
    n_pool = json.loads((out / "data" / "DONE").read_text())["n_images"]
    assert len(layouts) > n_pool and set(layouts) == {"dice"}  # the pool's renders, then the zero-shot's
    assert json.loads((out / "data" / "DONE").read_text())["layout"] == "dice"
    assert json.loads((out / "latents" / "DONE").read_text())["config"]["layout"] == "dice"
    scenes = json.loads((out / "data" / "scenes.json").read_text())
    images = np.load(out / "data" / "images.npy")
    for i in (0, 1):
        seed = stable_seed("pool-image", 0, i)
        assert np.array_equal(images[i], render(PromptSpec(*scenes[i]), seed=seed, layout="dice").image)
    assert world_layout(str(out / "pipeline")) == "dice"
    assert world_layout(None) == "dice"  # the shipped world, v7
    # a pipeline fine-tuned from it carries no t2ialign.json, only its stamp naming its source
    tuned = tmp_path / "tuned"
    shutil.copytree(out / "pipeline", tuned, ignore=shutil.ignore_patterns("t2ialign.json"))
    stamp = {"config": {"pretrained_model_name_or_path": str(out / "pipeline")}}
    (tuned / "t2ialign_finetune.json").write_text(json.dumps(stamp))
    assert world_layout(str(tuned)) == "dice"
    # the stamp's absolute source_folder comes first: the config's path was relative to another cwd
    stamp = {
        "source_folder": str((out / "pipeline").resolve()),
        "config": {"pretrained_model_name_or_path": "x"},
    }
    (tuned / "t2ialign_finetune.json").write_text(json.dumps(stamp))
    assert world_layout(str(tuned)) == "dice"
    (tuned / "t2ialign_finetune.json").unlink()  # DPO and RL stamps nest the base under "train"
    (tuned / "t2ialign_dpo.json").write_text(json.dumps(stamp | {"config": {"train": {}}}))
    assert world_layout(str(tuned)) == "dice"
    (tuned / "t2ialign_dpo.json").write_text(json.dumps({"config": {}}))
    assert world_layout(str(tuned)) == "random"
    # the same pool folder is not silently reused for another layout
    cfg.write_text(TINY)
    capsys.readouterr()
    assert main(["pretrain", "--out", str(out), "--config", str(cfg)]) == 2
    assert "holds another pool" in capsys.readouterr().err


def test_pool_captions_are_fixed_per_image_or_drawn_afresh(tmp_path):
    from t2ialign.config import PretrainDataConfig
    from t2ialign.pretrain.train import Pool

    root = tmp_path / "data"
    root.mkdir()
    np.save(root / "images.npy", np.zeros((40, 8, 8, 3), np.uint8))
    (root / "scenes.json").write_text(json.dumps([["star", 1 + i % 5, "red", "sky"] for i in range(40)]))
    rates = {"count": 0.5, "color": 0.5, "background": 0.5}
    fixed = Pool(root, PretrainDataConfig(n_images=40, caption_rates=rates))
    fresh = Pool(root, PretrainDataConfig(n_images=40, caption_rates=rates, fixed_captions=False))
    rng = np.random.default_rng(0)
    assert {fixed.caption(7, rng) for _ in range(20)} == {fixed.caption(7, np.random.default_rng(1))}
    assert len({fresh.caption(7, rng) for _ in range(20)}) > 1


def test_caption_rates_are_validated():
    from t2ialign.config import ConfigError, PretrainDataConfig

    with pytest.raises(ConfigError, match="caption rates must name exactly"):
        PretrainDataConfig(caption_rates={"count": 0.1})
    with pytest.raises(ConfigError, match="count error rate"):
        PretrainDataConfig(count_error_rate=2.0)
    with pytest.raises(ConfigError, match="known layouts are random, grid, dice"):
        PretrainDataConfig(layout="hexagonal")


def test_an_unfinished_pretraining_is_carried_to_the_next_sitting(tmp_path, capsys):
    """benchmarks/carry_pretrain: what `save` keeps resumes the UNet from its newest checkpoint in a new
    work folder (a sitting's work/ is gone the next time)."""
    from benchmarks.carry_pretrain import restore, save

    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY.replace("[pretrain.unet]\nsteps = 3", "[pretrain.unet]\nsteps = 4"))
    first, carry, second = tmp_path / "first", tmp_path / "carry", tmp_path / "second"
    assert main(["pretrain", "--out", str(first), "--config", str(cfg)]) == 0
    shutil.rmtree(first / "unet")  # as if the sitting had ended after the UNet's checkpoint at step 4
    kept = save(first, carry)
    assert {
        "tokenizer",
        "pretrain_config.json",
        "clip",
        "vae",
        "checkpoints/unet/checkpoint-00000004",
    } <= set(kept)
    assert not (carry / "data").exists() and not (carry / "latents").exists()  # remade, not carried
    restore(carry, second)
    capsys.readouterr()
    assert main(["pretrain", "--out", str(second), "--config", str(cfg)]) == 0
    assert "resumed from" in capsys.readouterr().out
    a = (first / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    b = (second / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert a == b


def test_the_pipeline_text_encoder_can_come_from_another_clip(tmp_path, capsys):
    """--text-encoder-from: the pipeline's text encoder is the given CLIP's text tower, recorded in its
    t2ialign.json; the run's own CLIP (the reward's) is still trained on its captions; carried along."""
    from benchmarks.carry_pretrain import save
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPModel

    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY)
    rich = tmp_path / "rich"
    assert main(["pretrain", "--out", str(rich), "--config", str(cfg), "--until", "clip"]) == 0
    cfg.write_text(TINY.replace("[pretrain.data]", "[pretrain.data]\ncount_error_rate = 0.5"))
    out = tmp_path / "web"
    args = ["pretrain", "--out", str(out), "--config", str(cfg)]
    assert main([*args, "--text-encoder-from", str(rich / "clip")]) == 0
    pipe = StableDiffusionPipeline.from_pretrained(out / "pipeline", local_files_only=True)
    theirs, own = CLIPModel.from_pretrained(rich / "clip"), CLIPModel.from_pretrained(out / "clip")
    key = "embeddings.token_embedding.weight"
    tower = getattr(pipe.text_encoder, "text_model", pipe.text_encoder).state_dict()[key]
    assert torch.equal(tower, theirs.text_model.state_dict()[key])
    assert not torch.equal(tower, own.text_model.state_dict()[key])
    # the pipeline tokenizes as its encoder does
    assert pipe.tokenizer.get_vocab() == CLIPTokenizer.from_pretrained(out / "text_clip").get_vocab()
    assert pipe.tokenizer.get_vocab() == CLIPTokenizer.from_pretrained(rich / "clip").get_vocab()
    meta = json.loads((out / "pipeline" / "t2ialign.json").read_text())["pretrain_config"]
    assert meta["text_encoder"]["adopted_from"] == str(rich / "clip")
    assert meta["text_encoder"]["config"]["data"]["count_error_rate"] != meta["data"]["count_error_rate"]
    assert "text_clip" in save(out, tmp_path / "carry")  # its source may be gone by the next sitting
    # a rerun keeps the adopted one, with or without the flag; another source or a foreign folder is refused
    capsys.readouterr()
    assert main(args) == 0
    assert main([*args, "--text-encoder-from", str(rich / "clip")]) == 0
    assert main([*args, "--text-encoder-from", str(out / "clip")]) == 2
    assert "already holds the text encoder" in capsys.readouterr().err
    fresh = ["pretrain", "--out", str(tmp_path / "x"), "--config", str(cfg)]
    assert main([*fresh, "--until", "vae"]) == 0
    assert main([*fresh, "--text-encoder-from", str(tmp_path)]) == 2
    assert "not a CLIP made by" in capsys.readouterr().err


@pytest.mark.parametrize(
    "name, count_rate",
    [("v7_dice.toml", 0.02), ("v7_reward_clip_counts.toml", 0.5)],  # the world v7; its reward CLIP for counts
)
def test_the_world_v7_configs_load(name, count_rate):
    from pathlib import Path

    from t2ialign.config import load_config

    data = load_config(Path(__file__).parents[1] / "configs" / "world" / name).pretrain.data
    assert data.layout == "dice" and data.caption_rates["count"] == count_rate and data.fixed_captions
