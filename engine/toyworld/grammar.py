"""The scene language's object claims, shared by the toy policy's training data and the grammar
splitter, so the labeler is asked exactly the questions it was trained on. Objects are found
as engine.hallucination finds them, so every mention CHAIR counts is a claim to check."""

from __future__ import annotations

from functools import cache

from engine import hallucination

VOCABULARY_GROUP = "scenes"


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
