"""The in-flight row: one row per instruction, carried from reading to writing.

Stages add columns to it (answers, claims, probabilities, scores, pairs) instead of exploding
rows, so the pipeline streams without a group-by. Every stage batch is converted with this one
schema, so batches from different actors always concatenate (no inferred `list<null>` types).
A row diverted by any stage keeps flowing with `reject_reason` set; later stages pass it on.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import pyarrow as pa

from engine.schemas import INSTRUCTION_SCHEMA

ANSWER_REJECT = pa.struct(
    [("answer_index", pa.int32()), ("stage", pa.string()), ("reason", pa.string()), ("detail", pa.string())]
)
PAIR_REF = pa.struct(
    [
        ("chosen", pa.int32()),
        ("rejected", pa.int32()),
        ("ref_chosen_logps", pa.float64()),
        ("ref_rejected_logps", pa.float64()),
    ]
)
STAGE_SECONDS = pa.struct([("stage", pa.string()), ("seconds", pa.float64())])

FLIGHT_SCHEMA = pa.schema(
    list(INSTRUCTION_SCHEMA)
    + [
        pa.field("reject_stage", pa.string()),
        pa.field("reject_reason", pa.string()),
        pa.field("reject_detail", pa.string()),
        pa.field("answers", pa.list_(pa.string())),
        pa.field("answer_seeds", pa.list_(pa.int64())),
        pa.field("answer_tokens", pa.list_(pa.int32())),
        # Per answer: null when its claims could not be parsed (see answer_rejects).
        pa.field("facts", pa.list_(pa.list_(pa.string()))),
        pa.field("questions", pa.list_(pa.list_(pa.string()))),
        # Per claim, the answer's sentence it comes from (split.quote_sentences), else null.
        pa.field("quotes", pa.list_(pa.list_(pa.string()))),
        pa.field("answer_rejects", pa.list_(ANSWER_REJECT)),
        pa.field("p_yes", pa.list_(pa.list_(pa.float64()))),
        pa.field("p_no", pa.list_(pa.list_(pa.float64()))),
        pa.field("scores", pa.list_(pa.int32())),
        pa.field("n_claims", pa.list_(pa.int32())),
        pa.field("pairs", pa.list_(PAIR_REF)),
        pa.field("dropped_gap", pa.int32()),
        pa.field("dropped_equal_text", pa.int32()),
        pa.field("dropped_cap", pa.int32()),
        # Best-of-N (engine.stages.bon): per answer, both models' log-probs and the reward; the pick.
        pa.field("policy_logps", pa.list_(pa.float64())),
        pa.field("ref_logps", pa.list_(pa.float64())),
        pa.field("rewards", pa.list_(pa.float64())),
        pa.field("best_answer", pa.int32()),
        # Reward stage (engine.stages.reward): per answer, the reward model's value at each token.
        pa.field("token_rewards", pa.list_(pa.list_(pa.float32()))),
        # Busy seconds each stage spent on this row (its batch time shared over the batch's rows),
        # in stage order: the written stats rows flatten it to one column per stage.
        pa.field("stage_seconds", pa.list_(STAGE_SECONDS)),
    ]
)


def to_rows(batch: pa.Table, images: bool = True) -> list[dict]:
    """The batch as row dicts; images=False leaves out the image bytes, the bulk of a row,
    for a stage that never reads them."""
    return (batch if images else batch.drop_columns(["image"])).to_pylist()


def to_table(rows: list[dict], images: pa.ChunkedArray | None = None) -> pa.Table:
    """Rows (missing columns allowed) -> a table with exactly FLIGHT_SCHEMA. With `images`
    (the batch's own image column, row for row), that column is put back as it is instead
    of copying every image's bytes back from Python."""
    if images is None:
        return pa.Table.from_pylist(rows, schema=FLIGHT_SCHEMA)
    index = FLIGHT_SCHEMA.get_field_index("image")
    table = pa.Table.from_pylist(rows, schema=FLIGHT_SCHEMA.remove(index))
    return table.add_column(index, FLIGHT_SCHEMA.field(index), images.cast(FLIGHT_SCHEMA.field(index).type))


def is_live(row: dict) -> bool:
    return row.get("reject_reason") is None


def divert(row: dict, stage: str, reason: str, detail: str) -> None:
    row.update(reject_stage=stage, reject_reason=reason, reject_detail=detail)


@contextmanager
def timed(rows: list[dict], stage: str):
    """Share the wall time of one stage batch over its rows (for per-stage throughput)."""
    start = time.perf_counter()
    yield
    share = (time.perf_counter() - start) / max(len(rows), 1)
    for row in rows:
        row["stage_seconds"] = [*(row.get("stage_seconds") or []), {"stage": stage, "seconds": share}]
