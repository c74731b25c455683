"""Combine (ALGORITHMS.md 4): answer scores, preference pairs per instruction, and the
length-balancing pass over an iteration's pairs. Pure functions on plain data."""

from __future__ import annotations

import random
from itertools import combinations


def answer_score(p_yes: list[float], p_no: list[float]) -> tuple[int, int]:
    """(score, n_rejected): a claim is rejected when p_no > p_yes (a tie is accepted);
    score = -n_rejected, so an answer with no claims scores 0."""
    n_rejected = sum(no > yes for yes, no in zip(p_yes, p_no, strict=True))
    return -n_rejected, n_rejected


def make_pairs(answers: list[str], scores: list[int], min_score_gap: int, pairs_per_instruction: int,
               rng_seed: int) -> tuple[list[tuple[int, int]], dict[str, int]]:
    """(chosen, rejected) index pairs of one instruction and how many each rule dropped.

    Every unordered pair i < j with |score_i - score_j| >= min_score_gap, the higher score
    chosen; pairs whose texts are equal after strip() are dropped before the cap, so duplicates
    never use up a slot; then at most pairs_per_instruction are drawn with a seeded RNG and
    returned in candidate order."""
    dropped = {"gap_too_small": 0, "equal_text": 0, "over_per_instruction_cap": 0}
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
        keep = sorted(random.Random(rng_seed).sample(range(len(candidates)), pairs_per_instruction))
        dropped["over_per_instruction_cap"] = len(candidates) - pairs_per_instruction
        candidates = [candidates[k] for k in keep]
    return candidates, dropped


def word_count(text: str) -> int:
    return len(text.split())


def length_balance(chosen_lens: list[int], rejected_lens: list[int], step: float = 0.02) -> tuple[float, list[bool]]:
    """(ratio r, keep mask). For r in 0, step, ... < 1, pairs with (rej - cho) / rej > r are
    dropped; the r whose kept pairs have the smallest |mean cho - mean rej| / mean rej wins
    (ties: the smallest r; an r keeping no pairs is skipped; len_rej == 0 is never dropped)."""
    def shortening(c: int, r: int) -> float:
        return (r - c) / r if r else float("-inf")

    excess = [shortening(c, r) for c, r in zip(chosen_lens, rejected_lens, strict=True)]
    best: tuple[float, float, list[bool]] | None = None
    for k in range(round(1 / step)):
        ratio = round(k * step, 10)
        keep = [e <= ratio for e in excess]
        kept = [(c, r) for (c, r), flag in zip(zip(chosen_lens, rejected_lens), keep) if flag]
        if not kept:
            continue
        mean_c = sum(c for c, _ in kept) / len(kept)
        mean_r = sum(r for _, r in kept) / len(kept)
        imbalance = abs(mean_c - mean_r) / mean_r if mean_r else 0.0
        if best is None or imbalance < best[0]:
            best = (imbalance, ratio, keep)
    if best is None:
        return 0.0, [True] * len(chosen_lens)
    return best[1], best[2]
