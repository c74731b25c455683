"""What the trainer optimises: one class per objective, turning the batch plan's row indices
into a batch and a batch into a loss and metrics. The loop around them (train/trainer.py:
DeepSpeed, the batch plan, checkpoints, export) is the same for every objective.

- PreferenceObjective: DPO or DDPO on pair rows (train.loss), plus train.sft_weight's SFT term.
- SftObjective: supervised fine-tuning on (image, question, answer) rows: the mean NLL of the
  answer tokens (jobs/sft.py), with the [sft] augmentations.
- RewardModelObjective: the token-level reward model (jobs/train_rm.py): the policy with a
  scalar head on every position, binary cross-entropy on the labelled tokens, and held-out
  loss, token accuracy and AUC after the last step.
- PpoObjective: PPO on one round's rewarded rollouts (jobs/ppo.py): the policy and a critic
  trained together (PolicyAndCritic), the clipped surrogate plus the clipped value loss on
  advantages computed once, before the first update.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.utils.rnn import pad_sequence

from engine import chat
from engine.config import Config, PpoConfig, TrainConfig
from engine.reward_model import TokenRewardModel, with_reward_head
from engine.storage import join
from engine.tiny_models import resolve_model_path
from train.data import PairBatch, collate_pairs
from train.export import CRITIC_DIR, MODEL_DIR, export_model, export_parts
from train.losses import chosen_nll, ddpo_weighted_logps, dpo_loss, response_nll, shifted_token_logps, summed_logps
from train.ppo_data import PpoBatch, collate_rollouts
from train.ppo_losses import (gae, ppo_policy_loss, shaped_rewards, token_accuracy, token_auc,
                              token_bce, token_rewards_from_logits, value_loss, whiten)
from train.rm_data import RmBatch, collate_rm
from train.sft_data import SftBatch, collate_sft


def rank_chunks(n_rows: int, micro_batch_size: int, rank: int, world: int) -> list[list[int]]:
    """`rank`'s share of n_rows rows in micro-batches, as many on every rank (ZeRO-3's forward
    is collective), the last filled up by wrapping around to the first rows."""
    chunks = math.ceil(n_rows / (world * micro_batch_size))
    grid = np.resize(np.arange(n_rows), chunks * world * micro_batch_size).reshape(chunks, world, micro_batch_size)
    return [chunk.tolist() for chunk in grid[:, rank]]


class Objective:
    """What an objective does by default: train the loaded model as it is for train.epochs,
    precompute nothing, evaluate nothing, export the model."""

    def __init__(self, cfg: Config, processor: Any, rows: list[dict], device, float_dtype, seed: int) -> None:
        self.cfg, self.train_cfg, self.processor, self.rows = cfg, cfg.train, processor, rows
        self.device, self.float_dtype, self.seed = device, float_dtype, seed

    @property
    def epochs(self) -> int:
        """Passes over the rows: the batch plan's epochs."""
        return self.train_cfg.epochs

    def trained_model(self, model, init_dir: str):
        """The module DeepSpeed trains, built around the Hugging Face model loaded from init_dir."""
        return model

    def prepare(self, ds_engine, plan, rank: int, world: int) -> None:
        """Work before the first step, once the model is loaded (collective)."""

    def evaluate(self, ds_engine, rows: list[dict], rank: int, world: int) -> dict:
        """Metrics on held-out rows after the last step (collective)."""
        return {}

    def export(self, ds_engine, init_dir: str, out_dir: str) -> dict:
        """Write the trained model under out_dir (collective); returns the TrainResult fields
        that name what was written."""
        model_dir = join(out_dir, MODEL_DIR)
        export_model(ds_engine, init_dir, model_dir)
        return {"model_dir": model_dir}


def token_logps(ds_engine, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token log-probs of the batch's sequences, the response mask aligned with them, and
    the logits they come from."""
    logits = ds_engine(**batch.model_inputs, use_cache=False).logits
    return shifted_token_logps(logits, batch.model_inputs["input_ids"]), batch.response_mask[:, 1:], logits


def _sequence_logps(logps, response, batch: PairBatch, train_cfg: TrainConfig) -> torch.Tensor:
    """log pi(y|x) of the 2B sequences: summed (DPO) or DDPO's weighted sum or average."""
    if train_cfg.loss == "ddpo":
        return ddpo_weighted_logps(logps, response, batch.changed_mask[:, 1:], train_cfg.gamma,
                                   normalise=train_cfg.ddpo_normalise)
    return summed_logps(logps, response)


def preference_loss(ds_engine, batch: PairBatch, train_cfg: TrainConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One micro-batch's loss and metrics: DPO (or DDPO), plus train_cfg.sft_weight times the
    chosen answers' NLL when it is set."""
    logps, response, _ = token_logps(ds_engine, batch)
    chosen, rejected = _sequence_logps(logps, response, batch, train_cfg).chunk(2)
    loss, metrics = dpo_loss(chosen, rejected, batch.ref_chosen_logps, batch.ref_rejected_logps, train_cfg.beta)
    if train_cfg.sft_weight:
        nll = chosen_nll(logps, response)
        loss = loss + train_cfg.sft_weight * nll
        metrics["nll_loss"] = nll.detach()
    return loss, metrics


class PreferenceObjective(Objective):
    id_column = "pair_id"

    def __init__(self, cfg: Config, processor: Any, rows: list[dict], device, float_dtype, seed: int) -> None:
        super().__init__(cfg, processor, rows, device, float_dtype, seed)
        # DDPO: pair_id -> (reference weighted logp of chosen, of rejected); DPO uses the shards'.
        self.ref_logps: dict[str, tuple[float, float]] | None = None

    def batch(self, indices: list[int], step: int) -> PairBatch:
        ddpo_mask = self.train_cfg.ddpo_mask if self.train_cfg.loss == "ddpo" else None
        batch = collate_pairs([self.rows[i] for i in indices], self.processor, self.train_cfg.max_length, ddpo_mask)
        if self.ref_logps is not None:
            refs = torch.tensor([self.ref_logps[pair_id] for pair_id in batch.pair_ids], dtype=torch.float32)
            batch.ref_chosen_logps, batch.ref_rejected_logps = refs[:, 0], refs[:, 1]
        return batch.to(self.device, self.float_dtype)

    def loss(self, ds_engine, batch: PairBatch):
        return preference_loss(ds_engine, batch, self.train_cfg)

    def prepare(self, ds_engine, plan, rank: int, world: int) -> None:
        """DDPO's reference log-probs of every pair, by the initial policy (no grad): the shards
        carry only plain sums. Every rank scores an equal number of micro-batches (ZeRO-3's
        forward is collective), then all ranks exchange their results."""
        if self.train_cfg.loss != "ddpo":
            return
        mine: dict[str, tuple[float, float]] = {}
        ds_engine.eval()
        with torch.no_grad():
            for chunk in rank_chunks(plan.n_pairs, self.train_cfg.micro_batch_size, rank, world):
                batch = self.batch(chunk, step=0)
                logps, response, _ = token_logps(ds_engine, batch)
                chosen, rejected = _sequence_logps(logps, response, batch, self.train_cfg).chunk(2)
                mine.update(zip(batch.pair_ids, zip(chosen.tolist(), rejected.tolist())))
        ds_engine.train()
        gathered: list[dict] = [{} for _ in range(world)]
        dist.all_gather_object(gathered, mine)
        self.ref_logps = {pair_id: logps for part in gathered for pair_id, logps in part.items()}

    @staticmethod
    def progress(metrics: dict) -> str:
        return f"accuracy {metrics['rewards/accuracies']:.3f}  margin {metrics['rewards/margins']:.4f}"


class SftObjective(Objective):
    id_column = "example_id"

    def batch(self, indices: list[int], step: int) -> SftBatch:
        seeds = [(self.seed, step, i) for i in indices]  # the same draws on a resumed run
        batch = collate_sft([self.rows[i] for i in indices], self.processor, self.train_cfg.max_length,
                            self.cfg.sft, seeds)
        return batch.to(self.device, self.float_dtype)

    def loss(self, ds_engine, batch: SftBatch):
        logps, response, logits = token_logps(ds_engine, batch)
        predicted = logits[:, :-1].argmax(dim=-1) == batch.model_inputs["input_ids"][:, 1:]
        mask = response.bool()
        accuracy = (predicted & mask).sum() / mask.sum().clamp(min=1)
        return response_nll(logps, response), {"mean_token_accuracy": accuracy.detach().float()}

    @staticmethod
    def progress(metrics: dict) -> str:
        return f"token accuracy {metrics['mean_token_accuracy']:.3f}"


class RewardModelObjective(Objective):
    id_column = "row_id"

    def trained_model(self, model, init_dir: str):
        return with_reward_head(model, init_dir, self.seed)

    def _collate(self, rows: list[dict]) -> RmBatch:
        return collate_rm(rows, self.processor, self.train_cfg.max_length).to(self.device, self.float_dtype)

    def batch(self, indices: list[int], step: int) -> RmBatch:
        return self._collate([self.rows[i] for i in indices])

    def loss(self, ds_engine, batch: RmBatch):
        """The micro-batch's mean BCE over its labelled tokens, and their token accuracy."""
        logits, labelled = ds_engine(**batch.model_inputs), batch.labels >= 0
        labels = batch.labels.clamp(min=0)
        accuracy = token_accuracy(logits.detach(), labels, labelled)
        return token_bce(logits, labels, labelled), {"token_accuracy": accuracy}

    def evaluate(self, ds_engine, rows: list[dict], rank: int, world: int) -> dict:
        """eval/loss, eval/token_accuracy and eval/auc over every labelled token of `rows`
        (eval/auc absent when they are all good or all bad), eval/tokens and eval/rows."""
        mine: dict[str, tuple[list[float], list[int]]] = {}
        ds_engine.eval()
        with torch.no_grad():
            for chunk in rank_chunks(len(rows), self.train_cfg.micro_batch_size, rank, world):
                batch = self._collate([rows[i] for i in chunk])
                logits = ds_engine(**batch.model_inputs).float().cpu()
                for row_id, row_logits, row_labels in zip(batch.row_ids, logits, batch.labels.cpu()):
                    labelled = row_labels >= 0
                    mine[row_id] = (row_logits[labelled].tolist(), row_labels[labelled].tolist())
        ds_engine.train()
        gathered: list[dict] = [{} for _ in range(world)]
        dist.all_gather_object(gathered, mine)
        merged = {row_id: scored for part in gathered for row_id, scored in part.items()}
        logits = torch.tensor([value for values, _ in merged.values() for value in values])
        labels = torch.tensor([label for _, labels in merged.values() for label in labels], dtype=torch.float32)
        everywhere = torch.ones_like(labels)
        metrics = {"eval/loss": token_bce(logits, labels, everywhere).item(),
                   "eval/token_accuracy": token_accuracy(logits, labels, everywhere).item(),
                   "eval/tokens": len(labels), "eval/rows": len(merged)}
        auc = token_auc(logits, labels)
        return metrics if auc is None else {**metrics, "eval/auc": auc}

    @staticmethod
    def progress(metrics: dict) -> str:
        return f"token accuracy {metrics['token_accuracy']:.3f}"


class PolicyAndCritic(torch.nn.Module):
    """PPO's trained module, as TRL's PolicyAndValueWrapper: the policy and the critic side by
    side, so that one DeepSpeed engine (one optimizer, one checkpoint, one ZeRO partitioning)
    trains both. The critic has a backbone of its own (a reward model's, as OpenRLHF starts
    it), not a head on the policy: the value of a state is learned apart from what to say."""

    def __init__(self, policy, critic: TokenRewardModel) -> None:
        super().__init__()
        self.policy, self.critic = policy, critic

    def forward(self, **inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the policy's logits [B, T, V], the critic's values [B, T])."""
        return self.policy(**inputs, use_cache=False).logits, self.critic(**inputs)


def response_token_logps(logits: torch.Tensor, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """log p(token at positions[b, r] | what precedes it): [B, R] in float32, the arithmetic of
    train.losses.shifted_token_logps on the response positions only (the logits of the
    prompt's image tokens are never normalised)."""
    rows = torch.arange(positions.shape[0], device=positions.device).unsqueeze(1)
    log_probs = torch.log_softmax(logits[rows, positions - 1].float(), dim=-1)
    return log_probs.gather(-1, input_ids[rows, positions].unsqueeze(-1)).squeeze(-1)


def state_values(values: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """[B, R] values of the state each response token is chosen in: the critic's output at the
    position before the token (it has read everything the policy had), in float32."""
    rows = torch.arange(positions.shape[0], device=positions.device).unsqueeze(1)
    return values[rows, positions - 1].float()


def critic_init(cfg: Config) -> str:
    """The model PPO's critic starts from: ppo.critic, else models.reward_model."""
    critic = cfg.ppo.critic or cfg.models.reward_model.path
    if not critic:
        raise ValueError("PPO needs a critic to start from: set ppo.critic or models.reward_model.path")
    return critic


# A rollout's per-token statistics, fixed for the round: the rows of the [6, n] tensor PPO keeps.
_OLD_LOGPS, _REF_LOGPS, _OLD_VALUES, _REWARDS, _ADVANTAGES, _RETURNS = range(6)


class PpoObjective(Objective):
    """PPO on one round's rollouts. prepare() scores every rollout once with the round's
    initial policy and critic and the frozen reference, and computes the shaped rewards,
    advantages (GAE, whitened over the round) and returns; every step then optimises the
    clipped surrogate plus ppo.value_coef times the clipped value loss against them, for
    ppo.epochs passes. Metric names are TRL's."""

    id_column = "rollout_id"

    def __init__(self, cfg: Config, processor: Any, rows: list[dict], device, float_dtype, seed: int) -> None:
        super().__init__(cfg, processor, rows, device, float_dtype, seed)
        self.ppo = cfg.ppo
        # Resolved on the worker's own node, as the policy is.
        self.critic_dir = resolve_model_path(critic_init(cfg), cfg.models.cache_dir)
        self.reference_dir = resolve_model_path(cfg.ppo.reference or cfg.models.policy.path, cfg.models.cache_dir)
        self.stats: dict[str, torch.Tensor] | None = None  # rollout_id -> [6, n] (the _OLD_LOGPS... rows)

    @property
    def epochs(self) -> int:
        return self.ppo.epochs

    def trained_model(self, model, init_dir: str) -> PolicyAndCritic:
        backbone = chat.load_model(self.critic_dir, self.processor, torch.float32)
        if self.train_cfg.gradient_checkpointing:
            backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        backbone.config.use_cache = False
        return PolicyAndCritic(model, with_reward_head(backbone, self.critic_dir, self.seed))

    def _collate(self, indices: list[int]) -> PpoBatch:
        return collate_rollouts([self.rows[i] for i in indices], self.processor,
                                self.train_cfg.max_length).to(self.device, self.float_dtype)

    def batch(self, indices: list[int], step: int) -> PpoBatch:
        return self._collate(indices)

    def prepare(self, ds_engine, plan, rank: int, world: int) -> None:
        """Every rollout's per-token log-probs under the policy and the reference, the critic's
        values and the rewards, scored by rank_chunks (collective, no grad) and exchanged
        between ranks; then the round's advantages and returns, from all of them at once
        (whitening normalises over the round's tokens). The reference is a plain model in
        eval mode, loaded for this and freed after: it is never trained."""
        reference = chat.load_model(self.reference_dir, self.processor, self.float_dtype).to(self.device).eval()
        mine: dict[str, list[list[float]]] = {}
        ds_engine.eval()
        with torch.no_grad():
            for chunk in rank_chunks(plan.n_pairs, self.train_cfg.micro_batch_size, rank, world):
                batch = self._collate(chunk)
                input_ids, positions = batch.model_inputs["input_ids"], batch.positions
                logits, values = ds_engine(**batch.model_inputs)
                ref_logits = reference(**batch.model_inputs, use_cache=False).logits
                scored = torch.stack([response_token_logps(logits, input_ids, positions),
                                      response_token_logps(ref_logits, input_ids, positions),
                                      state_values(values, positions), batch.token_rewards.float()], dim=1).cpu()
                for rollout_id, row, n in zip(batch.rollout_ids, scored, batch.mask.sum(dim=1).tolist()):
                    mine[rollout_id] = row[:, :n].tolist()
        ds_engine.train()
        del reference
        gathered: list[dict] = [{} for _ in range(world)]
        dist.all_gather_object(gathered, mine)
        merged = {rollout_id: torch.tensor(row) for part in gathered for rollout_id, row in part.items()}
        self.stats = dict(zip(merged, advantages_and_returns(list(merged.values()), self.ppo)))

    def loss(self, ds_engine, batch: PpoBatch):
        """The micro-batch's PPO loss and TRL's metrics; objective/... describe its rollouts as
        they were sampled (per-answer sums over tokens, averaged over answers)."""
        logits, values = ds_engine(**batch.model_inputs)
        logps = response_token_logps(logits, batch.model_inputs["input_ids"], batch.positions)
        values = state_values(values, batch.positions)
        stats = pad_sequence([self.stats[rollout_id].T for rollout_id in batch.rollout_ids],
                             batch_first=True).permute(2, 0, 1).to(self.device)  # [6, B, R]
        policy_loss, policy_metrics = ppo_policy_loss(logps, stats[_OLD_LOGPS], stats[_ADVANTAGES], batch.mask,
                                                      self.ppo.clip_range)
        critic_loss, value_metrics = value_loss(values, stats[_OLD_VALUES], stats[_RETURNS], batch.mask,
                                                self.ppo.value_clip_range)
        mask = batch.mask.float()
        metrics = {
            "objective/kl": ((stats[_OLD_LOGPS] - stats[_REF_LOGPS]) * mask).sum(dim=1).mean(),
            "objective/scores": (stats[_REWARDS] * mask).sum(dim=1).mean(),
            "objective/entropy": (-stats[_OLD_LOGPS] * mask).sum(dim=1).mean(),  # TRL's sampled estimate
            **policy_metrics, **value_metrics,
            "loss/policy_avg": policy_loss.detach(), "loss/value_avg": critic_loss.detach(),
        }
        return policy_loss + self.ppo.value_coef * critic_loss, metrics

    def export(self, ds_engine, init_dir: str, out_dir: str) -> dict:
        """The policy as a Hugging Face directory at out_dir/model (as every objective's
        model), the critic as a reward-model directory at out_dir/critic."""
        model_dir, critic_dir = join(out_dir, MODEL_DIR), join(out_dir, CRITIC_DIR)
        export_parts(ds_engine, {"policy": (init_dir, model_dir), "critic": (self.critic_dir, critic_dir)})
        return {"model_dir": model_dir, "critic_dir": critic_dir}

    @staticmethod
    def progress(metrics: dict) -> str:
        return (f"kl {metrics['objective/kl']:.4f}  score {metrics['objective/scores']:.3f}  "
                f"clipfrac {metrics['policy/clipfrac']:.3f}  vpred {metrics['val/vpred']:.3f}")


def advantages_and_returns(scored: list[torch.Tensor], ppo: PpoConfig) -> list[torch.Tensor]:
    """Each rollout's [4, n] (log-probs under the policy and the reference, values, the reward
    model's logits) -> its [6, n] statistics, the logits turned into rewards (ppo.token_reward),
    with the advantages and returns appended: the rewards shaped by
    ppo.reward_granularity and ppo.beta_kl, GAE with ppo.gamma and ppo.lam, the advantages
    whitened over all the rollouts' tokens when ppo.whiten_advantages."""
    lengths = [row.shape[1] for row in scored]
    padded = pad_sequence([row.T for row in scored], batch_first=True).permute(2, 0, 1)  # [4, N, R]
    mask = (torch.arange(padded.shape[2]) < torch.tensor(lengths).unsqueeze(1)).float()
    padded[3] = token_rewards_from_logits(padded[3], ppo.token_reward) * mask
    logps, ref_logps, values, token_rewards = padded
    rewards = shaped_rewards(token_rewards, logps, ref_logps, mask, ppo.beta_kl, ppo.reward_granularity)
    advantages, returns = gae(rewards, values, mask, ppo.gamma, ppo.lam)
    if ppo.whiten_advantages:
        advantages = whiten(advantages, mask)
    stats = torch.cat([padded, advantages.unsqueeze(0), returns.unsqueeze(0)])
    return [stats[:, i, :n] for i, n in enumerate(lengths)]


OBJECTIVES = {"preference": PreferenceObjective, "sft": SftObjective, "reward_model": RewardModelObjective,
              "ppo": PpoObjective}
