"""The reward losses (Eq. 1-3) against numbers computed by hand."""

import math

import pytest
import torch

from t2ialign.reward.losses import labels_to_targets, mse_loss, prompt_classification_loss, reward_loss


def test_targets_are_label_means_without_skips():
    y = labels_to_targets([["good", "good", "bad"], ["bad", "skip", "bad"], ["skip", "good"]])
    assert y.tolist() == pytest.approx([2 / 3, 0.0, 1.0])
    with pytest.raises(ValueError, match="only skips"):
        labels_to_targets([["skip", "skip"]])
    with pytest.raises(ValueError, match="good, bad or skip"):
        labels_to_targets([["great"]])


def test_mean_target_equals_one_example_per_label_up_to_a_constant():
    # sum_l (y_l - r)^2 = n (ybar - r)^2 + sum_l (y_l - ybar)^2, for any r
    labels = [1.0, 1.0, 0.0]
    for r in (0.0, 0.3, 0.9):
        per_label = sum((y - r) ** 2 for y in labels)
        ybar = sum(labels) / 3
        assert per_label == pytest.approx(3 * (ybar - r) ** 2 + sum((y - ybar) ** 2 for y in labels))


def test_mse_by_hand():
    r = torch.tensor([0.2, 0.9, 0.5])
    y = torch.tensor([0.0, 1.0, 1.0])
    assert mse_loss(r, y).item() == pytest.approx((0.04 + 0.01 + 0.25) / 3)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        mse_loss(r, torch.tensor([0.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match="shape"):
        mse_loss(r, y[:2])


def test_prompt_classification_with_temperature_by_hand():
    r = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.5, 0.0]])
    orig = torch.tensor([0, 2])
    t = 0.5
    # image 0: logits (2, 0, 0) -> -log(e^2 / (e^2 + 2)); image 1: logits (0, 1, 0) -> -log(1 / (2 + e))
    expected = (-math.log(math.e**2 / (math.e**2 + 2)) - math.log(1 / (2 + math.e))) / 2
    assert prompt_classification_loss(r, orig, t).item() == pytest.approx(expected, rel=1e-6)
    # a lower temperature sharpens: the loss of a correctly ranked image falls
    assert prompt_classification_loss(r[:1], orig[:1], 0.1) < prompt_classification_loss(r[:1], orig[:1], 1.0)
    with pytest.raises(ValueError, match="temperature"):
        prompt_classification_loss(r, orig, 0.0)
    with pytest.raises(ValueError, match="N >= 2"):
        prompt_classification_loss(r[:, :1], orig * 0, 1.0)


def test_reward_loss_is_mse_plus_lambda_pc():
    mse, pc = torch.tensor(0.3), torch.tensor(2.0)
    assert reward_loss(mse, pc, 0.5).item() == pytest.approx(1.3)
    assert reward_loss(mse, pc, 0.0).item() == pytest.approx(0.3)
    assert reward_loss(mse, None, 0.5).item() == pytest.approx(0.3)
    with pytest.raises(ValueError, match="lambda"):
        reward_loss(mse, pc, -1.0)
