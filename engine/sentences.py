"""Sentences of an answer as character spans, finding a quoted sentence in its answer, and
rewriting an answer sentence by sentence: what segment-level corrections (human-style in the
toy world, AI-made in jobs/correct.py) and token labels are made of."""

from __future__ import annotations

import re
from typing import Mapping

Span = tuple[int, int]

# A sentence: from its first non-space character through . ! or ? before a space or the end
# (so "3.5" and "e.g." inside a word stay whole), or through the end of the text.
_SENTENCE = re.compile(r"\S.*?(?:[.!?](?=\s|$)|$)", re.DOTALL)
_CLOSING = ".!?"


def sentence_spans(text: str) -> list[Span]:
    """(start, end) of each sentence of `text`, in order; the text between them is space."""
    return [(m.start(), m.end()) for m in _SENTENCE.finditer(text)]


def locate_quote(quote: str, text: str, spans: list[Span]) -> list[int]:
    """Indexes of the sentences a verbatim quote of `text` covers; [] when the quote is not in
    it. Spacing may differ and closing punctuation may be left off, nothing else: a quote
    that paraphrases is not found."""
    words = quote.strip().rstrip(_CLOSING).split()
    if not words:
        return []
    match = re.search(r"\s+".join(map(re.escape, words)), text)
    if match is None:
        return []
    return [k for k, (start, end) in enumerate(spans) if start < match.end() and match.start() < end]


def rewrite_sentences(text: str, spans: list[Span], replacements: Mapping[int, str | None]) -> tuple[str, list[dict]]:
    """`text` with sentence k replaced by replacements[k], or removed where that is None, and
    the edits as CORRECTION_SCHEMA character spans (rejected_* in `text`, chosen_* in the
    result). The text between sentences is kept; a removed sentence takes the space before
    it (after it, when it is the first)."""
    out: list[str] = []
    edits: list[dict] = []
    cursor = 0
    for k in sorted(replacements):
        start, end = spans[k]
        new = replacements[k]
        if new is None:
            if k:
                start = max(spans[k - 1][1], cursor)
            elif len(spans) > 1:
                end = spans[1][0]
        out.append(text[cursor:start])
        chosen_start = sum(map(len, out))
        if new is not None:
            out.append(new)
        edits.append({"rejected_start": start, "rejected_end": end,
                      "chosen_start": chosen_start, "chosen_end": sum(map(len, out))})
        cursor = end
    out.append(text[cursor:])
    return "".join(out), edits
