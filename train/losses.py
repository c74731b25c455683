"""DPO and dense DPO (DDPO) losses: pure functions on log-prob tensors (docs/algorithms.md §5-6).

Nothing here knows about models, batches or devices, so every formula is tested against
hand-computed values. Metric names follow TRL's DPOTrainer so dashboards read the same.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def shifted_token_logps(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """log p(token t+1 | tokens <= t) for every position: [B, T-1], in float32.

    The same arithmetic as engine.chat.sequence_logprobs (which only returns sums), so a
    masked sum of this equals the engine's reference log-probs; tests/test_losses.py checks it.
    """
    log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return log_probs.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)


def summed_logps(token_logps: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """DPO's log pi(y|x): the sum over response tokens. The mask is aligned with token_logps."""
    return (token_logps * response_mask.to(token_logps.dtype)).sum(dim=-1)


def response_nll(token_logps: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """SFT's loss (jobs/sft.py): minus the mean log-prob over every response token of the batch;
    prompt and padding tokens are masked out."""
    mask = response_mask.to(token_logps.dtype)
    return -summed_logps(token_logps, mask).sum() / mask.sum().clamp(min=1.0)


def chosen_nll(token_logps: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """The SFT term of preference training (train.sft_weight): response_nll of the batch's chosen
    sequences (the first half of the 2B rows), as TRL's "sft" loss type."""
    return response_nll(token_logps.chunk(2)[0], response_mask.chunk(2)[0])


def ddpo_weighted_logps(
    token_logps: torch.Tensor,
    response_mask: torch.Tensor,
    changed_mask: torch.Tensor,
    gamma: float,
    *,
    normalise: bool,
) -> torch.Tensor:
    """DDPO's log pi(y|x) per row (docs/algorithms.md §6), the weighted sum
        sum_{t in y_u} log p_t + gamma * sum_{t in y_c} log p_t
    where y_c are the response tokens marked changed and y_u the other response tokens.
    normalise=True divides it by the weighted length |y_u| + gamma * |y_c| (the paper's
    formula); False keeps the sum (the authors' released code; with gamma=1, DPO's plain sum).
    All three tensors are [B, T'] and aligned with each other.
    """
    if not token_logps.shape == response_mask.shape == changed_mask.shape:
        raise ValueError(
            f"token_logps {tuple(token_logps.shape)}, response_mask {tuple(response_mask.shape)} and "
            f"changed_mask {tuple(changed_mask.shape)} must have the same shape"
        )
    response = response_mask.to(token_logps.dtype)
    changed = changed_mask.to(token_logps.dtype) * response  # a changed mark outside the response counts for nothing
    weights = response + (gamma - 1.0) * changed  # 1 on unchanged tokens, gamma on changed ones
    weighted = (token_logps * weights).sum(dim=-1)
    if not normalise:
        return weighted
    total_weight = weights.sum(dim=-1)
    if bool((total_weight <= 0).any()):
        raise ValueError("a row has no response tokens (or gamma <= 0): its weighted average is undefined")
    return weighted / total_weight


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean of -log sigmoid(h), h = beta * [(pc - rc) - (pr - rr)] (docs/algorithms.md §5).

    The reference log-probs are constants: they are detached, so no gradient reaches them
    whatever the caller passes. Metrics are detached batch means under TRL's names:
    rewards/chosen = beta * (pc - rc), rewards/rejected = beta * (pr - rr),
    rewards/margins = their difference (= h), rewards/accuracies = share of rows with h > 0.
    """
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps.detach())
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps.detach())
    margins = chosen_rewards - rejected_rewards
    loss = -F.logsigmoid(margins).mean()
    metrics = {
        "rewards/chosen": chosen_rewards.detach().mean(),
        "rewards/rejected": rejected_rewards.detach().mean(),
        "rewards/margins": margins.detach().mean(),
        "rewards/accuracies": (margins.detach() > 0).float().mean(),
        "logps/chosen": policy_chosen_logps.detach().mean(),
        "logps/rejected": policy_rejected_logps.detach().mean(),
    }
    return loss, metrics
