"""Statistics of learning curves: bootstrap intervals, label-efficiency factors, labels-saved area.

A *curve* maps label budgets to the scores of several seeds: ``{100: [0.71, 0.69, 0.73], 300: [...]}``.

* :func:`bootstrap_ci` — mean and percentile-bootstrap interval over seeds.
* :func:`budget_to_reach` — how many labels a (baseline) curve needs to reach a score: the curve of
  seed means is made monotone (isotonic, pool-adjacent-violators) and interpolated linearly in
  log(budget); ``None`` when it never gets there.
* :func:`label_efficiency_factor` — labels the baseline needs for the arm's score at budget N, over N:
  interpolated on the monotone fit but held to the observed means (never above the first budget where
  the baseline's observed mean matches the arm's, a tie included; "≥" only when none does);
  :func:`factor_interval` gives its bootstrap interval over seeds.
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


def _usable(values) -> bool:
    return bool(len(values)) and bool(np.any(~np.isnan(np.asarray(values, dtype=float))))


def curve_means(curve: Curve) -> tuple[np.ndarray, np.ndarray]:
    """Budgets with at least one score (ascending) and their mean scores."""
    budgets = np.array(sorted(b for b, v in curve.items() if _usable(v)), dtype=float)
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


# Two means closer than this are equal (a tie matches): scores are means of floats, and rounding must not
# decide whether a baseline "reached" an arm.
TIE = 1e-9


def round_down(x: float, digits: int = 1) -> float:
    """Round a lower bound down, so that the printed bound is still true."""
    return math.floor(x * 10**digits + 1e-9) / 10**digits


def round_up(x: float, digits: int = 1) -> float:
    """Round an upper bound up, so that the printed bound is still true."""
    return math.ceil(x * 10**digits - 1e-9) / 10**digits


@dataclass
class Efficiency:
    """The label-efficiency factor at one budget, kept consistent with the observed per-budget means.

    The point estimate interpolates the monotone fit of the baseline (:func:`budget_to_reach`), clamped to
    what the observed means show: never above ``matched_at`` (the baseline observed to match there), never
    at or below ``below_until`` (the baseline observed strictly below up to there). A "≥" claim is made
    only when no observed baseline mean matches the arm's.
    """

    budget: int  # the arm's label budget N
    arm_score: float
    baseline_budget: float | None  # labels the baseline needs for arm_score (None: never observed to match)
    max_budget: float  # the baseline's largest budget with usable cells
    at_least_min: bool  # the baseline already matches at its smallest budget (factor is an upper bound)
    matched_at: float | None = None  # first budget whose observed mean >= arm_score (a tie matches)
    below_until: float | None = None  # every observed baseline mean up to this budget is < arm_score
    left_out: tuple[int, ...] = ()  # baseline budgets with no usable cells (left out of the claim)

    @property
    def factor(self) -> float:
        """baseline labels / arm labels; a lower bound when the baseline is never observed to match."""
        if self.baseline_budget is not None:
            return self.baseline_budget / self.budget
        if self.below_until is not None:
            return self.below_until / self.budget
        return float("nan")

    @property
    def reached(self) -> bool:
        return self.baseline_budget is not None

    def describe(self) -> str:
        gap = (
            f"; baseline budgets left out (one-class models only): {', '.join(map(str, self.left_out))}"
            if self.left_out
            else ""
        )
        if not self.reached:
            if self.below_until is None:
                return f"no claim (the baseline has no usable cells{gap})"
            return (
                f"≥ {round_down(self.factor):.1f}× (baseline never reaches {self.arm_score:.3f}, "
                f"even with {self.max_budget:g} labels{gap})"
            )
        if self.at_least_min:
            smallest = (
                "smallest usable" if self.left_out and self.left_out[0] < self.matched_at else "smallest"
            )
            return f"≤ {round_up(self.factor):.1f}× (baseline matches at its {smallest} budget{gap})"
        if gap:
            return f"{self.factor:.2f}× ({gap[2:]})"
        return f"{self.factor:.2f}×"


def _efficiency(score: float, budget: int, b: np.ndarray, y: np.ndarray, left_out=()) -> Efficiency:
    """The factor from the baseline's usable budgets ``b`` (ascending) and their observed means ``y``."""
    if len(b) == 0:
        return Efficiency(budget, score, None, float("nan"), False, left_out=tuple(left_out))
    hit = np.flatnonzero(y >= score - TIE)
    if len(hit) == 0:  # never observed to match: below at every budget
        matched_at, below_until = None, float(b[-1])
    else:
        matched_at = float(b[hit[0]])
        below_until = float(b[hit[0] - 1]) if hit[0] > 0 else None
    needed = None
    if matched_at is not None:
        needed = budget_to_reach(b, y, score)
        if below_until is None:
            needed = matched_at  # matches at its smallest budget: an upper bound only
        elif needed is None or not below_until < needed <= matched_at:
            # the monotone fit disagrees with the observed means: interpolate between the observed
            # budget below the arm's score and the first one that matches it (linear in log budget)
            i = hit[0]
            t = min(1.0, max(0.0, (score - y[i - 1]) / (y[i] - y[i - 1])))
            needed = float(math.exp(math.log(b[i - 1]) + t * (math.log(b[i]) - math.log(b[i - 1]))))
            needed = min(max(needed, below_until * (1 + 1e-12)), matched_at)
    return Efficiency(
        budget=budget,
        arm_score=score,
        baseline_budget=needed,
        max_budget=float(b[-1]),
        at_least_min=matched_at is not None and below_until is None,
        matched_at=matched_at,
        below_until=below_until,
        left_out=tuple(left_out),
    )


def label_efficiency_factor(arm: Curve, baseline: Curve, budget: int) -> Efficiency:
    """How many labels the baseline needs to match the arm's mean score at ``budget``, over ``budget``.

    A baseline budget with an empty list of scores was tried but has no usable cells (e.g. every model
    there predicted one class): it is left out of the claim and named in :meth:`Efficiency.describe`.
    """
    if not _usable(arm.get(budget, [])):
        raise ValueError(f"the arm has no usable scores at {budget} labels")
    score = float(np.nanmean(arm[budget]))
    b, y = curve_means(baseline)
    left_out = sorted(k for k, v in baseline.items() if not _usable(v))
    return _efficiency(score, budget, b, y, left_out)


@dataclass
class FactorInterval:
    """Percentile-bootstrap interval of the label-efficiency factor; an end can be a bound.

    ``lo_kind``/``hi_kind``: "=" a value, "≤" the baseline matched at its smallest budget in that
    replicate (the factor is at most this), "≥" the baseline never matched (the factor is at least this).
    """

    lo: float
    hi: float
    lo_kind: str = "="
    hi_kind: str = "="

    def describe(self) -> str:
        if self.lo_kind == "≥":
            return f"≥ {round_down(self.lo):.1f}×"
        if self.hi_kind == "≤":
            return f"≤ {round_up(self.hi):.1f}×"
        lo = f"≤ {round_up(self.lo):.1f}×" if self.lo_kind == "≤" else f"{self.lo:.2f}×"
        hi = f"≥ {round_down(self.hi):.1f}×" if self.hi_kind == "≥" else f"{self.hi:.2f}×"
        return f"{lo} to {hi}"


def factor_interval(
    arm: Curve, baseline: Curve, budget: int, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> FactorInterval | None:
    """Bootstrap interval of :func:`label_efficiency_factor`: the seeds of the arm at ``budget`` and of
    the baseline at each budget are resampled (with replacement), and the factor recomputed.

    A replicate where the baseline never matches ranks above every value (its factor is a lower bound),
    one where it matches at its smallest budget ranks by that upper bound. ``None`` when there is nothing
    to resample.
    """
    a = np.asarray(arm.get(budget, []), dtype=float)
    a = a[~np.isnan(a)]
    base = {
        k: np.asarray(v, dtype=float)[~np.isnan(np.asarray(v, dtype=float))]
        for k, v in baseline.items()
        if _usable(v)
    }
    if len(a) == 0 or not base:
        return None
    left_out = sorted(k for k, v in baseline.items() if not _usable(v))
    b = np.array(sorted(base), dtype=float)
    rng = np.random.default_rng(seed)

    def boot_means(x: np.ndarray) -> np.ndarray:
        return x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)

    a_means = boot_means(a)
    y_means = np.stack([boot_means(base[int(k)]) for k in b], axis=1)  # (n_boot, budgets)
    reps = []  # (sort key, value, kind)
    for i in range(n_boot):
        eff = _efficiency(float(a_means[i]), budget, b, y_means[i], left_out)
        if not eff.reached:
            reps.append((math.inf, eff.factor, "≥"))
        else:
            reps.append((eff.factor, eff.factor, "≤" if eff.at_least_min else "="))
    reps.sort(key=lambda r: r[0])
    alpha = (1 - level) / 2
    lo = reps[int(math.floor(alpha * (n_boot - 1)))]
    hi = reps[int(math.ceil((1 - alpha) * (n_boot - 1)))]
    return FactorInterval(lo=lo[1], hi=hi[1], lo_kind=lo[2], hi_kind=hi[2])


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
