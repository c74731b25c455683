"""PPO rollouts (engine.schemas.ROLLOUT_SCHEMA) -> the training batches of jobs/ppo.py.

- `check_rollouts`: a round's rollouts are refused before any worker starts when an id repeats
  (the batch plan's order and the per-rollout statistics are keyed by it), a row has no
  rewards, or the rows span several rounds.
- `collate_rollouts`: rows -> one right-padded batch tokenised by engine.chat as everything the
  trainer reads, with each answer's token rewards beside its response tokens. PPO's tensors
  are per response token, so the batch carries each kept response token's sequence position
  left-aligned ([B, R], the layout train/ppo_losses expects: each row's response a prefix).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import torch
from PIL import Image
from torch.nn.utils.rnn import pad_sequence

from train.data import PairDataError, cut_to, encode_within, inputs_on, repeated_ids


def check_rollouts(rollouts: pa.Table) -> int:
    """The round of `rollouts` after checking that they can be trained on; PairDataError
    naming the first offending rollout otherwise."""
    if not rollouts.num_rows:
        raise PairDataError("no rollouts to train on")
    repeated = repeated_ids(rollouts["rollout_id"].to_pylist())
    if repeated:
        raise PairDataError(f"{len(repeated)} rollout_id(s) occur more than once (e.g. {repeated[0]!r})")
    unrewarded = pc.filter(rollouts["rollout_id"], pc.is_null(rollouts["token_rewards"]))
    if len(unrewarded):
        raise PairDataError(f"rollout {unrewarded[0].as_py()} has no token_rewards: the reward stage did not score it")
    rounds = pc.unique(rollouts["round"]).to_pylist()
    if len(rounds) != 1:
        raise PairDataError(f"the rollouts come from several rounds {sorted(rounds)}; a PPO update takes one round's")
    return rounds[0]


@dataclass
class PpoBatch:
    model_inputs: dict[str, torch.Tensor]
    positions: torch.Tensor  # [B, R] sequence position of each kept response token; 1 past a row's end (masked)
    mask: torch.Tensor  # [B, R] 1 on the kept response tokens (the end-of-turn token included)
    token_rewards: torch.Tensor  # [B, R] float32: the reward model's value at each response token
    rollout_ids: list[str]
    n_truncated: int

    def to(self, device: torch.device, float_dtype: torch.dtype) -> PpoBatch:
        return PpoBatch(inputs_on(self.model_inputs, device, float_dtype), self.positions.to(device),
                        self.mask.to(device), self.token_rewards.to(device), self.rollout_ids, self.n_truncated)


def collate_rollouts(rows: Sequence[dict], processor: Any, max_length: int) -> PpoBatch:
    """Rollout rows -> one batch. A row's token_rewards must be one per response token as this
    model's chat template renders the conversation: another count means the rewards were made
    for other tokens (another tokenizer or template) and would land on the wrong tokens, so it
    is an error naming the rollout. Truncation as train.data.collate_pairs: the prompt whole,
    the answer's end cut with its rewards."""
    if not rows:
        raise ValueError("cannot collate an empty list of rollouts")
    images = [Image.open(io.BytesIO(row["image"])).convert("RGB") if row["image"] else None for row in rows]
    encoded, response_mask, n_truncated = encode_within(
        processor, images, [row["prompt"] for row in rows], [row["answer"] for row in rows], max_length,
        [f"rollout {row['rollout_id']}" for row in rows])
    for row, n_tokens in zip(rows, response_mask.sum(dim=1).tolist()):
        if len(row["token_rewards"]) != n_tokens:
            raise PairDataError(f"rollout {row['rollout_id']}: {len(row['token_rewards'])} token rewards for "
                                f"{n_tokens} response tokens; the rewards were made for another tokenisation")
    encoded, response_mask = cut_to(max_length, encoded, response_mask)
    kept = [row_mask.nonzero().squeeze(-1) for row_mask in response_mask]
    rewards = [torch.tensor(row["token_rewards"][: len(where)], dtype=torch.float32) for row, where in zip(rows, kept)]
    return PpoBatch(
        model_inputs=encoded,
        positions=pad_sequence(kept, batch_first=True, padding_value=1),
        mask=pad_sequence([torch.ones(len(where), dtype=torch.long) for where in kept], batch_first=True),
        token_rewards=pad_sequence(rewards, batch_first=True),
        rollout_ids=[row["rollout_id"] for row in rows],
        n_truncated=n_truncated,
    )
