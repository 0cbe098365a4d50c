"""benchmarks/eval_grid.py: rows of one model's evaluation images, at the guidance scale it is named with."""

import io

import pytest
from benchmarks.eval_grid import main
from PIL import Image

from t2ialign.store import Store
from t2ialign.world.prompts import build_prompt_set
from t2ialign.world.render import render


def _store_images(store, prompt, model_id, guidance, seeds, shift):
    rows = []
    for seed in seeds:
        buf = io.BytesIO()
        render(prompt, seed + shift).pil().save(buf, format="PNG")
        sha = store.put_image_bytes(buf.getvalue())
        sampler = {"generate_config": {"guidance_scale": guidance}}
        rows.append(
            dict(sha256=sha, prompt_text=prompt, model_id=model_id, seed=seed, sampler=sampler, role="eval")
            | dict(width=64, height=64)
        )
    store.add_images(rows)


def test_a_model_at_two_scales_must_be_named_with_one(tmp_path, capsys):
    prompt = "A red colored circle"
    with Store.open(tmp_path / "run") as store:
        store.add_prompts(build_prompt_set())
        _store_images(store, prompt, "m", 5.0, [1, 2], shift=0)
        _store_images(store, prompt, "m", 3.0, [1, 2], shift=100)
    out = tmp_path / "grid.png"
    with pytest.raises(SystemExit):
        main([str(tmp_path / "run"), str(out), "m", "--per-prompt", "2"])
    assert "name one as m@G" in capsys.readouterr().err
    assert main([str(tmp_path / "run"), str(out), "m@5", "m@3", "--per-prompt", "2", "--prompts", "1"]) == 0
    assert f"row   1: {prompt} | m@5" in capsys.readouterr().out
    assert Image.open(out).size[0] >= 2 * 64
    with pytest.raises(SystemExit):
        main([str(tmp_path / "run"), str(out), "m@4"])
    assert "no evaluation images of m@4" in capsys.readouterr().err
