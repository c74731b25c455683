"""DDPO's changed-token masks on hand-made token ids: the released code's reading (only spans
edited on both sides, short matches folded into the edit) and the paper's (every edit)."""

from __future__ import annotations

from train.ddpo_masks import all_edit_masks, released_edit_masks

T, F = True, False


def test_released_pure_deletion_marks_nothing():
    # the corrected answer drops the rejected answer's 9 9
    assert released_edit_masks([1, 2, 3, 4, 5, 6], [1, 2, 3, 9, 9, 4, 5, 6]) == ([F] * 6, [F] * 8)


def test_released_pure_insertion_marks_nothing():
    # the corrected answer adds 9 9
    assert released_edit_masks([1, 2, 3, 9, 9, 4, 5, 6], [1, 2, 3, 4, 5, 6]) == ([F] * 8, [F] * 6)


def test_released_replacement_marks_the_replaced_tokens_on_both_sides():
    chosen, rejected = released_edit_masks([1, 2, 3, 7, 4, 5, 6], [1, 2, 3, 8, 8, 4, 5, 6])
    assert chosen == [F, F, F, T, F, F, F]
    assert rejected == [F, F, F, T, T, F, F, F]


def test_released_replacements_at_the_ends():
    assert released_edit_masks([7, 1, 2, 3, 8], [9, 1, 2, 3, 6]) == ([T, F, F, F, T], [T, F, F, F, T])


def test_released_folds_a_two_token_match_between_edits_but_not_a_three_token_one():
    # 7 -> 8 and 7 -> 8 around the common run 4 5: too short to separate them, one span is marked
    chosen, rejected = released_edit_masks([1, 2, 3, 7, 4, 5, 7, 1, 2, 3], [1, 2, 3, 8, 4, 5, 8, 1, 2, 3])
    assert chosen == rejected == [F, F, F, T, T, T, T, F, F, F]
    # with the common run 4 5 6 between them, the two replacements are marked apart
    chosen, rejected = released_edit_masks([1, 2, 3, 7, 4, 5, 6, 7, 1, 2, 3], [1, 2, 3, 8, 4, 5, 6, 8, 1, 2, 3])
    assert chosen == rejected == [F, F, F, T, F, F, F, T, F, F, F]


def test_released_folding_can_turn_an_insertion_into_a_marked_edit():
    # 9 is inserted next to a replacement 7 -> 8 that a 1-token match (4) separates from it
    chosen, rejected = released_edit_masks([1, 2, 3, 7, 4, 9, 5, 6, 0], [1, 2, 3, 8, 4, 5, 6, 0])
    assert chosen == [F, F, F, T, T, T, F, F, F]
    assert rejected == [F, F, F, T, T, F, F, F]


def test_identical_answers_mark_nothing():
    assert released_edit_masks([7, 8, 9], [7, 8, 9]) == all_edit_masks([7, 8, 9], [7, 8, 9]) == ([F] * 3, [F] * 3)


def test_all_edits_marks_replacements_insertions_and_deletions():
    assert all_edit_masks([1, 2, 3, 4], [1, 5, 3, 4]) == ([F, T, F, F], [F, T, F, F])  # replacement
    assert all_edit_masks([1, 2, 3], [1, 3]) == ([F, T, F], [F, F])  # the corrected answer inserts 2
    assert all_edit_masks([1, 3], [1, 2, 3]) == ([F, F], [F, T, F])  # the corrected answer deletes 2
