"""The world's shipped base models: stock diffusers / transformers load and run them offline, without
t2ialign on the path (in a subprocess that refuses to import it)."""

import os
import subprocess
import sys

from t2ialign.models.load import WORLD_CLIP, WORLD_SD

SCRIPT = r"""
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name == "t2ialign" or name.startswith("t2ialign."):
            raise ImportError("t2ialign must not be needed to load the shipped models")
sys.meta_path.insert(0, _Block())
import torch
from diffusers import StableDiffusionPipeline
from transformers import CLIPModel, CLIPProcessor
from PIL import Image

pipe = StableDiffusionPipeline.from_pretrained(sys.argv[1], local_files_only=True)
out = pipe(["Two red circles in the forest"] * 2, num_inference_steps=4, output_type="np",
           generator=torch.Generator().manual_seed(0)).images
assert out.shape == (2, 64, 64, 3), out.shape
model = CLIPModel.from_pretrained(sys.argv[2], local_files_only=True)
proc = CLIPProcessor.from_pretrained(sys.argv[2], local_files_only=True)
inputs = proc(text=["two red circles", "a blue star"], images=[Image.fromarray((out[0] * 255).astype("uint8"))],
              return_tensors="pt", padding=True)
logits = model(**inputs).logits_per_image
assert logits.shape == (1, 2), logits.shape
print("ok", tuple(out.shape), tuple(logits.shape))
"""


def test_stock_libraries_load_and_sample_the_shipped_models():
    assert (WORLD_SD / "model_index.json").is_file(), f"the shipped pipeline is missing from {WORLD_SD}"
    assert (WORLD_CLIP / "config.json").is_file(), f"the shipped CLIP is missing from {WORLD_CLIP}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": ""}
    res = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(WORLD_SD), str(WORLD_CLIP)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().startswith("ok (2, 64, 64, 3) (1, 2)")


def test_shipped_weights_are_small_and_carry_their_config():
    files = [p for d in (WORLD_SD, WORLD_CLIP) for p in d.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 40 * 2**20
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".pkl", ".ckpt")], (
        "safetensors only, never pickle"
    )
    assert (WORLD_SD / "t2ialign.json").is_file(), "the pretraining config and seed ship with the weights"
