"""The claim splitter's contract (docs/algorithms.md §2): its prompt, the JSON schema its output is
decoded under, and the strict parser.

One call yields each fact together with its yes/no question: a documented simplification of
the reference's two calls (facts, then questions), which halves the LLM cost. Under a schema
the output cannot be malformed except when cut off by the token limit; that case raises
ClaimsUnparseable and is never read as "no claims".
"""

from __future__ import annotations

import msgspec


class Claim(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    fact: str
    question: str
    # The answer's sentence the fact comes from, verbatim; asked for only with
    # split.quote_sentences (corrections and token labels locate rejected claims by it).
    quote: str = ""


class _SplitterOutput(msgspec.Struct, forbid_unknown_fields=True):
    claims: list[Claim]


class ClaimsUnparseable(ValueError):
    """The splitter's output is not the JSON the schema asks for (e.g. cut off by max tokens)."""


def claim_fields(quotes: bool) -> tuple[str, ...]:
    """The keys of one claim in the splitter's JSON, in the order it writes them."""
    return ("quote", "fact", "question") if quotes else ("fact", "question")


def claims_json_schema(max_claims: int, max_chars: int, quotes: bool = False) -> dict:
    """The JSON schema the splitter decodes under: at most max_claims claims, each string at
    most max_chars characters; with `quotes`, each claim first quotes its sentence."""
    fields = claim_fields(quotes)
    claim = {
        "type": "object",
        "properties": {name: {"type": "string", "maxLength": max_chars} for name in fields},
        "required": list(fields),
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": {"claims": {"type": "array", "maxItems": max_claims, "items": claim}},
        "required": ["claims"],
        "additionalProperties": False,
    }


# Characters per token of a Llama-3-class tokenizer on English prose, for sizing the token
# budget of a split; a tokenizer that packs fewer characters per token needs a larger budget.
CHARS_PER_TOKEN = 4


def claims_token_estimate(max_claims: int, max_chars: int, quotes: bool = False) -> int:
    """Tokens of the longest output the schema admits (max_claims claims whose strings are
    max_chars characters each, as compact JSON) at CHARS_PER_TOKEN characters per token:
    the budget under which no split is cut off before its JSON closes."""
    fields = claim_fields(quotes)
    empty = len('{"claims":[]}')
    per_claim = len(fields) * max_chars + len("{},") + sum(len(f'"{name}":"",') for name in fields) - 1
    return -(-(empty + max_claims * per_claim) // CHARS_PER_TOKEN)


def splitter_prompt(instruction: str, answer: str, quotes: bool = False) -> str:
    """The user message for the splitter LLM: one instruction and one answer to it; with
    `quotes`, each fact also carries the answer's sentence it comes from."""
    if quotes:
        step_3 = ("Step 3. For each fact, copy the one sentence of the answer it comes from, word for "
                  "word, as its quote.\n\n")
        form = '{"claims": [{"quote": "<the sentence>", "fact": "<the fact>", "question": "<its yes/no question>"}]}. '
    else:
        step_3 = ""
        form = '{"claims": [{"fact": "<the fact>", "question": "<its yes/no question>"}]}. '
    return (
        "Below is a request about an image and an answer that an assistant gave to it.\n\n"
        f"Request: {instruction.strip()}\n"
        f"Answer: {answer.strip()}\n\n"
        "Step 1. List the facts the answer asserts about the image. Make each fact atomic (one "
        "piece of information) and objective, and write it as a sentence that can be understood "
        "on its own, naming things instead of referring to them with pronouns. Leave out "
        "opinions, impressions and other subjective statements.\n"
        "Step 2. For each fact, write one general yes/no question that asks whether the fact is "
        "true of the image. Keep the fact's tense and any negation, and add nothing that the "
        "fact does not say.\n\n"
        f"{step_3}"
        "Reply with JSON only, in this form: "
        f"{form}"
        'If the answer asserts nothing about the image, reply {"claims": []}.'
    )


def parse_claims(text: str, max_claims: int) -> list[Claim]:
    """The claims in the splitter's output, stripped, without those whose question is empty,
    at most max_claims of them. An output listing no claims is valid and gives []."""
    if not isinstance(text, str):
        raise ClaimsUnparseable(f"the splitter returned {type(text).__name__}, not text")
    try:
        output = msgspec.json.decode(text.strip(), type=_SplitterOutput)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ClaimsUnparseable(f"{exc}; output starts {text[:80]!r}") from None
    claims = [Claim(c.fact.strip(), c.question.strip(), c.quote.strip()) for c in output.claims]
    return [c for c in claims if c.question][:max_claims]


def labeler_question(question: str, suffix: str) -> str:
    """What the labeler is asked: the question, then the answer-format suffix
    (ScoreConfig.question_suffix, " Please answer yes or no." by default)."""
    return question.strip() + suffix
