"""docs/algorithms.md §4 against hand-worked examples, plus brute-force recomputations."""

import random
from fractions import Fraction
from itertools import combinations

import pytest

from engine.pairing import DROP_RULES, answer_score, balance_ratios, length_balance, make_pairs, word_count

NO_DROPS = {"gap_too_small": 0, "equal_text": 0, "over_per_instruction_cap": 0}


def test_answer_score_counts_strict_rejections():
    # p_no > p_yes rejects: claims 2 (0.6 > 0.3) and 4 (0.51 > 0.49); claim 3 is a tie -> accepted.
    assert answer_score([0.9, 0.3, 0.5, 0.49], [0.1, 0.6, 0.5, 0.51]) == (-3, 3)
    assert answer_score([0.2], [0.2]) == (-1, 1)  # a tie: rejected, as in the released code
    assert answer_score([0.1, 0.2], [0.9, 0.8]) == (-2, 2)  # all rejected
    assert answer_score([], []) == (0, 0)  # no claims (only under the ablation switch): score 0


def test_answer_score_needs_one_p_no_per_p_yes():
    with pytest.raises(ValueError):
        answer_score([0.5, 0.5], [0.5])


def test_pairs_gap_and_direction():
    # scores 0, -1, -1, -3: gaps |0+1|=1 (0,1), 1 (0,2), 3 (0,3), 0 (1,2), 2 (1,3), 2 (2,3).
    # Gap >= 1 keeps all but (1,2).
    pairs, dropped = make_pairs(["a", "b", "c", "d"], [0, -1, -1, -3], 1, 10, rng_seed=0)
    assert pairs == [(0, 1), (0, 2), (0, 3), (1, 3), (2, 3)]
    assert dropped == {**NO_DROPS, "gap_too_small": 1}
    # The higher score is chosen whatever the order: answer 1 (score 0) beats answer 0 (score -2).
    assert make_pairs(["x", "y"], [-2, 0], 1, 2, 0)[0] == [(1, 0)]


def test_gap_two():
    # scores 0, -1, -2: gaps (0,1)=1, (0,2)=2, (1,2)=1; only (0,2) reaches 2.
    assert make_pairs(["a", "b", "c"], [0, -1, -2], 2, 5, 0) == ([(0, 2)], {**NO_DROPS, "gap_too_small": 2})


def test_equal_texts_dropped():
    # "a" and " a " are equal after strip: (0,1) dropped as equal text; (0,2) and (1,2) remain.
    pairs, dropped = make_pairs(["a", " a ", "b"], [0, -1, -2], 1, 2, 0)
    assert pairs == [(0, 2), (1, 2)] and dropped == {**NO_DROPS, "equal_text": 1}


def test_equal_texts_do_not_use_up_the_cap():
    # scores 0, -1, -1: candidates (0,1) and (0,2); (1,2) has gap 0. (0,1) is "x" vs "x\n":
    # dropped first, so the one slot of the cap goes to (0,2) and nothing is capped.
    pairs, dropped = make_pairs(["x", "x\n", "y"], [0, -1, -1], 1, 1, 0)
    assert pairs == [(0, 2)]
    assert dropped == {"gap_too_small": 1, "equal_text": 1, "over_per_instruction_cap": 0}


def test_edge_cases_yield_no_pairs():
    assert make_pairs(["only"], [0], 1, 2, 0) == ([], NO_DROPS)                   # one answer
    assert make_pairs(["a", "b", "c"], [-1, -1, -1], 1, 2, 0)[0] == []           # all equal scores
    assert make_pairs(["a", "b"], [0, 0], 1, 2, 0)[0] == []                      # no claims anywhere: all 0
    assert make_pairs([], [], 1, 2, 0) == ([], NO_DROPS)
    assert make_pairs(["a", "b"], [0, -1], 1, 0, 0) == ([], {**NO_DROPS, "over_per_instruction_cap": 1})


@pytest.mark.parametrize("args", [
    (["a"], [0, 1], 1, 2, 0),        # lengths differ
    (["a", "b"], [0, 1], 0, 2, 0),   # gap 0 would pair equal scores
    (["a", "b"], [0, 1], 1, -1, 0),  # negative cap
])
def test_bad_arguments_raise(args):
    with pytest.raises(ValueError):
        make_pairs(*args)


def test_cap_is_a_seeded_sample():
    answers, scores = ["a", "b", "c", "d"], [0, -1, -2, -3]  # all 6 pairs are candidates
    first, dropped = make_pairs(answers, scores, 1, 2, rng_seed=7)
    assert make_pairs(answers, scores, 1, 2, rng_seed=7)[0] == first  # reproducible
    assert len(first) == 2 and dropped == {**NO_DROPS, "over_per_instruction_cap": 4}
    # The draw is random.Random(seed).sample over the candidates in (i, j) order, kept in that order.
    order = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    assert first == [order[k] for k in sorted(random.Random(7).sample(range(6), 2))]
    draws = {tuple(make_pairs(answers, scores, 1, 2, rng_seed=s)[0]) for s in range(20)}
    assert len(draws) > 1  # another seed may draw other pairs


def test_pairs_match_brute_force():
    rng = random.Random(5)
    for _ in range(200):
        n = rng.randint(0, 7)
        answers = [rng.choice(["a", "b", " a", "c "]) for _ in range(n)]
        scores = [-rng.randint(0, 3) for _ in range(n)]
        gap, cap = rng.randint(1, 2), rng.randint(0, 4)
        every = [(i, j) if scores[i] > scores[j] else (j, i) for i, j in combinations(range(n), 2)
                 if abs(scores[i] - scores[j]) >= gap and answers[i].strip() != answers[j].strip()]
        pairs, dropped = make_pairs(answers, scores, gap, cap, rng_seed=rng.randint(0, 99))
        assert set(pairs) <= set(every) and len(pairs) == min(cap, len(every)) == len(set(pairs))
        assert all(scores[c] - scores[r] >= gap for c, r in pairs)
        assert sorted(pairs, key=lambda p: sorted(p)) == pairs
        assert sum(dropped.values()) + len(pairs) == n * (n - 1) // 2 and set(dropped) == set(DROP_RULES)


def test_ratios_grid():
    assert balance_ratios(0.02) == [k / 50 for k in range(50)]  # 0, 0.02, ..., 0.98: exactly 50
    assert balance_ratios(0.03)[-1] == 0.99 and len(balance_ratios(0.03)) == 34
    assert balance_ratios(0.1) == [k / 10 for k in range(10)]
    with pytest.raises(ValueError):
        balance_ratios(0)


def test_length_balance_hand_worked():
    # (chosen, rejected) words: (5,10) (8,10) (10,10) (12,10) (9,12)
    # shortening (rej-cho)/rej: 0.5, 0.2, 0, -0.2, 0.25
    # 0 <= r < 0.2: keep (10,10) (12,10): means 11 vs 10 -> |11-10|/10 = 0.1
    # 0.2 <= r < 0.25: + (8,10): 30/3=10 vs 30/3=10 -> 0.0   <- minimum, first reached at r = 0.2
    # 0.25 <= r < 0.5: + (9,12): 39/4=9.75 vs 42/4=10.5 -> 0.75/10.5 = 0.0714
    # r >= 0.5: all: 44/5=8.8 vs 52/5=10.4 -> 1.6/10.4 = 0.1538
    ratio, keep = length_balance([5, 8, 10, 12, 9], [10, 10, 10, 10, 12])
    assert ratio == 0.2 and keep == [False, True, True, True, False]


def test_length_balance_tie_goes_to_smallest_ratio():
    # (10,10) shortening 0, (4,10) shortening 0.6.
    # r < 0.6: keep (10,10) -> 0.0 at every r from 0 to 0.58: a tie, so r = 0.
    # r >= 0.6: both: 7 vs 10 -> 0.3.
    assert length_balance([10, 4], [10, 10]) == (0.0, [True, False])


def test_length_balance_empty_rejected_is_never_dropped():
    # (3,0): len_rej 0 -> never dropped; (5,10) shortening 0.5.
    # r < 0.5: keep (3,0) alone: means 3 vs 0 -> infinite imbalance.
    # r >= 0.5: both: 4 vs 5 -> 0.2   <- r = 0.5
    assert length_balance([3, 5], [0, 10]) == (0.5, [True, True])
    assert length_balance([0], [0]) == (0.0, [True])  # 0 vs 0: balanced


def test_length_balance_when_no_ratio_keeps_a_pair():
    assert length_balance([], []) == (0.0, [])
    # (1,100): shortening 0.99 > 0.98, the largest ratio: every ratio drops it.
    assert length_balance([1], [100]) == (0.0, [False])
    assert length_balance([1], [100], step=0.03) == (0.99, [True])  # 0.99 is on this grid


def _exact_balance(chosen, rejected, ratios):
    """Brute force in exact arithmetic: every ratio, every pair, Fractions throughout."""
    best = None
    for r in ratios:
        kept = [(c, j) for c, j in zip(chosen, rejected) if j == 0 or Fraction(j - c, j) <= r]
        if not kept:
            continue
        mc, mj = Fraction(sum(c for c, _ in kept), len(kept)), Fraction(sum(j for _, j in kept), len(kept))
        gap = abs(mc - mj) / mj if mj else (Fraction(0) if mc == 0 else Fraction(10**9))
        if best is None or gap < best[0]:
            best = (gap, r)
    return best[1]


@pytest.mark.parametrize("seed", range(20))
def test_length_balance_matches_brute_force(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 60)
    chosen = [rng.randint(0, 40) for _ in range(n)]
    rejected = [rng.randint(0, 40) for _ in range(n)]
    ratio, keep = length_balance(chosen, rejected)
    exact_ratio = _exact_balance(chosen, rejected, [Fraction(k, 50) for k in range(50)])
    assert ratio == float(exact_ratio)
    assert keep == [j == 0 or Fraction(j - c, j) <= exact_ratio for c, j in zip(chosen, rejected)]


def test_length_balance_lengths_must_pair_up():
    with pytest.raises(ValueError):
        length_balance([1, 2], [3])


def test_word_count():
    assert word_count("  a red\tcircle\n") == 3 and word_count("") == 0 and word_count("one") == 1
