"""DDPO's changed tokens y_c (docs/algorithms.md §6): which response tokens of a pair count as
changed, from a diff of the chosen (corrected) and rejected (original) token ids.

Two readings of RLHF-V exist, chosen by train.ddpo_mask:

- "all_edits", the paper's text: every token of an inserted, deleted or replaced run is
  changed, each side marking its own tokens.
- "released", the authors' released code: only runs edited on BOTH sides (replacements) are
  changed; a pure insertion or pure deletion marks nothing. A matching run shorter than
  RELEASED_MIN_ANCHOR tokens does not split an edit in two: it is folded into the edited
  span around it, so two replacements one or two tokens apart mark one span.
"""

from __future__ import annotations

import difflib
from typing import Callable, Sequence

Masks = tuple[list[bool], list[bool]]  # (chosen tokens changed, rejected tokens changed)

# The released code's minimum match size: shorter common runs count as part of the edit.
RELEASED_MIN_ANCHOR = 3


def all_edit_masks(chosen_ids: Sequence[int], rejected_ids: Sequence[int]) -> Masks:
    """Tokens inside any non-equal opcode (replace, delete, insert) are changed."""
    chosen_changed = [False] * len(chosen_ids)
    rejected_changed = [False] * len(rejected_ids)
    matcher = difflib.SequenceMatcher(a=list(chosen_ids), b=list(rejected_ids), autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag != "equal":
            chosen_changed[i1:i2] = [True] * (i2 - i1)
            rejected_changed[j1:j2] = [True] * (j2 - j1)
    return chosen_changed, rejected_changed


def released_edit_masks(chosen_ids: Sequence[int], rejected_ids: Sequence[int],
                        min_anchor: int = RELEASED_MIN_ANCHOR) -> Masks:
    """Tokens between two anchors are changed when the gap is non-empty on both sides.

    Anchors are the matching runs of at least min_anchor tokens of a diff of rejected against
    chosen (the released code's argument order, which decides ties between equally long
    matches), plus the end of both sequences; a shorter match is never an anchor, even when
    it is the whole of two short answers. The gap before each anchor holds what was
    edited since the previous one: a gap on one side only is an insertion or deletion and
    stays unmarked.
    """
    chosen_changed = [False] * len(chosen_ids)
    rejected_changed = [False] * len(rejected_ids)
    matcher = difflib.SequenceMatcher(a=list(rejected_ids), b=list(chosen_ids), autojunk=False)
    # get_matching_blocks ends with a zero-size block at (len(rejected), len(chosen)): it
    # closes the gap after the last anchor.
    anchors = [block for block in matcher.get_matching_blocks() if block.size >= min_anchor or block.size == 0]
    rejected_gap_start = chosen_gap_start = 0
    for rejected_start, chosen_start, size in anchors:
        if rejected_start > rejected_gap_start and chosen_start > chosen_gap_start:
            rejected_changed[rejected_gap_start:rejected_start] = [True] * (rejected_start - rejected_gap_start)
            chosen_changed[chosen_gap_start:chosen_start] = [True] * (chosen_start - chosen_gap_start)
        rejected_gap_start, chosen_gap_start = rejected_start + size, chosen_start + size
    return chosen_changed, rejected_changed


# train.ddpo_mask -> its mask function.
DDPO_MASKS: dict[str, Callable[[Sequence[int], Sequence[int]], Masks]] = {
    "all_edits": all_edit_masks,
    "released": released_edit_masks,
}
