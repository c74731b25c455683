"""Token-level reward model and PPO: pure functions on per-token tensors (docs/algorithms.md §9),
each tested against hand-computed values. Every tensor is [B, T] over response positions with a
0/1 `mask` of the real tokens (the response of each row is a prefix of its T positions). Metric
names follow TRL's PPO trainer (`objective/kl`, `policy/clipfrac`, `val/...`).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def token_bce(logits: torch.Tensor, labels: torch.Tensor, labelled: torch.Tensor) -> torch.Tensor:
    """The reward model's loss: binary cross-entropy of each labelled position's logit against
    its 0/1 label, averaged over labelled positions only."""
    losses = F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="none")
    return masked_mean(losses, labelled)


def token_accuracy(logits: torch.Tensor, labels: torch.Tensor, labelled: torch.Tensor) -> torch.Tensor:
    """Share of the labelled positions whose logit is on its label's side of 0 (> 0: good)."""
    return masked_mean(((logits > 0) == labels.bool()).float(), labelled)


def token_auc(scores: torch.Tensor, labels: torch.Tensor) -> float | None:
    """ROC AUC of 1-D scores against 0/1 labels: the chance that a good token outscores a bad
    one, ties counting half (Mann-Whitney's U over n_good * n_bad, from average ranks); None
    when either class is absent."""
    scores, good = scores.double(), labels.bool()
    n_good, n_bad = int(good.sum()), int((~good).sum())
    if not n_good or not n_bad:
        return None
    _, inverse, counts = torch.unique(scores, return_inverse=True, return_counts=True)
    average_rank = counts.cumsum(0).double() - (counts.double() - 1) / 2  # 1-based, ties averaged
    u = average_rank[inverse][good].sum().item() - n_good * (n_good + 1) / 2
    return u / (n_good * n_bad)


def token_rewards_from_logits(logits: torch.Tensor, kind: Literal["log_sigmoid", "logit"]) -> torch.Tensor:
    """RM(t) from the reward model's logits (ppo.token_reward): log p(good) = log sigmoid(logit),
    or the logit itself."""
    return F.logsigmoid(logits) if kind == "log_sigmoid" else logits


def shaped_rewards(token_rewards: torch.Tensor, logps: torch.Tensor, ref_logps: torch.Tensor, mask: torch.Tensor,
                   beta_kl: float, granularity: Literal["token", "sequence"]) -> torch.Tensor:
    """r_t = RM(t) - beta_kl * (log pi(t) - log pi_ref(t)) at every response token ("token"), or
    the KL term at every token and the RM's summed reward added at the last one ("sequence":
    the same reward model, one reward per answer)."""
    mask = mask.to(token_rewards.dtype)
    kl_penalty = -beta_kl * (logps - ref_logps) * mask
    if granularity == "token":
        return token_rewards * mask + kl_penalty
    last = mask.sum(dim=1).long() - 1
    rewards = kl_penalty.clone()
    rows = torch.arange(mask.shape[0])
    rewards[rows, last] += (token_rewards * mask).sum(dim=1)
    return rewards


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns) by generalised advantage estimation: delta_t = r_t + gamma *
    V(t+1) - V(t), A_t = delta_t + gamma * lam * A_(t+1), with V and A zero past each row's last
    response token; returns = A + V."""
    mask = mask.to(values.dtype)
    values = values * mask
    advantages = torch.zeros_like(values)
    running = torch.zeros(values.shape[0], dtype=values.dtype)
    for t in reversed(range(values.shape[1])):
        next_value = values[:, t + 1] if t + 1 < values.shape[1] else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
    return advantages, (advantages + values) * mask


def whiten(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Advantages normalised to mean 0, variance 1 over the real tokens (as OpenRLHF and TRL do)."""
    mean = masked_mean(values, mask)
    variance = masked_mean((values - mean) ** 2, mask)
    return (values - mean) * torch.rsqrt(variance + 1e-8) * mask.to(values.dtype)


def ppo_policy_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                    clip: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The clipped surrogate: mean over tokens of max(-A * ratio, -A * clip(ratio, 1 - clip,
    1 + clip)), ratio = pi / pi_old, with TRL's clip fraction and approximate KL."""
    ratio = torch.exp(logps - old_logps)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip, 1 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        metrics = {"policy/clipfrac": masked_mean((clipped > unclipped).float(), mask),
                   "policy/approxkl": masked_mean(0.5 * (logps - old_logps) ** 2, mask)}
    return loss, metrics


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """0.5 * mean over tokens of max((V - R)^2, (V_clipped - R)^2), V_clipped within clip of the
    rollout's value, as TRL's PPO trainer."""
    clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)
    unclipped_loss, clipped_loss = (values - returns) ** 2, (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_loss, clipped_loss), mask)
    with torch.no_grad():
        metrics = {"val/clipfrac": masked_mean((clipped_loss > unclipped_loss).float(), mask),
                   "val/vpred": masked_mean(values, mask)}
    return loss, metrics
