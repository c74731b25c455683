"""AI corrections (docs/algorithms.md §6): RLHF-V-style correction rows made from the engine's
own feedback instead of human annotators. An answer whose labeler rejected some of its claims
is corrected by removing every sentence that carries a rejected claim (found by the quote the
splitter copied, split.quote_sentences); the original answer is the rejected side, the
remainder the chosen one, and the removed sentences are the edits DDPO weighs.

Removal, not rewriting: writing a true replacement needs a model that knows what is in the
image, which is what is being corrected. An answer that cannot be corrected is diverted with
its reason, never dropped: nothing_to_correct (no rejected claim), quote_not_found (the
splitter's quote is not in the answer), nothing_left (every sentence carried a rejected claim).
"""

from __future__ import annotations

import pyarrow as pa

from engine.pairing import accepts
from engine.schemas import CORRECTION_SCHEMA, REJECT_SCHEMA
from engine.sentences import Span, locate_quote, rewrite_sentences, sentence_spans
from engine.writer import excerpt

STAGE = "correct"


class Uncorrectable(ValueError):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def rejected_sentences(answer: str, quotes: list[str], p_yes: list[float],
                       p_no: list[float]) -> tuple[list[Span], set[int]]:
    """(the answer's sentence spans, the indexes of those a rejected claim quotes): what both AI
    corrections and the reward model's AI-feedback labels (train/rm_labels.py) are made of.
    Raises Uncorrectable (quote_not_found) when a rejected claim's quote is not in the answer."""
    spans = sentence_spans(answer)
    marked: set[int] = set()
    for quote, yes, no in zip(quotes, p_yes, p_no, strict=True):
        if accepts(yes, no):
            continue
        found = locate_quote(quote, answer, spans)
        if not found:
            raise Uncorrectable("quote_not_found",
                                f"a rejected claim quotes {excerpt(quote)!r}, which is not in the answer")
        marked.update(found)
    return spans, marked


def correct_from_feedback(answer: str, quotes: list[str], p_yes: list[float], p_no: list[float]) -> tuple[str, list[dict]]:
    """(chosen, edits) for one scored answer: `answer` without the sentences its rejected claims
    quote. Raises Uncorrectable with the reason when there is no such correction."""
    if all(accepts(yes, no) for yes, no in zip(p_yes, p_no, strict=True)):
        raise Uncorrectable("nothing_to_correct", "the labeler accepted every claim of this answer")
    spans, removed = rejected_sentences(answer, quotes, p_yes, p_no)
    if len(removed) == len(spans):
        raise Uncorrectable("nothing_left", "every sentence of the answer carries a rejected claim")
    return rewrite_sentences(answer, spans, dict.fromkeys(removed))


def correction_tables(claims: pa.Table, images: dict[str, tuple[bytes | None, str | None]]) -> tuple[pa.Table, pa.Table]:
    """(CORRECTION_SCHEMA rows, REJECT_SCHEMA rows) from an iteration's claims rows
    (CLAIMS_SCHEMA); `images` maps each instruction id to its (image bytes, image_uri)."""
    kept, diverted = [], []
    for row in claims.to_pylist():
        where = {"instruction_id": row["instruction_id"], "iteration": row["iteration"], "stage": STAGE,
                 "answer_index": row["answer_index"], "prompt": excerpt(row["prompt"])}
        try:
            if row["quotes"] is None:
                raise Uncorrectable("no_quotes", "the pass that scored this answer ran without split.quote_sentences")
            if row["instruction_id"] not in images:
                raise Uncorrectable("instruction_not_found", "the input has no instruction with this id")
            chosen, edits = correct_from_feedback(row["answer"], row["quotes"], row["p_yes"], row["p_no"])
        except Uncorrectable as exc:
            diverted.append({**where, "reason": exc.reason, "detail": exc.detail})
            continue
        image, image_uri = images[row["instruction_id"]]
        kept.append({"id": f"{row['instruction_id']}-{row['iteration']}-{row['answer_index']}", "image": image,
                     "image_uri": image_uri, "question": row["prompt"], "rejected": row["answer"], "chosen": chosen,
                     "edits": edits, "read_error": None})
    return pa.Table.from_pylist(kept, schema=CORRECTION_SCHEMA), pa.Table.from_pylist(diverted, schema=REJECT_SCHEMA)
