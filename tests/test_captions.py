"""Caption metrics: the Java-free PTB step tokenises as the COCO evaluation does, and the scores
are pycocoevalcap's own."""

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider

from engine.captions import caption_scores, ptb_tokenize
from engine.evaluation_format import format_metrics


@pytest.mark.parametrize("text, tokens", [
    # lower-cased; . , ; : ? ! and quotes are PTB tokens the COCO step removes
    ("A man, riding a horse.", "a man riding a horse"),
    ('She said: "Hello!" -- then left?', "she said hello then left"),
    # clitics become tokens of their own and stay (they are not in the punctuation list)
    ("The dog's ball isn't red.", "the dog 's ball is n't red"),
    # brackets become -LRB- / -RRB- and are removed; an ellipsis is one token, removed
    ("A cat (white) sleeps...", "a cat white sleeps"),
    # hyphenated words, decimals, thousands and abbreviations stay whole
    ("A black-and-white photo of 3.5 U.S. flags, 1,000 in all; wow", "a black-and-white photo of 3.5 u.s. flags 1,000 in all wow"),
    # symbols outside the list are tokens that stay
    ("50% off & more", "50 % off & more"),
    ("\u201cCurly\u201d quotes\u2019 end", "curly quotes end"),
])
def test_tokenisation_is_the_coco_ptb_step(text, tokens):
    assert ptb_tokenize(text) == tokens


DESCRIPTIONS = ["A red circle at the top, and a blue star.", "Two dogs play in the park!", "a cat on a mat"]
REFERENCES = [["There is a red circle at the top. There is a blue star at the center."],
              ["Two dogs are playing in a park.", "Dogs play on the grass."],
              ["A cat sits on a mat.", "A cat lying on a red mat.", "The cat is on the mat."]]


def test_scores_are_pycocoevalcaps_own():
    gts = {k: [ptb_tokenize(r) for r in refs] for k, refs in enumerate(REFERENCES)}
    res = {k: [ptb_tokenize(d)] for k, d in enumerate(DESCRIPTIONS)}
    cider, _ = Cider().compute_score(gts, res)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    scores = caption_scores(DESCRIPTIONS, REFERENCES)
    assert scores == {"cider": float(cider), "bleu_4": float(bleu[3])}
    assert 0 < scores["bleu_4"] < 1 and scores["cider"] > 0


def test_bleu_4_by_hand():
    # 4 of 5 unigrams, 3 of 4 bigrams, 2 of 3 trigrams, 1 of 2 four-grams match; equal lengths,
    # so no brevity penalty: BLEU-4 = (4/5 * 3/4 * 2/3 * 1/2) ** (1/4).
    scores = caption_scores(["A b c d e."], [["a b c d f"]])
    assert scores["bleu_4"] == pytest.approx(0.2 ** 0.25, rel=1e-6)
    assert caption_scores(["a b c d e", "x y z w"], [["a b c d e"], ["x y z w"]])["bleu_4"] == pytest.approx(1.0)


def test_without_references_the_scores_are_none():
    assert caption_scores([], []) == {"cider": None, "bleu_4": None}
    lines = format_metrics({"chair_s": 0.5, "cider": None, "bleu_4": None})
    assert lines[1].split() == ["cider", "(no", "references)"] and "(no references)" in lines[2]
    with pytest.raises(ValueError, match="reference lists"):
        caption_scores(["a"], [])
