"""Arrow schemas of everything the engine writes, defined once.

The writer, the loader in `train/` and the tests all import these. Pair columns use TRL's
names where TRL has one (`prompt`, `chosen`, `rejected`, `images`, `ref_chosen_logps`,
`ref_rejected_logps`) so the shards also train in TRL's DPOTrainer without conversion.
"""

from __future__ import annotations

from typing import Sequence

import pyarrow as pa

# Input: one row per (image, instruction). Exactly one of image / image_uri is set.
# `objects` (the objects in the image) and `references` (reference descriptions of the image,
# for caption metrics) are optional ground truth (synthetic scenes, evaluation sets).
INSTRUCTION_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("prompt", pa.string()),
        pa.field("image", pa.binary()),
        pa.field("image_uri", pa.string()),
        pa.field("objects", pa.list_(pa.string())),
        pa.field("references", pa.list_(pa.string())),
        # Set by the reader on a row it could not read (a JSONL line that is not JSON, a field
        # of the wrong type...): where and why. Validation diverts the row with it.
        pa.field("read_error", pa.string()),
    ]
)

# RLHF-V style corrections: an answer to (image, question) and its correction, for DDPO
# (`jobs/train.py --corrections`). chosen is the corrected answer, rejected the original; as in
# instructions, exactly one of image / image_uri is set. `id` is optional (an empty one: the row
# is numbered). `edits`, where known, are the corrected spans as character offsets [start, end)
# into each answer: a sentence rewritten, or removed (an empty chosen span).
EDIT = pa.struct([("rejected_start", pa.int32()), ("rejected_end", pa.int32()),
                  ("chosen_start", pa.int32()), ("chosen_end", pa.int32())])
CORRECTION_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("image", pa.binary()),
        pa.field("image_uri", pa.string()),
        pa.field("question", pa.string()),
        pa.field("rejected", pa.string()),
        pa.field("chosen", pa.string()),
        pa.field("edits", pa.list_(EDIT)),
        pa.field("read_error", pa.string()),  # as in INSTRUCTION_SCHEMA: the reader's, on a row it could not read
    ]
)

PAIR_SCHEMA = pa.schema(
    [
        pa.field("pair_id", pa.string(), nullable=False),
        pa.field("instruction_id", pa.string(), nullable=False),
        pa.field("iteration", pa.int32(), nullable=False),
        pa.field("images", pa.list_(pa.binary()), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("chosen", pa.string(), nullable=False),
        pa.field("rejected", pa.string(), nullable=False),
        pa.field("chosen_score", pa.int32(), nullable=False),
        pa.field("rejected_score", pa.int32(), nullable=False),
        pa.field("chosen_n_claims", pa.int32(), nullable=False),
        pa.field("rejected_n_claims", pa.int32(), nullable=False),
        pa.field("ref_chosen_logps", pa.float64(), nullable=False),
        pa.field("ref_rejected_logps", pa.float64(), nullable=False),
        pa.field("policy_id", pa.string(), nullable=False),
        pa.field("chosen_seed", pa.int64(), nullable=False),
        pa.field("rejected_seed", pa.int64(), nullable=False),
    ]
)

# A diverted row or answer. answer_index is -1 when the whole instruction was diverted.
REJECT_SCHEMA = pa.schema(
    [
        pa.field("instruction_id", pa.string(), nullable=False),
        pa.field("iteration", pa.int32(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string(), nullable=False),
        pa.field("answer_index", pa.int32(), nullable=False),
        pa.field("prompt", pa.string()),
    ]
)

# One row per instruction processed (rows/ in an iteration's staging area): what happened to
# it. Its presence marks the instruction done, and the iteration summary is computed from it.
# Its last columns are the busy seconds of each stage of the pass, one column per stage, in
# the order of the pass's stage list (engine.pipeline.STAGES).
def instruction_stats_schema(stages: Sequence[str]) -> pa.Schema:
    return pa.schema(
        [
            pa.field("instruction_id", pa.string(), nullable=False),
            pa.field("reject_stage", pa.string()),
            pa.field("reject_reason", pa.string()),
            pa.field("n_answers", pa.int32(), nullable=False),
            pa.field("n_answers_parsed", pa.int32(), nullable=False),
            pa.field("n_claims", pa.int32(), nullable=False),
            pa.field("n_claims_rejected", pa.int32(), nullable=False),
            pa.field("answer_tokens", pa.int64(), nullable=False),
            pa.field("n_pairs", pa.int32(), nullable=False),
            pa.field("dropped_gap", pa.int32(), nullable=False),
            pa.field("dropped_equal_text", pa.int32(), nullable=False),
            pa.field("dropped_cap", pa.int32(), nullable=False),
        ]
        + [pa.field(seconds_column(stage), pa.float64(), nullable=False) for stage in stages]
    )


def seconds_column(stage: str) -> str:
    return f"seconds_{stage}"
