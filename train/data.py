"""Pair shards -> training batches.

- `read_pair_dataset`: an iteration's Parquet pair shards (local dir or fsspec URL) as a Ray
  Dataset, checked before any worker starts.
- `BatchPlan`: which pairs make each optimizer step's global batch, and which of them each
  worker's micro-batches take. The order is a seeded permutation per epoch (unshuffled: the
  id order) over the pairs sorted by pair_id, so it depends neither on shard layout nor on the
  number of workers: a resumed run skips exactly the batches already consumed, and N workers
  see the same global batches as 1 worker with N times the gradient accumulation.
- `collate_pairs`: pair rows -> one padded batch of 2B sequences (chosen rows, then rejected
  rows), tokenised by engine.chat exactly as the engine computed the reference log-probs, and
  for DDPO the changed-token masks of train/ddpo_masks.py.
- `read_correction_table`, `pairs_from_corrections`: RLHF-V style correction rows
  (engine.schemas.CORRECTION_SCHEMA) -> pair rows (+ rejects).
"""

from __future__ import annotations

import io
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Literal, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from engine import chat
from engine.config import ModelConfig, ValidateConfig
from engine.errors import EngineError
from engine.pairing import pair_id
from engine.schemas import PAIR_SCHEMA, REJECT_SCHEMA, turn_text
from engine.storage import filesystem, list_parquet
from engine.writer import pair_record
from train.ddpo_masks import DDPO_MASKS

# What training reads of a pair row; the other PAIR_SCHEMA columns are provenance.
TRAIN_COLUMNS = ("pair_id", "images", "prompt", "chosen", "rejected", "ref_chosen_logps", "ref_rejected_logps")


class PairDataError(EngineError):
    """The pair shards cannot be trained on; the message says which file, column or pair."""


def read_pair_dataset(pairs_dir: str):
    """The complete Parquet shards of `pairs_dir` (temp files of an unfinished write are not
    listed) as a materialised Ray Dataset of TRAIN_COLUMNS, after checking that it is non-empty
    and that every pair_id is unique (a shard written twice would train its pairs twice)."""
    import ray.data
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    files = list_parquet(pairs_dir)
    if not files:
        raise PairDataError(f"no Parquet pair shards in {pairs_dir!r}")
    fs, _ = filesystem(pairs_dir)
    paths = [filesystem(url)[1] for url in files]
    for url, path in zip(files, paths):
        with fs.open(path, "rb") as f:
            missing = sorted(set(TRAIN_COLUMNS) - set(pq.read_schema(f).names))
        if missing:
            raise PairDataError(f"pair shard {url} lacks column(s) {missing}")
    ds = ray.data.read_parquet(paths, filesystem=PyFileSystem(FSSpecHandler(fs)), columns=list(TRAIN_COLUMNS))
    ds = ds.materialize()
    ids = [row["pair_id"] for row in ds.select_columns(["pair_id"]).take_all()]
    if not ids:
        raise PairDataError(f"the pair shards in {pairs_dir!r} hold no rows")
    duplicated = repeated_ids(ids)
    if duplicated:
        raise PairDataError(f"{len(duplicated)} pair_id(s) occur more than once in {pairs_dir!r} "
                            f"(e.g. {duplicated[0]!r}): was a shard written twice?")
    return ds


def rows_of(dataset_shard, id_column: str = "pair_id") -> list[dict]:
    """Every row of a worker's dataset iterator as Python dicts, sorted by their id: the batch
    plan's order then depends neither on the shard layout nor on the read order."""
    tables = list(dataset_shard.iter_batches(batch_format="pyarrow", batch_size=None))
    rows = pa.concat_tables(tables).to_pylist() if tables else []
    return sorted(rows, key=lambda row: row[id_column])


@dataclass(frozen=True)
class BatchPlan:
    """The data position of every optimizer step.

    One step's global batch is micro_batch_size * accumulation_steps * world_size pairs. An
    epoch is ceil(n_pairs / global batch) steps; its last batch is filled up by wrapping
    around to the start of the epoch's order (as torch's DistributedSampler pads), so every
    worker always has full micro-batches and no pair is left out of an epoch.
    """

    n_pairs: int
    micro_batch_size: int
    accumulation_steps: int
    world_size: int
    epochs: int
    seed: int
    shuffle: bool = True  # False: every epoch takes the rows in their (id-sorted) order

    def __post_init__(self) -> None:
        for name in ("n_pairs", "micro_batch_size", "accumulation_steps", "world_size", "epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def global_batch(self) -> int:
        return self.micro_batch_size * self.accumulation_steps * self.world_size

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.n_pairs / self.global_batch)

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def epoch_order(self, epoch: int) -> np.ndarray:
        order = (np.random.default_rng([self.seed, epoch]).permutation(self.n_pairs) if self.shuffle
                 else np.arange(self.n_pairs))
        return np.resize(order, self.steps_per_epoch * self.global_batch)  # cyclic fill

    def micro_batches(self, step: int, rank: int) -> list[list[int]]:
        """Row indices of `rank`'s micro-batches for optimizer step `step` (0-based), in order.
        Viewing the global batch as [accumulation, world, micro], worker r takes column r."""
        if not 0 <= step < self.total_steps:
            raise ValueError(f"step {step} outside the plan's {self.total_steps} steps")
        epoch, index = divmod(step, self.steps_per_epoch)
        batch = self.epoch_order(epoch)[index * self.global_batch : (index + 1) * self.global_batch]
        grid = batch.reshape(self.accumulation_steps, self.world_size, self.micro_batch_size)
        return [grid[a, rank].tolist() for a in range(self.accumulation_steps)]


def decode_pair_image(row: dict) -> Image.Image | None:
    """The pair's image (images[0], a datasets Image struct) as RGB, None for a text-only pair."""
    images = row["images"] or []
    if len(images) > 1:
        raise PairDataError(f"pair {row['pair_id']}: {len(images)} images, but a prompt holds one image")
    if not images:
        return None
    try:
        return Image.open(io.BytesIO(images[0]["bytes"])).convert("RGB")
    except Exception as exc:
        raise PairDataError(f"pair {row['pair_id']}: undecodable image: {type(exc).__name__}: {exc}") from None


@dataclass
class PairBatch:
    """2B teacher-forcing sequences: rows 0..B-1 are the chosen answers, B..2B-1 the rejected."""

    model_inputs: dict[str, torch.Tensor]  # input_ids, attention_mask, pixel_values, ...
    response_mask: torch.Tensor  # [2B, T], 1 on the response tokens (incl. eos) kept after truncation
    changed_mask: torch.Tensor | None  # [2B, T], DDPO's changed tokens; None unless asked for
    ref_chosen_logps: torch.Tensor  # [B]
    ref_rejected_logps: torch.Tensor  # [B]
    pair_ids: list[str]
    n_truncated: int  # sequences whose response end was cut to fit max_length

    def to(self, device: torch.device, float_dtype: torch.dtype) -> PairBatch:
        return PairBatch(inputs_on(self.model_inputs, device, float_dtype), self.response_mask.to(device),
                         None if self.changed_mask is None else self.changed_mask.to(device),
                         self.ref_chosen_logps.to(device), self.ref_rejected_logps.to(device),
                         self.pair_ids, self.n_truncated)


def repeated_ids(ids: Iterable[str]) -> list[str]:
    """The ids that occur more than once, sorted: every training set takes an id for one row
    (the batch plan's order, resumption, the held-out split)."""
    return sorted(row_id for row_id, count in Counter(ids).items() if count > 1)


def inputs_on(model_inputs: dict[str, torch.Tensor], device: torch.device,
              float_dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Model inputs on `device`, the floating ones (pixel values) in the model's dtype."""
    return {key: value.to(device, float_dtype) if value.is_floating_point() else value.to(device)
            for key, value in model_inputs.items()}


def collate_pairs(rows: Sequence[dict], processor: Any, max_length: int,
                  ddpo_mask: Literal["released", "all_edits"] | None = None) -> PairBatch:
    """Pair rows -> one right-padded batch, through engine.chat.encode_for_logprobs, with
    DDPO's changed-token mask of kind `ddpo_mask` (train/ddpo_masks.py) unless it is None.

    Truncation keeps the prompt whole (cutting into it would cut the image's placeholder
    tokens, which must match the image features) and cuts the END of any response that does
    not fit in max_length. A cut response is scored on its kept tokens only, while the
    shards' reference log-probs cover the whole response, so cuts are counted (n_truncated)
    and reported: max_length should cover prompt + answer. A prompt that leaves no room for
    a single response token is an error.
    """
    if not rows:
        raise ValueError("cannot collate an empty list of pairs")
    images = [decode_pair_image(row) for row in rows]
    encoded, response_mask, n_truncated = encode_within(
        processor, images * 2, [turn_text(row["prompt"]) for row in rows] * 2,
        [turn_text(row["chosen"]) for row in rows] + [turn_text(row["rejected"]) for row in rows],
        max_length, [f"pair {row['pair_id']}" for row in rows] * 2)
    changed = None if ddpo_mask is None else _changed_mask(encoded["input_ids"], response_mask, ddpo_mask)
    encoded, response_mask, changed = cut_to(max_length, encoded, response_mask, changed)
    return PairBatch(
        model_inputs=encoded,
        response_mask=response_mask,
        changed_mask=changed,
        ref_chosen_logps=torch.tensor([row["ref_chosen_logps"] for row in rows], dtype=torch.float32),
        ref_rejected_logps=torch.tensor([row["ref_rejected_logps"] for row in rows], dtype=torch.float32),
        pair_ids=[row["pair_id"] for row in rows],
        n_truncated=n_truncated,
    )


def encode_within(processor: Any, images: Sequence[Image.Image | None], prompts: Sequence[str],
                  responses: Sequence[str], max_length: int, names: Sequence[str]):
    """engine.chat.encode_for_logprobs, uncut: (inputs, response_mask, how many sequences run
    past max_length). A prompt leaving no room for one response token within max_length is a
    PairDataError naming its row (`names`)."""
    encoded = dict(chat.encode_for_logprobs(processor, images, prompts, responses))
    response_mask = encoded.pop("response_mask")
    prompt_lengths = response_mask.argmax(dim=1)  # first response position
    too_long = prompt_lengths >= max_length
    if bool(too_long.any()):
        i = int(too_long.nonzero()[0, 0])
        raise PairDataError(f"{names[i]}: the prompt alone is {int(prompt_lengths[i])} tokens, "
                            f"leaving no room for the answer within train.max_length={max_length}")
    return encoded, response_mask, int((encoded["attention_mask"].sum(dim=1) > max_length).sum())


def cut_to(max_length: int, encoded: dict, *masks: torch.Tensor | None):
    """The token inputs and masks cut to max_length positions (image inputs are not tokens)."""
    if encoded["input_ids"].shape[1] <= max_length:
        return encoded, *masks
    encoded = {**encoded, **{key: encoded[key][:, :max_length] for key in ("input_ids", "attention_mask")}}
    return encoded, *(None if mask is None else mask[:, :max_length] for mask in masks)


def _changed_mask(input_ids: torch.Tensor, response_mask: torch.Tensor, kind: str) -> torch.Tensor:
    """[2B, T] changed marks for the chosen (first half) and rejected (second half) rows."""
    half = input_ids.shape[0] // 2
    mask = torch.zeros_like(response_mask)
    for i in range(half):
        chosen_pos = response_mask[i].nonzero().squeeze(-1)
        rejected_pos = response_mask[half + i].nonzero().squeeze(-1)
        chosen_changed, rejected_changed = DDPO_MASKS[kind](
            input_ids[i, chosen_pos].tolist(), input_ids[half + i, rejected_pos].tolist()
        )
        mask[i, chosen_pos] = torch.tensor(chosen_changed, dtype=mask.dtype)
        mask[half + i, rejected_pos] = torch.tensor(rejected_changed, dtype=mask.dtype)
    return mask


class RowDiverted(ValueError):
    """A training input row that is diverted, with its reason, instead of trained on."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def checked_row(row: dict, texts: Sequence[str], validate: ValidateConfig) -> tuple[bytes, Image.Image]:
    """(image bytes, decoded image) of an input row (corrections, SFT examples) that the reader
    could read, whose `texts` columns are not blank and whose image (bytes or image_uri) passes
    the validate limits; else RowDiverted."""
    from engine.images import ImageRejected, decode_image
    from engine.instruction_io import load_image_bytes

    if row["read_error"]:
        raise RowDiverted("unreadable_row", row["read_error"])
    if any(not (row[name] or "").strip() for name in texts):
        raise RowDiverted("empty_text", f"the {' or '.join(texts)} is empty")
    try:
        data = row["image"] or (load_image_bytes(row["image_uri"]) if row["image_uri"] else None)
        return data, decode_image(data, validate.max_image_bytes, validate.max_image_pixels)
    except ImageRejected as exc:
        raise RowDiverted(exc.reason, exc.detail) from None
    except OSError as exc:
        raise RowDiverted("missing_image", str(exc)) from None


def checked_correction(row: dict, validate: ValidateConfig) -> tuple[bytes, Image.Image]:
    """checked_row for a correction row, which must also change its answer."""
    data, image = checked_row(row, ("question", "chosen", "rejected"), validate)
    if row["chosen"].strip() == row["rejected"].strip():
        raise RowDiverted("equal_answers", "the correction equals the original answer: nothing to learn")
    return data, image


def read_correction_table(url: str, columns: dict[str, str] | None = None, format: str = "auto") -> pa.Table:
    """A correction file (Parquet, or JSONL with base64 images or image_uri paths) via fsspec, as
    CORRECTION_SCHEMA rows; `columns` maps a schema field to the file's column of another name
    ({"question": "prompt"}). A file no row of which could be read is a PairDataError."""
    from engine.instruction_io import CORRECTIONS, read_rows

    try:
        return read_rows(url, CORRECTIONS, format, columns)
    except ValueError as exc:  # a required column missing, unknown format, unconvertible column
        raise PairDataError(f"correction file {url}: {exc}") from None


def pairs_from_corrections(
    table: pa.Table,
    init_model: ModelConfig,
    cache_dir: str,
    iteration: int = 0,
    validate: ValidateConfig = ValidateConfig(),
) -> tuple[pa.Table, pa.Table]:
    """RLHF-V style corrections (CORRECTION_SCHEMA, read_correction_table) -> (PAIR_SCHEMA pairs,
    REJECT_SCHEMA rejects).

    The rows carry no reference log-probs, so the model to train computes them through the
    engine's backend for `init_model` (the same path the pair stage takes). Rows the reader
    could not read, with a missing or bad image, an empty question or answer, or identical
    answers are diverted with a reason. A row without an id is numbered. The pairs were not
    scored or sampled: scores and claim counts are 0 and seeds -1.
    """
    from engine.backends import make_backend
    from engine.backends.base import Prompt

    kept, images, rejects = [], [], []
    for index, row in enumerate(table.to_pylist()):
        instruction_id = row["id"] or f"correction-{index}"
        question, chosen, rejected = row["question"] or "", row["chosen"] or "", row["rejected"] or ""
        try:
            data, image = checked_correction(row, validate)
        except RowDiverted as exc:
            rejects.append({"instruction_id": instruction_id, "iteration": iteration, "stage": "corrections",
                            "reason": exc.reason, "detail": exc.detail, "answer_index": -1, "prompt": question})
            continue
        kept.append(pair_record(question, data, chosen, rejected, pair_id=pair_id(iteration, instruction_id, 0, 1),
                                instruction_id=instruction_id, iteration=iteration, chosen_score=0,
                                rejected_score=0, chosen_n_claims=0, rejected_n_claims=0,
                                policy_id=init_model.path, chosen_seed=-1, rejected_seed=-1))
        images.append(image)
    if kept:
        backend = make_backend(init_model, cache_dir)
        try:
            prompts = [Prompt(image, turn_text(row["prompt"])) for image, row in zip(images, kept)]
            answers = [turn_text(row["chosen"]) for row in kept] + [turn_text(row["rejected"]) for row in kept]
            logps = backend.logprobs(prompts * 2, answers)
        finally:
            backend.close()
        for i, row in enumerate(kept):
            row["ref_chosen_logps"], row["ref_rejected_logps"] = logps[i][0], logps[len(kept) + i][0]
    return pa.Table.from_pylist(kept, schema=PAIR_SCHEMA), pa.Table.from_pylist(rejects, schema=REJECT_SCHEMA)
