"""Diffusion-DPO (beyond the paper): the loss by hand, pairs from labels by hand, training with a frozen
reference (LoRA and the full UNet), a stock-loadable pipeline, SIGKILL + resume equal to an uninterrupted
run bitwise, the command line and clear errors; on tiny models built from config."""

import io
import json
import math
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

from t2ialign.config import Config, ConfigError, DPOConfig, DPOTrainConfig, GenerateConfig, from_dict
from t2ialign.core.checkpoint import CheckpointError
from t2ialign.dpo import train as dpo_train
from t2ialign.dpo.data import (
    PreferencePair,
    build_pair_set,
    majority_label,
    pairs_from_labels,
    pairs_from_preferences,
)
from t2ialign.dpo.losses import diffusion_dpo_loss
from t2ialign.dpo.train import dpo
from t2ialign.generate.images import generate
from t2ialign.label.service import submit_labels
from t2ialign.store import Store
from t2ialign.world.prompts import build_prompt_set
from t2ialign.world.render import render

SRC = str(Path(__file__).resolve().parents[1] / "src")


# --- the loss, by hand ---------------------------------------------------------------------------------


def test_loss_by_hand():
    t = torch.tensor
    # equal diffs (the policy is the reference): margin 0, loss log 2, no pair ranked right
    loss, stats = diffusion_dpo_loss(t([0.3, 0.1]), t([0.2, 0.4]), t([0.3, 0.1]), t([0.2, 0.4]), beta=10.0)
    assert loss.item() == pytest.approx(math.log(2))
    assert stats["reward_margin"].item() == 0.0 and stats["implicit_accuracy"].item() == 0.0
    # one pair: inside = -10 / 2 * ((0.1 - 0.3) - (0.2 - 0.2)) = 1, loss = log(1 + e^-1)
    loss, stats = diffusion_dpo_loss(t([0.1]), t([0.3]), t([0.2]), t([0.2]), beta=10.0)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)))
    assert stats["reward_margin"].item() == pytest.approx(1.0) and stats["implicit_accuracy"].item() == 1.0
    assert stats["model_mse"].item() == pytest.approx(0.2) and stats["ref_mse"].item() == pytest.approx(0.2)
    # two pairs, one ranked right (margin +1) and one wrong (margin -2): the mean of both losses
    loss, stats = diffusion_dpo_loss(t([0.1, 0.5]), t([0.3, 0.1]), t([0.2, 0.2]), t([0.2, 0.2]), beta=10.0)
    expected = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(2))) / 2
    assert loss.item() == pytest.approx(expected) and stats["implicit_accuracy"].item() == 0.5
    assert stats["reward_margin"].item() == pytest.approx(-0.5)


def test_loss_sign_and_gradients():
    """Lowering the winner's error lowers the loss, lowering the loser's raises it; the reference gets
    no gradient; a larger beta makes the same margin count more."""
    w = torch.tensor([0.2], requires_grad=True)
    lo = torch.tensor([0.2], requires_grad=True)
    ref_w = torch.tensor([0.2], requires_grad=True)
    ref_l = torch.tensor([0.2], requires_grad=True)
    loss, _ = diffusion_dpo_loss(w, lo, ref_w, ref_l, beta=100.0)
    loss.backward()
    assert w.grad.item() > 0 and lo.grad.item() < 0  # descent lowers e_w and raises e_l
    assert ref_w.grad is None and ref_l.grad is None
    t = torch.tensor
    base = diffusion_dpo_loss(t([0.2]), t([0.2]), t([0.2]), t([0.2]), 100.0)[0]
    better = diffusion_dpo_loss(t([0.19]), t([0.2]), t([0.2]), t([0.2]), 100.0)[0]
    worse = diffusion_dpo_loss(t([0.2]), t([0.19]), t([0.2]), t([0.2]), 100.0)[0]
    assert better < base < worse
    assert diffusion_dpo_loss(t([0.19]), t([0.2]), t([0.2]), t([0.2]), 1000.0)[0] < better
    with pytest.raises(ValueError, match=r"\(P,\)"):
        diffusion_dpo_loss(t([0.1, 0.2]), t([0.1]), t([0.1]), t([0.1]), 1.0)
    with pytest.raises(ValueError, match="beta"):
        diffusion_dpo_loss(t([0.1]), t([0.1]), t([0.1]), t([0.1]), 0.0)


# --- pairs from labels, by hand ------------------------------------------------------------------------


def test_majority_label():
    assert majority_label(["good", "good", "bad"]) == "good"
    assert majority_label(["bad", "skip", "skip"]) == "bad"
    assert majority_label(["good", "bad"]) is None  # a tie
    assert majority_label(["skip"]) is None


def _put(store: Store, prompt: str, seed: int) -> tuple[str, int]:
    buf = io.BytesIO()
    render(prompt, seed=seed, size=32).pil().save(buf, format="PNG")
    sha = store.put_image_bytes(buf.getvalue())
    record = dict(sha256=sha, prompt_text=prompt, model_id="t", seed=seed, sampler={}, role="human")
    return sha, store.add_images([record | {"width": 32, "height": 32}])[0]


@pytest.fixture
def labeled_store(tmp_path):
    """Prompt A: a (good, good), b (bad), c (tie), d (skips only), e (good + skip); B: all good;
    C: 3 good x 3 bad; U (unseen split): one good and one bad."""
    prompts = build_prompt_set()
    seen = [p.text for p in prompts if p.split == "seen"]
    unseen = next(p.text for p in prompts if p.split != "seen")
    A, B, C = seen[0], seen[100], seen[200]
    with Store.open(tmp_path / "run") as store:
        store.add_prompts(prompts)
        x, y = store.add_labeler("x"), store.add_labeler("y")
        img = {}
        votes = {
            (A, "a"): ("good", "good"),
            (A, "b"): ("bad", "bad"),
            (A, "c"): ("good", "bad"),
            (A, "d"): ("skip", "skip"),
            (A, "e"): ("good", "skip"),
            (B, "f"): ("good", "good"),
            (B, "g"): ("good", None),
            (unseen, "u1"): ("good", "good"),
            (unseen, "u2"): ("bad", "bad"),
            **{(C, f"c{i}"): ("good" if i < 3 else "bad", None) for i in range(6)},
        }
        labels = []
        for seed, ((prompt, key), (vx, vy)) in enumerate(votes.items()):
            sha, image_id = _put(store, prompt, seed)
            img[key] = sha
            labels += [(x, image_id, vx)] + ([(y, image_id, vy)] if vy else [])
        submit_labels(store, labels)
        yield store, img, (A, B, C, unseen)


def test_pairs_from_labels_by_hand(labeled_store):
    store, img, (A, B, C, unseen) = labeled_store
    pairs = pairs_from_labels(store)
    by_prompt = {}
    for p in pairs:
        by_prompt.setdefault(p.prompt, []).append((p.winner_sha256, p.loser_sha256))
    # A: the good a and e against the bad b; the tie c and the skipped d take no part; B has no bad image
    assert sorted(by_prompt[A]) == sorted([(img["a"], img["b"]), (img["e"], img["b"])])
    assert B not in by_prompt and unseen not in by_prompt  # the unseen split is not feedback
    good_c = {img[f"c{i}"] for i in range(3)}
    assert len(by_prompt[C]) == 9 and all(w in good_c and lo not in good_c for w, lo in by_prompt[C])
    assert pairs == sorted(pairs, key=lambda p: (p.prompt, p.winner_sha256, p.loser_sha256))
    assert all(isinstance(p, PreferencePair) for p in pairs)
    assert {p.prompt for p in pairs_from_labels(store, split=None)} == {A, C, unseen}


def test_pairs_from_preferences_by_hand(labeled_store):
    """Pairwise feedback: the raters' majority decides a pair's winner; ties and unseen prompts take no
    part; an excluded rater does not vote."""
    store, img, (A, B, C, unseen) = labeled_store
    rows = [
        (A, img["a"], img["b"], "r1@t", "A"),  # a over b, twice
        (A, img["a"], img["b"], "r2@t", "A"),
        (A, img["c"], img["d"], "r1@t", "B"),  # d over c: 1 for, 1 tie
        (A, img["c"], img["d"], "r2@t", "tie"),
        (A, img["a"], img["e"], "r1@t", "A"),  # a vs e: a split vote is a tie, left out
        (A, img["a"], img["e"], "r2@t", "B"),
        (B, img["f"], img["g"], "r1@t", "tie"),  # a tie
        (unseen, img["u1"], img["u2"], "r1@t", "A"),  # not a feedback prompt
        (C, img["c0"], img["c3"], "r3@t", "B"),  # r3 is excluded below
    ]
    store.import_preferences(rows, "import:test")
    store.set_excluded("r3@t", True)
    pairs = pairs_from_preferences(store)
    assert [(p.prompt, p.winner_sha256, p.loser_sha256) for p in pairs] == sorted(
        [(A, img["a"], img["b"]), (A, img["d"], img["c"])]
    )
    assert pairs_from_preferences(store, max_pairs_per_prompt=1, seed=0) == pairs_from_preferences(
        store, max_pairs_per_prompt=1, seed=0
    )
    assert len(pairs_from_preferences(store, max_pairs_per_prompt=1)) == 1


def test_pairs_cap_per_prompt_is_a_seeded_draw(labeled_store):
    store, img, (A, B, C, _) = labeled_store
    every = pairs_from_labels(store)
    capped = pairs_from_labels(store, max_pairs_per_prompt=4, seed=0)
    assert capped == pairs_from_labels(store, max_pairs_per_prompt=4, seed=0)  # same seed, same pairs
    c_every, c_capped = [p for p in every if p.prompt == C], [p for p in capped if p.prompt == C]
    assert len(c_capped) == 4 and set(c_capped) <= set(c_every)
    assert [p for p in capped if p.prompt == A] == [p for p in every if p.prompt == A]  # 2 <= 4: all
    draws = {tuple(pairs_from_labels(store, max_pairs_per_prompt=4, seed=s)) for s in range(5)}
    assert len(draws) > 1  # the seed picks the draw
    with pytest.raises(ValueError, match="max_pairs_per_prompt"):
        pairs_from_labels(store, max_pairs_per_prompt=-1)


def test_excluded_labelers_do_not_vote(labeled_store):
    store, img, (A, *_) = labeled_store
    store.set_excluded("y", True)
    a_pairs = {(p.winner_sha256, p.loser_sha256) for p in pairs_from_labels(store) if p.prompt == A}
    # with x alone: a, c, e good; b bad (d: a skip)
    assert a_pairs == {(img[k], img["b"]) for k in ("a", "c", "e")}


def test_pair_set_rejects_broken_pairs(labeled_store, tiny_pipeline_path):
    from t2ialign.models.load import load_pipeline

    store, img, (A, B, *_) = labeled_store
    pipe, _, _ = load_pipeline(str(tiny_pipeline_path))
    with pytest.raises(ValueError, match="no preference pairs"):
        build_pair_set(store, pipe, [])
    with pytest.raises(ValueError, match="same image"):
        build_pair_set(store, pipe, [PreferencePair(A, img["a"], img["a"])])
    with pytest.raises(ValueError, match="two prompts"):
        build_pair_set(
            store, pipe, [PreferencePair(A, img["a"], img["b"]), PreferencePair(B, img["a"], img["f"])]
        )
    s = build_pair_set(
        store, pipe, [PreferencePair(A, img["a"], img["b"]), PreferencePair(A, img["e"], img["b"])]
    )
    assert len(s) == 2 and len(s.images) == 3  # b is encoded once
    assert [s.images.keys[i] for i in s.winner] == [img["a"], img["e"]]
    assert [s.images.keys[i] for i in s.loser] == [img["b"], img["b"]]


# --- config and command line ---------------------------------------------------------------------------


def test_config_is_validated_and_read_from_its_table():
    cfg = from_dict(Config, {"dpo": {"beta": 100, "train": {"learning_rate": 1e-4, "lora_rank": 4}}}).dpo
    assert (cfg.beta, cfg.train.learning_rate, cfg.train.lora_rank) == (100.0, 1e-4, 4)
    assert cfg.train.beta == 0.0 and cfg.train.weights == "labels" and cfg.train.train_batch_size == 16
    assert DPOConfig().beta == 5000.0  # the paper's SD1.5 value
    with pytest.raises(ConfigError, match="dpo.beta must be > 0"):
        DPOConfig(beta=0.0)
    with pytest.raises(ConfigError, match="max_pairs_per_prompt"):
        DPOConfig(max_pairs_per_prompt=-1)
    with pytest.raises(ConfigError, match="dpo.pairs"):
        DPOConfig(pairs="clicks")
    with pytest.raises(ConfigError, match=r"dpo.train.beta is a setting of finetune's Eq. 4.*dpo.beta"):
        from_dict(Config, {"dpo": {"train": {"beta": 1.0}}})
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(Config, {"dpo": {"train": {"learning_rat": 1.0}}})


def _parser():
    from t2ialign.cli import build_parser

    return build_parser()  # the dpo command as `t2ialign` registers it


def test_cli_flags_map_onto_the_config(tmp_path):
    from t2ialign.dpo.cli import LORA_RANK, _config

    p = _parser()
    flags = [
        "--beta",
        "250",
        "--max_train_steps",
        "7",
        "--learning_rate",
        "3e-4",
        "--max_pairs_per_prompt",
        "5",
    ]
    args = p.parse_args(["dpo", "RUN", *flags, "--lora", "--no-use_ema", "--seed", "3"])
    cfg = _config(args)
    assert (cfg.beta, cfg.max_pairs_per_prompt) == (250.0, 5)
    assert cfg.train.beta == 0.0  # --beta is DPO's, not Eq. 4's
    assert (cfg.train.max_train_steps, cfg.train.learning_rate, cfg.train.seed) == (7, 3e-4, 3)
    assert cfg.train.lora_rank == LORA_RANK and cfg.train.use_ema is False
    assert _config(p.parse_args(["dpo", "RUN", "--lora_rank", "3"])).train.lora_rank == 3
    assert _config(p.parse_args(["dpo", "RUN", "--full"])).train.lora_rank == 0
    with pytest.raises(SystemExit):
        p.parse_args(["dpo", "RUN", "--lora", "--full"])
    args = p.parse_args(["dpo", "RUN", "--name", "x", "--resume_from_checkpoint", "latest"])
    assert (args.name, args.resume_from_checkpoint) == ("x", "latest") and _config(args) == DPOConfig()
    toml = tmp_path / "c.toml"
    toml.write_text("[dpo]\nbeta = 42.0\n[dpo.train]\nlora_rank = 4\nmax_train_steps = 9\n")
    cfg = _config(p.parse_args(["dpo", "RUN", "--config", str(toml), "--lora"]))
    assert (cfg.beta, cfg.train.lora_rank, cfg.train.max_train_steps) == (42.0, 4, 9)  # the config's rank
    with pytest.raises(ConfigError, match="lora_rank"):
        _config(p.parse_args(["dpo", "RUN", "--lora_rank", "-2"]))


def test_no_pairs_is_a_clear_error(tmp_path, capsys):
    from t2ialign.cli import main

    with Store.open(tmp_path / "run") as store:
        store.add_prompts(build_prompt_set())
        with pytest.raises(ValueError, match="no preference pairs.*label them first"):
            dpo(DPOConfig(), store, progress=False)
    assert main(["dpo", str(tmp_path / "run")]) == 2
    assert "no preference pairs" in capsys.readouterr().err
    assert main(["dpo", str(tmp_path / "nowhere")]) == 2  # no such run


# --- training on a small run ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory, tiny_pipeline_path):
    """4 seen prompts x 4 images of the tiny model; per prompt 2 good and 2 bad: 16 pairs."""
    root = tmp_path_factory.mktemp("dpo")
    with Store.open(root / "run") as store:
        prompts = build_prompt_set()
        store.add_prompts(prompts)
        chosen = [p.text for p in prompts if p.split == "seen"][::400][:4]
        gen = dict(model=str(tiny_pipeline_path), mixed_precision="no")
        generate(GenerateConfig(images_per_prompt=4, role="human", **gen), store, chosen, progress=False)
        a = store.add_labeler("a")
        rows = store.list_images(role="human")
        submit_labels(store, [(a, r["id"], "good" if i % 2 else "bad") for i, r in enumerate(rows)])
    return root / "run"


def small(tiny_pipeline_path, beta: float = 5000.0, **train) -> DPOConfig:
    base = dict(
        pretrained_model_name_or_path=str(tiny_pipeline_path),
        train_batch_size=4,
        max_train_steps=4,
        checkpointing_steps=2,
        learning_rate=1e-3,
        lr_warmup_steps=1,
        use_ema=False,
    )
    return DPOConfig(beta=beta, train=DPOTrainConfig(**(base | train)))


def unet_weights(run: Path, name: str) -> dict:
    return load_file(str(run / "dpo" / name / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors"))


def test_the_first_step_starts_at_log_2(dpo_run, tiny_pipeline_path):
    """Policy = reference before any update, so every pair's margin is 0."""
    with Store.open(dpo_run) as store:
        report = dpo(small(tiny_pipeline_path, max_train_steps=1), store, name="first", progress=False)
    assert report["final_loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert report["reward_margin"] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("lora_rank", [0, 2])
def test_dpo_trains_the_unet_against_a_frozen_reference(dpo_run, tiny_pipeline_path, monkeypatch, lora_rank):
    """The UNet changes, the reference's predictions stay the base UNet's, the pipeline loads in stock
    diffusers, and the report reaches metrics.json."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    seen = []
    call = dpo_train._Reference.__call__

    def spy(self, noisy, t, cond):
        out = call(self, noisy, t, cond)
        seen.append((noisy.clone(), t.clone(), cond.clone(), out.clone()))
        return out

    monkeypatch.setattr(dpo_train._Reference, "__call__", spy)
    name = f"train-{lora_rank}"
    cfg = small(tiny_pipeline_path, lora_rank=lora_rank, max_train_steps=6)
    with Store.open(dpo_run) as store:
        report = dpo(cfg, store, name=name, progress=False)
        metrics = store.read_metrics()["dpo"][name]
    assert (report["n_pairs"], report["n_images"], report["n_prompts"]) == (16, 16, 4)
    assert report["global_batch"] == {"pairs": 4, "images": 8} and metrics["steps"] == 6
    assert 0.0 <= report["implicit_accuracy"] <= 1.0 and report["final_loss"] > 0
    base = UNet2DConditionModel.from_pretrained(tiny_pipeline_path / "unet").eval()
    assert len(seen) == 6
    with torch.no_grad():
        for noisy, t, cond, out in (seen[0], seen[-1]):  # the reference after 5 updates is still the base
            assert torch.allclose(base(noisy, t, encoder_hidden_states=cond).sample, out, atol=1e-5)
    before = load_file(str(tiny_pipeline_path / "unet" / "diffusion_pytorch_model.safetensors"))
    after = unet_weights(dpo_run, name)
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the policy moved
    out = dpo_run / "dpo" / name
    stamp = json.loads((out / "pipeline" / "t2ialign_dpo.json").read_text())
    assert stamp["config"]["beta"] == 5000.0 and stamp["config"]["train"]["lora_rank"] == lora_rank
    assert len((out / "batches.jsonl").read_text().splitlines()) == 6
    pipe = StableDiffusionPipeline.from_pretrained(out / "pipeline", local_files_only=True)
    image = pipe("Two red circles", num_inference_steps=2, output_type="np").images[0]
    assert image.shape == (32, 32, 3) and np.isfinite(image).all()
    assert (out / "lora" / "pytorch_lora_weights.safetensors").is_file() == (lora_rank > 0)
    if lora_rank:  # the documented one-line load gives the merged pipeline's images
        stock = StableDiffusionPipeline.from_pretrained(tiny_pipeline_path, local_files_only=True)
        stock.load_lora_weights(out / "lora")
        kw = dict(num_inference_steps=2, output_type="np")
        a = stock("A red circle", generator=torch.Generator().manual_seed(0), **kw).images[0]
        b = pipe("A red circle", generator=torch.Generator().manual_seed(0), **kw).images[0]
        assert np.allclose(a, b, atol=1e-3)


def _session_and_data(store, cfg: DPOConfig, name: str):
    from t2ialign.config import to_dict
    from t2ialign.finetune.train import open_session

    session = open_session(cfg.train, store.run_dir / "dpo" / name, to_dict(cfg), None)
    pairs = pairs_from_labels(store)
    return session, dpo_train._Data(cfg, store, session, pairs, False), pairs


def test_a_pair_shares_noise_and_timestep_winners_first(dpo_run, tiny_pipeline_path):
    """The UNet batch of B pairs is the B winners then the B losers, each pair at one noise and one
    timestep, conditioned on the pair's prompt; each image has its own posterior sample."""
    cfg = small(tiny_pipeline_path)
    with Store.open(dpo_run) as store:
        _, data, pairs = _session_and_data(store, cfg, "wiring")
    batches = dpo_train._step_batches(cfg, data, 5)
    assert torch.equal(batches["noise"], dpo_train._step_batches(cfg, data, 5)["noise"])  # (seed, step)
    noisy, t, cond, target = dpo_train._micro_inputs(data, batches, 1, 2)  # pairs 2 and 3 of the step
    s, B = data.set.images, 2
    assert torch.equal(t[:B], t[B:]) and torch.equal(t[:B], batches["t"][2:4])
    assert torch.equal(target[:B], target[B:]) and torch.equal(target[:B], batches["noise"][2:4])  # epsilon
    for j, pair_id in enumerate(batches["pairs"][2:4]):
        pair = pairs[pair_id]
        w, lo = s.keys.index(pair.winner_sha256), s.keys.index(pair.loser_sha256)
        for row, i, eps in ((j, w, batches["eps_w"]), (B + j, lo, batches["eps_l"])):
            x0 = (s.mean[i] + s.std[i] * eps[2 + j]) * data.scaling
            expected = data.scheduler.add_noise(x0[None], batches["noise"][2 + j][None], t[j : j + 1])[0]
            assert torch.allclose(noisy[row], expected, atol=1e-6)
        text = s.text_emb[s.texts.index(pair.prompt)]
        assert torch.equal(cond[j], text) and torch.equal(cond[B + j], text)


def test_one_step_on_a_batch_lowers_its_loss(dpo_run, tiny_pipeline_path):
    """Through the real UNet: the loss starts at log 2 (policy = reference), and a small gradient step
    lowers the loss of the same batch: winners' errors fall relative to the losers'."""
    import copy

    cfg = small(tiny_pipeline_path, beta=500.0, train_batch_size=8)
    with Store.open(dpo_run) as store:
        session, data, _ = _session_and_data(store, cfg, "one-step")
    unet = session.pipe.unet.train()
    reference = dpo_train._Reference(dpo_train._frozen_copy(unet, "cpu"), unet, session.accelerator)
    batches = dpo_train._step_batches(cfg, data, 0)
    loss, stats = dpo_train._micro_loss(cfg, data, batches, unet, reference, 0, "cpu")
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6) and stats["implicit_accuracy"] == 0.0
    before = copy.deepcopy(unet.state_dict())
    loss.backward()
    with torch.no_grad():
        for p in unet.parameters():
            p -= 1e-2 * p.grad
    after, stats = dpo_train._micro_loss(cfg, data, batches, unet, reference, 0, "cpu")
    assert after.item() < math.log(2) - 1e-4 and stats["reward_margin"] > 0
    assert all(torch.equal(v, reference.frozen.state_dict()[k]) for k, v in before.items())  # untouched


def test_same_seed_same_lora_weights_and_resume_refusals(dpo_run, tiny_pipeline_path):
    cfg = small(tiny_pipeline_path, lora_rank=2, max_train_steps=2)

    def lora(name):
        return load_file(str(dpo_run / "dpo" / name / "lora" / "pytorch_lora_weights.safetensors"))

    with Store.open(dpo_run) as store:
        dpo(cfg, store, name="again-1", progress=False)
        dpo(cfg, store, name="again-2", progress=False)
        a, b = lora("again-1"), lora("again-2")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # the LoRA init is seeded
        with pytest.raises(CheckpointError, match="already holds checkpoints"):
            dpo(cfg, store, name="again-1", progress=False)
        other = small(tiny_pipeline_path, beta=10.0, lora_rank=2)
        with pytest.raises(CheckpointError, match="another config"):
            dpo(other, store, name="again-1", resume_from_checkpoint="latest")
        # new labels make other pairs: another run, not a resume (a second labeler ties one image)
        first = store.list_images(role="human")[0]
        submit_labels(store, [(store.add_labeler("b"), first["id"], "good")])
        with pytest.raises(CheckpointError, match=r"differs in: pairs_sha256\)"):
            dpo(cfg, store, name="again-1", resume_from_checkpoint="latest")
        store.set_excluded("b", True)  # the pairs as they were
        longer = small(tiny_pipeline_path, lora_rank=2, max_train_steps=4)  # more steps: a resumable change
        more = dpo(longer, store, name="again-1", resume_from_checkpoint="latest", progress=False)
    assert more["steps_this_call"] == 2 and more["steps"] == 4
    assert any(not torch.equal(a[k], v) for k, v in lora("again-1").items())


# --- separate processes: SIGKILL + resume -------------------------------------------------------------


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=SRC, HF_HUB_OFFLINE="1")


def _cli(run, name, cfg_path, *extra):
    return [
        sys.executable,
        "-m",
        "t2ialign",
        "dpo",
        str(run),
        "--name",
        name,
        "--config",
        str(cfg_path),
        *extra,
    ]


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


def test_sigkill_three_times_then_resume_equals_an_uninterrupted_run(dpo_run, tiny_pipeline_path, tmp_path):
    cfg = tmp_path / "dpo.toml"
    train = dict(
        pretrained_model_name_or_path=str(tiny_pipeline_path),
        train_batch_size=4,
        max_train_steps=12,
        checkpointing_steps=3,
        learning_rate=1e-3,
    )  # EMA on (the default): its state must survive the kills too
    cfg.write_text(
        "[dpo]\nbeta = 2000.0\n[dpo.train]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in train.items())
    )
    subprocess.run(_cli(dpo_run, "straight", cfg), env=_env(), check=True, capture_output=True)
    out = dpo_run / "dpo" / "killed"
    log = out / "batches.jsonl"

    def logged(n):
        return lambda: log.exists() and len(log.read_text().splitlines()) >= n

    def checkpoint_at(step):
        return lambda: (out / "checkpoints" / f"checkpoint-{step:08d}" / "manifest.json").exists()

    resume = ("--resume_from_checkpoint", "latest")
    _kill_when(_cli(dpo_run, "killed", cfg), logged(2))  # before the first checkpoint
    _kill_when(_cli(dpo_run, "killed", cfg, *resume), checkpoint_at(6))  # right after a checkpoint
    _kill_when(_cli(dpo_run, "killed", cfg, *resume), logged(11))  # between checkpoints, near the end
    subprocess.run(_cli(dpo_run, "killed", cfg, *resume), env=_env(), check=True, capture_output=True)

    a, b = unet_weights(dpo_run, "straight"), unet_weights(dpo_run, "killed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bitwise
    steps = [json.loads(ln) for ln in log.read_text().splitlines()]
    assert [s["step"] for s in steps] == list(range(12))  # nothing repeated or skipped
    assert log.read_text() == (dpo_run / "dpo" / "straight" / "batches.jsonl").read_text()


def test_non_finite_loss_never_reaches_a_checkpoint(dpo_run, tiny_pipeline_path, monkeypatch):
    from t2ialign.core.checkpoint import latest_checkpoint

    real, calls = dpo_train.diffusion_dpo_loss, []

    def nan_at_step_3(*a, **k):
        calls.append(1)
        loss, stats = real(*a, **k)
        return (loss * float("nan"), stats) if len(calls) == 4 else (loss, stats)

    monkeypatch.setattr(dpo_train, "diffusion_dpo_loss", nan_at_step_3)
    with Store.open(dpo_run) as store, pytest.raises(FloatingPointError, match="step 3"):
        dpo(small(tiny_pipeline_path, checkpointing_steps=1), store, name="nan", progress=False)
    root = dpo_run / "dpo" / "nan" / "checkpoints"
    assert latest_checkpoint(root).name == "checkpoint-00000003"
    tensors = load_file(str(latest_checkpoint(root) / "tensors.safetensors"))
    assert all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())
