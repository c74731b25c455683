"""Per-token labels for the token-level reward model (docs/algorithms.md §9), from RLHF-V-style
corrections: the original answer's tokens before the first edit are good, the first edited span
is bad, the corrected answer's tokens through its first replacement are good, and everything
after the first edit stays unlabelled, because a correction only vouches for its first fix.

A label is 1 (good), 0 (bad) or None (unlabelled). The diff is difflib's over token ids, as
DDPO's changed-token masks (train/ddpo_masks.py) take it.
"""

from __future__ import annotations

import difflib
from typing import Sequence

Labels = list[int | None]


def correction_token_labels(original_ids: Sequence[int], corrected_ids: Sequence[int]) -> tuple[Labels, Labels]:
    """(labels of the original answer's tokens, labels of the corrected answer's tokens).

    Where the correction only inserts text, the original token at the insertion point is where
    the two first differ and is the bad one; an insertion at the very end marks no original
    token. Identical answers have no edit: every token of both is good.
    """
    matcher = difflib.SequenceMatcher(a=list(original_ids), b=list(corrected_ids), autojunk=False)
    first = next(((i1, i2, j1, j2) for tag, i1, i2, j1, j2 in matcher.get_opcodes() if tag != "equal"), None)
    if first is None:
        return [1] * len(original_ids), [1] * len(corrected_ids)
    i1, i2, j1, j2 = first
    bad_end = min(max(i2, i1 + 1), len(original_ids))
    original = [1] * i1 + [0] * (bad_end - i1) + [None] * (len(original_ids) - bad_end)
    corrected = [1] * j2 + [None] * (len(corrected_ids) - j2)
    return original, corrected
