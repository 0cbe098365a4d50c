"""Fidelity metrics: the Fréchet distance on hand-computed cases, FD on CLIP features, the reference
statistics cache, and FID on Inception-v3 weights loaded from a local file."""

import json
import math

import numpy as np
import pytest
import torch

from t2ialign.evaluate import fidelity
from t2ialign.evaluate.fidelity import (
    FIDInceptionV3,
    cached_stats,
    fd_clip,
    feature_stats,
    fidelity_report,
    frechet_distance,
    load_inception,
    resize_bilinear_tf1,
)
from t2ialign.models.load import load_clip
from t2ialign.world.render import render

PROMPTS = ["Two red circles", "One blue square in the forest", "Three green triangles", "Four yellow circles"]


@pytest.fixture(scope="module")
def world_clip():
    clip, processor, _ = load_clip(None)
    return clip, processor


def renders(prompts, seed0):
    return [render(p, seed=seed0 + i).image for i, p in enumerate(prompts)]


# --- the Fréchet distance ---


def test_fd_of_1d_gaussians_is_hand_computed():
    # (mu1 - mu2)^2 + s1 + s2 - 2 sqrt(s1 s2) = (1 - 3)^2 + 4 + 9 - 2 * 6 = 5
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(5.0, abs=1e-12)
    assert frechet_distance([0.0], [[2.0]], [0.0], [[2.0]]) == pytest.approx(0.0, abs=1e-12)


def test_fd_of_diagonal_covariances_adds_up_per_dimension():
    # dim 0: (0-1)^2 + 1 + 9 - 2*3 = 5; dim 1: (0-2)^2 + 4 + 16 - 2*8 = 8
    fd = frechet_distance([0.0, 0.0], np.diag([1.0, 4.0]), [1.0, 2.0], np.diag([9.0, 16.0]))
    assert fd == pytest.approx(13.0, abs=1e-12)


def test_fd_is_invariant_to_a_shared_rotation():
    # full (non-diagonal) covariances: rotate both Gaussians of the diagonal case by one orthogonal Q
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(2, 2)))
    mu1, mu2 = q @ [0.0, 0.0], q @ [1.0, 2.0]
    s1, s2 = q @ np.diag([1.0, 4.0]) @ q.T, q @ np.diag([9.0, 16.0]) @ q.T
    assert abs(s1[0, 1]) > 0.1
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(13.0, abs=1e-9)


@pytest.mark.parametrize("n,d", [(500, 16), (10, 64)])  # the second: singular covariance (n < d)
def test_fd_of_a_set_against_itself_is_about_zero(n, d):
    x = np.random.default_rng(1).normal(size=(n, d)) * 3 + 1
    mu, sigma = feature_stats(x)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-8


def test_fd_matches_a_closed_form_for_non_commuting_covariances():
    # for 2x2 PSD matrices, Tr(M^{1/2}) = sqrt(Tr M + 2 sqrt(det M)) with M = S1 S2
    s1, s2 = np.array([[2.0, 0.5], [0.5, 1.0]]), np.array([[1.0, -0.3], [-0.3, 3.0]])
    m = s1 @ s2
    tr_sqrt = math.sqrt(np.trace(m) + 2 * math.sqrt(np.linalg.det(m)))
    expected = 1.0 + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert frechet_distance([1.0, 0.0], s1, [0.0, 0.0], s2) == pytest.approx(expected, abs=1e-10)


def test_fd_of_singular_covariances_matches_the_singular_value_formula():
    # with S = A^T A / (n - 1) (A centered features), Tr((S1 S2)^{1/2}) = sum of singular values of
    # A2 A1^T / (n - 1): exact, whatever the rank; here n = 6 samples in d = 40 dimensions
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(6, 40)), rng.normal(size=(6, 40)) * 2 + 0.5
    (m1, s1), (m2, s2) = feature_stats(x), feature_stats(y)
    sv = np.linalg.svd((y - m2) @ (x - m1).T / 5, compute_uv=False).sum()
    expected = ((m1 - m2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * sv
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(expected, rel=1e-10)
    assert frechet_distance(m2, s2, m1, s1) == pytest.approx(expected, rel=1e-10)


def test_feature_stats_are_mean_and_unbiased_covariance():
    x = np.array([[0.0, 1.0], [2.0, 3.0], [4.0, 8.0]])
    mu, sigma = feature_stats(torch.tensor(x))
    np.testing.assert_allclose(mu, [2.0, 4.0])
    np.testing.assert_allclose(sigma, [[4.0, 7.0], [7.0, 13.0]])


def test_bad_inputs_are_errors():
    with pytest.raises(ValueError, match="N >= 2"):
        feature_stats(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="shapes do not match"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="non-finite"):
        frechet_distance([np.nan], [[1.0]], [0.0], [[1.0]])


# --- FD on CLIP features ---


def test_fd_clip_orders_renders_above_noise(world_clip):
    clip, processor = world_clip
    prompts = PROMPTS * 4  # 16 images
    a, b = renders(prompts, 0), renders(prompts, 100)
    noise = list(np.random.default_rng(0).integers(0, 256, (16, 64, 64, 3), dtype=np.uint8))
    assert fd_clip(a, a, clip, processor) < 1e-8
    same_world, vs_noise = fd_clip(a, b, clip, processor), fd_clip(a, noise, clip, processor)
    assert 0 < same_world < vs_noise


# --- reference statistics cache ---


def test_cache_hits_the_second_time_and_recomputes_for_a_changed_reference(tmp_path):
    calls = []

    def features(images):
        calls.append(len(images))
        return np.stack([im.reshape(-1, 3).mean(0) for im in images]).astype(np.float64)  # (N, 3)

    ref = renders(PROMPTS, 0)
    mu, sigma, meta = cached_stats(ref, features, "fp-a", tmp_path, {"why": "test"})
    assert calls == [4] and meta["cache_hit"] is False
    mu2, sigma2, meta2 = cached_stats(ref[::-1], features, "fp-a", tmp_path)  # same set, other order
    assert calls == [4] and meta2["cache_hit"] is True
    np.testing.assert_array_equal(mu, mu2)
    np.testing.assert_array_equal(sigma, sigma2)

    on_disk = json.loads((tmp_path / f"ref-{meta['key']}.json").read_text())
    assert (
        on_disk["n"] == 4 and on_disk["feature_extractor"] == "fp-a" and on_disk["source"] == {"why": "test"}
    )
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]

    _, _, meta3 = cached_stats(renders(PROMPTS, 1), features, "fp-a", tmp_path)  # other renders
    assert calls == [4, 4] and meta3["cache_hit"] is False and meta3["key"] != meta["key"]
    _, _, meta4 = cached_stats(ref, features, "fp-b", tmp_path)  # other feature extractor
    assert calls == [4, 4, 4] and meta4["key"] not in (meta["key"], meta3["key"])


def test_cache_with_missing_tensors_is_an_error(tmp_path):
    ref = renders(PROMPTS, 0)

    def features(images):
        return np.random.default_rng(0).normal(size=(len(images), 5))

    _, _, meta = cached_stats(ref, features, "fp", tmp_path)
    (tmp_path / f"ref-{meta['key']}.safetensors").unlink()
    with pytest.raises(ValueError, match="does not"):
        cached_stats(ref, features, "fp", tmp_path)


def test_fidelity_report_compares_with_renders_and_caches_them(world_clip, tmp_path, monkeypatch):
    clip, processor = world_clip
    prompts = PROMPTS * 2
    generated = list(zip(prompts, renders(prompts, 50), strict=True))
    counted = []
    real = fidelity.clip_image_features
    monkeypatch.setattr(
        fidelity, "clip_image_features", lambda ims, c, p: counted.append(len(ims)) or real(ims, c, p)
    )

    report = fidelity_report(generated, clip, processor, tmp_path / "fidelity", reference_seed=0)
    assert counted == [8, 8]  # reference, generated
    assert report["n"] == 8 and report["reference"]["n"] == 8 and report["fid_inception"] is None
    assert math.isfinite(report["fd_clip"]) and report["fd_clip"] > 0
    assert report["reference"]["cache"]["clip"]["hit"] is False
    again = fidelity_report(generated, clip, processor, tmp_path / "fidelity", reference_seed=0)
    assert counted == [8, 8, 8] and again["reference"]["cache"]["clip"]["hit"] is True
    assert again["fd_clip"] == report["fd_clip"]
    other = fidelity_report(generated, clip, processor, tmp_path / "fidelity", reference_seed=7)
    assert counted == [8, 8, 8, 8, 8] and other["reference"]["cache"]["clip"]["hit"] is False


# --- FID on Inception-v3 ---


def test_tf1_bilinear_resize_is_hand_computed():
    # 2 -> 4 pixels: input coordinates 0, 0.5, 1, 1.5 (clamped to the last pixel)
    x = torch.tensor([[[[0.0, 10.0], [20.0, 30.0]]]])
    y = resize_bilinear_tf1(x, 4)
    np.testing.assert_allclose(y[0, 0, 0].numpy(), [0.0, 5.0, 10.0, 10.0])
    np.testing.assert_allclose(y[0, 0, :, 0].numpy(), [0.0, 10.0, 20.0, 20.0])


def test_inception_weights_load_from_a_local_file_and_give_a_finite_fid(world_clip, tmp_path):
    clip, processor = world_clip
    torch.manual_seed(0)
    path = tmp_path / "inception.pth"  # the standard weights' architecture and keys, random values
    torch.save(FIDInceptionV3().state_dict(), path)
    model = load_inception(path)
    assert model(torch.zeros(1, 3, 64, 64, dtype=torch.uint8)).shape == (1, 2048)

    generated = list(zip(PROMPTS[:3], renders(PROMPTS[:3], 9), strict=True))
    report = fidelity_report(generated, clip, processor, tmp_path / "fidelity", inception_path=path)
    assert math.isfinite(report["fid_inception"]) and report["fid_inception"] >= 0
    assert report["feature_extractors"]["inception"].startswith(fidelity.INCEPTION_FEATURES)
    assert report["reference"]["cache"]["inception"]["hit"] is False


def test_missing_or_wrong_inception_weights_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no Inception-v3 weights"):
        load_inception(tmp_path / "nope.pth")
    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(ValueError, match="not an FID Inception-v3 state dict"):
        load_inception(wrong)
