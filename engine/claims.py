"""The claim splitter's contract (ALGORITHMS.md 2): its prompt, the JSON schema its output is
decoded under, and the strict parser. One call yields each fact with its yes/no question (the
reference makes two calls; under a schema one call carries both, at half the LLM cost)."""

from __future__ import annotations

import msgspec


class Claim(msgspec.Struct, frozen=True):
    fact: str
    question: str


class _SplitterOutput(msgspec.Struct, forbid_unknown_fields=True):
    claims: list[Claim]


class ClaimsUnparseable(ValueError):
    """The splitter's output is not the JSON the schema asks for (e.g. cut off by max tokens)."""


def claims_json_schema(max_claims: int, max_chars: int) -> dict:
    text = {"type": "string", "minLength": 1, "maxLength": max_chars}
    claim = {"type": "object", "properties": {"fact": text, "question": text},
             "required": ["fact", "question"], "additionalProperties": False}
    return {"type": "object", "properties": {"claims": {"type": "array", "items": claim, "maxItems": max_claims}},
            "required": ["claims"], "additionalProperties": False}


def splitter_prompt(instruction: str, answer: str) -> str:
    return (
        "You check answers about images. Below are a question about an image and an answer to it.\n"
        f"Question: {instruction.strip()}\n"
        f"Answer: {answer.strip()}\n"
        "List every fact the answer states about the image, each as a short self-contained sentence "
        "that can be checked by looking at the image. Leave out opinions, feelings and anything "
        "subjective. For each fact write a general yes/no question that asks whether it is true, "
        "keeping its tense and any negation and adding nothing. If the answer states no facts, "
        'return an empty list. Reply with JSON only: {"claims": [{"fact": "...", "question": "..."}]}'
    )


def parse_claims(text: str, max_claims: int) -> list[Claim]:
    try:
        output = msgspec.json.decode(text.strip().encode(), type=_SplitterOutput)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ClaimsUnparseable(f"{exc}; output starts {text[:80]!r}") from None
    claims = [Claim(c.fact.strip(), c.question.strip()) for c in output.claims]
    return [c for c in claims if c.question][:max_claims]


def labeler_question(question: str, suffix: str) -> str:
    return question.strip() + suffix
