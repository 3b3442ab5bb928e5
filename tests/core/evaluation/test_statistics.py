"""Intervals, pass@k, paired tests, Bradley-Terry ratings and averages, each checked against a
value computed another way: a published table, brute-force enumeration, a closed form, or an
independent minorise-maximise iteration written here."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from workers.core.evaluation import statistics as st

# --- Wilson -------------------------------------------------------------------------------------


def test_wilson_interval_matches_the_published_table_values():
    # Newcombe (1998), Statistics in Medicine 17:857, table I: 81/263 -> 0.2553 to 0.3662, and
    # 15/148 -> 0.0624 to 0.1605 (method 3, score interval without continuity correction).
    assert st.wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=5e-5)
    assert st.wilson_interval(15, 148) == pytest.approx((0.0624, 0.1605), abs=5e-5)


def test_wilson_interval_stays_inside_zero_and_one_at_the_extremes():
    low, high = st.wilson_interval(0, 10)
    assert low == 0.0 and 0.25 < high < 0.31  # a normal interval would be (0, 0)
    low, high = st.wilson_interval(10, 10)
    assert high == 1.0 and 0.69 < low < 0.75
    assert st.wilson_interval(0, 0) == (0.0, 1.0)


def test_wilson_interval_narrows_as_samples_grow_and_widens_with_the_level():
    widths = [np.subtract(*st.wilson_interval(n // 2, n)[::-1]) for n in (10, 100, 1000)]
    assert widths[0] > widths[1] > widths[2]
    w95 = np.subtract(*st.wilson_interval(30, 60)[::-1])
    w99 = np.subtract(*st.wilson_interval(30, 60, level=0.99)[::-1])
    assert w99 > w95


def test_wilson_interval_refuses_impossible_counts():
    with pytest.raises(ValueError, match="successes"):
        st.wilson_interval(11, 10)


# --- bootstrap of a mean ------------------------------------------------------------------------


def test_bootstrap_mean_interval_is_seeded_and_contains_the_mean():
    scores = [7, 8, 6, 9, 5, 8, 7, 10, 6, 7]
    first = st.bootstrap_mean_interval(scores, seed=3)
    assert first == st.bootstrap_mean_interval(scores, seed=3)
    assert first.estimate == pytest.approx(7.3)
    assert first.low < 7.3 < first.high
    # The percentile bootstrap of a mean is close to mean ± 1.96·sd/√n for a symmetric sample.
    se = np.std(scores) / math.sqrt(len(scores))
    assert first.high - first.low == pytest.approx(2 * 1.96 * se, rel=0.2)


def test_bootstrap_of_right_and_wrong_agrees_with_wilson_on_a_large_sample():
    scores = [1.0] * 240 + [0.0] * 360  # 40% of 600
    boot = st.bootstrap_mean_interval(scores, seed=0)
    assert (boot.low, boot.high) == pytest.approx(st.wilson_interval(240, 600), abs=0.01)


def test_bootstrap_mean_interval_refuses_an_empty_list():
    with pytest.raises(ValueError, match="non-empty"):
        st.bootstrap_mean_interval([])


# --- pass@k -------------------------------------------------------------------------------------


def _pass_at_k_by_enumeration(n: int, c: int, k: int) -> float:
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_pass_at_k_equals_the_share_of_k_subsets_with_a_passing_sample(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert st.pass_at_k(n, c, k) == pytest.approx(_pass_at_k_by_enumeration(n, c, k),
                                                          abs=1e-12), (n, c, k)


def test_pass_at_k_is_finite_where_the_binomials_overflow_a_float():
    value = st.pass_at_k(2000, 3, 1000)
    exact = 1 - math.comb(1997, 1000) / math.comb(2000, 1000)  # Python ints: exact ratio
    assert value == pytest.approx(exact, rel=1e-9)


def test_mean_pass_at_k_averages_problems_and_pass_at_1_is_the_pass_rate():
    assert st.mean_pass_at_k([(10, 3), (10, 0), (10, 10)], k=1) == pytest.approx((0.3 + 0 + 1) / 3)


def test_pass_at_k_refuses_k_larger_than_the_samples():
    with pytest.raises(ValueError, match="k must be between 1 and n=5"):
        st.pass_at_k(5, 1, 6)


# --- paired tests -------------------------------------------------------------------------------


def test_mcnemar_on_a_hand_computed_example():
    # 12 samples only A got right, 3 only B: X ~ Bin(15, 1/2), P(X <= 3) = (1+15+105+455)/2^15,
    # two-sided exact p = 2·576/32768 = 0.03515625; mid-p subtracts P(X = 3) = 455/32768 once.
    a = [True] * 12 + [False] * 3 + [True] * 20 + [False] * 5
    b = [False] * 12 + [True] * 3 + [True] * 20 + [False] * 5
    result = st.mcnemar(a, b)
    assert (result.only_a, result.only_b) == (12, 3)
    assert result.p_exact == pytest.approx(1152 / 32768)
    assert result.p_mid == pytest.approx((1152 - 455) / 32768)


def test_mcnemar_sees_no_difference_when_the_models_agree():
    assert st.mcnemar([True, False], [True, False]).p_exact == 1.0
    assert st.mcnemar([True, False], [False, True]).p_exact == 1.0


def test_mcnemar_handles_thousands_of_discordant_pairs_without_underflow():
    result = st.mcnemar([True] * 3000 + [False] * 2800, [False] * 3000 + [True] * 2800)
    assert 0.0 < result.p_exact < 0.05


def test_paired_bootstrap_keeps_pairs_together():
    # B = A + 0.1 on every sample: the difference is exactly -0.1 in every resample, although
    # the scores themselves vary a lot (an unpaired test would see no significance).
    rng = np.random.default_rng(1)
    a = rng.uniform(0, 10, size=50)
    result = st.paired_bootstrap(a, a + 0.1)
    assert result.difference == pytest.approx(-0.1)
    assert result.low == pytest.approx(-0.1) and result.high == pytest.approx(-0.1)
    assert result.p_value == 0.0
    same = st.paired_bootstrap(a, a)
    assert same.p_value == 1.0


# --- Bradley-Terry ------------------------------------------------------------------------------


def _battles(counts):
    """counts: {(a, b): (a wins, b wins, ties)} -> a list of battles."""
    out = []
    for (a, b), (wa, wb, ties) in counts.items():
        out += [(a, b, "a")] * wa + [(a, b, "b")] * wb + [(a, b, "tie")] * ties
    return out


def _rating(result, model):
    return next(r for r in result.ratings if r.model == model)


def test_bradley_terry_recovers_strengths_whose_expected_wins_match_the_counts():
    # Strengths 1, 2, 4: when every pair's wins equal their expectations (1 of 3, 1 of 5, 1 of 3)
    # the likelihood equations hold exactly at those strengths, so the ratings are
    # 1000 + 400·log10(s) centred: 879.59, 1000, 1120.41.
    result = st.bradley_terry(_battles({("s1", "s2"): (1, 2, 0), ("s1", "s4"): (1, 4, 0),
                                        ("s2", "s4"): (1, 2, 0)}), n_resamples=20, prior=1e-9)
    step = 400 * math.log10(2)
    assert [r.model for r in result.ratings] == ["s4", "s2", "s1"]
    assert _rating(result, "s1").rating == pytest.approx(1000 - step, abs=1e-4)
    assert _rating(result, "s2").rating == pytest.approx(1000, abs=1e-4)
    assert _rating(result, "s4").rating == pytest.approx(1000 + step, abs=1e-4)


def _minorise_maximise(wins: np.ndarray, iterations: int = 5000) -> np.ndarray:
    """Hunter's (2004) MM update for Bradley-Terry, written independently of the module:
    p_i <- W_i / sum_j n_ij / (p_i + p_j), then normalised."""
    games = wins + wins.T
    p = np.ones(len(wins))
    for _ in range(iterations):
        denom = (games / (p[:, None] + p[None, :])).sum(axis=1)
        p = wins.sum(axis=1) / denom
        p /= np.exp(np.log(p).mean())
    return p


def test_bradley_terry_equals_an_independent_minorise_maximise_fit_with_ties_as_half_wins():
    counts = {("a", "b"): (7, 3, 2), ("a", "c"): (4, 4, 0), ("b", "c"): (2, 5, 1),
              ("a", "d"): (9, 1, 0), ("b", "d"): (6, 2, 2), ("c", "d"): (5, 3, 0)}
    names = ["a", "b", "c", "d"]
    wins = np.zeros((4, 4))
    for (x, y), (wx, wy, ties) in counts.items():
        i, j = names.index(x), names.index(y)
        wins[i, j] += wx + ties / 2
        wins[j, i] += wy + ties / 2
    strengths = _minorise_maximise(wins)
    expected = 1000 + 400 * np.log10(strengths / np.exp(np.log(strengths).mean()))
    result = st.bradley_terry(_battles(counts), n_resamples=20, prior=1e-9)
    for name, value in zip(names, expected):
        assert _rating(result, name).rating == pytest.approx(value, abs=1e-3)
    assert np.mean([r.rating for r in result.ratings]) == pytest.approx(1000)


def test_a_tie_counts_half_a_win_to_each_side():
    # One tie and one win each way equals two wins each way: equal ratings, win rate 1/2.
    tied = st.bradley_terry([("x", "y", "tie"), ("x", "y", "tie")], n_resamples=10)
    assert _rating(tied, "x").rating == pytest.approx(_rating(tied, "y").rating)
    assert tied.win_rate["x"]["y"] == 0.5
    # 3 wins and 2 ties for x against 1 win for y: x's share is (3 + 1) / 6.
    mixed = st.bradley_terry([("x", "y", "a")] * 3 + [("x", "y", "tie")] * 2 + [("y", "x", "a")],
                             n_resamples=10, prior=1e-9)
    assert mixed.win_rate["x"]["y"] == pytest.approx(4 / 6)
    gap = _rating(mixed, "x").rating - _rating(mixed, "y").rating
    assert gap == pytest.approx(400 * math.log10(4 / 2), abs=1e-3)  # odds 4:2
    assert (_rating(mixed, "x").wins, _rating(mixed, "x").ties) == (3, 2)


def test_both_bad_votes_are_counted_but_not_rated():
    base = [("x", "y", "a")] * 6 + [("x", "y", "b")] * 4
    with_bad = base + [("x", "y", "both_bad")] * 5 + [("z", "x", "both_bad")] * 2
    plain, result = st.bradley_terry(base, n_resamples=30), st.bradley_terry(with_bad,
                                                                               n_resamples=30)
    assert _rating(result, "x").rating == pytest.approx(_rating(plain, "x").rating)
    assert _rating(result, "x").votes == 17 and _rating(result, "x").both_bad == 7
    z = _rating(result, "z")
    assert (z.rating, z.low, z.high, z.votes, z.both_bad) == (None, None, None, 2, 2)
    assert result.ratings[-1].model == "z"  # unrated models are listed last
    assert result.battles == 10
    assert result.win_rate["z"]["x"] is None


def test_an_undefeated_model_gets_a_finite_rating():
    result = st.bradley_terry([("champ", "b", "a")] * 10 + [("b", "c", "a")] * 3
                              + [("b", "c", "b")] * 3, n_resamples=30)
    champ = _rating(result, "champ")
    assert math.isfinite(champ.rating) and champ.rating > _rating(result, "b").rating + 200
    assert champ.low <= champ.rating <= champ.high


def _simulated(n_battles, seed=7):
    strengths = {"m1": 1.0, "m2": 1.5, "m3": 2.5}
    rng = np.random.default_rng(seed)
    names = list(strengths)
    out = []
    for _ in range(n_battles):
        a, b = rng.choice(names, size=2, replace=False)
        p = strengths[a] / (strengths[a] + strengths[b])
        out.append((a, b, "a" if rng.random() < p else "b"))
    return out


def test_rating_intervals_narrow_as_votes_grow_and_are_reproducible():
    few = st.bradley_terry(_simulated(60), n_resamples=100, seed=1)
    many = st.bradley_terry(_simulated(2000), n_resamples=100, seed=1)
    for name in ("m1", "m2", "m3"):
        width_few = _rating(few, name).high - _rating(few, name).low
        width_many = _rating(many, name).high - _rating(many, name).low
        assert width_many < width_few / 3  # about sqrt(2000/60) ≈ 5.8 times narrower
        r = _rating(many, name)
        assert r.low <= r.rating <= r.high
    # the true gap m3 - m1 is 400·log10(2.5) ≈ 159 points; 2000 votes put it inside the interval
    assert [r.model for r in many.ratings] == ["m3", "m2", "m1"]
    again = st.bradley_terry(_simulated(60), n_resamples=100, seed=1)
    assert again == few


@pytest.mark.parametrize("battle, message", [
    (("a", "a", "a"), "cannot battle itself"),
    (("a", "b", "draw"), "outcome must be one of"),
    (("a", "b"), "expected"),
    (("", "b", "a"), "non-empty"),
])
def test_bradley_terry_names_the_bad_battle(battle, message):
    with pytest.raises(ValueError, match=f"battle 2: .*{message}"):
        st.bradley_terry([("a", "b", "a"), battle])


def test_bradley_terry_refuses_too_many_resamples():
    with pytest.raises(ValueError, match="n_resamples"):
        st.bradley_terry([("a", "b", "a")], n_resamples=10**6)


# --- averages -----------------------------------------------------------------------------------


def test_dimension_averages_are_naive_and_weighted_per_dimension_and_overall():
    per_dim, overall = st.dimension_averages([
        {"dimension": "math", "score": 40.0, "weight": 3},
        {"dimension": "math", "score": 80.0, "weight": 1},
        {"dimension": "knowledge", "score": 60.0},
    ])
    assert per_dim["math"].naive == pytest.approx(60.0)
    assert per_dim["math"].weighted == pytest.approx(50.0)
    assert per_dim["knowledge"].naive == per_dim["knowledge"].weighted == 60.0
    assert overall.naive == pytest.approx(60.0)
    assert overall.weighted == pytest.approx((120 + 80 + 60) / 5)
    assert overall.benchmarks == 3 and overall.complete


def test_a_missing_score_leaves_its_averages_empty_rather_than_partial():
    per_dim, overall = st.dimension_averages([
        {"dimension": "math", "score": 40.0}, {"dimension": "math", "score": None},
        {"dimension": "code", "score": 30.0},
    ])
    assert per_dim["math"].naive is None and not per_dim["math"].complete
    assert per_dim["code"].naive == 30.0
    assert overall.naive is None


def test_dimension_averages_name_the_bad_row():
    with pytest.raises(ValueError, match="score 2: weight"):
        st.dimension_averages([{"dimension": "x", "score": 1}, {"dimension": "x", "score": 1,
                                                                "weight": -1}])
