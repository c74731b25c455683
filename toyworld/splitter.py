"""A toy-world claim splitter: the scene grammar parsed by rules, behind the backend protocol.

Clearly a toy: no LLM. On real models the split stage asks an instruction-tuned LLM; here the
answers are written in the scene grammar ("There is a red circle at the top left."), so a
parser finds every object they name, exactly, and the method's other parts (sampling, the
labeler's yes/no, pairs, DPO) are what the toy run tests. Each mentioned object becomes one
claim ("There is a red circle in the image." / "Is there a red circle in the image?"), one
per mention as CHAIR_i counts them; places are not claims, since CHAIR does not score them.

An answer with a sentence outside the scene grammar ("There square at the top.") is not split:
the splitter says so instead of replying JSON, and the split stage diverts the answer as
unparseable_claims with that sentence. An LLM splitter would have turned such a sentence into a
claim with its place, which the toy labeler was not trained to check; read as a bare
"Is there a square in the image?" instead, it is an easier claim than the grammatical one, and
DPO learned to drop colours and words to earn it.

Selected by models.splitter.backend = "toy-grammar" (engine.backends.make_backend's table).
"""

from __future__ import annotations

import json
import re

from engine.backends.base import Completion, ImageQuestions, Prompt, SamplingParams
from engine.config import ModelConfig
from engine.sentences import sentence_spans
from toyworld.grammar import existence_fact, existence_question, mentioned_objects, outside_grammar

# The answer line of engine.claims.splitter_prompt.
_ANSWER = re.compile(r"^Answer: (.*?)\n\nStep 1\.", re.DOTALL | re.MULTILINE)


def split_scene_answer(answer: str, quotes: bool = False) -> list[dict[str, str]]:
    """The claims of one answer in the scene grammar, one per object mention, in order; with
    `quotes`, each quoting the sentence that names its object (exact: a mention never spans
    two sentences)."""
    if not quotes:
        return [_claim(name) for name in mentioned_objects(answer)]
    sentences = [answer[start:end] for start, end in sentence_spans(answer)]
    return [{"quote": sentence, **_claim(name)} for sentence in sentences for name in mentioned_objects(sentence)]


def _claim(name: str) -> dict[str, str]:
    return {"fact": existence_fact(name), "question": existence_question(name)}


class SceneGrammarSplitter:
    """Answers generate_json by parsing the answer quoted in the splitter prompt; the JSON is
    what engine.claims parses, cut to the schema's maxItems, or a one-line refusal naming the
    first sentence outside the grammar."""

    def __init__(self, path: str, model_cfg: ModelConfig) -> None:
        """The signature every backend class has; the rules need no model, so both go unused."""

    def generate_json(self, prompts: list[str], json_schema: dict, params: SamplingParams,
                      seeds: list[int]) -> list[str]:
        max_items = json_schema["properties"]["claims"].get("maxItems")
        quotes = "quote" in json_schema["properties"]["claims"]["items"]["properties"]
        outputs = []
        for prompt in prompts:
            match = _ANSWER.search(prompt)
            if match is None:
                raise ValueError("the grammar splitter found no 'Answer: ...' line in its prompt")
            stray = outside_grammar(match[1])
            if stray is not None:
                outputs.append(f"not in the scene grammar: {stray!r}")
                continue
            claims = split_scene_answer(match[1], quotes)[:max_items]
            outputs.append(json.dumps({"claims": claims}, separators=(",", ":")))
        return outputs

    def sample(self, items: list[Prompt], seeds: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        raise NotImplementedError("the grammar splitter only splits claims")

    def score_yes_no(self, items: list[ImageQuestions]) -> list[list[tuple[float, float]]]:
        raise NotImplementedError("the grammar splitter only splits claims")

    def logprobs(self, items: list[Prompt], responses: list[str]) -> list[tuple[float, int]]:
        raise NotImplementedError("the grammar splitter only splits claims")

    def close(self) -> None:
        pass
