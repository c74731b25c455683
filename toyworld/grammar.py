"""The scene language: its object claims, shared by the toy policy's training data and the
grammar splitter, so the labeler is asked exactly the questions it was trained on, and the
sentences it is made of. Objects are found as engine.hallucination finds them, so every
mention CHAIR counts is a claim to check."""

from __future__ import annotations

import re
from functools import cache

from engine import hallucination
from engine.scenes import SceneObject, describe
from engine.vocabulary import COLOURS, POSITIONS, SHAPES

VOCABULARY_GROUP = "scenes"
_SENTENCE_END = re.compile(r"(?<=\.)\s+")


def existence_fact(name: str) -> str:
    return f"There is {hallucination.with_article(name)} in the image."


def existence_question(name: str) -> str:
    return f"Is there {hallucination.with_article(name)} in the image?"


@cache
def _vocabulary() -> hallucination.Vocabulary:
    return hallucination.load_vocabulary([VOCABULARY_GROUP])


def mentioned_objects(text: str) -> list[str]:
    """The scene objects `text` names ("red circle", or a bare "circle"), one per mention, in order."""
    return hallucination.extract_mentions(text, _vocabulary())


@cache
def _sentences() -> frozenset[str]:
    """Every sentence of the scene grammar, as engine.scenes.describe writes them."""
    return frozenset(describe((SceneObject(c, s, p),)) for c in COLOURS for s in SHAPES for p in POSITIONS)


@cache
def _sentence_starts() -> frozenset[str]:
    return frozenset(sentence[:k] for sentence in _sentences() for k in range(1, len(sentence)))


def outside_grammar(text: str) -> str | None:
    """The first sentence of `text` that is not a scene-grammar sentence, or None. A last
    sentence cut off by the token limit passes when it is the start of a grammatical one."""
    pieces = _SENTENCE_END.split(text.strip()) if text.strip() else []
    for k, piece in enumerate(pieces):
        if piece in _sentences() or (k == len(pieces) - 1 and piece in _sentence_starts()):
            continue
        return piece
    return None


def grammatical_share(descriptions: list[str]) -> float:
    """Share of the descriptions written wholly in the scene grammar: the check that a lower
    CHAIR is not bought with broken sentences, which CHAIR reads as vaguer mentions."""
    return sum(outside_grammar(text) is None for text in descriptions) / len(descriptions) if descriptions else 0.0
