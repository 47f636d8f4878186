"""Statistics of learning curves: bootstrap intervals, label-efficiency factors, labels-saved area.

A *curve* maps label budgets to the scores of several seeds: ``{100: [0.71, 0.69, 0.73], 300: [...]}``.

* :func:`bootstrap_ci` — mean and percentile-bootstrap interval over seeds.
* :func:`budget_to_reach` — how many labels a (baseline) curve needs to reach a score: the curve of
  seed means is made monotone (isotonic, pool-adjacent-violators) and interpolated linearly in
  log(budget); ``None`` when it never gets there.
* :func:`label_efficiency_factor` — labels the baseline needs for the arm's score at budget N, over N.
* :func:`labels_saved_area` — Le Scao & Rush (2021)'s "data advantage": the horizontal area between two
  curves, i.e. the mean number of labels the baseline needs beyond the arm, averaged over the score
  range both curves cover; with a bootstrap interval over seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Curve = dict[int, list[float]]


def bootstrap_ci(
    values, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """Mean and percentile-bootstrap interval of the mean. One value gives a zero-width interval."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    if len(x) == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(x.mean())
    if len(x) == 1:
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return mean, float(lo), float(hi)


def isotonic(y) -> np.ndarray:
    """Non-decreasing least-squares fit (pool adjacent violators), equal weights."""
    blocks: list[list[float]] = []  # [sum, count]
    for v in np.asarray(y, dtype=float):
        blocks.append([v, 1])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            s, c = blocks.pop()
            blocks[-1][0] += s
            blocks[-1][1] += c
    return np.concatenate([[s / c] * c for s, c in blocks])


def curve_means(curve: Curve) -> tuple[np.ndarray, np.ndarray]:
    budgets = np.array(sorted(b for b, v in curve.items() if len(v)), dtype=float)
    means = np.array([float(np.nanmean(curve[int(b)])) for b in budgets])
    return budgets, means


def budget_to_reach(budgets, scores, target: float) -> float | None:
    """Labels a curve needs to reach ``target``: monotone fit, linear in log(budget).

    Returns the smallest budget of the curve if it is already there at its smallest budget, and
    ``None`` when even its largest budget falls short.
    """
    b = np.asarray(budgets, dtype=float)
    y = isotonic(scores)
    target = target - 1e-9  # scores are means of floats: don't let rounding decide "reached"
    if target <= y[0]:
        return float(b[0])
    if target > y[-1]:
        return None
    i = int(np.searchsorted(y, target, side="left"))  # first index with y[i] >= target
    lo, hi = y[i - 1], y[i]
    if hi == lo:
        return float(b[i])
    t = (target - lo) / (hi - lo)
    return float(math.exp(math.log(b[i - 1]) + t * (math.log(b[i]) - math.log(b[i - 1]))))


@dataclass
class Efficiency:
    budget: int  # the arm's label budget N
    arm_score: float
    baseline_budget: float | None  # labels the baseline needs for arm_score (None: never reaches)
    max_budget: float  # the baseline's largest budget
    at_least_min: bool  # the baseline already matches at its smallest budget (factor is an upper bound)

    @property
    def factor(self) -> float:
        """baseline labels / arm labels; a lower bound (max_budget / N) when the baseline never gets there."""
        needed = self.baseline_budget if self.baseline_budget is not None else self.max_budget
        return needed / self.budget

    @property
    def reached(self) -> bool:
        return self.baseline_budget is not None

    def describe(self) -> str:
        if not self.reached:
            return f"≥ {self.factor:.1f}× (baseline never reaches {self.arm_score:.3f}, even with {self.max_budget:g} labels)"
        if self.at_least_min:
            return f"≤ {self.factor:.2f}× (baseline matches at its smallest budget)"
        return f"{self.factor:.2f}×"


def label_efficiency_factor(arm: Curve, baseline: Curve, budget: int) -> Efficiency:
    """How many labels the baseline needs to match the arm's mean score at ``budget``, over ``budget``."""
    score = float(np.nanmean(arm[budget]))
    b, y = curve_means(baseline)
    needed = budget_to_reach(b, y, score)
    return Efficiency(
        budget=budget,
        arm_score=score,
        baseline_budget=needed,
        max_budget=float(b[-1]),
        at_least_min=needed is not None and needed <= b[0] and score <= isotonic(y)[0],
    )


def _inverse(b: np.ndarray, y: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Budget (linear) at which the monotone curve reaches each level, interpolated in budget."""
    yi = isotonic(y)
    # np.interp needs strictly increasing x; ties would make the inverse ill-defined, so nudge.
    yi = yi + np.arange(len(yi)) * 1e-12
    return np.interp(levels, yi, b)


def _area(arm_b, arm_y, base_b, base_y, n_levels: int = 200) -> float:
    a_iso, b_iso = isotonic(arm_y), isotonic(base_y)
    lo = max(a_iso[0], b_iso[0])
    hi = min(a_iso[-1], b_iso[-1])
    if not hi > lo:
        return float("nan")
    levels = np.linspace(lo, hi, n_levels)
    return float(np.mean(_inverse(base_b, base_y, levels) - _inverse(arm_b, arm_y, levels)))


def labels_saved_area(arm: Curve, baseline: Curve, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0):
    """Mean labels saved over the shared score range, with a bootstrap interval over seeds.

    Returns:
        (estimate, lo, hi); NaN when the curves share no score range.
    """
    arm_b, arm_y = curve_means(arm)
    base_b, base_y = curve_means(baseline)
    est = _area(arm_b, arm_y, base_b, base_y)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        ay = [np.mean(rng.choice(arm[int(b)], size=len(arm[int(b)]))) for b in arm_b]
        by = [np.mean(rng.choice(baseline[int(b)], size=len(baseline[int(b)]))) for b in base_b]
        boots.append(_area(arm_b, np.array(ay), base_b, np.array(by)))
    boots = np.array([x for x in boots if not math.isnan(x)])
    if len(boots) == 0:
        return est, float("nan"), float("nan")
    alpha = (1 - level) / 2
    lo, hi = np.quantile(boots, [alpha, 1 - alpha])
    return est, float(lo), float(hi)
