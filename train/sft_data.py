"""SFT examples (engine.schemas.SFT_SCHEMA: image, question, answer) -> training rows and
batches for jobs/sft.py.

- `read_sft_examples`: a Parquet or JSONL file through the instruction reader, each row checked
  as corrections are (train.data.checked_row); unusable rows are returned as REJECT_SCHEMA rows.
- `collate_sft`: training rows -> one right-padded batch of B sequences, tokenised by
  engine.chat as everything else the trainer reads, with the [sft] augmentations drawn for the
  step; the loss reads the answer tokens only (response_mask).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from engine.config import SftConfig, ValidateConfig
from engine.schemas import REJECT_SCHEMA
from train.augment import augment_example
from train.data import PairDataError, RowDiverted, checked_row, cut_to, encode_within, inputs_on, repeated_ids

# A training row: the id the batch plan sorts by, the image bytes, the two texts.
SFT_ROW_SCHEMA = pa.schema([pa.field("example_id", pa.string()), pa.field("image", pa.binary()),
                            pa.field("question", pa.string()), pa.field("answer", pa.string())])


def read_sft_examples(url: str, validate: ValidateConfig, columns: dict[str, str] | None = None,
                      format: str = "auto") -> tuple[pa.Table, pa.Table]:
    """(training rows, REJECT_SCHEMA rows) of an SFT file; `columns` maps a schema field to the
    file's column of another name ({"answer": "response"}). A row without an id is numbered."""
    from engine.instruction_io import SFT_EXAMPLES, read_rows

    try:
        table = read_rows(url, SFT_EXAMPLES, format, columns)
    except ValueError as exc:  # a required column missing, unknown format, unconvertible column
        raise PairDataError(f"SFT file {url}: {exc}") from None
    kept, rejects = [], []
    for index, row in enumerate(table.to_pylist()):
        example_id = row["id"] or f"example-{index:08d}"
        try:
            data, _ = checked_row(row, ("question", "answer"), validate)
        except RowDiverted as exc:
            rejects.append({"instruction_id": example_id, "iteration": 0, "stage": "sft", "reason": exc.reason,
                            "detail": exc.detail, "answer_index": -1, "prompt": row["question"]})
            continue
        kept.append({"example_id": example_id, "image": data, "question": row["question"], "answer": row["answer"]})
    repeated = repeated_ids(row["example_id"] for row in kept)
    if repeated:
        raise PairDataError(f"SFT file {url}: example ids repeat (e.g. {repeated[0]!r})")
    return pa.Table.from_pylist(kept, schema=SFT_ROW_SCHEMA), pa.Table.from_pylist(rejects, schema=REJECT_SCHEMA)


@dataclass
class SftBatch:
    model_inputs: dict[str, torch.Tensor]
    response_mask: torch.Tensor  # [B, T], 1 on the answer tokens (incl. end of turn) kept after truncation
    example_ids: list[str]
    n_truncated: int

    def to(self, device: torch.device, float_dtype: torch.dtype) -> SftBatch:
        return SftBatch(inputs_on(self.model_inputs, device, float_dtype), self.response_mask.to(device),
                        self.example_ids, self.n_truncated)


def collate_sft(rows: Sequence[dict], processor: Any, max_length: int, augment: SftConfig | None = None,
                seeds: Sequence[Sequence[int]] = ()) -> SftBatch:
    """Training rows -> one batch; with `augment`, row i's augmentations are drawn from
    np.random.default_rng(seeds[i]). Truncation as train.data.collate_pairs: the prompt stays
    whole, the answer's end is cut."""
    if not rows:
        raise ValueError("cannot collate an empty list of examples")
    examples = [(Image.open(io.BytesIO(row["image"])).convert("RGB"), row["question"], row["answer"]) for row in rows]
    if augment is not None and augment.augment:
        examples = [augment_example(*example, augment, np.random.default_rng(list(seed)))
                    for example, seed in zip(examples, seeds, strict=True)]
    images, questions, answers = zip(*examples)
    encoded, response_mask, n_truncated = encode_within(
        processor, images, questions, answers, max_length, [f"example {row['example_id']}" for row in rows])
    encoded, response_mask = cut_to(max_length, encoded, response_mask)
    return SftBatch(encoded, response_mask, [row["example_id"] for row in rows], n_truncated)
