"""ALGORITHMS.md 4 against hand-worked examples."""

import random

from engine.pairing import answer_score, length_balance, make_pairs, word_count


def test_answer_score_counts_strict_rejections():
    # p_no > p_yes rejects: claims 2 (0.6 > 0.3) and 4 (0.51 > 0.49); claim 3 is a tie -> accepted.
    assert answer_score([0.9, 0.3, 0.5, 0.49], [0.1, 0.6, 0.5, 0.51]) == (-2, 2)
    assert answer_score([], []) == (0, 0)  # no claims: score 0


def test_pairs_gap_and_direction():
    # scores 0, -1, -1, -3: pairs with gap >= 1: (0,1) (0,2) (0,3) (1,3) (2,3); (1,2) tie dropped.
    pairs, dropped = make_pairs(["a", "b", "c", "d"], [0, -1, -1, -3], 1, 10, rng_seed=0)
    assert pairs == [(0, 1), (0, 2), (0, 3), (1, 3), (2, 3)]
    assert dropped == {"gap_too_small": 1, "equal_text": 0, "over_per_instruction_cap": 0}
    # The higher score is chosen whatever the order: answer 1 (score 0) beats answer 0 (score -2).
    assert make_pairs(["x", "y"], [-2, 0], 1, 2, 0)[0] == [(1, 0)]


def test_gap_two():
    # scores 0, -1, -2: only (0, 2) differs by 2.
    assert make_pairs(["a", "b", "c"], [0, -1, -2], 2, 5, 0)[0] == [(0, 2)]


def test_equal_texts_dropped_before_cap():
    # a and " a " are equal after strip: (0,1) dropped as equal text; (0,2) and (1,2) remain.
    pairs, dropped = make_pairs(["a", " a ", "b"], [0, -1, -2], 1, 2, 0)
    assert pairs == [(0, 2), (1, 2)] and dropped["equal_text"] == 1 and dropped["over_per_instruction_cap"] == 0


def test_edge_cases_yield_no_pairs():
    assert make_pairs(["only"], [0], 1, 2, 0)[0] == []                          # one answer
    assert make_pairs(["a", "b", "c"], [-1, -1, -1], 1, 2, 0)[0] == []          # all equal scores
    assert make_pairs(["a", "b"], [0, 0], 1, 2, 0)[0] == []                     # no claims anywhere: all 0
    assert make_pairs([], [], 1, 2, 0) == ([], {"gap_too_small": 0, "equal_text": 0, "over_per_instruction_cap": 0})


def test_cap_is_a_seeded_sample():
    answers, scores = ["a", "b", "c", "d"], [0, -1, -2, -3]  # 6 candidate pairs
    first, dropped = make_pairs(answers, scores, 1, 2, rng_seed=7)
    assert make_pairs(answers, scores, 1, 2, rng_seed=7)[0] == first
    assert len(first) == 2 and dropped["over_per_instruction_cap"] == 4
    # Independently: the same draw over the candidate order (0,1) (0,2) (0,3) (1,2) (1,3) (2,3).
    order = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    assert first == [order[k] for k in sorted(random.Random(7).sample(range(6), 2))]
    draws = {tuple(make_pairs(answers, scores, 1, 2, rng_seed=s)[0]) for s in range(20)}
    assert len(draws) > 1


def test_length_balance_hand_worked():
    # (chosen, rejected) words: (5,10) (8,10) (10,10) (12,10) (9,12)
    # shortening (rej-cho)/rej: 0.5, 0.2, 0, -0.2, 0.25
    # r < 0.2: keep (10,10) (12,10): means 11 vs 10 -> 0.1
    # 0.2 <= r < 0.25: + (8,10): 10 vs 10 -> 0.0   <- minimum, first reached at r = 0.2
    # 0.25 <= r < 0.5: + (9,12): 39/4=9.75 vs 42/4=10.5 -> 0.0714
    # r >= 0.5: all: 44/5 vs 52/5 -> 0.1538
    ratio, keep = length_balance([5, 8, 10, 12, 9], [10, 10, 10, 10, 12])
    assert ratio == 0.2 and keep == [False, True, True, True, False]


def test_length_balance_matches_brute_force():
    rng = random.Random(3)
    chosen = [rng.randint(1, 40) for _ in range(60)]
    rejected = [rng.randint(1, 40) for _ in range(60)]
    ratio, keep = length_balance(chosen, rejected)
    best = None
    for k in range(50):
        r = k / 50
        kept = [(c, j) for c, j in zip(chosen, rejected) if not (j - c) / j > r]
        score = abs(sum(c for c, _ in kept) / len(kept) - sum(j for _, j in kept) / len(kept)) / (sum(j for _, j in kept) / len(kept))
        if best is None or score < best[0] - 1e-15:
            best = (score, r)
    assert abs(ratio - best[1]) < 1e-9
    assert keep == [not (j - c) / j > ratio for c, j in zip(chosen, rejected)]


def test_word_count():
    assert word_count("  a red\tcircle\n") == 3 and word_count("") == 0
