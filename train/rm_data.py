"""Reward-model rows (engine.schemas.RM_SCHEMA) -> the held-out split and the training batches
of jobs/train_rm.py.

- `heldout_split`: a seeded share of the row groups (a correction's two answers, an
  instruction's answers: one image and question) is held out whole, so no held-out token's
  image or question was trained on.
- `collate_rm`: rows -> one right-padded batch tokenised by engine.chat as everything the
  trainer reads, and the labels on the positions of their own tokens (the head's output at a
  token is that token's reward, not the next one's).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import torch
from PIL import Image

from engine.seeds import SEED_LIMIT, derive_seed
from train.data import PairDataError, cut_to, encode_within, inputs_on
from train.rm_labels import UNLABELLED


def heldout_split(rows: pa.Table, share: float, seed: int) -> tuple[pa.Table, pa.Table]:
    """(training rows, held-out rows): each group is held out with probability `share`, drawn
    from (seed, group_id), so the split does not depend on the rows' order or on each other."""
    held = [derive_seed(seed, 0, group, 0, "rm-heldout") < share * SEED_LIMIT
            for group in rows["group_id"].to_pylist()]
    mask = pa.array(held, type=pa.bool_())
    return rows.filter(pc.invert(mask)), rows.filter(mask)


@dataclass
class RmBatch:
    model_inputs: dict[str, torch.Tensor]
    labels: torch.Tensor  # [B, T]: 1 good, 0 bad, -1 unlabelled (prompt, padding, cut tokens included)
    row_ids: list[str]
    n_truncated: int

    def to(self, device: torch.device, float_dtype: torch.dtype) -> RmBatch:
        return RmBatch(inputs_on(self.model_inputs, device, float_dtype), self.labels.to(device), self.row_ids,
                       self.n_truncated)


def collate_rm(rows: Sequence[dict], processor: Any, max_length: int) -> RmBatch:
    """Rows -> one batch. The answer's tokens must be the row's token_ids: rows labelled with
    another model's tokenizer are an error, not silently shifted labels. Truncation as
    train.data.collate_pairs (the prompt whole, the answer's end cut with its labels)."""
    if not rows:
        raise ValueError("cannot collate an empty list of reward-model rows")
    images = [Image.open(io.BytesIO(row["image"])).convert("RGB") for row in rows]
    encoded, response_mask, n_truncated = encode_within(
        processor, images, [row["question"] for row in rows], [row["answer"] for row in rows], max_length,
        [f"reward-model row {row['row_id']}" for row in rows])
    labels = torch.full_like(encoded["input_ids"], UNLABELLED)
    for i, row in enumerate(rows):
        positions = response_mask[i].nonzero().squeeze(-1)
        if encoded["input_ids"][i, positions].tolist() != row["token_ids"]:
            raise PairDataError(f"reward-model row {row['row_id']}: this model's tokenizer does not give the row's "
                                "token_ids for its answer; its labels were made for another model")
        labels[i, positions] = torch.tensor(row["labels"], dtype=labels.dtype)
    encoded, labels = cut_to(max_length, encoded, labels)
    return RmBatch(encoded, labels, [row["row_id"] for row in rows], n_truncated)
