"""Combine (docs/algorithms.md §4): answer scores, preference pairs per instruction, and the
length-balancing pass over an iteration's pairs. Pure functions on plain data."""

from __future__ import annotations

import hashlib
import math
import random
from itertools import combinations

DROP_RULES = ("gap_too_small", "equal_text", "over_per_instruction_cap")


def accepts(p_yes: float, p_no: float) -> bool:
    """The labeler's verdict on one claim: accepted only when p_yes > p_no. A tie is rejected,
    as in the released code: an undecided labeler is no evidence that the claim holds."""
    return p_yes > p_no


def pair_id(iteration: int, instruction_id: str, chosen: int, rejected: int) -> str:
    """A pair's stable id: the same pair of the same iteration gets the same id on a re-run."""
    return hashlib.blake2b(f"{iteration}/{instruction_id}/{chosen}/{rejected}".encode(), digest_size=8).hexdigest()


def answer_score(p_yes: list[float], p_no: list[float]) -> tuple[int, int]:
    """(score, n_rejected) of one answer from its claims' labeler probabilities:
    score = -n_rejected. An answer with no claims never gets here (the split stage diverts it
    as `no_claims`), unless the ablation split.score_claimless_answers lets it score 0."""
    n_rejected = sum(not accepts(yes, no) for yes, no in zip(p_yes, p_no, strict=True))
    return -n_rejected, n_rejected


def make_pairs(answers: list[str], scores: list[int], min_score_gap: int, pairs_per_instruction: int,
               rng_seed: int) -> tuple[list[tuple[int, int]], dict[str, int]]:
    """(chosen, rejected) index pairs of one instruction, and how many pairs each rule dropped
    (keys DROP_RULES).

    The rules, in this order:
      1. every unordered pair i < j whose scores differ by less than min_score_gap is dropped
         (gap_too_small); otherwise the higher score is chosen;
      2. a pair whose two texts are equal after strip() is dropped (equal_text). This comes
         before the cap, so duplicate answers never take up one of its slots;
      3. if more than pairs_per_instruction pairs remain, that many are drawn with
         random.Random(rng_seed).sample over the remaining pairs in (i, j) order
         (over_per_instruction_cap counts the rest).
    The result lists pairs in (i, j) order of the unordered pair, so it is reproducible.
    """
    if len(answers) != len(scores):
        raise ValueError(f"{len(answers)} answers but {len(scores)} scores")
    if min_score_gap < 1:
        raise ValueError(f"min_score_gap must be >= 1 (a pair needs a better answer), got {min_score_gap}")
    if pairs_per_instruction < 0:
        raise ValueError(f"pairs_per_instruction must be >= 0, got {pairs_per_instruction}")
    dropped = dict.fromkeys(DROP_RULES, 0)
    candidates = []
    for i, j in combinations(range(len(answers)), 2):
        if abs(scores[i] - scores[j]) < min_score_gap:
            dropped["gap_too_small"] += 1
            continue
        chosen, rejected = (i, j) if scores[i] > scores[j] else (j, i)
        if answers[chosen].strip() == answers[rejected].strip():
            dropped["equal_text"] += 1
            continue
        candidates.append((chosen, rejected))
    if len(candidates) > pairs_per_instruction:
        drawn = random.Random(rng_seed).sample(range(len(candidates)), pairs_per_instruction)
        dropped["over_per_instruction_cap"] = len(candidates) - pairs_per_instruction
        candidates = [candidates[k] for k in sorted(drawn)]
    return candidates, dropped


def word_count(text: str) -> int:
    """Length of an answer for length balancing: whitespace-separated words."""
    return len(text.split())


def balance_ratios(step: float) -> list[float]:
    """The ratios tried: 0, step, 2*step, ... while < 1. Each is k * step rounded, so that
    float error cannot add or lose a ratio (0.02 * 50 must not land just under 1)."""
    if not 0 < step < 1:
        raise ValueError(f"the balance ratio step must be in (0, 1), got {step}")
    return [round(k * step, 10) for k in range(math.ceil(1 / step) + 1) if round(k * step, 10) < 1]


def length_balance(chosen_lens: list[int], rejected_lens: list[int], step: float = 0.02) -> tuple[float, list[bool]]:
    """(ratio r, keep mask) over all pairs of an iteration, from their word counts.

    For each r of balance_ratios(step), a pair is dropped when (len_rej - len_chosen) / len_rej
    > r (a pair with len_rej == 0 is never dropped). The r whose kept pairs have the smallest
    |mean len_chosen - mean len_rej| / mean len_rej wins; ties go to the smallest r, and an r
    that keeps no pair is skipped. If no r keeps any pair (no pairs, or every chosen answer is
    shorter than (1 - largest r) times its rejected one), every r drops them all: (0.0, all False).
    """
    if len(chosen_lens) != len(rejected_lens):
        raise ValueError(f"{len(chosen_lens)} chosen lengths but {len(rejected_lens)} rejected lengths")
    shortening = [(rej - cho) / rej if rej else -math.inf for cho, rej in zip(chosen_lens, rejected_lens)]
    best: tuple[float, float, list[bool]] | None = None  # (imbalance, ratio, keep)
    for ratio in balance_ratios(step):
        keep = [s <= ratio for s in shortening]
        n_kept = sum(keep)
        if not n_kept:
            continue
        mean_chosen = sum(c for c, k in zip(chosen_lens, keep) if k) / n_kept
        mean_rejected = sum(r for r, k in zip(rejected_lens, keep) if k) / n_kept
        imbalance = _relative_gap(mean_chosen, mean_rejected)
        if best is None or imbalance < best[0]:
            best = (imbalance, ratio, keep)
    if best is None:
        return 0.0, [False] * len(chosen_lens)
    return best[1], best[2]


def _relative_gap(mean_chosen: float, mean_rejected: float) -> float:
    if mean_rejected == 0:  # only empty rejected answers kept
        return 0.0 if mean_chosen == 0 else math.inf
    return abs(mean_chosen - mean_rejected) / mean_rejected
