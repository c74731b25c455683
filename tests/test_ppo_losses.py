"""Token labels from corrections and the reward-model / PPO formulas (train/token_labels.py,
train/ppo_losses.py) against hand-computed values."""

import math

import pytest
import torch

from train.ppo_losses import (gae, ppo_policy_loss, shaped_rewards, token_accuracy, token_auc, token_bce,
                               token_rewards_from_logits, value_loss, whiten)
from train.token_labels import correction_token_labels


@pytest.mark.parametrize("original, corrected, expected_original, expected_corrected", [
    ([1, 2, 3, 4, 5], [1, 2, 9, 4, 5], [1, 1, 0, None, None], [1, 1, 1, None, None]),  # replacement
    ([1, 2, 3, 4], [1, 2, 4], [1, 1, 0, None], [1, 1, None]),                          # deletion
    ([1, 2, 4], [1, 2, 3, 4], [1, 1, 0], [1, 1, 1, None]),                             # insertion
    ([1, 2], [1, 2, 3], [1, 1], [1, 1, 1]),                                            # appended at the end
    ([1, 2, 3, 4, 5, 6], [1, 7, 8, 4, 5, 9], [1, 0, 0, None, None, None], [1, 1, 1, None, None, None]),
    ([1, 2], [1, 2], [1, 1], [1, 1]),                                                  # nothing edited
])
def test_correction_token_labels(original, corrected, expected_original, expected_corrected):
    assert correction_token_labels(original, corrected) == (expected_original, expected_corrected)


def test_token_bce_reads_labelled_positions_only():
    logits, labels = torch.tensor([[0.0, 2.0]]), torch.tensor([[1.0, 0.0]])
    assert token_bce(logits, labels, torch.tensor([[1, 0]])).item() == pytest.approx(math.log(2))
    both = (math.log(2) + math.log(1 + math.exp(2))) / 2
    assert token_bce(logits, labels, torch.tensor([[1, 1]])).item() == pytest.approx(both)


def test_token_accuracy_reads_the_logits_side_of_zero_on_labelled_positions():
    logits, labels = torch.tensor([[2.0, -1.0, 0.5, -3.0]]), torch.tensor([[1, 1, 0, 0]])
    assert token_accuracy(logits, labels, torch.tensor([[1, 1, 1, 1]])).item() == 0.5
    assert token_accuracy(logits, labels, torch.tensor([[1, 0, 0, 1]])).item() == 1.0


@pytest.mark.parametrize("scores, labels, expected", [
    ([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1], 0.75),       # 3 of the 4 (good, bad) pairs ordered right
    ([0.5, 0.5, 0.5], [1, 0, 0], 0.5),                 # ties count half
    ([0.2, 0.9, 0.2, 0.1], [1, 1, 0, 0], (0.5 + 1 + 1 + 1) / 4),  # the 0.2s tie
    ([3.0, 1.0], [1, 1], None),                        # one class only: undefined
])
def test_token_auc_hand_computed(scores, labels, expected):
    assert token_auc(torch.tensor(scores), torch.tensor(labels)) == pytest.approx(expected)


def test_shaped_rewards_token_and_sequence():
    rm = torch.tensor([[1.0, -3.0, 5.0]])
    logps, ref = torch.tensor([[-1.0, -2.0, 0.0]]), torch.tensor([[-1.5, -2.0, 0.0]])
    mask = torch.tensor([[1, 1, 0]])
    token = shaped_rewards(rm, logps, ref, mask, beta_kl=0.1, granularity="token")
    assert token.tolist()[0] == pytest.approx([0.95, -3.0, 0.0])
    sequence = shaped_rewards(rm, logps, ref, mask, beta_kl=0.1, granularity="sequence")
    assert sequence.tolist()[0] == pytest.approx([-0.05, -2.0, 0.0])  # the RM's sum, -2, on the last real token
    assert sequence.sum().item() == pytest.approx(token.sum().item())


def test_gae_hand_computed():
    rewards, values = torch.tensor([[1.0, 0.0, 2.0]]), torch.tensor([[0.5, 1.0, 7.0]])
    advantages, returns = gae(rewards, values, torch.tensor([[1, 1, 0]]), gamma=0.9, lam=0.8)
    # t=1: delta = 0 + 0 - 1.0 = -1.0; t=0: delta = 1 + 0.9 * 1.0 - 0.5 = 1.4, A = 1.4 + 0.72 * -1.0.
    assert advantages.tolist()[0] == pytest.approx([0.68, -1.0, 0.0])
    assert returns.tolist()[0] == pytest.approx([1.18, 0.0, 0.0])


def test_gae_with_lambda_one_and_gamma_one_is_reward_to_go_minus_value():
    rewards, values = torch.tensor([[0.2, -0.4, 1.0]]), torch.tensor([[0.3, 0.1, -0.2]])
    advantages, returns = gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=1.0)
    assert returns.tolist()[0] == pytest.approx([0.8, 0.6, 1.0])
    assert advantages.tolist()[0] == pytest.approx([0.5, 0.5, 1.2])


def test_whiten_over_real_tokens():
    out = whiten(torch.tensor([[1.0, 2.0, 3.0, 100.0]]), torch.tensor([[1, 1, 1, 0]]))
    assert out.tolist()[0] == pytest.approx([-math.sqrt(1.5), 0.0, math.sqrt(1.5), 0.0], abs=1e-6)


def test_clipped_policy_loss_hand_computed():
    logps, old = torch.log(torch.tensor([[1.5, 0.5]])), torch.zeros(1, 2)
    loss, metrics = ppo_policy_loss(logps, old, torch.ones(1, 2), torch.ones(1, 2), clip=0.2)
    assert loss.item() == pytest.approx((-1.2 - 0.5) / 2) and metrics["policy/clipfrac"].item() == 0.5
    loss, metrics = ppo_policy_loss(logps, old, -torch.ones(1, 2), torch.ones(1, 2), clip=0.2)
    assert loss.item() == pytest.approx((1.5 + 0.8) / 2) and metrics["policy/clipfrac"].item() == 0.5


def test_clipped_value_loss_hand_computed():
    loss, metrics = value_loss(torch.tensor([[2.0, 0.0]]), torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]]),
                               torch.ones(1, 2), clip=0.5)
    assert loss.item() == pytest.approx(0.5) and metrics["val/clipfrac"].item() == 0.0
    loss, metrics = value_loss(torch.tensor([[1.2]]), torch.tensor([[1.0]]), torch.tensor([[3.0]]),
                               torch.ones(1, 1), clip=0.1)
    assert loss.item() == pytest.approx(0.5 * 1.9 ** 2) and metrics["val/clipfrac"].item() == 1.0


def test_token_rewards_are_log_p_good_or_the_logit():
    logits = torch.tensor([[0.0, 2.0, -3.0]])
    expected = [math.log(0.5), math.log(1 / (1 + math.exp(-2.0))), math.log(1 / (1 + math.exp(3.0)))]
    assert token_rewards_from_logits(logits, "log_sigmoid")[0].tolist() == pytest.approx(expected, rel=1e-6)
    assert token_rewards_from_logits(logits, "logit").equal(logits)
