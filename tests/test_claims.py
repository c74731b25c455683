import json

import pytest

from engine.claims import Claim, ClaimsUnparseable, claims_json_schema, labeler_question, parse_claims, splitter_prompt


def test_parse_valid_output_strips_and_caps():
    text = json.dumps({"claims": [{"fact": " A red circle. ", "question": " Is there a red circle? "},
                                  {"fact": "x", "question": "  "},
                                  {"fact": "A star.", "question": "Is there a star?"},
                                  {"fact": "A cross.", "question": "Is there a cross?"}]})
    assert parse_claims(text, max_claims=2) == [Claim("A red circle.", "Is there a red circle?"),
                                                Claim("A star.", "Is there a star?")]


def test_no_claims_is_valid_and_empty():
    assert parse_claims('{"claims": []}', 5) == []


@pytest.mark.parametrize("text", ['{"claims": [{"fact": "a", "questi', "", "not json", '{"facts": []}',
                                  '{"claims": [{"fact": "a"}]}', '{"claims": "none"}'])
def test_unparseable_output_raises_never_returns_empty(text):
    with pytest.raises(ClaimsUnparseable):
        parse_claims(text, 5)


def test_schema_bounds_and_prompt():
    schema = claims_json_schema(max_claims=3, max_chars=40)
    claims = schema["properties"]["claims"]
    assert claims["maxItems"] == 3 and claims["items"]["properties"]["fact"]["maxLength"] == 40
    assert claims["items"]["required"] == ["fact", "question"] and schema["required"] == ["claims"]
    prompt = splitter_prompt("Describe the image.", "A red circle.")
    assert "Describe the image." in prompt and "A red circle." in prompt and '"claims"' in prompt


def test_labeler_question_suffix():
    assert labeler_question(" Is there a red star? ", " Please answer yes or no.") == \
        "Is there a red star? Please answer yes or no."
