"""Arrow schemas of everything the engine writes, defined once.

The writer, the loader in `train/` and the tests all import these. The pair shards are a
Hugging Face image dataset as `datasets` writes one: TRL's column names (`prompt`, `chosen`,
`rejected`, `images`), its conversational form for the texts (engine.chat.user_turn /
assistant_turn), image structs {bytes, path} and the `huggingface` schema metadata, so that
`load_dataset("parquet")`, `trl dpo` and TRL's DPOTrainer read them as written.
"""

from __future__ import annotations

import json
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



# Supervised fine-tuning rows (jobs/sft.py): an image (bytes or URI), a question and the answer
# to learn, e.g. trustworthy VQA data or descriptions.
SFT_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("image", pa.binary()),
        pa.field("image_uri", pa.string()),
        pa.field("question", pa.string()),
        pa.field("answer", pa.string()),
        pa.field("read_error", pa.string()),
    ]
)


def user_turn(prompt: str, has_image: bool) -> list[dict]:
    """The user's message in the conversational form of the pair shards, TRL and
    engine.chat's rendering: the image part (if any) first, then the text."""
    content: list[dict] = [{"type": "image"}] if has_image else []
    content.append({"type": "text", "text": prompt})
    return [{"role": "user", "content": content}]


def assistant_turn(response: str) -> list[dict]:
    return [{"role": "assistant", "content": [{"type": "text", "text": response}]}]


def turn_text(messages: Sequence[dict]) -> str:
    """The text of a one-message turn (user_turn / assistant_turn, as read back from Parquet)."""
    return " ".join(part["text"] for part in messages[0]["content"] if part["type"] == "text")


def _value(dtype: str) -> dict:
    return {"dtype": dtype, "_type": "Value"}


def _list(feature) -> dict:
    return {"feature": feature, "_type": "List"}


# One message: {"role", "content": [{"type": "image" | "text", "text"}]}, "text" null on images.
_TURN = _list({"role": _value("string"), "content": _list({"type": _value("string"), "text": _value("string")})})
# The pair shards' Hugging Face features, as `Features.to_dict()` spells them: the one definition
# of PAIR_SCHEMA and its metadata. Written out rather than built with `datasets`, whose import
# pulls in torch: every process that writes pairs would pay for it.
PAIR_FEATURE_DICT = {
    "pair_id": _value("string"),
    "instruction_id": _value("string"),
    "iteration": _value("int32"),
    "images": _list({"_type": "Image"}),
    "prompt": _TURN,
    "chosen": _TURN,
    "rejected": _TURN,
    "chosen_score": _value("int32"),
    "rejected_score": _value("int32"),
    "chosen_n_claims": _value("int32"),
    "rejected_n_claims": _value("int32"),
    "ref_chosen_logps": _value("float64"),
    "ref_rejected_logps": _value("float64"),
    "policy_id": _value("string"),
    "chosen_seed": _value("int64"),
    "rejected_seed": _value("int64"),
}


def _arrow_type(feature) -> pa.DataType:
    """The Arrow type `datasets` stores a feature dict as."""
    if "_type" not in feature:
        return pa.struct([(name, _arrow_type(child)) for name, child in feature.items()])
    kind = feature["_type"]
    if kind == "Value":
        return pa.type_for_alias(feature["dtype"])
    if kind == "List":
        return pa.list_(_arrow_type(feature["feature"]))
    if kind == "Image":
        return pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    raise ValueError(f"no Arrow type for feature type {kind!r}")


PAIR_SCHEMA = pa.schema([(name, _arrow_type(feature)) for name, feature in PAIR_FEATURE_DICT.items()]).with_metadata(
    {"huggingface": json.dumps({"info": {"features": PAIR_FEATURE_DICT}})})


def __getattr__(name: str):
    """PAIR_FEATURES, the `datasets.Features` of the pair shards, built on first use: importing
    `datasets` imports torch, which nothing that only checks a config or writes pairs should
    pay for."""
    if name == "PAIR_FEATURES":
        from datasets import Features

        return Features.from_dict(PAIR_FEATURE_DICT)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# One row per scored answer (claims/ in an iteration's output): its claims, the sentence each
# quotes (split.quote_sentences, else null) and the labeler's probabilities. jobs/correct.py
# turns these into AI corrections; they also say why a pair was chosen.
CLAIMS_SCHEMA = pa.schema(
    [
        pa.field("instruction_id", pa.string(), nullable=False),
        pa.field("iteration", pa.int32(), nullable=False),
        pa.field("answer_index", pa.int32(), nullable=False),
        pa.field("prompt", pa.string()),
        pa.field("answer", pa.string()),
        pa.field("answer_seed", pa.int64()),
        pa.field("facts", pa.list_(pa.string())),
        pa.field("questions", pa.list_(pa.string())),
        pa.field("quotes", pa.list_(pa.string())),
        pa.field("p_yes", pa.list_(pa.float64())),
        pa.field("p_no", pa.list_(pa.float64())),
    ]
)


# Token-level reward-model rows (jobs/train_rm.py, docs/algorithms.md §9): one answer to (image,
# question) with a label on each of its tokens. `token_ids` are the answer's tokens as the
# policy's chat template renders the whole conversation (engine.chat.response_token_ids, the
# end-of-turn token included), `labels` one per token: 1 good, 0 bad, -1 unlabelled. `source`
# says where the labels come from: "correction_original" and "correction_corrected" (the two
# answers of a correction row, train/token_labels.py), "ai_feedback" (the claims table's
# rejected and accepted claims). Rows of one image and question share `group_id` (a
# correction's id, an instruction's id), so a held-out split keeps them together.
RM_SCHEMA = pa.schema(
    [
        pa.field("row_id", pa.string(), nullable=False),
        pa.field("group_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("image", pa.binary()),
        pa.field("question", pa.string()),
        pa.field("answer", pa.string()),
        pa.field("token_ids", pa.list_(pa.int32())),
        pa.field("labels", pa.list_(pa.int8())),
    ]
)


# One sampled answer of a PPO round (jobs/ppo.py, docs/algorithms.md §9): the rollout pass's
# output, the update's input. `rollout_id` is "<instruction_id>/<answer index>";
# `token_rewards` holds the reward model's value at each of the answer's tokens as the
# policy's chat template renders the conversation (engine.chat.response_token_ids, the
# end-of-turn token included), so they align with the response positions the trainer scores.
ROLLOUT_SCHEMA = pa.schema(
    [
        pa.field("rollout_id", pa.string(), nullable=False),
        pa.field("instruction_id", pa.string(), nullable=False),
        pa.field("round", pa.int32(), nullable=False),
        pa.field("image", pa.binary()),
        pa.field("prompt", pa.string()),
        pa.field("answer", pa.string()),
        pa.field("answer_seed", pa.int64()),
        pa.field("token_rewards", pa.list_(pa.float32())),
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
