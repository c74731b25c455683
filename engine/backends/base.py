"""The backend protocol every model stage talks to, and the pieces both backends share.

One backend instance lives in one actor and holds one model. The stages only ever use
these members, so the hf (transformers) and vllm implementations are interchangeable
by config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from PIL import Image

from engine.sampling import SamplingParams

if TYPE_CHECKING:  # transformers is heavy to import; the stages that use this module need it not
    from transformers import PreTrainedTokenizerBase

# The labeler's answer words (docs/algorithms.md §3): p_yes reads P("yes") + P("Yes"), as the
# released autocheck code does; all-caps "YES" is another word and does not count.
YES_WORDS = ("yes", "Yes")
NO_WORDS = ("no", "No")
# How vocabularies spell a word at its start: bare, after a plain space, after SentencePiece's
# "▁" (Llama-2, Vicuna) or after byte-level BPE's "Ġ" for a space (Llama-3, Qwen2).
_WORD_STARTS = ("", " ", "\u2581", "\u0120")
# A printable ASCII character that needs no escape in a JSON string (not " or \\).
_PLAIN_JSON_CHAR = r"[ !#-\[\]-~]"


@dataclass(frozen=True)
class Prompt:
    image: Image.Image | None
    text: str


@dataclass(frozen=True)
class ImageQuestions:
    """Yes/no questions about one image: what score_yes_no takes per row, so a backend sees the
    image once and can compute its prefix once for all of the row's questions."""

    image: Image.Image
    questions: list[str]


@dataclass(frozen=True)
class Completion:
    """One sampled answer. n_tokens counts the generated tokens, the closing eos included
    when the answer ended on it (an answer cut by max_new_tokens has no eos)."""

    text: str
    n_tokens: int
    seed: int


class Backend(Protocol):
    # The most tokens, prompt and answer together, the loaded model takes.
    max_model_len: int

    def prompt_tokens(self, item: Prompt) -> int:
        """How many tokens the model reads for `item`, its image's included, as the processor
        renders it: what a stage checks against max_model_len before asking for an answer."""
        ...

    def sample(
        self, items: list[Prompt], seeds: list[list[int]], params: SamplingParams
    ) -> list[list[Completion]]:
        """Per item, one completion per seed (same order as seeds[i])."""
        ...

    def generate_json(
        self, prompts: list[str], json_schema: dict, params: SamplingParams, seeds: list[int]
    ) -> list[str]:
        """Text-only prompts, each answered with JSON constrained to `json_schema`. Output
        cut by max_new_tokens is returned as is (it will not parse; the caller retries)."""
        ...

    def score_yes_no(self, items: list[ImageQuestions]) -> list[list[tuple[float, float]]]:
        """Per item, (p_yes, p_no) of the answer's first token for each of its questions (an
        item without questions gets []). A stage hands all rows of its batch in one call; an
        item's result depends on that item alone (vLLM on GPU: up to its kernels' rounding)."""
        ...

    def logprobs(self, items: list[Prompt], responses: list[str]) -> list[tuple[float, int]]:
        """Teacher-forced summed log-probability of each response (the template's end-of-turn
        token included) and its token count, encoded by engine.chat.encode_for_logprobs."""
        ...

    def close(self) -> None: ...


def check_sample_args(items: list[Prompt], seeds: list[list[int]]) -> None:
    if len(items) != len(seeds):
        raise ValueError(f"{len(items)} prompts but {len(seeds)} seed lists")


def whole_word_token_ids(tokenizer: PreTrainedTokenizerBase, words: tuple[str, ...]) -> list[int]:
    """The ids of every vocabulary entry that spells one of `words` as one whole token, with
    any of the word-start marks. Encoding the words finds one spelling each (SentencePiece
    turns both "Yes" and " Yes" into "▁Yes"), while an answer may start with any of them."""
    spellings = {start + word for word in words for start in _WORD_STARTS}
    return sorted({token_id for token, token_id in tokenizer.get_vocab().items() if token in spellings})


def yes_no_token_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    """Ids whose probabilities sum to p_yes and to p_no (docs/algorithms.md §3)."""
    yes_ids, no_ids = whole_word_token_ids(tokenizer, YES_WORDS), whole_word_token_ids(tokenizer, NO_WORDS)
    if not yes_ids or not no_ids:
        raise ValueError("the labeler's tokenizer has no single token for yes/Yes or none for no/No")
    return yes_ids, no_ids


def grammar_safe_schema(schema: Any) -> Any:
    """`schema` with every length-bounded string rewritten as a pattern of plain printable
    ASCII characters with the same bounds.

    xgrammar 0.2.8 (the hf backend's and vLLM's grammar engine) compiles minLength/maxLength
    to a rule that admits raw control characters, which no JSON parser accepts, and its
    regex engine admits overlong and surrogate UTF-8, which decodes to U+FFFD and breaks the
    length bound. Plain ASCII (no quote, no backslash) rules out both; claims and questions
    are English sentences, so nothing they need is lost.
    """
    if isinstance(schema, list):
        return [grammar_safe_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    rewritten = {key: grammar_safe_schema(value) for key, value in schema.items()}
    bounded = "minLength" in schema or "maxLength" in schema
    if schema.get("type") == "string" and bounded and "pattern" not in schema:
        low, high = rewritten.pop("minLength", 0), rewritten.pop("maxLength", "")
        rewritten["pattern"] = f"^{_PLAIN_JSON_CHAR}{{{low},{high}}}$"
    return rewritten
