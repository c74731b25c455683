"""AI corrections: sentences, quotes, the removal rule and its diverted answers (engine.sentences,
engine.ai_corrections), and the claims schema with quotes."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.ai_corrections import Uncorrectable, correct_from_feedback, correction_tables
from engine.claims import Claim, claims_json_schema, claims_token_estimate, parse_claims
from engine.instruction_io import CORRECTIONS, read_rows, write_rows
from engine.schemas import CLAIMS_SCHEMA, CORRECTION_SCHEMA
from engine.sentences import locate_quote, rewrite_sentences, sentence_spans
from toyworld.splitter import split_scene_answer

ANSWER = "A dog sits on grass. It wears a red hat!  Is it happy? The sky is 3.5 shades of blue."


def test_sentence_spans_end_at_closing_marks_before_space():
    spans = sentence_spans(ANSWER)
    assert [ANSWER[a:b] for a, b in spans] == [
        "A dog sits on grass.", "It wears a red hat!", "Is it happy?", "The sky is 3.5 shades of blue."]
    assert sentence_spans("no closing mark") == [(0, 15)] and sentence_spans("  ") == []


@pytest.mark.parametrize("quote, expected", [
    ("It wears a red hat!", [1]),
    ("It  wears a\nred hat", [1]),                      # spacing and closing mark may differ
    ("grass. It wears", [0, 1]),                        # a quote across two sentences covers both
    ("It wears a blue hat.", []),                       # a paraphrase is not a quote
    ("   ", []),
])
def test_locate_quote(quote, expected):
    assert locate_quote(quote, ANSWER, sentence_spans(ANSWER)) == expected


def test_rewrite_sentences_removes_with_the_space_before_and_replaces_in_place():
    spans = sentence_spans(ANSWER)
    text, edits = rewrite_sentences(ANSWER, spans, {1: None, 3: "The sky is grey."})
    assert text == "A dog sits on grass.  Is it happy? The sky is grey."
    # Removed: " It wears a red hat!" (20..40) -> nothing at 20; replaced: 54..84 -> 35..51.
    assert edits == [{"rejected_start": 20, "rejected_end": 40, "chosen_start": 20, "chosen_end": 20},
                     {"rejected_start": 55, "rejected_end": 85, "chosen_start": 35, "chosen_end": 51}]
    assert ANSWER[55:85] == "The sky is 3.5 shades of blue." and text[35:51] == "The sky is grey."
    first, _ = rewrite_sentences(ANSWER, spans, {0: None})
    assert first == "It wears a red hat!  Is it happy? The sky is 3.5 shades of blue."


def test_correct_from_feedback_removes_the_sentences_of_rejected_claims():
    quotes = ["A dog sits on grass.", "It wears a red hat!", "It wears a red hat!", "The sky is 3.5 shades of blue."]
    # Claim 2 rejected (0.3 < 0.6), claim 3 a tie (rejected, as in scoring), the others accepted.
    chosen, edits = correct_from_feedback(ANSWER, quotes, [0.9, 0.8, 0.3, 0.5], [0.1, 0.2, 0.6, 0.5])
    assert chosen == "A dog sits on grass.  Is it happy?"
    assert len(edits) == 2 and all(e["chosen_start"] == e["chosen_end"] for e in edits)


@pytest.mark.parametrize("quotes, p_yes, reason", [
    (["A dog sits on grass."], [0.9], "nothing_to_correct"),
    (["A cat sits on grass."], [0.1], "quote_not_found"),
    (["A dog sits on grass. It wears a red hat! Is it happy? The sky is 3.5 shades of blue."], [0.1], "nothing_left"),
])
def test_answers_that_cannot_be_corrected_say_why(quotes, p_yes, reason):
    with pytest.raises(Uncorrectable) as caught:
        correct_from_feedback(ANSWER, quotes, p_yes, [1 - p for p in p_yes])
    assert caught.value.reason == reason


def claims_row(instruction_id, quotes, p_yes):
    return {"instruction_id": instruction_id, "iteration": 1, "answer_index": 2, "prompt": "Describe the image.",
            "answer": ANSWER, "answer_seed": 7, "facts": ["f"] * len(p_yes), "questions": ["q?"] * len(p_yes),
            "quotes": quotes, "p_yes": p_yes, "p_no": [1 - p for p in p_yes]}


def test_correction_tables_keep_every_answer_as_a_correction_or_a_reason(tmp_path):
    claims = pa.Table.from_pylist([
        claims_row("a", ["It wears a red hat!"], [0.2]),
        claims_row("b", ["It wears a red hat!"], [0.9]),
        claims_row("c", None, [0.2]),
        claims_row("missing", ["It wears a red hat!"], [0.2]),
    ], schema=CLAIMS_SCHEMA)
    images = {"a": (b"png-bytes", None), "b": (None, "s3://bucket/b.png"), "c": (b"x", None)}
    corrections, diverted = correction_tables(claims, images)
    assert corrections.to_pylist() == [{
        "id": "a-1-2", "image": b"png-bytes", "image_uri": None, "question": "Describe the image.", "rejected": ANSWER,
        "chosen": "A dog sits on grass.  Is it happy? The sky is 3.5 shades of blue.",
        "edits": [{"rejected_start": 20, "rejected_end": 40, "chosen_start": 20, "chosen_end": 20}], "read_error": None}]
    assert [(r["instruction_id"], r["reason"], r["answer_index"]) for r in diverted.to_pylist()] == [
        ("b", "nothing_to_correct", 2), ("c", "no_quotes", 2), ("missing", "instruction_not_found", 2)]
    out = str(tmp_path / "corrections.jsonl")
    write_rows(corrections, out, CORRECTIONS)
    assert read_rows(out, CORRECTIONS).to_pylist() == corrections.to_pylist()
    assert corrections.schema.equals(CORRECTION_SCHEMA)


def test_claims_with_quotes_parse_and_the_schema_asks_for_the_quote_first():
    schema = claims_json_schema(max_claims=2, max_chars=30, quotes=True)
    item = schema["properties"]["claims"]["items"]
    assert list(item["properties"]) == item["required"] == ["quote", "fact", "question"]
    text = json.dumps({"claims": [{"quote": " A dog. ", "fact": "A dog.", "question": "Is there a dog?"}]})
    assert parse_claims(text, 2) == [Claim("A dog.", "Is there a dog?", "A dog.")]


@pytest.mark.parametrize("quotes", [False, True])
def test_the_token_estimate_is_the_longest_admitted_json_over_four(quotes):
    schema = claims_json_schema(max_claims=3, max_chars=10, quotes=quotes)
    fields = schema["properties"]["claims"]["items"]["required"]
    longest = json.dumps({"claims": [{name: "x" * 10 for name in fields}] * 3}, separators=(",", ":"))
    assert claims_token_estimate(3, 10, quotes) == -(-len(longest) // 4)


def test_the_grammar_splitter_quotes_the_sentence_of_each_mention():
    answer = "There is a red circle at the top left. There is a blue square at the centre."
    claims = split_scene_answer(answer, quotes=True)
    assert [(c["quote"], c["question"]) for c in claims] == [
        ("There is a red circle at the top left.", "Is there a red circle in the image?"),
        ("There is a blue square at the centre.", "Is there a blue square in the image?")]
    assert [{k: c[k] for k in ("fact", "question")} for c in claims] == split_scene_answer(answer)


def test_the_job_refuses_a_pass_without_claims_or_quotes_in_one_line(tmp_path):
    from click.testing import CliRunner

    from jobs.correct import main

    args = ["--generation", str(tmp_path), "--out", str(tmp_path / "c.parquet")]
    missing = CliRunner().invoke(main, args)
    assert missing.exit_code == 1 and missing.output.strip().count("\n") == 0 and "no claims/" in missing.output
    claims = pa.Table.from_pylist([claims_row("a", None, [0.2])], schema=CLAIMS_SCHEMA)
    (tmp_path / "claims").mkdir()
    pq.write_table(claims, tmp_path / "claims" / "part-0.parquet")
    unquoted = CliRunner().invoke(main, args)
    assert unquoted.exit_code == 1 and "split.quote_sentences = true" in unquoted.output
