"""The generate stage on a tiny Stable Diffusion pipeline built from config, and model loading errors."""

import json

import numpy as np
import pytest
from PIL import Image

from t2ialign.cli import main
from t2ialign.config import GenerateConfig
from t2ialign.generate.images import generate, image_seed, sample_images, sampler_identity, stored_images
from t2ialign.models.load import load_clip, load_pipeline, resolve_clip_path, resolve_sd_path
from t2ialign.store import Store
from t2ialign.world.prompts import build_prompt_set

FAST = dict(num_inference_steps=2, batch_size=4, mixed_precision="no")


@pytest.fixture
def store(tmp_path):
    with Store.open(tmp_path / "run") as s:
        s.add_prompts(build_prompt_set())
        yield s


def test_generate_end_to_end_then_rerun_skips(store, tiny_pipeline_path):
    cfg = GenerateConfig(model=str(tiny_pipeline_path), images_per_prompt=3, **FAST)
    prompts = ["Two circles", "A green colored star", "Three blue squares in the forest"]
    first = generate(cfg, store, prompts, progress=False)
    assert first["generated"] == 9 and first["already_stored"] == 0
    rows = store.list_images()
    assert len(rows) == 9 and {r["prompt"] for r in rows} == set(prompts)
    assert all(r["role"] == "human" and r["width"] == 32 and r["model_revision"] for r in rows)
    assert all(store.image_path(r["sha256"]).is_file() for r in rows)
    assert rows[0]["sampler"]["scheduler"] == "DDIMScheduler"
    again = generate(cfg, store, prompts, progress=False)
    assert again["generated"] == 0 and again["already_stored"] == 9
    # more images per prompt: only the new ones are made
    more = generate(
        GenerateConfig(model=str(tiny_pipeline_path), images_per_prompt=4, **FAST),
        store,
        prompts,
        progress=False,
    )
    assert more["generated"] == 3 and len(store.list_images()) == 12


@pytest.mark.filterwarnings("ignore:generate.mixed_precision = bf16")
def test_images_of_other_sampler_settings_are_not_reused(store, tiny_pipeline_path):
    """The same model, prompts and seeds at another guidance scale are other images: made anew, and kept
    apart from the first ones (precision is how an image was computed, not what it is: reused)."""
    prompts = ["Two circles", "A green colored star"]
    cfg5 = GenerateConfig(model=str(tiny_pipeline_path), images_per_prompt=2, **FAST)
    at5 = generate(cfg5, store, prompts, progress=False)
    fast1 = dict(FAST, mixed_precision="bf16")
    cfg1 = GenerateConfig(model=str(tiny_pipeline_path), images_per_prompt=2, guidance_scale=1.0, **fast1)
    at1 = generate(cfg1, store, prompts, progress=False)
    assert at1["generated"] == 4 and at1["already_stored"] == 0
    assert at1["sampler"]["generate_config"]["guidance_scale"] == 1.0
    rows5 = stored_images(store, at5["model_id"], at5["model_revision"], at5["sampler"])
    rows1 = stored_images(store, at1["model_id"], at1["model_revision"], at1["sampler"])
    assert len(rows5) == len(rows1) == 4 and not {r["sha256"] for r in rows5} & {r["sha256"] for r in rows1}
    assert {(r["prompt"], r["seed"]) for r in rows5} == {(r["prompt"], r["seed"]) for r in rows1}
    assert stored_images(store, at5["model_id"], "another revision", at5["sampler"]) == []
    # guidance 5 again, in fp32 as the first time and in bf16: precision is not what an image is
    for precision in ("no", "bf16"):
        cfg5 = GenerateConfig(
            model=str(tiny_pipeline_path), images_per_prompt=2, **(FAST | {"mixed_precision": precision})
        )
        again = generate(cfg5, store, prompts, progress=False)
        assert again["generated"] == 0 and again["already_stored"] == 4
    assert sampler_identity({"generate_config": {"guidance_scale": 5}}) == sampler_identity(
        {"generate_config": {"guidance_scale": 5.0, "compile": "inductor"}}
    )


def test_same_seed_same_image_regardless_of_batch_mates(tiny_pipeline_path):
    pipe, _, _ = load_pipeline(tiny_pipeline_path)
    cfg = GenerateConfig(**FAST)
    s = image_seed(0, "human", "Two circles", 0)
    alone = sample_images(pipe, ["Two circles"], [s], cfg)[0]
    again = sample_images(pipe, ["Two circles"], [s], cfg)[0]
    assert np.array_equal(alone, again)
    other = sample_images(pipe, ["Two circles"], [s + 1], cfg)[0]
    assert not np.array_equal(alone, other)
    in_batch = sample_images(pipe, ["A red colored ring", "Two circles"], [s + 7, s], cfg)[1]
    assert np.abs(in_batch.astype(int) - alone.astype(int)).max() <= 1  # batched math may round differently


def test_roles_get_distinct_seeds():
    assert image_seed(0, "human", "Two circles", 0) != image_seed(0, "unlabeled", "Two circles", 0)
    assert 0 <= image_seed(0, "human", "Two circles", 0) < 2**63


def test_unknown_prompt_is_an_error(store, tiny_pipeline_path):
    cfg = GenerateConfig(model=str(tiny_pipeline_path), images_per_prompt=1, **FAST)
    with pytest.raises(ValueError, match="not in the run"):
        generate(cfg, store, ["Two dragons"], progress=False)
    assert store.list_images() == []


def test_bad_model_paths_are_clear_errors(tmp_path, tiny_clip_path):
    with pytest.raises(FileNotFoundError, match="no model at"):
        resolve_sd_path(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no model_index.json"):
        resolve_sd_path(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(ValueError, match="not a Stable Diffusion 1.x/2.x pipeline"):
        resolve_sd_path(tmp_path / "other")
    with pytest.raises(ValueError, match="no model_index.json"):
        resolve_sd_path(tiny_clip_path)  # a CLIP folder is not a pipeline
    with pytest.raises(FileNotFoundError):
        resolve_clip_path(tmp_path / "missing")
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="not a CLIP model"):
        resolve_clip_path(tmp_path / "bert")


def test_tiny_clip_loads(tiny_clip_path):
    model, processor, model_id = load_clip(tiny_clip_path)
    inputs = processor(
        text=["two circles"], images=[Image.new("RGB", (32, 32))], return_tensors="pt", padding=True
    )
    out = model(**inputs)
    assert out.logits_per_image.shape == (1, 1) and model_id.endswith("tiny-clip")


def test_generate_and_evaluate_base_cli(tmp_path, tiny_pipeline_path, capsys):
    run = str(tmp_path / "run")
    assert main(["prompts", "--run", run]) == 0
    common = ["--model", str(tiny_pipeline_path), "--steps", "2", "--mixed-precision", "no"]
    assert main(["generate", "--run", run, "--max-prompts", "3", "--images-per-prompt", "2", *common]) == 0
    assert '"generated": 6' in capsys.readouterr().out
    assert (
        main(
            [
                "evaluate-base",
                "--run",
                run,
                "--prompts-per-category",
                "1",
                "--images-per-prompt",
                "1",
                *common,
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "combination" in out and "unseen_objects" in out
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(metrics["alignment"]) == {"count", "color", "background", "combination"}
    assert metrics["base_eval"]["by_category"]["count"]["n"] == 2  # 1 seen-object + 1 unseen-object prompt
    assert main(["generate", "--run", run, "--model", str(tmp_path / "nope")]) == 2
    assert "no model at" in capsys.readouterr().err
    assert main(["generate", "--run", run, "--scheduler", "magic", *common]) == 2


def test_the_sampling_device_is_configurable_and_checked(monkeypatch):
    import torch

    from t2ialign.config import ConfigError, GenerateConfig
    from t2ialign.models.load import sampling_device

    assert sampling_device("cpu") == torch.device("cpu") and sampling_device("cuda:1") == torch.device(
        "cuda", 1
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert sampling_device("auto") == torch.device("cpu")  # no GPU: the CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert sampling_device("auto") == torch.device("cuda", 1)  # rank 3 of 2 GPUs per machine: GPU 1
    for bad in ("gpu", "cuda:x", ""):
        with pytest.raises(ConfigError, match="generate.device"):
            GenerateConfig(device=bad)


def test_mixed_precision_auto_resolves_per_device_and_is_recorded_resolved(
    store, tiny_pipeline_path, monkeypatch
):
    import torch

    from t2ialign.config import ConfigError
    from t2ialign.generate import images

    cpu = torch.device("cpu")
    monkeypatch.setattr(images, "native_bf16", lambda device: False)  # an AVX2-only CPU
    assert images.resolve_precision("auto", cpu) == "no"
    with pytest.warns(UserWarning, match="without native bf16"):
        assert images.resolve_precision("bf16", cpu) == "bf16"  # an explicit choice is kept, with a warning
    assert images.resolve_precision("no", cpu) == "no"
    assert images.resolve_precision("auto", torch.device("cuda", 0)) == "fp16"  # a GPU without bf16
    monkeypatch.setattr(images, "native_bf16", lambda device: True)  # AVX512_BF16 / AMX, or a bf16 GPU
    assert images.resolve_precision("auto", cpu) == "bf16"
    assert images.resolve_precision("auto", torch.device("cuda", 0)) == "bf16"
    assert GenerateConfig().mixed_precision == "auto"
    with pytest.raises(ConfigError, match="auto, no, bf16 or fp16"):
        GenerateConfig(mixed_precision="bfloat16")

    monkeypatch.setattr(images, "native_bf16", lambda device: False)
    fast = {**FAST, "mixed_precision": "auto"}
    generate(
        GenerateConfig(model=str(tiny_pipeline_path), images_per_prompt=1, **fast),
        store,
        ["Two circles"],
        progress=False,
    )
    assert store.list_images()[0]["sampler"]["generate_config"]["mixed_precision"] == "no"  # not "auto"


def test_compile_wraps_the_unet_once_and_draws_the_same_images(tiny_pipeline_path):
    """generate.compile compiles the UNet in place before sampling, once per pipeline; the tracing backend
    ("eager": no kernels generated) must draw exactly the uncompiled images. The speed of "inductor" is a
    benchmark's (docs/throughput.md), not a test's."""
    from t2ialign.config import ConfigError

    pipe, _, _ = load_pipeline(tiny_pipeline_path)
    seeds = [image_seed(0, "human", "Two circles", k) for k in range(2)]
    plain = sample_images(pipe, ["Two circles"] * 2, seeds, GenerateConfig(**FAST))
    assert pipe.unet._compiled_call_impl is None  # "no" leaves the UNet alone
    traced = sample_images(pipe, ["Two circles"] * 2, seeds, GenerateConfig(compile="eager", **FAST))
    compiled = pipe.unet._compiled_call_impl
    assert compiled is not None
    assert all(np.array_equal(a, b) for a, b in zip(plain, traced, strict=True))
    sample_images(pipe, ["Two circles"], seeds[:1], GenerateConfig(compile="eager", **FAST))
    assert pipe.unet._compiled_call_impl is compiled  # not compiled a second time
    assert GenerateConfig().compile == "no"
    with pytest.raises(ConfigError, match="generate.compile must be one of no, inductor"):
        GenerateConfig(compile="yes")
