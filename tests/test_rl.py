"""DDPO (beyond the paper): the DDIM step's log-probability, the PPO and KL losses and the stat tracker by
hand; reward sources; the guard rule on hand-made curves; a short run on the tiny model (weights change,
stock-loadable output, metrics); SIGKILL + resume equal to an uninterrupted run bit for bit; the command
line and clear errors."""

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

from t2ialign.config import ConfigError, RLConfig, RLGuardConfig, RLSampleConfig, RLTrainConfig, from_dict
from t2ialign.rl import train as rl_train
from t2ialign.rl.guard import diversity, fd, guard_alerts, probe_set, saturation
from t2ialign.rl.losses import gaussian_kl, ppo_clipped_loss, rl_loss
from t2ialign.rl.rewards import load_reward
from t2ialign.rl.sampling import ddim_std, ddim_transition, gaussian_log_prob, make_chain
from t2ialign.rl.stats import PerPromptStatTracker
from t2ialign.store import Store
from t2ialign.world.prompts import build_prompt_set

SRC = str(Path(__file__).resolve().parents[1] / "src")
TESTS = str(Path(__file__).resolve().parent)


def brightness(images, prompts):
    """A toy reward: mean pixel value in [0, 1] (used as python:test_rl:brightness)."""
    return torch.tensor([float(np.asarray(im, dtype=np.float64).mean() / 255.0) for im in images])


def wrong_length(images, prompts):
    return torch.zeros(len(images) + 1)


# --- the math by hand ----------------------------------------------------------------------------------


def test_ddim_step_and_its_log_prob_by_hand():
    a_t, a_prev, eta = torch.tensor(0.5), torch.tensor(0.8), 1.0
    x_t, eps = torch.full((1, 1, 1, 1), 2.0), torch.full((1, 1, 1, 1), 1.0)
    # std^2 = (1 - 0.8) / (1 - 0.5) * (1 - 0.5 / 0.8) = 0.4 * 0.375 = 0.15
    assert float(ddim_std(a_t, a_prev, eta)) ** 2 == pytest.approx(0.15)
    mean, std = ddim_transition(x_t, eps, a_t, a_prev, eta, "epsilon")
    x0 = (2.0 - math.sqrt(0.5) * 1.0) / math.sqrt(0.5)
    expect = math.sqrt(0.8) * x0 + math.sqrt(1 - 0.8 - 0.15) * 1.0
    assert float(mean) == pytest.approx(expect, rel=1e-6)
    x_prev = torch.full((1, 1, 1, 1), expect + 0.1)
    lp = -(0.1**2) / (2 * 0.15) - 0.5 * math.log(0.15) - 0.5 * math.log(2 * math.pi)
    assert float(gaussian_log_prob(x_prev, mean, std)) == pytest.approx(lp, abs=1e-6)
    # v-prediction: v = sqrt(a) eps - sqrt(1 - a) x0 gives the same step
    v = math.sqrt(0.5) * eps - math.sqrt(0.5) * x0
    mean_v, _ = ddim_transition(x_t, v, a_t, a_prev, eta, "v_prediction")
    assert float(mean_v) == pytest.approx(expect, rel=1e-5)
    with pytest.raises(ValueError, match="prediction_type"):
        ddim_transition(x_t, eps, a_t, a_prev, eta, "sample")


def test_log_prob_is_a_mean_over_dimensions_per_sample():
    mean, std = torch.zeros(2, 3, 2, 2), torch.tensor(1.0)
    x = torch.zeros(2, 3, 2, 2)
    x[1] = 1.0
    lp = gaussian_log_prob(x, mean, std)
    assert lp.shape == (2,)
    assert float(lp[0] - lp[1]) == pytest.approx(0.5)


def test_chain_of_the_tiny_model_has_positive_std_everywhere(tiny_pipeline_path):
    cfg = json.loads((Path(tiny_pipeline_path) / "scheduler" / "scheduler_config.json").read_text())
    chain = make_chain(cfg, 4, 1.0)
    assert len(chain.timesteps) == 4 and bool((chain.alpha_prev > chain.alpha_t).all())
    assert bool((ddim_std(chain.alpha_t, chain.alpha_prev, 1.0) > 0).all())


def test_ppo_loss_by_hand():
    adv = torch.tensor([2.0, -1.0])
    same = torch.tensor([0.3, -0.2])
    loss, stats = ppo_clipped_loss(same, same, adv, 0.1)
    assert float(loss) == pytest.approx(-0.5)  # ratio 1: the loss is -mean(advantage)
    assert float(stats["clipfrac"]) == 0.0 and float(stats["approx_kl"]) == 0.0
    # ratio e^0.5 > 1.1 with A > 0: clipped at 1.1, no gradient; with A < 0: -A * r, unclipped
    lp = torch.tensor([0.5, 0.5], requires_grad=True)
    loss, stats = ppo_clipped_loss(lp, torch.zeros(2), adv, 0.1)
    r = math.exp(0.5)
    assert float(loss) == pytest.approx((-2.0 * 1.1 + 1.0 * r) / 2, rel=1e-6)
    assert float(stats["clipfrac"]) == 1.0
    loss.backward()
    assert lp.grad[0] == 0.0 and float(lp.grad[1]) == pytest.approx(r / 2, rel=1e-6)
    with pytest.raises(ValueError, match=r"\(B,\)"):
        ppo_clipped_loss(torch.zeros(2), torch.zeros(3), torch.zeros(2), 0.1)


def test_kl_penalty_by_hand():
    mp, mb = torch.zeros(1, 2, 1, 1), torch.tensor([[[[1.0]], [[3.0]]]])
    kl = gaussian_kl(mp, mb, torch.tensor(0.5))
    assert float(kl) == pytest.approx((1 + 9) / (2 * 0.25) / 2)  # mean over the 2 dims
    assert float(rl_loss(torch.tensor(1.0), kl, 0.1)) == pytest.approx(1.0 + 0.1 * 10.0)
    assert float(rl_loss(torch.tensor(1.0), None, 0.1)) == 1.0


def test_stat_tracker_by_hand_and_json_round_trip():
    t = PerPromptStatTracker(buffer_size=3, min_count=2)
    # first epoch: "a" has 1 reward < min_count, so the epoch's mean 2 and std sqrt(2/3) are used
    adv = t.update(["a", "b", "b"], [1.0, 2.0, 3.0])
    g = np.std([1.0, 2.0, 3.0]) + 1e-6
    assert adv[0] == pytest.approx((1 - 2) / g)
    assert adv[1:] == pytest.approx([-0.5 / (0.5 + 1e-6), 0.5 / (0.5 + 1e-6)])  # b's own buffer [2, 3]
    again = PerPromptStatTracker.from_json(json.loads(json.dumps(t.to_json())))
    adv2 = t.update(["a", "b"], [3.0, 10.0])
    assert again.update(["a", "b"], [3.0, 10.0]).tolist() == adv2.tolist()  # exact after a round trip
    assert adv2[0] == pytest.approx((3 - 2) / (1 + 1e-6))  # a's buffer [1, 3]
    assert list(t.buffers["b"]) == [2.0, 3.0, 10.0] and len(t.buffers["b"]) == 3
    t.update(["b"], [4.0])
    assert list(t.buffers["b"]) == [3.0, 10.0, 4.0]  # the buffer keeps the last buffer_size
    with pytest.raises(ValueError, match="prompts"):
        t.update(["a"], [1.0, 2.0])


# --- rewards -------------------------------------------------------------------------------------------


def test_reward_sources_and_their_errors(tmp_path):
    ims = [np.full((8, 8, 3), 51, np.uint8), np.full((8, 8, 3), 255, np.uint8)]
    r = load_reward("python:test_rl:brightness", tmp_path)
    assert r(ims, ["x", "y"]).tolist() == pytest.approx([0.2, 1.0]) and r.labels_used is None
    judge = load_reward("judge", tmp_path)
    p = judge(ims, ["one red circle in the forest"] * 2)
    assert p.shape == (2,) and bool(((p >= 0) & (p <= 1)).all()) and judge.labels_used == 0
    with pytest.raises(FileNotFoundError, match="reward train"):
        load_reward("learned", tmp_path)
    for spec, msg in [
        ("python:nosuchmodule_xyz:f", "cannot import"),
        ("python:test_rl:nothing", "no attribute"),
        ("python:test_rl:SRC", "not callable"),
        ("python:test_rl", "python:module:function"),
        ("bogus", "learned"),
    ]:
        with pytest.raises(ValueError, match=msg):
            load_reward(spec, tmp_path)
    with pytest.raises(ValueError, match="one number per image"):
        load_reward("python:test_rl:wrong_length", tmp_path)(ims, ["x", "y"])


# --- the guard ------------------------------------------------------------------------------------------

TOL = {"alignment": 0.02, "fd_clip": 0.05, "saturation": 0.05, "diversity": 0.02}


def _curves(**kw):
    base = {"reward": [0.1, 0.2, 0.3], "alignment": [0.5] * 3, "fd_clip": [0.0] * 3, "saturation": [0.3] * 3}
    return base | {"diversity": [0.2] * 3} | kw


def test_guard_rule_on_hand_made_curves():
    assert guard_alerts(_curves(), 2, TOL) == []  # reward up, every measure flat: quiet
    hacked = guard_alerts(_curves(alignment=[0.5, 0.49, 0.40], diversity=[0.2, 0.2, 0.1]), 2, TOL)
    assert len(hacked) == 2 and "alignment" in hacked[0] and "diversity" in hacked[1]
    assert guard_alerts(_curves(alignment=[0.5, 0.5, 0.49]), 2, TOL) == []  # within the tolerance
    assert "fd_clip" in guard_alerts(_curves(fd_clip=[0.0, 0.1, 0.2]), 2, TOL)[0]
    # saturation drifting from the base either way
    assert "saturation" in guard_alerts(_curves(saturation=[0.3, 0.3, 0.2]), 1, TOL)[0]
    # the reward fell: a falling measure is no hacking
    assert guard_alerts(_curves(reward=[0.3, 0.2, 0.1], alignment=[0.5, 0.4, 0.3]), 2, TOL) == []
    assert guard_alerts(_curves(reward=[0.1, 0.2]), 2, TOL) == []  # not enough evaluations yet


def test_probe_measures_by_hand():
    gray, red = np.full((2, 2, 3), 100, np.uint8), np.zeros((2, 2, 3), np.uint8)
    red[..., 0] = 200
    assert saturation([gray, red]) == pytest.approx(0.5)
    e = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    assert diversity(e, ["a", "a", "b", "b"]) == pytest.approx((1.0 + 0.0) / 2)
    x = torch.randn(50, 3, generator=torch.Generator().manual_seed(0))
    assert fd(x, x) == pytest.approx(0.0, abs=1e-9)
    assert fd(x, x + torch.tensor([2.0, 0.0, 0.0])) == pytest.approx(4.0, rel=1e-6)
    probe = probe_set([f"p{i}" for i in range(10)], 3, 2, seed=0)
    assert (
        len(probe) == 6 and probe[0] == probe[1] and probe == probe_set([f"p{i}" for i in range(10)], 3, 2, 0)
    )


# --- config and command line -----------------------------------------------------------------------------


def test_config_is_validated():
    with pytest.raises(ConfigError, match="rl.sample.eta"):
        RLSampleConfig(eta=0.0)
    with pytest.raises(ConfigError, match="rl.reward"):
        RLConfig(reward="nope")
    with pytest.raises(ConfigError, match="rl.guard.action"):
        RLGuardConfig(action="shout")
    with pytest.raises(ConfigError, match="Eq. 4"):
        RLConfig(train=RLTrainConfig(beta=0.5))
    with pytest.raises(ConfigError, match="multiple"):
        RLConfig(sample=RLSampleConfig(prompts_per_epoch=3, images_per_prompt=1), train=RLTrainConfig())
    with pytest.raises(ConfigError, match="unknown|unexpected|rl.train"):
        from_dict(RLConfig, {"train": {"no_such_field": 1}}, "rl")


def test_cli_flags_map_onto_the_config(tmp_path):
    import argparse

    from t2ialign.rl import cli as rl_cli

    p = argparse.ArgumentParser()
    rl_cli.add_command(p.add_subparsers())
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text("[rl]\nclip_range = 0.2\n[rl.sample]\neta = 0.5\n")
    args = p.parse_args(
        ["rl", "RUN", "--config", str(cfg_file), "--reward", "judge", "--kl_weight", "0.1", "--full"]
        + [
            "--max_train_steps",
            "7",
            "--num_inference_steps",
            "9",
            "--guard_every",
            "3",
            "--guard_action",
            "stop",
        ]
    )
    cfg = rl_cli._config(args)
    assert (cfg.reward, cfg.kl_weight, cfg.clip_range) == ("judge", 0.1, 0.2)
    assert (cfg.train.lora_rank, cfg.train.max_train_steps) == (0, 7)
    assert (cfg.sample.eta, cfg.sample.num_inference_steps) == (0.5, 9)
    assert (cfg.guard.every, cfg.guard.action) == (3, "stop")
    assert rl_cli._config(p.parse_args(["rl", "RUN"])).train.lora_rank == 4  # LoRA by default
    with pytest.raises(ConfigError, match="rl.sample.eta"):
        rl_cli._config(p.parse_args(["rl", "RUN", "--eta", "2"]))


def test_cli_errors_are_clear(tmp_path, capsys):
    from t2ialign.cli import main

    with Store.open(tmp_path / "run") as store:
        store.add_prompts(build_prompt_set())
    assert main(["rl", str(tmp_path / "run"), "--max_train_steps", "1"]) != 0  # no reward model yet
    assert "reward train" in capsys.readouterr().err
    assert main(["rl", str(tmp_path / "nowhere")]) == 2


# --- training on the tiny model ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rl_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("rl")
    with Store.open(root / "run") as store:
        store.add_prompts(build_prompt_set())
    return root / "run"


def small(tiny_pipeline_path, tiny_clip_path, **kw) -> RLConfig:
    train = dict(
        pretrained_model_name_or_path=str(tiny_pipeline_path),
        train_batch_size=4,
        max_train_steps=4,
        checkpointing_steps=2,
        learning_rate=3e-2,
    ) | kw.pop("train", {})
    return RLConfig(
        reward="python:test_rl:brightness",
        clip_range=0.2,
        min_count=2,
        buffer_size=4,
        sample=RLSampleConfig(
            num_inference_steps=3, prompts_per_epoch=2, images_per_prompt=4, guidance_scale=3.0
        ),
        guard=RLGuardConfig(every=2, n_prompts=2, seeds=2, clip=str(tiny_clip_path), alignment="clip"),
        train=RLTrainConfig(**train),
        **kw,
    )


def test_a_short_run_trains_lora_and_writes_its_metrics(rl_run, tiny_pipeline_path, tiny_clip_path):
    from diffusers import StableDiffusionPipeline

    with Store.open(rl_run) as store:
        report = rl_train.rl(
            small(tiny_pipeline_path, tiny_clip_path, kl_weight=0.1), store, "short", progress=False
        )
        metrics = store.read_metrics()["rl"]["short"]
    out = rl_run / "rl" / "short"
    assert metrics["steps"] == 4 and metrics["method"] == "ddpo+kl" and metrics["labels_used"] is None
    assert len(metrics["reward_curve"]) == 4 and metrics["guard"]["step"] == [0, 2, 4]
    assert all(len(metrics["guard"][m]) == 3 for m in ("reward", "alignment", "fd_clip", "diversity"))
    assert metrics["guard"]["fd_clip"][0] == pytest.approx(0.0, abs=1e-6)  # the base against itself
    assert metrics["stopped_by_guard"] is False and metrics["wall_s"] > 0
    assert (out / "guard.png").stat().st_size > 1000
    lora = load_file(str(out / "lora" / "pytorch_lora_weights.safetensors"))
    up = [t for k, t in lora.items() if "lora_B" in k or "lora.up" in k]
    assert up and any(t.abs().max() > 0 for t in up)  # B (diffusers' "up") starts at 0: it trained
    merged = load_file(str(out / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors"))
    base = load_file(str(Path(tiny_pipeline_path) / "unet" / "diffusion_pytorch_model.safetensors"))
    assert any(not torch.equal(merged[k], base[k]) for k in base)
    StableDiffusionPipeline.from_pretrained(
        out / "pipeline", local_files_only=True
    )  # stock diffusers loads it
    assert report["guard"] == metrics["guard"]


def test_the_guard_stops_a_run(rl_run, tiny_pipeline_path, tiny_clip_path, monkeypatch):
    """When the rule fires (here at the second evaluation) and guard.action is "stop", the run saves a
    checkpoint, ships its model and reports the stop; the rule itself is tested by hand above."""
    real = rl_train.guard_alerts
    monkeypatch.setattr(
        rl_train,
        "guard_alerts",
        lambda c, w, t: real(c, w, t) or (["hacked"] if len(c["reward"]) == 3 else []),
    )
    cfg = small(tiny_pipeline_path, tiny_clip_path, train=dict(max_train_steps=6, checkpointing_steps=10))
    cfg.guard = RLGuardConfig(
        every=1, n_prompts=2, seeds=2, clip=str(tiny_clip_path), alignment="clip", action="stop"
    )
    with Store.open(rl_run) as store:
        report = rl_train.rl(cfg, store, "stopped", progress=False)
    assert report["stopped_by_guard"] is True and report["steps"] == 2
    assert report["alerts"][-1] == {"step": 2, "message": "hacked"}
    assert (rl_run / "rl" / "stopped" / "checkpoints" / "checkpoint-00000002" / "manifest.json").exists()
    assert (rl_run / "rl" / "stopped" / "pipeline").is_dir()


def saturation_reward(images, prompts):
    """A hackable reward (python:test_rl:saturation_reward): each image's mean HSV saturation."""
    return torch.tensor([saturation([im]) for im in images])


def _identity_(conv) -> None:
    """Set a (zeroed) conv's centre tap to the identity on the channels it shares between in and out."""
    k_h, k_w = conv.weight.shape[2:]
    for c in range(min(conv.weight.shape[:2])):
        conv.weight[c, c, k_h // 2, k_w // 2] = 1.0


def passthrough_pipeline(tiny_pipeline_path, out: Path) -> Path:
    """The tiny pipeline with a VAE whose decoder passes latent channels 0-2 through as R, G, B.

    The tiny pipeline's random decoder ends in per-channel group norms, which remove any shift of a channel
    over the whole image: its images hardly depend on the latents, so no policy can change them. Here every residual branch and attention output is zero, every
    other conv the identity on shared channels, and the norms span all channels (one group), so a shift of
    a latent channel changes the image's colours: a saturation reward becomes hackable in a few steps."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_pipeline_path, local_files_only=True)
    vae = AutoencoderKL(**{**pipe.vae.config, "norm_num_groups": 1})
    with torch.no_grad():
        for p in list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters()):
            p.zero_()
        for m in vae.decoder.modules():
            if isinstance(m, torch.nn.GroupNorm):
                m.weight.fill_(1.0)
        convs = [vae.post_quant_conv, vae.decoder.conv_in, vae.decoder.conv_out]
        for block in vae.decoder.up_blocks:
            convs += [u.conv for u in block.upsamplers or []]
            convs += [r.conv_shortcut for r in block.resnets if r.conv_shortcut is not None]
        for conv in convs:
            _identity_(conv)
    pipe.vae = vae
    pipe.save_pretrained(out, safe_serialization=True)
    return out


def test_the_guard_catches_a_run_that_hacks_a_saturation_reward(rl_run, tiny_pipeline_path, tiny_clip_path):
    """Issue 18's target, by a real optimization: DDPO on a reward that pays for saturation (the full UNet,
    2 prompts x 16 images a step) raises it, the images drift from the base's colours, and the guard
    (every 2 steps, window 2, action stop) ends the run on that drift. Measured in sitting 17 with the
    same settings: the probe reward 0.452 -> 0.547 in 4 steps, saturation, FD_CLIP and diversity alerts
    at step 4; at a quarter of the learning rate the reward hardly moves (docs/rl.md)."""
    model = passthrough_pipeline(tiny_pipeline_path, rl_run.parent / "passthrough")
    cfg = small(
        model,
        tiny_clip_path,
        train=dict(max_train_steps=12, checkpointing_steps=100, learning_rate=2e-2, lora_rank=0),
    )
    cfg.reward = "python:test_rl:saturation_reward"
    cfg.sample = RLSampleConfig(
        num_inference_steps=3, prompts_per_epoch=2, images_per_prompt=16, guidance_scale=3.0, batch_size=32
    )
    cfg.train.train_batch_size = 16
    cfg.num_inner_epochs = 2
    cfg.guard = RLGuardConfig(
        every=2, window=2, n_prompts=2, seeds=4, clip=str(tiny_clip_path), alignment="clip", action="stop"
    )
    with Store.open(rl_run) as store:
        report = rl_train.rl(cfg, store, "hack", progress=False)
    g = report["guard"]
    assert report["stopped_by_guard"] is True and report["steps"] < 12
    assert g["reward"][-1] > g["reward"][0] + 0.05  # the run really optimized the reward
    assert any("while saturation got worse" in a["message"] for a in report["alerts"])


# --- separate processes: SIGKILL + resume -----------------------------------------------------------------


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=f"{SRC}:{TESTS}", HF_HUB_OFFLINE="1")


def _cli(run, name, cfg_path, *extra):
    return [
        sys.executable,
        "-m",
        "t2ialign",
        "rl",
        str(run),
        "--name",
        name,
        "--config",
        str(cfg_path),
        *extra,
    ]


def _kill_when(cmd, ready, timeout=120):
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


def test_sigkill_three_times_then_resume_equals_an_uninterrupted_run(
    rl_run, tiny_pipeline_path, tiny_clip_path, tmp_path
):
    cfg = tmp_path / "rl.toml"
    cfg.write_text(
        '[rl]\nreward = "python:test_rl:brightness"\nclip_range = 0.2\nmin_count = 2\nbuffer_size = 4\n'
        "[rl.sample]\nnum_inference_steps = 2\nprompts_per_epoch = 2\nimages_per_prompt = 2\n"
        f'[rl.guard]\nevery = 2\nn_prompts = 2\nclip = "{tiny_clip_path}"\nalignment = "clip"\n'
        f'[rl.train]\npretrained_model_name_or_path = "{tiny_pipeline_path}"\ntrain_batch_size = 2\n'
        "max_train_steps = 6\ncheckpointing_steps = 2\nlearning_rate = 0.03\nuse_ema = true\n"
    )  # EMA on: its state must survive the kills too
    subprocess.run(_cli(rl_run, "straight", cfg), env=_env(), check=True, capture_output=True)
    out = rl_run / "rl" / "killed"
    log = out / "batches.jsonl"

    def logged(n):
        return lambda: log.exists() and len(log.read_text().splitlines()) >= n

    def checkpoint_at(step):
        return lambda: (out / "checkpoints" / f"checkpoint-{step:08d}" / "manifest.json").exists()

    resume = ("--resume_from_checkpoint", "latest")
    _kill_when(_cli(rl_run, "killed", cfg), logged(1))  # before the first checkpoint
    _kill_when(_cli(rl_run, "killed", cfg, *resume), checkpoint_at(2))  # right after a checkpoint
    _kill_when(_cli(rl_run, "killed", cfg, *resume), logged(5))  # between checkpoints, near the end
    subprocess.run(_cli(rl_run, "killed", cfg, *resume), env=_env(), check=True, capture_output=True)

    def weights(name):
        return load_file(
            str(rl_run / "rl" / name / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors")
        )

    a, b = weights("straight"), weights("killed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bitwise
    assert [json.loads(ln)["step"] for ln in log.read_text().splitlines()] == list(range(6))
    assert log.read_text() == (rl_run / "rl" / "straight" / "batches.jsonl").read_text()
    ra, rb = (json.loads((rl_run / "rl" / n / "report.json").read_text()) for n in ("straight", "killed"))
    assert ra["guard"] == rb["guard"] and ra["reward_curve"] == rb["reward_curve"]
