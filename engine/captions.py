"""Caption quality beside CHAIR (docs/algorithms.md §8): CIDEr-D and BLEU-4 of descriptions
against reference descriptions, by pycocoevalcap's own scorers, so a lower CHAIR can be seen
not to cost description quality.

The COCO evaluation tokenises with Stanford's PTBTokenizer (Java) and then drops the tokens in
its PUNCTUATIONS list. `ptb_tokenize` does that step in Python: PTB-style splitting, with the
list itself imported from pycocoevalcap, so no Java is needed.
"""

from __future__ import annotations

import re
from typing import Sequence

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS

CAPTION_KEYS = ("cider", "bleu_4")

# What PTBTokenizer writes for brackets and straight double quotes (it turns '"' into `` or '').
_PTB_SYMBOLS = {"(": "-LRB-", ")": "-RRB-", "[": "-LSB-", "]": "-RSB-", "{": "-LCB-", "}": "-RCB-", '"': "''"}
_CURLY = str.maketrans({"\u2018": "`", "\u2019": "'", "\u201c": "``", "\u201d": "''"})
_LETTERS = r"[^\W_]"
_TOKEN = re.compile(
    rf"\d+(?:[.,]\d+)+"  # numbers keep their decimal point and thousands commas: 3.5, 1,000
    rf"|(?:{_LETTERS}\.){{2,}}"  # abbreviations keep their periods: u.s.
    rf"|{_LETTERS}+(?=n't)|n't"  # isn't -> is n't
    rf"|'(?:s|re|ve|ll|d|m)(?!{_LETTERS})"  # clitics are tokens: dog's -> dog 's
    rf"|{_LETTERS}+(?:-{_LETTERS}+)*"  # words keep their inner hyphens: hot-dog
    rf"|\.\.\.|--|``|''"
    rf"|\S"  # any other character is a token of its own
)


def ptb_tokenize(text: str) -> str:
    """Lower-cased PTB-style tokens without the COCO evaluation's punctuation tokens, joined by
    spaces: what pycocoevalcap's PTBTokenizer hands its scorers."""
    tokens = (_PTB_SYMBOLS.get(token, token) for token in _TOKEN.findall(text.translate(_CURLY).lower()))
    return " ".join(token.lower() for token in tokens if token not in PUNCTUATIONS)


def caption_scores(descriptions: Sequence[str], references: Sequence[Sequence[str]]) -> dict:
    """Corpus CIDEr-D and BLEU-4 of descriptions[k] against references[k] (each a non-empty
    list); None for both when there are no descriptions. CIDEr-D's document frequencies come
    from these references, so its value depends on the whole set scored."""
    if len(descriptions) != len(references):
        raise ValueError(f"{len(descriptions)} descriptions but {len(references)} reference lists")
    if not descriptions:
        return {"cider": None, "bleu_4": None}
    gts = {k: [ptb_tokenize(ref) for ref in refs] for k, refs in enumerate(references)}
    res = {k: [ptb_tokenize(text)] for k, text in enumerate(descriptions)}
    cider, _ = Cider().compute_score(gts, res)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return {"cider": float(cider), "bleu_4": float(bleu[3])}
