"""The reward model: embedding cache, MLP, save/load with its CLIP, score API, bad input."""

import pytest
import torch

from t2ialign.models.embed import EmbeddingCache, clip_fingerprint, embed_images, embed_texts
from t2ialign.models.load import load_clip
from t2ialign.models.tiny import build_tiny_clip
from t2ialign.reward.model import RewardMLP, RewardModel
from t2ialign.world.render import render


def test_embeddings_are_normalized_and_cached(tmp_path, tiny_clip_path):
    clip, proc, _ = load_clip(tiny_clip_path)
    imgs = [render("Two red circles", seed=s).image for s in range(3)]
    e = embed_images(clip, proc, imgs, batch_size=2)
    t = embed_texts(clip, proc, ["two red circles", "a star"])
    assert e.shape == (3, 16) and t.shape == (2, 16)
    assert torch.allclose(e.norm(dim=-1), torch.ones(3), atol=1e-5)
    fp = clip_fingerprint(clip)
    cache = EmbeddingCache(tmp_path, fp, "images")
    assert cache.missing(["a", "b"]) == ["a", "b"]
    cache.add(["a", "b", "c"], e)
    again = EmbeddingCache(tmp_path, fp, "images")
    assert again.missing(["a", "d"]) == ["d"]
    assert torch.equal(again.get(["c", "a"]), e[[2, 0]])
    with pytest.raises(KeyError, match="not embedded"):
        again.get(["d"])


def test_mlp_shapes_and_a_training_step_changes_parameters():
    torch.manual_seed(0)
    mlp = RewardMLP(16, hidden=(8,))
    x, z = torch.randn(4, 16), torch.randn(4, 16)
    before = [p.clone() for p in mlp.parameters()]
    loss = (mlp(x, z) - torch.ones(4)).pow(2).mean()
    loss.backward()
    torch.optim.SGD(mlp.parameters(), lr=0.1).step()
    assert all(not torch.equal(a, b) for a, b in zip(before, mlp.parameters(), strict=True))
    with pytest.raises(ValueError, match="embeddings must both be"):
        mlp(x, z[:, :8])


def test_save_load_score_and_refuse_another_clip(tmp_path, tiny_clip_path):
    clip, proc, clip_id = load_clip(tiny_clip_path)
    torch.manual_seed(0)
    mlp = RewardMLP(16, hidden=(8,))
    meta = {
        "dim": 16,
        "hidden": [8],
        "dropout": 0.1,
        "clip": {"model_id": clip_id, "path": str(tiny_clip_path), "fingerprint": clip_fingerprint(clip)},
    }
    RewardModel(mlp, meta).save(tmp_path / "rm")
    rm = RewardModel.load(tmp_path / "rm")
    imgs = [render("Two red circles", seed=s).pil() for s in range(2)]
    scores = rm.score(["Two red circles", "A blue colored star"], imgs)
    assert scores.shape == (2,) and torch.isfinite(scores).all()
    assert torch.equal(scores, rm.score(["Two red circles", "A blue colored star"], imgs))
    other = build_tiny_clip(tmp_path / "other-clip", seed=1)
    with pytest.raises(ValueError, match="not comparable"):
        RewardModel.load(tmp_path / "rm", clip_path=other)
    with pytest.raises(ValueError, match="2 prompts but 1 images"):
        rm.score(["a", "b"], imgs[:1])
    with pytest.raises(FileNotFoundError):
        RewardModel.load(tmp_path / "missing")


def test_fast_pixel_path_matches_the_processor(tiny_clip_path):
    from t2ialign.models.embed import _fast_pixels

    _, proc, _ = load_clip(tiny_clip_path)  # a 32x32 CLIP
    imgs = [render("Two red circles", seed=s, size=32).pil() for s in range(3)]
    fast = _fast_pixels(proc, imgs)
    slow = proc(images=imgs, return_tensors="pt")["pixel_values"]
    assert fast is not None and torch.allclose(fast, slow, atol=1e-5)
    assert (
        _fast_pixels(proc, [render("Two red circles", seed=0).pil()]) is None
    )  # 64x64: the processor resizes
