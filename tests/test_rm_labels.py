"""Token-level feedback for the reward model (train/rm_labels.py, train/rm_data.py): labels from a
hand-made correction and a hand-made claims row on the tiny LLaVA's tokens, the diverted rows,
the held-out split and the batch that puts each label on its own token."""

from __future__ import annotations

import pyarrow as pa
import pytest
from fixtures_models import noise_png
from transformers import AutoProcessor

from engine import chat
from engine.schemas import CLAIMS_SCHEMA, CORRECTION_SCHEMA, RM_SCHEMA
from train.data import PairDataError
from train.rm_data import collate_rm, heldout_split
from train.rm_labels import correction_rm_rows, feedback_rm_rows

QUESTION = "Describe the image."
ANSWER = "There is a red circle. There is a blue star."


@pytest.fixture(scope="module")
def processor(tiny_llava_dir):
    return AutoProcessor.from_pretrained(tiny_llava_dir)


def labelled_tokens(processor, row: dict) -> list[tuple[str, int]]:
    tokenizer = chat.tokenizer_of(processor)
    return [(tokenizer.decode([token]), label) for token, label in zip(row["token_ids"], row["labels"])]


def correction(**fields) -> dict:
    row = {"id": "c1", "image": noise_png(1), "image_uri": None, "question": QUESTION, "rejected": ANSWER,
           "chosen": "There is a red circle. There is a green star.", "edits": None, "read_error": None}
    return {**row, **fields}


def test_a_correction_labels_the_original_up_to_its_first_error_and_the_correction_through_its_fix(processor):
    rows, rejects = correction_rm_rows(pa.Table.from_pylist([correction()], schema=CORRECTION_SCHEMA), processor)
    assert rejects.num_rows == 0 and rows.schema.equals(RM_SCHEMA)
    original, corrected = rows.to_pylist()
    assert (original["row_id"], original["group_id"], original["source"]) == (
        "c1/original", "c1", "correction_original")
    assert (corrected["row_id"], corrected["source"], corrected["answer"]) == (
        "c1/corrected", "correction_corrected", "There is a red circle. There is a green star.")
    head = [("There", 1), (" is", 1), (" a", 1), (" red", 1), (" circle", 1), (".", 1), (" There", 1), (" is", 1),
            (" a", 1)]
    assert labelled_tokens(processor, original) == head + [(" blue", 0), (" star", -1), (".", -1), ("</s>", -1)]
    assert labelled_tokens(processor, corrected) == head + [(" green", 1), (" star", -1), (".", -1), ("</s>", -1)]
    # The tokens are those the trainer scores: the conversation's response tokens.
    assert original["token_ids"] == chat.response_token_ids(processor, QUESTION, ANSWER, True)


def test_corrections_that_give_no_labels_are_diverted_with_their_reason(processor):
    table = pa.Table.from_pylist([
        correction(id="same", chosen=ANSWER),
        correction(id="no-image", image=None),
        correction(id="blank", chosen="  "),
    ], schema=CORRECTION_SCHEMA)
    rows, rejects = correction_rm_rows(table, processor)
    assert [(r["instruction_id"], r["reason"]) for r in rejects.to_pylist()] == [
        ("same", "equal_answers"), ("no-image", "missing_image"), ("blank", "empty_text")]
    assert rows.num_rows == 0


def claims_row(instruction_id: str, quotes, p_yes: list[float], answer: str = ANSWER) -> dict:
    return {"instruction_id": instruction_id, "iteration": 1, "answer_index": 2, "prompt": QUESTION, "answer": answer,
            "answer_seed": 7, "facts": ["f"] * len(p_yes), "questions": ["q?"] * len(p_yes), "quotes": quotes,
            "p_yes": p_yes, "p_no": [1 - p for p in p_yes]}


def test_ai_feedback_marks_the_rejected_claims_sentence_bad_and_the_others_good(processor):
    claims = pa.Table.from_pylist([claims_row("a", ["There is a red circle.", "There is a blue star"], [0.9, 0.2])],
                                  schema=CLAIMS_SCHEMA)
    rows, rejects = feedback_rm_rows(claims, {"a": (noise_png(2), None)}, processor)
    assert rejects.num_rows == 0
    [row] = rows.to_pylist()
    assert (row["row_id"], row["group_id"], row["source"]) == ("a-1-2", "a", "ai_feedback")
    good = [("There", 1), (" is", 1), (" a", 1), (" red", 1), (" circle", 1), (".", 1)]
    bad = [(" There", 0), (" is", 0), (" a", 0), (" blue", 0), (" star", 0), (".", 0)]
    assert labelled_tokens(processor, row) == good + bad + [("</s>", -1)]


def test_ai_feedback_that_cannot_be_located_or_judged_is_diverted_with_its_reason(processor):
    claims = pa.Table.from_pylist([
        claims_row("paraphrase", ["A red disc is there."], [0.1]),          # a rejected quote not in the answer
        claims_row("unquoted", None, [0.1]),
        claims_row("no-claims", [], []),
        claims_row("missing", ["There is a red circle."], [0.1]),
        claims_row("kept", ["There is a red disc."], [0.9]),                # accepted: its quote is not needed
    ], schema=CLAIMS_SCHEMA)
    images = {name: (noise_png(3), None) for name in ("paraphrase", "unquoted", "no-claims", "kept")}
    rows, rejects = feedback_rm_rows(claims, images, processor)
    assert [(r["instruction_id"], r["reason"], r["answer_index"]) for r in rejects.to_pylist()] == [
        ("paraphrase", "quote_not_found", 2), ("unquoted", "no_quotes", 2), ("no-claims", "no_claims", 2),
        ("missing", "instruction_not_found", 2)]
    assert "A red disc is there." in rejects["detail"][0].as_py()
    assert rows["row_id"].to_pylist() == ["kept-1-2"] and set(rows["labels"][0].as_py()) == {1, -1}


def test_response_spans_cover_the_answer_and_leave_the_end_of_turn_empty(processor):
    token_ids, spans = chat.response_tokens_with_spans(processor, QUESTION, ANSWER, True)
    assert [ANSWER[a:b] for a, b in spans][:3] == ["There", " is", " a"]
    assert spans[-1] == (len(ANSWER), len(ANSWER))
    assert token_ids == chat.response_token_ids(processor, QUESTION, ANSWER, True)


def rm_rows(groups: list[str]) -> pa.Table:
    return pa.Table.from_pylist([{"row_id": f"{g}/{i}", "group_id": g, "source": "ai_feedback", "image": b"",
                                  "question": QUESTION, "answer": ANSWER, "token_ids": [], "labels": []}
                                 for g in groups for i in range(2)], schema=RM_SCHEMA)


def test_the_heldout_split_keeps_groups_whole_and_depends_on_the_seed_only():
    rows = rm_rows([f"g{i}" for i in range(200)])
    train, heldout = heldout_split(rows, 0.25, seed=3)
    assert train.num_rows + heldout.num_rows == rows.num_rows and 60 < heldout.num_rows < 140
    assert not set(train["group_id"].to_pylist()) & set(heldout["group_id"].to_pylist())
    reversed_rows = rows.take(list(range(rows.num_rows))[::-1])
    assert sorted(heldout_split(reversed_rows, 0.25, seed=3)[1]["row_id"].to_pylist()) == sorted(
        heldout["row_id"].to_pylist())
    assert heldout_split(rows, 0.25, seed=4)[1]["row_id"].to_pylist() != heldout["row_id"].to_pylist()
    assert heldout_split(rows, 0.0, seed=3)[1].num_rows == 0


def test_collate_puts_each_label_on_its_own_token_and_refuses_another_tokenizers_rows(processor):
    rows, _ = correction_rm_rows(pa.Table.from_pylist([correction()], schema=CORRECTION_SCHEMA), processor)
    rows = rows.to_pylist()
    batch = collate_rm(rows, processor, max_length=512)
    for i, row in enumerate(rows):
        length, n = int(batch.model_inputs["attention_mask"][i].sum()), len(row["token_ids"])
        assert batch.model_inputs["input_ids"][i, length - n:length].tolist() == row["token_ids"]
        assert batch.labels[i, length - n:length].tolist() == row["labels"]
        assert (batch.labels[i, :length - n] == -1).all() and (batch.labels[i, length:] == -1).all()
    cut = collate_rm(rows, processor, max_length=length - 3)  # the last 3 tokens of both answers cut
    assert cut.labels.shape[1] == length - 3 and cut.n_truncated == 2
    other = [{**rows[0], "token_ids": rows[0]["token_ids"][:-1] + [7]}]
    with pytest.raises(PairDataError, match="labels were made for another model"):
        collate_rm(other, processor, max_length=512)
