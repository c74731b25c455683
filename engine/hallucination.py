"""Object-hallucination metrics (docs/algorithms.md §8): CHAIR_s / CHAIR_i over descriptions, and
the yes/no probing scores (accuracy, precision, recall, F1, yes-ratio) of AMBER's discriminative task.

Pure functions; the vocabulary is data we ship, data/vocab/objects.json, in named groups:

- "coco": the 80 COCO categories with the original CHAIR's word rules, carried over in
  data/vocab/coco_chair.json and read by engine.chair_words: its synonym table ("puppy" -> dog),
  and the phrases read as one word before single words ("hot dog" is no dog, "baby elephant"
  no person, "passenger train" a train, "toilet seat" a toilet, "train track" nothing), each
  with its plural; a "seat" in a description that names a toilet is no chair.
- "scenes": the synthetic scenes' world (engine.vocabulary). An object there is a colour and a
  shape, "red circle", not "circle": that is what a scene's ground truth lists, what its
  "absent" prompts ask about, and a red circle described as blue is an invented object. Bare
  shapes ("a circle") are objects too, implied by every coloured one ("implies"), so "a
  circle" is correct wherever any circle is drawn and a hallucination where none is.

Mentions are found by longest match over lower-cased word tokens, so a multi-word form wins
over the words inside it ("orange star" is one scene object, not the fruit). Every occurrence
is a mention: as in the original CHAIR, a hallucinated object named twice counts twice in
CHAIR_i.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

from engine import chair_words

from engine.pairing import accepts

VOCABULARY_PATH = Path(__file__).resolve().parent.parent / "data" / "vocab" / "objects.json"
_WORD = re.compile(r"[a-z0-9]+")


def tokenize(text: str) -> tuple[str, ...]:
    """Lower-cased alphanumeric words: punctuation, hyphens and apostrophes split words
    ("hot-dog" reads as "hot dog", "dog's" as "dog s")."""
    return tuple(_WORD.findall(text.lower()))


class Form(NamedTuple):
    """What a surface form reads as: the listed word ("puppies" -> "puppy", "toilet seat" ->
    "toilet"), which the drop rules look at, and its object (None: a phrase naming none)."""

    word: str
    object: str | None


@dataclass(frozen=True)
class Vocabulary:
    groups: tuple[str, ...]
    forms: dict[tuple[str, ...], Form]  # tokenised surface form -> its reading
    implies: dict[str, frozenset[str]]  # object -> objects its presence entails
    dropped_with: dict[str, frozenset[str]]  # word -> words whose presence uncounts it
    longest: int  # tokens in the longest form

    @property
    def objects(self) -> frozenset[str]:
        return frozenset(form.object for form in self.forms.values() if form.object is not None)

    def canonical(self, name: str) -> str | None:
        """The canonical object a whole name denotes ("puppies" -> "dog"), or None."""
        form = self.forms.get(tokenize(name))
        return form.object if form else None


@dataclass(frozen=True)
class _Group:
    forms: dict[str, Form]
    implies: dict[str, list[str]]
    dropped_with: dict[str, list[str]]


@lru_cache(maxsize=1)
def _vocabulary_data(path: str) -> dict:
    return json.loads(Path(path).read_text())["groups"]


@lru_cache(maxsize=None)
def _load_group(path: str, group: str) -> _Group:
    """One group's forms: listed ("objects"), or made from CHAIR rules in a sibling file."""
    data = _vocabulary_data(path)[group]
    if "chair_rules" in data:
        rules = json.loads((Path(path).parent / data["chair_rules"]).read_text())
        forms = {surface: Form(*reading) for surface, reading in chair_words.surface_forms(rules).items()}
        return _Group(forms, {}, rules["dropped_with"])
    forms = {
        form: Form(name, name) for name, surface_forms in data["objects"].items() for form in [name, *surface_forms]
    }
    return _Group(forms, data["implies"], {})


def vocabulary_groups(path: str | Path = VOCABULARY_PATH) -> tuple[str, ...]:
    return tuple(_vocabulary_data(str(path)))


def load_vocabulary(groups: Sequence[str], path: str | Path = VOCABULARY_PATH) -> Vocabulary:
    """The union of the named groups. A surface form that two groups give to different
    objects is an error: extraction would otherwise depend on group order."""
    known = vocabulary_groups(path)
    unknown = [g for g in groups if g not in known]
    if not groups or unknown:
        raise ValueError(f"vocabulary groups must be a non-empty selection of {sorted(known)}, got {list(groups)}")
    forms: dict[tuple[str, ...], Form] = {}
    implies: dict[str, frozenset[str]] = {}
    dropped_with: dict[str, frozenset[str]] = {}
    for group_name in groups:
        group = _load_group(str(path), group_name)
        for surface, form in group.forms.items():
            tokens = tokenize(surface)
            if forms.setdefault(tokens, form).object != form.object:
                raise ValueError(f"vocabulary form {surface!r} names both {forms[tokens].object!r} and {form.object!r}")
        implies.update({name: frozenset(parents) for name, parents in group.implies.items()})
        dropped_with.update({word: frozenset(others) for word, others in group.dropped_with.items()})
    return Vocabulary(tuple(groups), forms, implies, dropped_with, max(len(tokens) for tokens in forms))


def groups_for(ground_truth: Iterable[Iterable[str]], path: str | Path = VOCABULARY_PATH) -> tuple[str, ...]:
    """The groups that name at least one ground-truth object (all groups if none does), so a
    scenes set is read with the scenes' words only and "the star is orange" is no fruit."""
    names = {name for objects in ground_truth for name in objects}
    chosen = tuple(g for g in vocabulary_groups(path) if any(load_vocabulary([g], path).canonical(n) for n in names))
    return chosen or vocabulary_groups(path)


def _readings(tokens: Sequence[str], vocab: Vocabulary) -> list[Form]:
    """The forms found in `tokens`, longest first at each position, left to right."""
    found, i = [], 0
    while i < len(tokens):
        for width in range(min(vocab.longest, len(tokens) - i), 0, -1):
            form = vocab.forms.get(tuple(tokens[i : i + width]))
            if form is not None:
                found.append(form)
                i += width
                break
        else:
            i += 1
    return found


def extract_mentions(text: str, vocab: Vocabulary) -> list[str]:
    """Canonical objects mentioned in `text`, one entry per occurrence, in order; a word is
    not counted where a word it is dropped with also occurs ("seat" beside "toilet")."""
    readings = _readings(tokenize(text), vocab)
    words = {form.word for form in readings}
    return [
        form.object
        for form in readings
        if form.object is not None and not vocab.dropped_with.get(form.word, frozenset()) & words
    ]


def listed_objects(objects: Iterable[str], vocab: Vocabulary) -> frozenset[str]:
    """Canonical names of a ground-truth list. A name the vocabulary does not know stays
    (normalised): it can never be mentioned, but it still counts as present."""
    return frozenset(vocab.canonical(name) or " ".join(tokenize(name)) for name in objects)


def ground_truth_set(objects: Iterable[str], vocab: Vocabulary) -> frozenset[str]:
    """The listed objects and everything they imply ("red circle" -> also "circle")."""
    present = set(listed_objects(objects, vocab))
    frontier = set(present)
    while frontier:
        frontier = {p for name in frontier for p in vocab.implies.get(name, ())} - present
        present |= frontier
    return frozenset(present)


def hallucinated(mentions: Sequence[str], truth: frozenset[str]) -> list[str]:
    """The mentions (each occurrence) of objects not in the ground truth."""
    return [name for name in mentions if name not in truth]


def _ratio(numerator: float, denominator: float) -> float:
    """0 where nothing was counted (no mentions, no "no" answers), as the reference scripts."""
    return numerator / denominator if denominator else 0.0


def chair(mentions: Sequence[Sequence[str]], hallucinations: Sequence[Sequence[str]]) -> dict:
    """CHAIR over a set of responses, from each response's mentions and hallucinated mentions.

    chair_s = responses with >= 1 hallucinated mention / all responses (one without any
    mention counts, as not hallucinating); chair_i = hallucinated mentions / all mentions,
    summed over the set (the original CHAIR's corpus-level ratio, not a mean of per-response
    ratios)."""
    if len(mentions) != len(hallucinations):
        raise ValueError(f"{len(mentions)} mention lists but {len(hallucinations)} hallucination lists")
    n_mentions = sum(len(m) for m in mentions)
    n_hallucinated = sum(len(h) for h in hallucinations)
    n_responses_hallucinated = sum(1 for h in hallucinations if h)
    return {
        "chair_s": _ratio(n_responses_hallucinated, len(mentions)),
        "chair_i": _ratio(n_hallucinated, n_mentions),
        "responses": len(mentions),
        "responses_hallucinated": n_responses_hallucinated,
        "mentions": n_mentions,
        "mentions_hallucinated": n_hallucinated,
    }


def coverage(mentions: Sequence[Sequence[str]], listed: Sequence[frozenset[str]]) -> float:
    """Share of the listed ground-truth objects (listed_objects) that the responses mention:
    CHAIR's recall, the check that a low CHAIR is not bought by saying nothing."""
    return _ratio(sum(len(t & set(m)) for m, t in zip(mentions, listed)), sum(len(t) for t in listed))


def says_yes(p_yes: float, p_no: float) -> bool:
    """The answer read from the yes/no probabilities, by the labeler's own rule (a tie is "no",
    docs/algorithms.md §3)."""
    return accepts(p_yes, p_no)


def probe_metrics(truths: Sequence[bool], answers: Sequence[bool]) -> dict:
    """Yes/no probing scores, truths[k] / answers[k] True meaning "yes, it is there".

    As AMBER's discriminative task, "no" is the positive class (the model catching an absent
    object): precision = correct "no" / answered "no", recall = correct "no" / truly absent.
    yes_ratio (POPE) is the share answered "yes"; near 1 means a model that agrees to anything.
    """
    if len(truths) != len(answers):
        raise ValueError(f"{len(truths)} truths but {len(answers)} answers")
    n = len(truths)
    correct = sum(t == a for t, a in zip(truths, answers))
    true_no = sum(not t and not a for t, a in zip(truths, answers))
    answered_no = sum(not a for a in answers)
    absent = sum(not t for t in truths)
    precision, recall = _ratio(true_no, answered_no), _ratio(true_no, absent)
    return {
        "probes": n,
        "accuracy": _ratio(correct, n),
        "precision": precision,
        "recall": recall,
        "f1": _ratio(2 * precision * recall, precision + recall),
        "yes_ratio": _ratio(n - answered_no, n),
    }


def with_article(name: str) -> str:
    """An object name as a question or claim uses it: "an orange star", "a dog"."""
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"
