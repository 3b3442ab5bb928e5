"""The numbers a leaderboard shows beside a score, and the arena's ratings.

- `wilson_interval`: 95% interval of an accuracy (k right of n). Wilson rather than the normal
  approximation because benchmarks are often small and accuracies near 0 or 1, where p ± 1.96·se
  leaves [0, 1] or collapses to a point.
- `bootstrap_mean_interval`: interval of a mean score that is not a proportion (judge scores
  1-10, pass@k per problem, bits per byte), seeded so a page shows the same interval every time.
- `pass_at_k` / `mean_pass_at_k`: the unbiased estimator of Chen et al. 2021 (HumanEval paper).
- `mcnemar` and `paired_bootstrap`: is model A better than model B on the same samples?
- `bradley_terry`: arena ratings from pairwise votes, with bootstrap intervals, vote counts and
  a win-rate matrix.
- `dimension_averages`: naive and weighted averages of benchmark scores per capability
  dimension and overall (OpenCompass summary groups).

numpy only (no scipy: it is not a dependency of the studio, and nothing here needs more than a
binomial tail and a small Newton solve)."""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile
ELO_BASE = 1000.0
ELO_SCALE = 400.0  # rating points per factor 10 in strength, as in Elo and the Chatbot Arena
DEFAULT_SEED = 0
MAX_RESAMPLES = 10_000  # bounds a request's work: a bootstrap refits the model this many times


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be between 0 and 1, got {level!r}")


def _check_resamples(n_resamples: int) -> None:
    if not 1 <= n_resamples <= MAX_RESAMPLES:
        raise ValueError(f"n_resamples must be 1..{MAX_RESAMPLES}, got {n_resamples!r}")


def _z(level: float) -> float:
    _check_level(level)
    if level == 0.95:
        return Z95
    # Inverse normal CDF by bisection on erf: exact enough for an interval and needs no scipy.
    target = (1.0 + level) / 2.0
    lo, hi = 0.0, 40.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if 0.5 * (1.0 + math.erf(mid / math.sqrt(2.0))) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2.0


# --- accuracy and mean scores -------------------------------------------------------------------

def wilson_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion `successes / n`; n = 0 knows nothing: (0, 1)."""
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes!r}, n={n!r}")
    if n == 0:
        return (0.0, 1.0)
    z = _z(level)
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z * z / (4 * n * n)) / denom
    # At p = 0 the lower bound is exactly 0 and at p = 1 the upper is 1; rounding says 1e-17.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return (low, high)


@dataclasses.dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float


def _resampled_means(x: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Means of `n_resamples` resamples (with replacement) of `x`, drawn in batches of at most
    ~2M indices: 2000 resamples of the 14,042 MMLU questions would otherwise hold 225 MB."""
    out = np.empty(n_resamples)
    batch = max(1, 2_000_000 // x.size)
    for start in range(0, n_resamples, batch):
        stop = min(n_resamples, start + batch)
        out[start:stop] = x[rng.integers(0, x.size, size=(stop - start, x.size))].mean(axis=1)
    return out


def bootstrap_mean_interval(scores: Sequence[float], n_resamples: int = 2000, level: float = 0.95,
                            seed: int = DEFAULT_SEED) -> Interval:
    """Percentile bootstrap interval of the mean of `scores` (resampling samples), seeded."""
    _check_level(level)
    _check_resamples(n_resamples)
    x = np.asarray(scores, dtype=float)
    if x.ndim != 1 or x.size == 0:
        raise ValueError("scores must be a non-empty list of numbers")
    if not np.all(np.isfinite(x)):
        raise ValueError("scores must be finite numbers")
    means = _resampled_means(x, n_resamples, np.random.default_rng(seed))
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return Interval(float(x.mean()), float(low), float(high))


# --- pass@k -------------------------------------------------------------------------------------

def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with `n` samples of which `c` passed (Chen et al. 2021):
    1 - C(n-c, k) / C(n, k), computed as the product 1 - prod_{i=n-c+1..n} (1 - k/i), which
    never forms the huge binomials (n = 200, k = 100 overflows a float otherwise)."""
    if not (isinstance(n, int) and isinstance(c, int) and isinstance(k, int)):
        raise TypeError("n, c and k must be integers")
    if n < 1 or not 0 <= c <= n:
        raise ValueError(f"need n >= 1 and 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and n={n} (the samples drawn), got {k}")
    if n - c < k:
        return 1.0  # every k-subset contains a passing sample
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def mean_pass_at_k(results: Iterable[tuple[int, int]], k: int) -> float:
    """Mean of `pass_at_k` over problems, each given as (samples n, passed c)."""
    values = [pass_at_k(n, c, k) for n, c in results]
    if not values:
        raise ValueError("no problems to average")
    return float(np.mean(values))


# --- paired comparisons of two models on the same samples ---------------------------------------

@dataclasses.dataclass(frozen=True)
class McNemarResult:
    only_a: int  # samples A got right and B wrong
    only_b: int  # samples B got right and A wrong
    p_exact: float  # two-sided exact binomial p-value
    p_mid: float  # mid-p: less conservative, closer to nominal size (Fagerland et al. 2013)


def mcnemar(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> McNemarResult:
    """McNemar's test on paired right/wrong decisions: under "A and B are equally good" the
    discordant samples split like a fair coin. Exact binomial in integers (no float underflow for
    thousands of discordant pairs); samples both got right or both wrong carry no information."""
    if len(a_correct) != len(b_correct):
        raise ValueError(f"paired lists differ in length: {len(a_correct)} and {len(b_correct)}")
    only_a = sum(1 for a, b in zip(a_correct, b_correct) if a and not b)
    only_b = sum(1 for a, b in zip(a_correct, b_correct) if b and not a)
    n, m = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return McNemarResult(only_a, only_b, 1.0, 1.0)
    # P(X <= m) for X ~ Bin(n, 1/2), times 2^n, summed by the recurrence C(n, i+1) =
    # C(n, i)·(n-i)/(i+1) in integers; int / int is correctly rounded in Python however big.
    tail, term = 0, 1
    for i in range(m + 1):
        tail += term
        last, term = term, term * (n - i) // (i + 1)
    total = 2 ** n
    p_exact = min(1.0, 2 * tail / total)
    p_mid = min(1.0, (2 * tail - last) / total)
    return McNemarResult(only_a, only_b, p_exact, p_mid)


@dataclasses.dataclass(frozen=True)
class PairedBootstrap:
    difference: float  # mean(A) - mean(B)
    low: float
    high: float
    p_value: float  # two-sided: twice the share of resampled differences on the other side of 0


def paired_bootstrap(scores_a: Sequence[float], scores_b: Sequence[float],
                     n_resamples: int = 2000, level: float = 0.95,
                     seed: int = DEFAULT_SEED) -> PairedBootstrap:
    """Paired bootstrap of the mean score difference: resample samples (keeping each pair
    together), so the per-sample correlation between the two models is kept."""
    _check_level(level)
    _check_resamples(n_resamples)
    a, b = np.asarray(scores_a, dtype=float), np.asarray(scores_b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError("scores_a and scores_b must be non-empty lists of the same length")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("scores must be finite numbers")
    d = a - b
    diffs = _resampled_means(d, n_resamples, np.random.default_rng(seed))
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(diffs, [alpha, 1.0 - alpha])
    if np.all(d == 0):
        p = 1.0
    else:
        p = min(1.0, 2.0 * min(float(np.mean(diffs <= 0)), float(np.mean(diffs >= 0))))
    return PairedBootstrap(float(d.mean()), float(low), float(high), p)


# --- arena: Bradley-Terry ratings ---------------------------------------------------------------

OUTCOMES = ("a", "b", "tie", "both_bad")
DEFAULT_PRIOR = 0.01  # L2 on log-strength: a Gaussian prior of variance 100 (see bradley_terry)


@dataclasses.dataclass(frozen=True)
class ModelRating:
    model: str
    rating: float | None  # None: the model has only "both bad" votes, nothing to rate
    low: float | None  # bootstrap interval at the requested level
    high: float | None
    votes: int  # every battle it took part in, "both bad" included
    wins: int
    losses: int
    ties: int
    both_bad: int


@dataclasses.dataclass(frozen=True)
class ArenaRatings:
    ratings: list[ModelRating]  # best first; unrated models last
    # win_rate[a][b]: share of a's rated battles against b that a won, a tie counting half;
    # None where the two never met. The heatmap's cells.
    win_rate: dict[str, dict[str, float | None]]
    battles: int  # rated battles (ties included, "both bad" not)


def _win_matrix(pairs: np.ndarray, scores: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """wins[i, j]: i's wins over j (a tie gives each 0.5); games[i, j]: rated battles of i and j."""
    wins = np.zeros((size, size))
    np.add.at(wins, (pairs[:, 0], pairs[:, 1]), scores)
    np.add.at(wins, (pairs[:, 1], pairs[:, 0]), 1.0 - scores)
    return wins, wins + wins.T


def _fit_log_strengths(wins: np.ndarray, games: np.ndarray, prior: float) -> np.ndarray:
    """Maximise sum_ij wins_ij·log σ(θi - θj) - prior/2·|θ|² by Newton's method with step
    halving. The objective is strictly concave for prior > 0, so the maximum is unique and finite
    even for a model that never lost (where the plain maximum-likelihood estimate is infinite)."""
    size = wins.shape[0]
    theta = np.zeros(size)

    def objective(t: np.ndarray) -> float:
        diff = t[:, None] - t[None, :]
        return float(-(wins * np.logaddexp(0.0, -diff)).sum() - prior / 2.0 * (t @ t))

    value = objective(theta)
    for _ in range(100):
        diff = theta[:, None] - theta[None, :]
        p = 1.0 / (1.0 + np.exp(-diff))  # P(i beats j)
        grad = (wins - games * p).sum(axis=1) - prior * theta
        if np.max(np.abs(grad)) < 1e-10:
            break
        w = games * p * p.T
        hess = w - np.diag(w.sum(axis=1)) - prior * np.eye(size)
        step = np.linalg.solve(hess, -grad)
        scale = 1.0
        while scale > 1e-6:
            candidate = theta + scale * step
            new_value = objective(candidate)
            if new_value >= value - 1e-12:
                break
            scale /= 2.0
        theta, value = candidate, new_value
    return theta


def _to_elo(theta: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Elo-like scale: 1000 + 400·log10(strength), the present models' mean anchored at 1000."""
    out = np.full(theta.shape, np.nan)
    centred = theta[present] - theta[present].mean()
    out[present] = ELO_BASE + ELO_SCALE / math.log(10.0) * centred
    return out


def bradley_terry(battles: Iterable[tuple[str, str, str]], n_resamples: int = 200,
                  level: float = 0.95, seed: int = DEFAULT_SEED,
                  prior: float = DEFAULT_PRIOR) -> ArenaRatings:
    """Ratings from pairwise battles (model a, model b, outcome), outcome one of "a", "b", "tie"
    (half a win to each side) or "both_bad" (counted in the vote totals, not rated: it says
    nothing about which model is better).

    P(a beats b) = σ(θa - θb); the log-strengths θ are fitted by penalised maximum likelihood
    (`prior` is the L2 weight; 0.01 moves the ratings of models with dozens of votes by well under
    a rating point, and keeps an undefeated model finite). Ratings are 1000 + 400·log10 of the
    strength, anchored so their mean is 1000: 100 points apart means the better model wins ~64%.
    Intervals: percentile bootstrap over battles (resampled with replacement, seeded)."""
    _check_level(level)
    _check_resamples(n_resamples)
    if not prior > 0:
        raise ValueError("prior must be positive (it keeps undefeated models' ratings finite)")
    names: dict[str, int] = {}
    counts: dict[str, dict[str, int]] = {}
    rated_pairs: list[tuple[int, int]] = []
    rated_scores: list[float] = []
    for row, battle in enumerate(battles, start=1):
        try:
            a, b, outcome = battle
        except (TypeError, ValueError):
            raise ValueError(f"battle {row}: expected (model_a, model_b, outcome)") from None
        if not (isinstance(a, str) and isinstance(b, str) and a and b):
            raise ValueError(f"battle {row}: model names must be non-empty strings")
        if a == b:
            raise ValueError(f"battle {row}: a model cannot battle itself ({a!r})")
        if outcome not in OUTCOMES:
            raise ValueError(f"battle {row}: outcome must be one of {', '.join(OUTCOMES)}, "
                             f"got {outcome!r}")
        for name in (a, b):
            names.setdefault(name, len(names))
            counts.setdefault(name, dict(votes=0, wins=0, losses=0, ties=0, both_bad=0))
            counts[name]["votes"] += 1
        if outcome == "both_bad":
            counts[a]["both_bad"] += 1
            counts[b]["both_bad"] += 1
            continue
        winner, loser = (a, b) if outcome == "a" else (b, a)
        if outcome == "tie":
            counts[a]["ties"] += 1
            counts[b]["ties"] += 1
        else:
            counts[winner]["wins"] += 1
            counts[loser]["losses"] += 1
        rated_pairs.append((names[a], names[b]))
        rated_scores.append({"a": 1.0, "b": 0.0, "tie": 0.5}[outcome])

    size = len(names)
    order = list(names)
    pairs = np.asarray(rated_pairs, dtype=int).reshape(-1, 2)
    scores = np.asarray(rated_scores, dtype=float)
    wins, games = _win_matrix(pairs, scores, size)
    present = games.sum(axis=1) > 0
    point = _to_elo(_fit_log_strengths(wins, games, prior), present) if present.any() else None

    low = high = np.full(size, np.nan)
    if point is not None:
        rng = np.random.default_rng(seed)
        samples = np.empty((n_resamples, size))
        for r in range(n_resamples):
            pick = rng.integers(0, len(scores), size=len(scores))
            w, g = _win_matrix(pairs[pick], scores[pick], size)
            here = g.sum(axis=1) > 0
            samples[r] = _to_elo(_fit_log_strengths(w, g, prior), here)
        alpha = (1.0 - level) / 2.0
        low, high = np.nanquantile(samples[:, present], [alpha, 1.0 - alpha], axis=0)
        low_all, high_all = np.full(size, np.nan), np.full(size, np.nan)
        low_all[present], high_all[present] = low, high
        low, high = low_all, high_all

    def num(values, i):
        return None if values is None or np.isnan(values[i]) else float(values[i])

    ratings = [ModelRating(name, num(point, i), num(low, i), num(high, i), **counts[name])
               for i, name in enumerate(order)]
    ratings.sort(key=lambda r: (r.rating is None, -(r.rating or 0.0), r.model))
    win_rate = {a: {b: (float(wins[i, j] / games[i, j]) if games[i, j] else None)
                    for j, b in enumerate(order) if j != i}
                for i, a in enumerate(order)}
    return ArenaRatings(ratings, win_rate, len(scores))


# --- averages of benchmark scores ---------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Average:
    naive: float | None  # plain mean of the benchmark scores
    weighted: float | None  # sum(weight·score) / sum(weight)
    benchmarks: int  # benchmarks in the group
    complete: bool  # False when a benchmark has no score: then both averages are None


def _average(rows: list[tuple[float | None, float]]) -> Average:
    if not rows or any(score is None for score, _ in rows):
        return Average(None, None, len(rows), False)
    values = np.array([s for s, _ in rows], dtype=float)
    weights = np.array([w for _, w in rows], dtype=float)
    weighted = float(values @ weights / weights.sum()) if weights.sum() > 0 else None
    return Average(float(values.mean()), weighted, len(rows), True)


def dimension_averages(scores: Iterable[Mapping]) -> tuple[dict[str, Average], Average]:
    """Per-dimension and overall averages of one model's benchmark scores.

    Each row: {"dimension": str, "score": float | None, "weight": float (default 1)}. A missing
    score (None: the benchmark was not run) makes its group's averages None rather than an
    average over fewer benchmarks, which would not compare with other models' rows."""
    by_dim: dict[str, list[tuple[float | None, float]]] = {}
    everything: list[tuple[float | None, float]] = []
    for i, row in enumerate(scores, start=1):
        dimension, score, weight = row.get("dimension"), row.get("score"), row.get("weight", 1.0)
        if not isinstance(dimension, str) or not dimension:
            raise ValueError(f"score {i}: dimension must be a non-empty string")
        if score is not None and not (isinstance(score, (int, float)) and math.isfinite(score)):
            raise ValueError(f"score {i}: score must be a finite number or None")
        if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight >= 0):
            raise ValueError(f"score {i}: weight must be a finite number >= 0")
        by_dim.setdefault(dimension, []).append((score, float(weight)))
        everything.append((score, float(weight)))
    return {d: _average(rows) for d, rows in by_dim.items()}, _average(everything)
