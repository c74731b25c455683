import json

import pytest

from engine.claims import Claim, ClaimsUnparseable, claims_json_schema, labeler_question, parse_claims, splitter_prompt


def test_parse_valid_output_strips_drops_empty_questions_and_caps():
    text = json.dumps({"claims": [{"fact": " A red circle. ", "question": " Is there a red circle? "},
                                  {"fact": "x", "question": "  "},
                                  {"fact": "A star.", "question": "Is there a star?"},
                                  {"fact": "A cross.", "question": "Is there a cross?"}]})
    # The empty question is dropped before the cap, so the cap of 2 keeps circle and star.
    assert parse_claims("\n " + text + " \n", max_claims=2) == [Claim("A red circle.", "Is there a red circle?"),
                                                               Claim("A star.", "Is there a star?")]


def test_no_claims_is_valid_and_empty():
    assert parse_claims('{"claims": []}', 5) == []


@pytest.mark.parametrize("text", [
    '{"claims": [{"fact": "a", "questi',                    # cut off by the token limit
    "", "not json", '{"facts": []}', '{"claims": "none"}', '{"claims": null}',
    '{"claims": [{"fact": "a"}]}',                           # question missing
    '{"claims": [{"fact": "a", "question": 3}]}',            # wrong type
    '{"claims": [{"fact": "a", "question": "b?", "x": 1}]}',  # key outside the schema
    '{"claims": [], "extra": 1}',
    '{"claims": []} trailing',
])
def test_unparseable_output_raises_never_returns_empty(text):
    with pytest.raises(ClaimsUnparseable):
        parse_claims(text, 5)


def test_non_text_output_raises():
    with pytest.raises(ClaimsUnparseable):
        parse_claims(None, 5)


def test_schema_is_the_agreed_contract():
    text = {"type": "string", "maxLength": 40}
    assert claims_json_schema(max_claims=3, max_chars=40) == {
        "type": "object",
        "properties": {"claims": {"type": "array", "maxItems": 3, "items": {
            "type": "object", "properties": {"fact": text, "question": text},
            "required": ["fact", "question"], "additionalProperties": False}}},
        "required": ["claims"], "additionalProperties": False,
    }


def test_schema_accepts_what_the_parser_accepts():
    jsonschema = pytest.importorskip("jsonschema")
    schema = claims_json_schema(max_claims=2, max_chars=20)
    jsonschema.validate({"claims": [{"fact": "A red star.", "question": "Is there a red star?"}]}, schema)
    for bad in ({"claims": [{"fact": "a", "question": "b"}] * 3}, {"claims": [{"fact": "a" * 21, "question": "b"}]},
                {"claims": [{"fact": "a"}]}, {}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


def test_prompt_carries_instruction_answer_and_format():
    prompt = splitter_prompt("  Describe the image. ", "A red circle.\n")
    assert "Request: Describe the image.\n" in prompt and "Answer: A red circle.\n" in prompt
    assert '{"claims": [{"fact":' in prompt and '{"claims": []}' in prompt
    assert "yes/no" in prompt and "negation" in prompt and "subjective" in prompt


def test_labeler_question_suffix():
    assert labeler_question(" Is there a red star? ", " Please answer yes or no.") == \
        "Is there a red star? Please answer yes or no."
