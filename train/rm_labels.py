"""Rows for the token-level reward model (engine.schemas.RM_SCHEMA, docs/algorithms.md §9) from
the two kinds of feedback the project has:

- corrections (CORRECTION_SCHEMA): the original and the corrected answer, each labelled by
  train/token_labels.py (good before the first edit, the first edited span bad, the rest
  unlabelled);
- AI feedback (an iteration's claims table, CLAIMS_SCHEMA): every sentence a rejected claim
  quotes is bad, every other sentence good (the labeler checked each claim of the answer);
  the spaces between sentences and the end-of-turn token stay unlabelled.

Tokens are the policy's, as engine.chat renders the whole conversation for training, so each
label sits on the token the trainer scores. Rows that cannot be labelled are diverted with
their reason (REJECT_SCHEMA), never dropped.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from engine import chat
from engine.ai_corrections import Uncorrectable, rejected_sentences
from engine.config import ValidateConfig
from engine.schemas import REJECT_SCHEMA, RM_SCHEMA
from engine.sentences import Span
from engine.writer import excerpt
from train.data import RowDiverted, checked_correction, checked_row
from train.token_labels import correction_token_labels

STAGE = "rm_labels"
GOOD, BAD, UNLABELLED = 1, 0, -1


def sentence_token_labels(token_spans: list[Span], sentences: list[Span], bad: set[int]) -> list[int]:
    """A label per token from labels per sentence: a token touching a bad sentence is bad, one
    touching only good sentences good, one outside every sentence (spacing, end of turn)
    unlabelled."""
    labels = []
    for start, end in token_spans:
        touched = [k for k, (s_start, s_end) in enumerate(sentences) if start < s_end and s_start < end]
        labels.append(UNLABELLED if not touched else BAD if bad.intersection(touched) else GOOD)
    return labels


def _rm_row(row_id: str, group_id: str, source: str, image: bytes, question: str, answer: str,
            token_ids: list[int], labels: list[int]) -> dict:
    if all(label == UNLABELLED for label in labels):
        raise RowDiverted("no_labelled_tokens", "no token of the answer got a label")
    return {"row_id": row_id, "group_id": group_id, "source": source, "image": image, "question": question,
            "answer": answer, "token_ids": token_ids, "labels": labels}


def _tables(kept: list[dict], rejects: list[dict]) -> tuple[pa.Table, pa.Table]:
    return pa.Table.from_pylist(kept, schema=RM_SCHEMA), pa.Table.from_pylist(rejects, schema=REJECT_SCHEMA)


def correction_rm_rows(table: pa.Table, processor: Any, validate: ValidateConfig = ValidateConfig()
                       ) -> tuple[pa.Table, pa.Table]:
    """(RM_SCHEMA rows, REJECT_SCHEMA rows) of correction rows (train.data.read_correction_table):
    two label rows per correction, `<id>/original` and `<id>/corrected`, or the correction
    diverted as DDPO diverts it (train.data.checked_correction)."""
    kept, rejects = [], []
    for index, row in enumerate(table.to_pylist()):
        correction_id = row["id"] or f"correction-{index}"
        try:
            image, _ = checked_correction(row, validate)
            original, corrected = (chat.response_token_ids(processor, row["question"], row[side], True)
                                   for side in ("rejected", "chosen"))
            sides = zip(("original", "corrected"), ("rejected", "chosen"), (original, corrected),
                        correction_token_labels(original, corrected))
            kept += [_rm_row(f"{correction_id}/{name}", correction_id, f"correction_{name}", image, row["question"],
                             row[side], ids, [UNLABELLED if label is None else label for label in labels])
                     for name, side, ids, labels in sides]
        except RowDiverted as exc:
            rejects.append({"instruction_id": correction_id, "iteration": 0, "stage": STAGE, "reason": exc.reason,
                            "detail": exc.detail, "answer_index": -1, "prompt": excerpt(row["question"])})
    return _tables(kept, rejects)


def feedback_rm_rows(claims: pa.Table, images: dict[str, tuple[bytes | None, str | None]], processor: Any,
                     validate: ValidateConfig = ValidateConfig()) -> tuple[pa.Table, pa.Table]:
    """(RM_SCHEMA rows, REJECT_SCHEMA rows) of an iteration's claims rows (CLAIMS_SCHEMA), one
    label row per scored answer; `images` maps each instruction id to its (image bytes,
    image_uri), as engine.correct_pass.instruction_images gives them. Diverted with their
    reason: no_quotes (the pass ran without split.quote_sentences), instruction_not_found,
    no_claims (the labeler judged nothing in the answer), quote_not_found (a rejected claim's
    quote is not in the answer), a bad image or empty text (train.data.checked_row),
    no_labelled_tokens."""
    kept, rejects = [], []
    for row in claims.to_pylist():
        try:
            if row["quotes"] is None:
                raise RowDiverted("no_quotes", "the pass that scored this answer ran without split.quote_sentences")
            if row["instruction_id"] not in images:
                raise RowDiverted("instruction_not_found", "the input has no instruction with this id")
            if not row["quotes"]:
                raise RowDiverted("no_claims", "the splitter found no claim in the answer: nothing was judged")
            try:
                sentences, bad = rejected_sentences(row["answer"], row["quotes"], row["p_yes"], row["p_no"])
            except Uncorrectable as exc:
                raise RowDiverted(exc.reason, exc.detail) from None
            image_bytes, image_uri = images[row["instruction_id"]]
            image, _ = checked_row({"read_error": None, "image": image_bytes, "image_uri": image_uri,
                                    "question": row["prompt"], "answer": row["answer"]}, ("question", "answer"),
                                   validate)
            token_ids, spans = chat.response_tokens_with_spans(processor, row["prompt"], row["answer"], True)
            kept.append(_rm_row(f"{row['instruction_id']}-{row['iteration']}-{row['answer_index']}",
                                row["instruction_id"], "ai_feedback", image, row["prompt"], row["answer"], token_ids,
                                sentence_token_labels(spans, sentences, bad)))
        except RowDiverted as exc:
            rejects.append({"instruction_id": row["instruction_id"], "iteration": row["iteration"], "stage": STAGE,
                            "reason": exc.reason, "detail": exc.detail, "answer_index": row["answer_index"],
                            "prompt": excerpt(row["prompt"])})
    return _tables(kept, rejects)
