"""DPO / DDPO losses against hand-computed values (docs/algorithms.md §5-6)."""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from engine import chat
from train.losses import chosen_nll, ddpo_weighted_logps, dpo_loss, shifted_token_logps, summed_logps

# Two pairs, beta = 0.1:
#   chosen rewards   = 0.1 * (pc - rc) = 0.1 * [-10 - -11, -5 - -5]  = [0.1, 0.0]
#   rejected rewards = 0.1 * (pr - rr) = 0.1 * [-12 - -11, -4 - -5]  = [-0.1, 0.1]
#   h = margins      = [0.2, -0.1]
#   loss_i = -log sigmoid(h_i) = log(1 + e^-h_i) = [log 1.8187308 = 0.5981389, log 2.1051709 = 0.7443967]
#   loss = mean = 0.6712678
PC, PR = [-10.0, -5.0], [-12.0, -4.0]
RC, RR = [-11.0, -5.0], [-11.0, -5.0]
BETA = 0.1


def _tensors(*values, grad=False):
    return [torch.tensor(v, dtype=torch.float64, requires_grad=grad) for v in values]


def test_dpo_loss_and_metrics_hand_computed():
    loss, metrics = dpo_loss(*_tensors(PC, PR, RC, RR), beta=BETA)
    assert loss.item() == pytest.approx(0.6712678, abs=1e-7)
    assert metrics["rewards/chosen"].item() == pytest.approx(0.05)  # mean(0.1, 0.0)
    assert metrics["rewards/rejected"].item() == pytest.approx(0.0)  # mean(-0.1, 0.1)
    assert metrics["rewards/margins"].item() == pytest.approx(0.05)  # mean(0.2, -0.1)
    assert metrics["rewards/accuracies"].item() == pytest.approx(0.5)  # only h_0 > 0
    assert metrics["logps/chosen"].item() == pytest.approx(-7.5)
    assert metrics["logps/rejected"].item() == pytest.approx(-8.0)


def test_dpo_loss_is_log2_when_policy_equals_reference():
    loss, metrics = dpo_loss(*_tensors(RC, RR, RC, RR), beta=BETA)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-12)
    assert metrics["rewards/accuracies"].item() == 0.0  # h = 0 is not a win


def test_gradients_reach_only_the_policy():
    pc, pr, rc, rr = _tensors(PC, PR, RC, RR, grad=True)
    loss, _ = dpo_loss(pc, pr, rc, rr, beta=BETA)
    loss.backward()
    # dL/dpc_i = -(1/B) * beta * sigmoid(-h_i): -0.05 * sigmoid(-0.2) = -0.0225083, -0.05 * sigmoid(0.1) = -0.0262490
    assert pc.grad.tolist() == pytest.approx([-0.0225083, -0.0262490], abs=1e-7)
    assert pr.grad.tolist() == pytest.approx([0.0225083, 0.0262490], abs=1e-7)
    assert rc.grad is None and rr.grad is None


def test_ddpo_weighted_logps_hand_computed():
    token_logps = torch.tensor([[-1.0, -2.0, -3.0, -4.0], [-0.5, -0.5, -1.0, -2.0]])
    response = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 0]])
    changed = torch.tensor([[0, 0, 1, 0], [1, 0, 0, 1]])  # row 1's last mark is outside the response
    # row 0: unchanged -2 + -4 = -6, changed 5 * -3 = -15 -> -21 / (2 + 5*1) = -3
    # row 1: unchanged -0.5 + -1 = -1.5, changed 5 * -0.5 = -2.5 -> -4 / (2 + 5*1) = -0.5714286
    weighted = ddpo_weighted_logps(token_logps, response, changed, gamma=5.0, normalise=True)
    assert weighted.tolist() == pytest.approx([-3.0, -4 / 7])
    assert ddpo_weighted_logps(token_logps, response, changed, gamma=5.0, normalise=False).tolist() == pytest.approx(
        [-21.0, -4.0]
    )
    # the released recipe's gamma 1.1: row 0: -6 + 1.1 * -3 = -9.3 (/ 3.1 = -3); row 1: -1.5 + 1.1 * -0.5 = -2.05
    assert ddpo_weighted_logps(token_logps, response, changed, gamma=1.1, normalise=False).tolist() == pytest.approx(
        [-9.3, -2.05]
    )
    assert ddpo_weighted_logps(token_logps, response, changed, gamma=1.1, normalise=True).tolist() == pytest.approx(
        [-3.0, -2.05 / 3.1]
    )


def test_ddpo_with_gamma_one_and_no_division_is_dpo():
    generator = torch.Generator().manual_seed(0)
    token_logps = -torch.rand(6, 9, generator=generator, dtype=torch.float64) * 3
    response = (torch.rand(6, 9, generator=generator) > 0.3).long()
    changed = (torch.rand(6, 9, generator=generator) > 0.5).long()
    ddpo = ddpo_weighted_logps(token_logps, response, changed, gamma=1.0, normalise=False)
    assert torch.allclose(ddpo, summed_logps(token_logps, response))
    refs = -torch.rand(6, dtype=torch.float64, generator=generator) * 20
    ddpo_loss, _ = dpo_loss(ddpo[:3], ddpo[3:], refs[:3], refs[3:], beta=0.5)
    plain_loss, _ = dpo_loss(summed_logps(token_logps, response)[:3], summed_logps(token_logps, response)[3:],
                             refs[:3], refs[3:], beta=0.5)
    assert ddpo_loss.item() == pytest.approx(plain_loss.item(), abs=1e-12)


def test_ddpo_rejects_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        ddpo_weighted_logps(torch.zeros(2, 3), torch.ones(2, 3), torch.zeros(2, 4), gamma=5.0, normalise=True)
    with pytest.raises(ValueError, match="no response tokens"):
        ddpo_weighted_logps(torch.zeros(1, 3), torch.zeros(1, 3), torch.zeros(1, 3), gamma=5.0, normalise=True)


def test_shifted_token_logps_sum_to_the_engines_sequence_logprobs():
    # Training's policy log-probs must equal the engine's reference log-probs at step 0.
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 7, 11, generator=generator)
    input_ids = torch.randint(0, 11, (3, 7), generator=generator)
    response_mask = torch.tensor([[0, 0, 1, 1, 1, 1, 0], [0, 0, 0, 0, 1, 1, 1], [0, 1, 1, 1, 1, 1, 1]])
    engine_sums, _ = chat.sequence_logprobs(logits, input_ids, response_mask)
    ours = summed_logps(shifted_token_logps(logits, input_ids), response_mask[:, 1:])
    assert torch.equal(ours, engine_sums)
    # Hand check of one entry: position 0 predicts token 1 with log_softmax(logits[0, 0])[input_ids[0, 1]].
    expected = torch.log_softmax(logits[0, 0], dim=-1)[input_ids[0, 1]]
    assert shifted_token_logps(logits, input_ids)[0, 0].item() == pytest.approx(expected.item())


def test_chosen_nll_hand_computed():
    # Rows 0-1 chosen, 2-3 rejected (ignored). Chosen response tokens: -2, -3 (row 0), -6 (row 1):
    # NLL = (2 + 3 + 6) / 3 tokens = 11/3, a mean over tokens, not over rows ((2.5 + 6) / 2).
    token_logps = torch.tensor([[-1.0, -2.0, -3.0], [-4.0, -5.0, -6.0], [-9.0, -9.0, -9.0], [-9.0, -9.0, -9.0]])
    mask = torch.tensor([[0, 1, 1], [0, 0, 1], [1, 1, 1], [1, 1, 1]])
    assert chosen_nll(token_logps, mask).item() == pytest.approx(11 / 3)


@pytest.mark.parametrize("sft_weight", [0.0, 0.5])
def test_matches_trl_dpo_sigmoid_loss(sft_weight):
    """TRL >= 1 computes its loss inside DPOTrainer._compute_loss (no standalone function), so
    drive it with a stand-in trainer and a model whose per-token log-probs sum to ours; with
    sft_weight, TRL's loss types ["sigmoid", "sft"] weighted [1, sft_weight]."""
    pytest.importorskip("trl")
    from trl import DPOTrainer

    pc, pr, rc, rr = _tensors(PC, PR, RC, RR)
    per_token = torch.stack([pc, pr]).reshape(4, 1).float().repeat(1, 2) / 2  # 2 tokens each, summing to the logp
    outputs = SimpleNamespace(log_probs=per_token, entropy=torch.zeros(4, 2), mean_logits=torch.zeros(4, 2),
                              is_top1=torch.zeros(4, 2, dtype=torch.bool))
    model = SimpleNamespace(training=True)
    trainer = SimpleNamespace(
        model=model, accelerator=SimpleNamespace(device="cpu", gather=lambda t: t, gather_for_metrics=lambda t: t),
        aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl",
        loss_types=["sigmoid", "sft"], loss_weights=[1.0, sft_weight], beta=BETA, use_weighting=False,
        _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1,
    )
    inputs = {"input_ids": torch.zeros(4, 3, dtype=torch.long), "attention_mask": torch.ones(4, 3, dtype=torch.long),
              "completion_mask": torch.tensor([[0, 1, 1]] * 4), "ref_chosen_logps": rc.float(),
              "ref_rejected_logps": rr.float()}
    trl_loss = DPOTrainer._compute_loss(trainer, lambda **kwargs: outputs, inputs, return_outputs=False)
    loss, metrics = dpo_loss(*_tensors(PC, PR, RC, RR), beta=BETA)
    loss = loss + sft_weight * chosen_nll(per_token.double(), torch.ones(4, 2))
    assert trl_loss.item() == pytest.approx(loss.item(), abs=1e-6)
    for name, value in metrics.items():
        assert trainer._metrics["train"][name][-1] == pytest.approx(value.item(), abs=1e-6), name
