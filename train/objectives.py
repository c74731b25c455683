"""What the trainer optimises: one class per objective, turning the batch plan's row indices
into a batch and a batch into a loss and metrics. The loop around them (train/trainer.py:
DeepSpeed, the batch plan, checkpoints, export) is the same for every objective.

- PreferenceObjective: DPO or DDPO on pair rows (train.loss), plus train.sft_weight's SFT term.
- SftObjective: supervised fine-tuning on (image, question, answer) rows: the mean NLL of the
  answer tokens (jobs/sft.py), with the [sft] augmentations.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from engine.config import SftConfig, TrainConfig
from train.data import PairBatch, collate_pairs
from train.losses import chosen_nll, ddpo_weighted_logps, dpo_loss, response_nll, shifted_token_logps, summed_logps
from train.sft_data import SftBatch, collate_sft


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


class PreferenceObjective:
    id_column = "pair_id"

    def __init__(self, train_cfg: TrainConfig, sft_cfg: SftConfig, processor: Any, rows: list[dict],
                 device, float_dtype, seed: int) -> None:
        self.train_cfg, self.processor, self.rows = train_cfg, processor, rows
        self.device, self.float_dtype = device, float_dtype
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
        micro = self.train_cfg.micro_batch_size
        chunks = math.ceil(plan.n_pairs / (world * micro))
        grid = np.resize(np.arange(plan.n_pairs), chunks * world * micro).reshape(chunks, world, micro)
        mine: dict[str, tuple[float, float]] = {}
        ds_engine.eval()
        with torch.no_grad():
            for chunk in grid[:, rank]:
                batch = self.batch(chunk.tolist(), step=0)
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


class SftObjective:
    id_column = "example_id"

    def __init__(self, train_cfg: TrainConfig, sft_cfg: SftConfig, processor: Any, rows: list[dict],
                 device, float_dtype, seed: int) -> None:
        self.train_cfg, self.sft_cfg, self.processor, self.rows = train_cfg, sft_cfg, processor, rows
        self.device, self.float_dtype, self.seed = device, float_dtype, seed

    def batch(self, indices: list[int], step: int) -> SftBatch:
        seeds = [(self.seed, step, i) for i in indices]  # the same draws on a resumed run
        batch = collate_sft([self.rows[i] for i in indices], self.processor, self.train_cfg.max_length,
                            self.sft_cfg, seeds)
        return batch.to(self.device, self.float_dtype)

    def loss(self, ds_engine, batch: SftBatch):
        logps, response, logits = token_logps(ds_engine, batch)
        predicted = logits[:, :-1].argmax(dim=-1) == batch.model_inputs["input_ids"][:, 1:]
        mask = response.bool()
        accuracy = (predicted & mask).sum() / mask.sum().clamp(min=1)
        return response_nll(logps, response), {"mean_token_accuracy": accuracy.detach().float()}

    def prepare(self, ds_engine, plan, rank: int, world: int) -> None:
        """Nothing to precompute: SFT has no reference model."""

    @staticmethod
    def progress(metrics: dict) -> str:
        return f"token accuracy {metrics['mean_token_accuracy']:.3f}"


OBJECTIVES = {"preference": PreferenceObjective, "sft": SftObjective}
