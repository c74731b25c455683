"""The original CHAIR's COCO word rules (docs/algorithms.md §8) as surface forms.

CHAIR (Rohrbach et al. 2018) singularises every word of a description, reads two-word phrases
that name one thing first ("hot dog"; "baby elephant" and "passenger train" as the animal and
the vehicle, not a person; "toilet seat" as a toilet), then the single words, each through its
COCO synonym table. This project matches surface forms instead of singularising, so the rules
become a table: every listed word and phrase, and its plural, read as the word it stands for
and that word's COCO category. A phrase that names no category ("train track", "baby animal")
stays in the table with no category, so its words are not read alone either.
"""

from __future__ import annotations

import re

_SIBILANT_END = re.compile(r"(s|x|z|ch|sh)$")
_CONSONANT_Y_END = re.compile(r"[^aeiou]y$")


def plural(phrase: str, irregular: dict[str, str]) -> str:
    """The phrase with its last word in the plural: the irregular table, else English's
    regular endings ("bench" -> "benches", "pony" -> "ponies", "dog" -> "dogs")."""
    head, _, last = phrase.rpartition(" ")
    if last in irregular:
        last = irregular[last]
    elif _SIBILANT_END.search(last):
        last += "es"
    elif _CONSONANT_Y_END.search(last):
        last = last[:-1] + "ies"
    else:
        last += "s"
    return f"{head} {last}" if head else last


def _phrase_words(rules: dict) -> dict[str, str]:
    """Each listed phrase -> the word it reads as, later rules overriding earlier ones as in
    the original (the renamed phrases last, so "bow tie" reads as "tie")."""
    words = {phrase: phrase for phrase in rules["double_words"]}
    for group in rules["qualified_words"].values():
        words.update({f"{q} {w}": w for q in group["qualifiers"] for w in group["words"]})
    words.update(rules["renamed_double_words"])
    return words


def surface_forms(rules: dict) -> dict[str, tuple[str, str | None]]:
    """Every surface form of the CHAIR tables -> (the word it reads as, that word's COCO
    category or None). Phrases come first, as the original reads them first; a plural that
    equals an earlier form keeps the earlier reading."""
    category = {word: line[0] for line in rules["synonyms"] for word in line}
    readings = _phrase_words(rules)
    for word in category:
        readings.setdefault(word, word)
    forms: dict[str, tuple[str, str | None]] = {}
    for phrase, word in readings.items():
        for form in (phrase, plural(phrase, rules["irregular_plurals"])):
            forms.setdefault(form, (word, category.get(word)))
    return forms
